"""gRPC (h2c) through the activator and the queue-proxy: client -> activator -> QP -> app.

The activator listens for h2c on ACTIVATOR_H2C_PORT (Knative's 8013) and forwards each stream
over h2c to the pod's queue-proxy, which forwards it over h2c to the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.apps import grpc_app
from tests.apps.autoscaler_stub import RunningStub

from .activator_helpers import (
    ActivatorProc,
    PlatformFile,
    StartActivator,
    apply,
    qp_env,
)
from .conftest import StartQP
from .helpers import QueueProxy, eventually, free_ports

pytestmark = pytest.mark.timeout(60)

REV = "grpc-00001"
SVC = f"/{grpc_app.SERVICE}"
MD = (("knative-serving-namespace", "default"), ("knative-serving-revision", REV))


@pytest.fixture
async def gapp() -> AsyncIterator[grpc_app.GrpcApp]:
    a = await grpc_app.start()
    yield a
    a.release.set()
    await a.close()


@pytest.fixture
async def pod(gapp: grpc_app.GrpcApp, start_qp: StartQP) -> QueueProxy:
    return await start_qp(qp_env(), user_port=gapp.port)  # type: ignore[arg-type]


async def _activator(
    tmp_path: Path, start: StartActivator, stub: RunningStub, pod: QueueProxy | None, cc: int
) -> tuple[ActivatorProc, PlatformFile, int]:
    platform = PlatformFile(tmp_path / "platform.json")
    platform.revision(REV, cc=cc, ready=[f"127.0.0.1:{pod.port}"] if pod else [])
    platform.write()
    (h2c_port,) = free_ports(1)
    act = await start(platform, stub.url, ACTIVATOR_H2C_PORT=str(h2c_port))
    await apply(platform, act)
    return act, platform, h2c_port


@pytest.fixture
async def channel(
    tmp_path: Path, start_activator: StartActivator, stub: RunningStub, pod: QueueProxy
) -> AsyncIterator[grpc.aio.Channel]:
    _, _, port = await _activator(tmp_path, start_activator, stub, pod, 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


async def test_all_four_kinds(channel: grpc.aio.Channel, gapp: grpc_app.GrpcApp) -> None:
    call = channel.unary_unary(f"{SVC}/Unary")(b"hi", metadata=MD, timeout=10)
    assert await call == b"echo:hi"
    assert dict(await call.trailing_metadata())["x-echo-trailer"] == "yes"
    md = gapp.metadata[-1]
    assert md["k-proxy-request"] == "activator"  # the QP counted it as proxied
    assert "knative-serving-revision" not in md

    got = [m async for m in channel.unary_stream(f"{SVC}/Stream")(b"200x8192", metadata=MD)]
    assert [m[: len(b"%d" % i)] for i, m in enumerate(got)] == [b"%d" % i for i in range(200)]

    async def gen() -> AsyncIterator[bytes]:
        for i in range(100):
            yield b"%d" % i + b"." * 10000

    got1 = await channel.stream_unary(f"{SVC}/Collect")(gen(), metadata=MD, timeout=20)
    assert got1 == b",".join([b"%d" % i + b"." * 10000 for i in range(100)])

    chat = channel.stream_stream(f"{SVC}/Chat")(metadata=MD, timeout=10)
    for i in range(10):
        await chat.write(b"m%d" % i)
        assert await chat.read() == b"re:m%d" % i
    await chat.done_writing()
    assert await chat.read() == grpc.aio.EOF
    assert await chat.code() == grpc.StatusCode.OK


async def test_cancel_and_deadline_reach_the_app(
    channel: grpc.aio.Channel, gapp: grpc_app.GrpcApp
) -> None:
    unary = channel.unary_unary(f"{SVC}/Unary")
    call = unary(b"hold", metadata=MD, timeout=20)
    await gapp.wait_for(lambda: gapp.active == 1)
    call.cancel()
    await gapp.wait_for(lambda: gapp.cancelled == 1 and gapp.active == 0)

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await unary(b"sleep:30", metadata=MD, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await gapp.wait_for(lambda: gapp.cancelled == 2 and gapp.active == 0)


async def test_cc_enforced_per_stream_at_the_activator(
    tmp_path: Path,
    start_activator: StartActivator,
    stub: RunningStub,
    pod: QueueProxy,
    gapp: grpc_app.GrpcApp,
) -> None:
    act, _, port = await _activator(tmp_path, start_activator, stub, pod, 1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        unary = ch.unary_unary(f"{SVC}/Unary")
        calls = [asyncio.ensure_future(unary(b"hold", metadata=MD, timeout=20)) for _ in range(3)]

        async def two_queued() -> bool:
            return await act.queued(REV) == 2

        await eventually(two_queued, what="two streams waiting in the throttler")
        await gapp.wait_for(lambda: gapp.active == 1)
        gapp.release.set()
        assert await asyncio.gather(*calls) == [b"echo:hold"] * 3
    assert gapp.max_active == 1


async def test_held_at_zero_until_a_pod_is_ready(
    tmp_path: Path,
    start_activator: StartActivator,
    stub: RunningStub,
    pod: QueueProxy,
) -> None:
    act, platform, port = await _activator(tmp_path, start_activator, stub, None, 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = asyncio.ensure_future(ch.unary_unary(f"{SVC}/Unary")(b"cold", metadata=MD))

        async def queued() -> bool:
            return await act.queued(REV) == 1

        await eventually(queued, what="the call held at the activator")
        platform.endpoints(REV, ready=[f"127.0.0.1:{pod.port}"])
        platform.write()
        assert await asyncio.wait_for(call, 10) == b"echo:cold"

"""gRPC (h2c) through the queue-proxy: grpcio client -> queue-proxy -> grpcio server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.apps import grpc_app

from .conftest import StartQP
from .helpers import QueueProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def gapp() -> AsyncIterator[grpc_app.GrpcApp]:
    a = await grpc_app.start()
    yield a
    await a.close()


@pytest.fixture
async def gqp(gapp: grpc_app.GrpcApp, start_qp: StartQP) -> QueueProxy:
    return await start_qp({"CONTAINER_CONCURRENCY": "0"}, user_port=gapp.port)


@pytest.fixture
async def channel(gqp: QueueProxy) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gqp.port}") as ch:
        yield ch


def _m(ch: grpc.aio.Channel, kind: str, name: str) -> object:
    return getattr(ch, kind)(f"/{grpc_app.SERVICE}/{name}")


async def test_unary(channel: grpc.aio.Channel, gapp: grpc_app.GrpcApp) -> None:
    call = channel.unary_unary(f"/{grpc_app.SERVICE}/Unary")(
        b"hi", metadata=(("x-custom", "v1"),), timeout=5
    )
    assert await call == b"echo:hi"
    assert await call.code() == grpc.StatusCode.OK
    trailers = dict(await call.trailing_metadata())
    assert trailers["x-echo-trailer"] == "yes"
    md = gapp.metadata[-1]
    assert md["x-custom"] == "v1"
    assert md["x-forwarded-for"] == "127.0.0.1"

"""gRPC through the activator with system-internal-tls: client -(h2c)-> activator -(h2 over TLS,
verified)-> the pod's queue-proxy TLS port -> app. Real processes, certificates the test makes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.apps import grpc_app
from tests.apps.autoscaler_stub import RunningStub
from tests.tlscerts import CA

from .activator_helpers import PlatformFile, Pods, StartActivator, apply
from .helpers import eventually, free_ports

pytestmark = pytest.mark.timeout(60)

REV = "grpc-00001"
NAME = "data-plane.knative.dev"
SVC = f"/{grpc_app.SERVICE}"
MD = (("knative-serving-namespace", "default"), ("knative-serving-revision", REV))


@pytest.fixture
async def gapp() -> AsyncIterator[grpc_app.GrpcApp]:
    a = await grpc_app.start()
    yield a
    a.release.set()
    await a.close()


async def _setup(
    tmp_path: Path,
    start_activator: StartActivator,
    stub: RunningStub,
    pods: Pods,
    gapp: grpc_app.GrpcApp,
    pod_sans: tuple[str, ...],
) -> int:
    ca = CA(tmp_path / "ca")
    ca.install(tmp_path / "pod-certs", sans=pod_sans)
    pod = await pods.start(
        app=False, user_port=gapp.port, QUEUE_CERT_DIR=str(tmp_path / "pod-certs")
    )
    qp_tls = int(pod.qp.env["QUEUE_SERVING_TLS_PORT"])

    async def listening() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", qp_tls)
        except OSError:
            return False
        w.close()
        return True

    await eventually(listening, timeout=10, what="the queue-proxy's TLS port")
    ca.install(tmp_path / "routing-certs", sans=("kn-routing", NAME))
    platform = PlatformFile(tmp_path / "platform.json")
    platform.revision(REV, ready=[pod.dest])
    platform.write()
    h2c_port, tls_port = free_ports(2)
    act = await start_activator(
        platform,
        stub.url,
        ACTIVATOR_H2C_PORT=str(h2c_port),
        KND_SYSTEM_INTERNAL_TLS="Enabled",
        ACTIVATOR_CERT_DIR=str(tmp_path / "routing-certs"),
        ACTIVATOR_TLS_PORT=str(tls_port),
        KND_QUEUE_TLS_PORT=str(qp_tls),
    )
    await apply(platform, act)
    return h2c_port


async def test_grpc_through_the_activator_to_the_pods_tls_port(
    tmp_path: Path,
    start_activator: StartActivator,
    stub: RunningStub,
    pods: Pods,
    gapp: grpc_app.GrpcApp,
) -> None:
    port = await _setup(tmp_path, start_activator, stub, pods, gapp, ("kn-user-default", NAME))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(f"{SVC}/Unary")(b"hi", metadata=MD, timeout=10)
        assert await call == b"echo:hi"
        got = [m async for m in ch.unary_stream(f"{SVC}/Stream")(b"50x8192", metadata=MD)]
    assert len(got) == 50
    assert gapp.metadata[-1]["k-proxy-request"] == "activator"


async def test_a_pod_certificate_without_our_san_is_refused(
    tmp_path: Path,
    start_activator: StartActivator,
    stub: RunningStub,
    pods: Pods,
    gapp: grpc_app.GrpcApp,
) -> None:
    port = await _setup(tmp_path, start_activator, stub, pods, gapp, ("kn-user-other", NAME))
    # Plain h2 (prior knowledge) to read the 502's body.
    async with httpx.AsyncClient(http1=False, http2=True, trust_env=False, timeout=10) as c:
        r = await c.post(
            f"http://127.0.0.1:{port}{SVC}/Unary",
            headers={**dict(MD), "content-type": "application/grpc"},
            content=b"\x00\x00\x00\x00\x02hi",
        )
    assert r.http_version == "HTTP/2"
    assert r.status_code == 502
    assert 'san "kn-user-default" does not have a matching name in [kn-user-other' in r.text
    assert gapp.calls == 0

"""Probe and health-check handling (SPEC §1.3 drainer, §1.4, §1.12)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.apps.upstream import RunningApp

from .conftest import StartQP, make_client
from .helpers import QueueProxy, free_ports

KUBELET = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
ACTIVATOR = {"User-Agent": "Knative-Activator-Probe", "K-Network-Probe": "queue"}


async def test_kubelet_probe_ok(client: httpx.AsyncClient, app: RunningApp) -> None:
    r = await client.get("/", headers=KUBELET)
    assert r.status_code == 200
    assert r.content == b"queue"
    assert app.state.total == 0  # answered by the queue-proxy, not proxied


async def test_kubelet_probe_ignores_path(client: httpx.AsyncClient, app: RunningApp) -> None:
    r = await client.get("/some/app/path", headers=KUBELET)
    assert r.status_code == 200
    assert r.content == b"queue"
    assert app.state.total == 0


async def test_kubelet_probe_wrong_header_value(client: httpx.AsyncClient) -> None:
    for value in ("activator", "probe", "nope", "Queue", ""):
        headers = {"User-Agent": "kube-probe/1.30"}
        if value:
            headers["K-Network-Probe"] = value
        r = await client.get("/", headers=headers)
        assert r.status_code == 400, value
        assert r.content == f"unexpected probe header value: {value}\n".encode()
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["x-content-type-options"] == "nosniff"


async def test_activator_probe(client: httpx.AsyncClient, app: RunningApp) -> None:
    r = await client.get("/healthz", headers=ACTIVATOR)
    assert r.status_code == 200
    assert r.content == b"queue"
    assert app.state.total == 0


async def test_autoscaler_probe_with_activator_value_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/healthz",
        headers={"User-Agent": "Knative-Autoscaling-Probe", "K-Network-Probe": "activator"},
    )
    assert r.status_code == 400
    assert r.content == b"unexpected probe header value: activator\n"


async def test_network_probe_echoes_hash(client: httpx.AsyncClient, app: RunningApp) -> None:
    r = await client.get(
        "/anything",
        headers={
            "User-Agent": "Knative-Ingress-Probe",
            "K-Network-Probe": "probe",
            "K-Network-Hash": "abc123",
        },
    )
    assert r.status_code == 200
    assert r.headers["k-network-hash"] == "abc123"
    assert app.state.total == 0


async def test_network_probe_any_user_agent(client: httpx.AsyncClient) -> None:
    r = await client.get("/", headers={"K-Network-Probe": "probe", "K-Network-Hash": "h"})
    assert r.status_code == 200
    assert r.headers["k-network-hash"] == "h"


async def test_network_probe_without_hash(client: httpx.AsyncClient, app: RunningApp) -> None:
    r = await client.get("/", headers={"K-Network-Probe": "probe"})
    assert r.status_code == 400
    assert r.content == b'a probe request must contain a non-empty "K-Network-Hash" header\n'
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert app.state.total == 0


async def test_kubelet_probe_header_is_proxied(client: httpx.AsyncClient, app: RunningApp) -> None:
    r = await client.get("/headers", headers={"K-Kubelet-Probe": "queue"})
    assert r.status_code == 200
    assert ["K-Kubelet-Probe", "queue"] in r.json()["headers"]
    assert app.state.per_path == {"/headers": 1}


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1")
async def test_kubelet_probe_header_bypasses_breaker(
    client: httpx.AsyncClient, app: RunningApp
) -> None:
    holder = asyncio.create_task(client.get("/gate"))
    try:
        await app.state.wait_for(lambda s: s.in_flight == 1)
        # The only slot is taken, yet the K-Kubelet-Probe request goes straight through.
        r = await client.get("/hello", headers={"K-Kubelet-Probe": "queue"})
        assert r.status_code == 200
        assert app.state.max_in_flight == 2
    finally:
        app.state.gate.set()
        await asyncio.wait_for(holder, 5)


def _tcp_probe(port: int, **extra: object) -> str:
    return json.dumps(
        {"tcpSocket": {"port": port, "host": "127.0.0.1"}, "successThreshold": 1, **extra}
    )


def _http_probe(port: int, **extra: object) -> str:
    return json.dumps(
        {
            "httpGet": {
                "path": "/ready",
                "port": port,
                "host": "127.0.0.1",
                "scheme": "HTTP",
                "httpHeaders": [{"name": "X-Probe", "value": "1"}],
            },
            "successThreshold": 1,
            **extra,
        }
    )


async def _probe(qp: QueueProxy) -> httpx.Response:
    async with make_client(qp.url()) as c:
        return await c.get("/", headers=KUBELET)


async def test_readiness_tcp_probe_succeeds(app: RunningApp, start_qp: StartQP) -> None:
    qp = await start_qp({"SERVING_READINESS_PROBE": _tcp_probe(app.port)}, user_port=app.port)
    r = await _probe(qp)
    assert r.status_code == 200
    assert r.content == b"queue"


async def test_readiness_tcp_probe_fails(app: RunningApp, start_qp: StartQP) -> None:
    (closed,) = free_ports(1)
    qp = await start_qp(
        {"SERVING_READINESS_PROBE": _tcp_probe(closed, periodSeconds=1, timeoutSeconds=1)},
        user_port=app.port,
    )
    r = await _probe(qp)
    assert r.status_code == 503
    assert r.content == b""


async def test_readiness_http_probe_follows_app(app: RunningApp, start_qp: StartQP) -> None:
    qp = await start_qp(
        {"SERVING_READINESS_PROBE": _http_probe(app.port, periodSeconds=1, timeoutSeconds=1)},
        user_port=app.port,
    )
    app.state.ready = False
    r = await _probe(qp)
    assert r.status_code == 503
    assert r.content == b""
    app.state.ready = True
    r = await _probe(qp)
    assert r.status_code == 200
    assert r.content == b"queue"
    assert app.state.ready_hits == 2


async def test_readiness_aggressive_probe_waits_for_app(app: RunningApp, start_qp: StartQP) -> None:
    """periodSeconds 0: one probe cycle keeps polling until the app becomes ready."""
    qp = await start_qp({"SERVING_READINESS_PROBE": _http_probe(0)}, user_port=app.port)
    app.state.ready = False
    probe = asyncio.create_task(_probe(qp))
    try:
        await app.state.wait_for(lambda s: s.ready_hits >= 2)  # it retried after a failure
        assert not probe.done()
        app.state.ready = True
        r = await asyncio.wait_for(probe, 5)
    finally:
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
    assert r.status_code == 200
    assert r.content == b"queue"


async def test_readiness_probe_not_counted_as_app_traffic(
    app: RunningApp, start_qp: StartQP
) -> None:
    qp = await start_qp(
        {"SERVING_READINESS_PROBE": _http_probe(app.port, periodSeconds=1)}, user_port=app.port
    )
    for _ in range(3):
        assert (await _probe(qp)).status_code == 200
    assert app.state.ready_hits == 3
    assert app.state.total == 0  # /ready is not tracked; nothing else reached the app

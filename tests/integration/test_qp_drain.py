"""Graceful shutdown and drain (SPEC §1.13): SIGTERM, /wait-for-drain, SIGINT."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.apps.upstream import RunningApp

from .conftest import make_client
from .helpers import QueueProxy, eventually

KUBELET = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
QUIET = "0.5"


async def _probe_status(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/", headers=KUBELET)


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS=QUIET, CONTAINER_CONCURRENCY="10")
async def test_sigterm_drains_without_dropping_requests(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    long = asyncio.create_task(client.get("/gate"))
    await app.state.wait_for(lambda s: s.in_flight == 1)
    t_term = time.monotonic()
    qp.signal(signal.SIGTERM)

    async def draining() -> bool:
        r = await _probe_status(client)
        return r.status_code == 503

    await eventually(draining, timeout=3, what="probes failing after SIGTERM")
    for headers in (
        KUBELET,
        {"User-Agent": "Knative-Activator-Probe", "K-Network-Probe": "queue"},
        {"User-Agent": "Knative-Autoscaling-Probe", "K-Network-Probe": "activator"},
        {"K-Network-Probe": "probe", "K-Network-Hash": "h"},
    ):
        r = await client.get("/healthz", headers=headers)
        assert r.status_code == 503, headers
        assert r.content == b"shutting down\n"
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
    # Normal requests are still served while draining.
    r = await client.get("/hello")
    assert r.status_code == 200
    t_last = time.monotonic()
    assert qp.running()
    # The request in flight since before SIGTERM completes normally.
    app.state.gate.set()
    done = await asyncio.wait_for(long, 5)
    assert done.status_code == 200
    assert done.text == "released"
    rc = await qp.wait_exit(timeout=10)
    t_exit = time.monotonic()
    assert rc == 0
    # Not before the quiet period after the last request.
    assert t_exit - t_last >= float(QUIET) - 0.05
    assert t_exit - t_term < 5
    assert "Traceback" not in qp.stderr()


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS=QUIET)
async def test_sigterm_waits_for_long_request_past_quiet_period(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    """The quiet period passes while a request is still running: the servers' graceful
    shutdown waits for it instead of dropping it."""
    long = asyncio.create_task(client.get("/gate"))
    await app.state.wait_for(lambda s: s.in_flight == 1)
    qp.signal(signal.SIGTERM)

    # Wait until the listener is closed: the drain is over and shutdown has begun.
    async def refused() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", qp.port)
        except OSError:
            return True
        w.close()
        await w.wait_closed()
        return False

    await eventually(refused, timeout=5, what="listener closed after the quiet period")
    assert qp.running()
    assert not long.done()
    app.state.gate.set()
    r = await asyncio.wait_for(long, 5)
    assert r.status_code == 200
    assert r.text == "released"
    assert await qp.wait_exit(timeout=5) == 0


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS=QUIET)
async def test_sigterm_idle_exits_after_quiet_period(qp: QueueProxy) -> None:
    t0 = time.monotonic()
    qp.signal(signal.SIGTERM)
    assert await qp.wait_exit(timeout=5) == 0
    assert time.monotonic() - t0 >= float(QUIET) - 0.05


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS="30")
async def test_sigint_shuts_down_without_quiet_period(qp: QueueProxy) -> None:
    t0 = time.monotonic()
    qp.signal(signal.SIGINT)
    assert await qp.wait_exit(timeout=5) == 0
    assert time.monotonic() - t0 < 5


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS=QUIET)
async def test_wait_for_drain_then_sigterm(qp: QueueProxy, client: httpx.AsyncClient) -> None:
    """The preStop hook path: /wait-for-drain starts the drain, SIGTERM follows, the hook
    returns 200 once the quiet period has passed, and the process exits 0."""
    async with make_client(f"http://127.0.0.1:{qp.admin_port}") as admin:
        hook = asyncio.create_task(admin.get("/wait-for-drain"))
        try:
            await eventually(
                lambda: _is_503(client), timeout=3, what="probes failing after preStop"
            )
            qp.signal(signal.SIGTERM)
            r = await asyncio.wait_for(hook, 5)
        finally:
            hook.cancel()
            await asyncio.gather(hook, return_exceptions=True)
    assert r.status_code == 200
    assert await qp.wait_exit(timeout=5) == 0


async def _is_503(client: httpx.AsyncClient) -> bool:
    r = await _probe_status(client)
    return r.status_code == 503 and r.content == b"shutting down\n"


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS="30")
async def test_wait_for_drain_without_sigterm_resets(
    qp: QueueProxy, client: httpx.AsyncClient
) -> None:
    """A preStop from a user-container restart: no SIGTERM follows, so after ~1 s the drain
    is reset, the hook returns 200 and probes answer 200 again."""
    async with make_client(f"http://127.0.0.1:{qp.admin_port}") as admin:
        t0 = time.monotonic()
        hook = asyncio.create_task(admin.get("/wait-for-drain"))
        try:
            await eventually(lambda: _is_503(client), timeout=3, what="draining")
            r = await asyncio.wait_for(hook, 5)
        finally:
            hook.cancel()
            await asyncio.gather(hook, return_exceptions=True)
        elapsed = time.monotonic() - t0
    assert r.status_code == 200
    assert 0.8 <= elapsed < 3, elapsed

    async def healthy() -> bool:
        resp = await _probe_status(client)
        return resp.status_code == 200 and resp.content == b"queue"

    await eventually(healthy, timeout=3, what="probes healthy again")
    assert qp.running()


async def test_admin_port_other_paths_404(qp: QueueProxy) -> None:
    async with make_client(f"http://127.0.0.1:{qp.admin_port}") as admin:
        r = await admin.get("/")
        assert r.status_code == 404
        r = await admin.get("/metrics")
        assert r.status_code == 404


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS=QUIET, HIJACK_DRAIN_TIMEOUT_SECONDS="20")
async def test_sigterm_keeps_open_websocket_until_it_ends(qp: QueueProxy, app: RunningApp) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(qp.url("/ws")) as ws:
        qp.signal(signal.SIGTERM)

        async def listener_closed() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", qp.port)
            except OSError:
                return True
            w.close()
            await w.wait_closed()
            return False

        await eventually(listener_closed, timeout=5, what="drain over, listener closed")
        # The upgraded connection is still served.
        await ws.send_str("still there")
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.data == "echo: still there"
        assert qp.running()
        await ws.send_str("close")
        await asyncio.wait_for(ws.receive(), 5)
    assert await qp.wait_exit(timeout=5) == 0


@pytest.mark.qp_env(DRAIN_QUIET_PERIOD_SECONDS=QUIET, HIJACK_DRAIN_TIMEOUT_SECONDS="1")
async def test_sigterm_hijack_drain_timeout_bounds_open_websocket(
    qp: QueueProxy, app: RunningApp
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(qp.url("/ws")) as ws:
        t0 = time.monotonic()
        qp.signal(signal.SIGTERM)
        rc = await qp.wait_exit(timeout=6)
        elapsed = time.monotonic() - t0
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
    assert rc == 0
    assert 1.0 <= elapsed < 4.0, elapsed

"""The queue-proxy breaker over real HTTP (SPEC §1.5, §1.9): limit, queue, overflow, slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.apps.upstream import RunningApp

from .conftest import StartQP, make_client
from .helpers import QueueProxy, RawConn, eventually

PROM = '{"requestMetrics":{"protocol":"prometheus"}}'


async def _burst(client: httpx.AsyncClient, app: RunningApp, cc: int) -> list[httpx.Response]:
    """20 x CC concurrent requests, held in the app until every overflow answer is back."""
    n = 20 * cc
    overflow = n - 11 * cc
    tasks = [asyncio.create_task(client.get("/gate", params={"i": str(i)})) for i in range(n)]
    try:
        # The overflow is rejected at once; the admitted ones wait (CC in the app).
        await eventually(
            lambda: sum(t.done() for t in tasks) >= overflow and app.state.in_flight == cc,
            timeout=10,
            what=f"{overflow} immediate rejections and {cc} requests in the app",
        )
        assert sum(t.done() for t in tasks) == overflow
        app.state.gate.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        app.state.gate.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("cc", [2, 5])
async def test_burst_respects_concurrency_and_queue(
    cc: int, app: RunningApp, start_qp: StartQP
) -> None:
    qp = await start_qp({"CONTAINER_CONCURRENCY": str(cc)}, user_port=app.port)
    async with make_client(qp.url()) as client:
        responses = await _burst(client, app, cc)
    codes = [r.status_code for r in responses]
    rejected = [r for r in responses if r.status_code == 503]
    assert len(rejected) == 20 * cc - 11 * cc, codes
    assert codes.count(200) == 11 * cc, codes
    for r in rejected:
        assert r.content == b"pending request queue full\n"
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["x-content-type-options"] == "nosniff"
    assert all(r.text == "released" for r in responses if r.status_code == 200)
    assert app.state.max_in_flight == cc
    assert app.state.total == 11 * cc


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="0")
async def test_cc_zero_has_no_limit(client: httpx.AsyncClient, app: RunningApp) -> None:
    n = 60
    tasks = [asyncio.create_task(client.get("/gate")) for _ in range(n)]
    try:
        await eventually(lambda: app.state.in_flight == n, timeout=10, what="all in the app")
        app.state.gate.set()
        responses = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        app.state.gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.status_code for r in responses] == [200] * n
    assert app.state.max_in_flight == n


async def _queue_depth(client: httpx.AsyncClient) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    r = await client.get("/metrics")
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == "kn_serving_queue_depth":
                return float(s.value)
    raise AssertionError("kn_serving_queue_depth not exported:\n" + r.text)


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1", OBSERVABILITY_CONFIG=PROM)
async def test_client_disconnect_while_queued_frees_slot(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    metrics = make_client(f"http://127.0.0.1:{qp.user_metrics_port}")
    holder = asyncio.create_task(client.get("/gate"))
    queued: list[RawConn] = []
    try:
        await eventually(lambda: app.state.in_flight == 1, what="holder in the app")
        for i in range(10):
            c = await RawConn.open(qp.port)
            await c.send(b"GET /hello?q=%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
            queued.append(c)
        await eventually(lambda: _depth_is(metrics, 11), what="11 admitted")
        full = await client.get("/hello")
        assert full.status_code == 503
        assert full.content == b"pending request queue full\n"
        for c in queued:
            await c.close()
        queued.clear()
        await eventually(lambda: _depth_is(metrics, 1), what="queued slots freed")
        # The 10 freed queue slots are usable again, and one more overflows.
        again = [asyncio.create_task(client.get("/hello")) for _ in range(10)]
        await eventually(lambda: _depth_is(metrics, 11), what="queue refilled")
        over = await client.get("/hello")
        assert over.status_code == 503
        app.state.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*again), 10)
        assert [r.status_code for r in results] == [200] * 10
        assert (await holder).status_code == 200
    finally:
        app.state.gate.set()
        for c in queued:
            await c.close()
        await metrics.aclose()
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
    # The abandoned requests never reached the app.
    assert app.state.per_path.get("/hello", 0) == 10
    assert app.state.max_in_flight == 1


async def _depth_is(metrics: httpx.AsyncClient, n: int) -> bool:
    return await _queue_depth(metrics) == n


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="2")
async def test_client_disconnect_while_served_frees_slot_and_aborts_upstream(
    qp: QueueProxy, app: RunningApp
) -> None:
    conns = []
    for _ in range(2):
        c = await RawConn.open(qp.port)
        await c.send(b"GET /gate HTTP/1.1\r\nHost: h\r\n\r\n")
        conns.append(c)
    await eventually(lambda: app.state.in_flight == 2, what="2 requests in the app")
    for c in conns:
        await c.close()
    # The upstream requests are aborted: the app sees the disconnects.
    await app.state.wait_for(lambda s: s.disconnects == 2 and s.in_flight == 0)
    # Both slots are free again: the next CC requests all get into the app.
    async with make_client(qp.url()) as client:
        tasks = [asyncio.create_task(client.get("/gate")) for _ in range(2)]
        try:
            await app.state.wait_for(lambda s: s.in_flight == 2)
            app.state.gate.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            app.state.gate.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.status_code for r in results] == [200, 200]


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1")
async def test_breaker_queue_drains_one_at_a_time(
    client: httpx.AsyncClient, app: RunningApp
) -> None:
    holder = asyncio.create_task(client.get("/gate"))
    try:
        await app.state.wait_for(lambda s: s.in_flight == 1)
        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(client.get("/hello", params={"i": str(i)})))
            await asyncio.sleep(0)  # keep submission order
        app.state.gate.set()
        results = await asyncio.wait_for(asyncio.gather(holder, *tasks), 10)
    finally:
        app.state.gate.set()
        await asyncio.gather(holder, return_exceptions=True)
    assert [r.status_code for r in results] == [200] * 6
    assert app.state.max_in_flight == 1


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1", OBSERVABILITY_CONFIG=PROM)
async def test_websocket_holds_its_breaker_slot(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    import aiohttp

    metrics = make_client(f"http://127.0.0.1:{qp.user_metrics_port}")
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(qp.url("/ws"))
            await ws.send_str("a")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo: a"
            waiting = asyncio.create_task(client.get("/hello"))
            await eventually(lambda: _depth_is(metrics, 2), what="request queued behind ws")
            assert not waiting.done()
            await ws.close()
            r = await asyncio.wait_for(waiting, 5)
            assert r.status_code == 200
        await eventually(lambda: _depth_is(metrics, 0), what="slots released")
    finally:
        await metrics.aclose()


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1")
async def test_queued_request_body_delivered_intact(
    client: httpx.AsyncClient, app: RunningApp
) -> None:
    """A large body arriving while its request waits in the breaker is held back (not lost,
    not reordered) and streamed once the request gets its slot."""
    from tests.apps.upstream import pattern, pattern_sha256

    size = 5 << 20
    holder = asyncio.create_task(client.get("/gate"))
    try:
        await app.state.wait_for(lambda s: s.in_flight == 1)

        async def body() -> AsyncIterator[bytes]:
            data = pattern(size)
            for off in range(0, size, 128 * 1024):
                yield data[off : off + 128 * 1024]

        upload = asyncio.create_task(client.post("/sha256", content=body(), timeout=20))
        fixed = asyncio.create_task(client.post("/sha256", content=pattern(size), timeout=20))
        await eventually(lambda: app.state.total == 1 and not upload.done(), what="queued")
        app.state.gate.set()
        r1, r2 = await asyncio.wait_for(asyncio.gather(upload, fixed), 20)
    finally:
        app.state.gate.set()
        await asyncio.gather(holder, return_exceptions=True)
    for r in (r1, r2):
        assert r.status_code == 200
        assert r.json()["length"] == size
        assert r.json()["sha256"] == pattern_sha256(size)
    assert app.state.max_in_flight == 1


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1")
async def test_client_gone_mid_upload_aborts_upstream(qp: QueueProxy, app: RunningApp) -> None:
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(b"POST /sha256 HTTP/1.1\r\nHost: h\r\nContent-Length: 10000000\r\n\r\n")
        await conn.send(b"z" * 1_000_000)
        await app.state.wait_for(lambda s: s.in_flight == 1)
    finally:
        await conn.close()
    await app.state.wait_for(lambda s: s.disconnects == 1 and s.in_flight == 0)
    assert app.state.bodies_read == 0
    async with make_client(qp.url()) as client:
        r = await client.get("/hello")
    assert r.status_code == 200

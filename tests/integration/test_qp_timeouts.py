"""Revision timeouts through the queue-proxy (SPEC §1.6, §1.9)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.apps.upstream import RunningApp

from .helpers import QueueProxy, RawConn


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="1")
async def test_total_timeout_on_hanging_request(client: httpx.AsyncClient, app: RunningApp) -> None:
    t0 = time.monotonic()
    r = await client.get("/hang")
    elapsed = time.monotonic() - t0
    assert r.status_code == 504
    assert r.content == b"request timeout"
    assert 0.9 <= elapsed < 3.0, elapsed
    # The upstream request was aborted.
    await app.state.wait_for(lambda s: s.disconnects == 1 and s.in_flight == 0)


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="1", CONTAINER_CONCURRENCY="1")
async def test_timed_out_request_frees_breaker_slot(
    client: httpx.AsyncClient, app: RunningApp
) -> None:
    first = await client.get("/hang")
    assert first.status_code == 504
    # A leaked slot would leave this one queued until its own timeout (504).
    second = await client.get("/hello")
    assert second.status_code == 200
    assert second.text == "hello"


@pytest.mark.qp_env(
    REVISION_TIMEOUT_SECONDS="10",
    REVISION_RESPONSE_START_TIMEOUT_SECONDS="1",
    CONTAINER_CONCURRENCY="1",
)
async def test_timeout_while_queued_in_breaker(client: httpx.AsyncClient, app: RunningApp) -> None:
    """The timers cover the breaker wait: a request queued behind a busy slot gets its 504,
    never reaches the app, and does not leak a slot."""
    # Holds the only slot for ~1.6 s; it started its response, so only it escapes the
    # response-start timer.
    holder = asyncio.create_task(client.get("/drip", params={"chunks": "3", "gap_ms": "800"}))
    await app.state.wait_for(lambda s: s.in_flight == 1)
    t0 = time.monotonic()
    queued = await client.get("/hello")
    assert queued.status_code == 504
    assert queued.content == b"request timeout"
    assert 0.9 <= time.monotonic() - t0 < 1.5
    held = await asyncio.wait_for(holder, 5)
    assert held.status_code == 200
    assert held.text == "chunk0\nchunk1\nchunk2\n"
    after = await client.get("/hello")
    assert after.status_code == 200
    assert app.state.per_path.get("/hello") == 1


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="10", REVISION_RESPONSE_START_TIMEOUT_SECONDS="1")
async def test_response_start_timeout(client: httpx.AsyncClient, app: RunningApp) -> None:
    t0 = time.monotonic()
    r = await client.get("/slowstart", params={"ms": "5000"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 504
    assert r.content == b"request timeout"
    assert 0.9 <= elapsed < 3.0, elapsed
    await app.state.wait_for(lambda s: s.disconnects == 1)


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="10", REVISION_RESPONSE_START_TIMEOUT_SECONDS="1")
async def test_response_start_timeout_ignored_once_started(client: httpx.AsyncClient) -> None:
    # Headers and the first chunk come at once; the body then takes 1.5 s in total.
    r = await client.get("/drip", params={"chunks": "4", "gap_ms": "500"})
    assert r.status_code == 200
    assert r.text == "chunk0\nchunk1\nchunk2\nchunk3\n"


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="10", REVISION_IDLE_TIMEOUT_SECONDS="1")
async def test_idle_timeout_not_hit_by_steady_drip(client: httpx.AsyncClient) -> None:
    # 4 x 0.4 s = 1.6 s in total, longer than the idle limit, but no gap reaches it.
    r = await client.get("/drip", params={"chunks": "5", "gap_ms": "400"})
    assert r.status_code == 200
    assert r.text == "".join(f"chunk{i}\n" for i in range(5))


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="10", REVISION_IDLE_TIMEOUT_SECONDS="1")
async def test_idle_timeout_before_first_byte(client: httpx.AsyncClient) -> None:
    t0 = time.monotonic()
    r = await client.get("/slowstart", params={"ms": "5000"})
    assert r.status_code == 504
    assert r.content == b"request timeout"
    assert time.monotonic() - t0 < 3.0


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="10", REVISION_IDLE_TIMEOUT_SECONDS="1")
async def test_idle_timeout_after_response_started_appends_message(
    qp: QueueProxy, app: RunningApp
) -> None:
    """The 504 cannot be sent any more: the message is appended to the (chunked) body."""
    conn = await RawConn.open(qp.port)
    try:
        t0 = time.monotonic()
        await conn.send(b"GET /drip?chunks=3&gap_ms=3000 HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await conn.read_response(timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        await conn.close()
    assert resp.status == 200
    assert resp.chunked
    assert resp.body == b"chunk0\nrequest timeout"
    assert 0.9 <= elapsed < 3.0, elapsed
    await app.state.wait_for(lambda s: s.disconnects == 1)


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="1")
async def test_total_timeout_after_response_started_appends_message(
    client: httpx.AsyncClient, app: RunningApp
) -> None:
    r = await client.get("/drip", params={"chunks": "10", "gap_ms": "400"})
    assert r.status_code == 200
    assert r.text == "chunk0\nchunk1\nchunk2\nrequest timeout"
    await app.state.wait_for(lambda s: s.disconnects == 1)


@pytest.mark.qp_env(REVISION_TIMEOUT_SECONDS="1")
async def test_timeout_with_content_length_response_truncates(
    qp: QueueProxy, app: RunningApp
) -> None:
    """A Content-Length response cut by the timeout must not look complete to the client."""
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(b"GET /large?bytes=100000000&cl=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 200 " in head.split(b"\r\n")[0]
        assert b"Content-Length: 100000000" in head
        # Read slowly enough that the 1 s total timeout strikes mid-body.
        got = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while loop.time() < end:
            try:
                data = await asyncio.wait_for(conn.reader.read(65536), 5)
            except ConnectionResetError:
                break
            if not data:
                break
            got += len(data)
            await asyncio.sleep(0.01)  # deliberate slow reader
        assert got < 100_000_000
        assert loop.time() < end, "connection not closed after the timeout"
    finally:
        await conn.close()

"""Bodies, streaming, websockets and SSE through the queue-proxy (SPEC §1.8)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp
import httpx

from tests.apps.upstream import RunningApp, pattern, pattern_sha256

from .helpers import QueueProxy, RawConn, eventually

MB = 1 << 20
BIG = 20 * MB


async def test_large_request_body_content_length(
    client: httpx.AsyncClient, app: RunningApp
) -> None:
    body = pattern(BIG)
    r = await client.post("/sha256", content=body, timeout=30)
    assert r.status_code == 200
    doc = r.json()
    assert doc["length"] == BIG
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    assert doc["content_length"] == str(BIG)
    assert doc["transfer_encoding"] is None


async def test_large_request_body_chunked(client: httpx.AsyncClient) -> None:
    async def gen() -> AsyncIterator[bytes]:
        step = 256 * 1024
        data = pattern(BIG)
        for off in range(0, BIG, step):
            yield data[off : off + step]

    r = await client.post("/sha256", content=gen(), timeout=30)
    assert r.status_code == 200
    doc = r.json()
    assert doc["length"] == BIG
    assert doc["sha256"] == pattern_sha256(BIG)
    assert doc["transfer_encoding"] == "chunked"
    assert doc["content_length"] is None


async def _download(client: httpx.AsyncClient, params: dict[str, str]) -> httpx.Response:
    h = hashlib.sha256()
    n = 0
    async with client.stream("GET", "/large", params=params, timeout=30) as r:
        async for chunk in r.aiter_raw():
            h.update(chunk)
            n += len(chunk)
    r.sha = h.hexdigest()  # type: ignore[attr-defined]
    r.size = n  # type: ignore[attr-defined]
    return r


async def test_large_response_body_content_length(client: httpx.AsyncClient) -> None:
    r = await _download(client, {"bytes": str(BIG), "cl": "1"})
    assert r.status_code == 200
    assert r.headers["content-length"] == str(BIG)
    assert "transfer-encoding" not in r.headers
    assert r.size == BIG  # type: ignore[attr-defined]
    assert r.sha == pattern_sha256(BIG)  # type: ignore[attr-defined]


async def test_large_response_body_chunked(client: httpx.AsyncClient) -> None:
    r = await _download(client, {"bytes": str(BIG)})
    assert r.status_code == 200
    assert r.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.headers
    assert r.size == BIG  # type: ignore[attr-defined]
    assert r.sha == pattern_sha256(BIG)  # type: ignore[attr-defined]


async def test_echo_round_trip_binary(client: httpx.AsyncClient) -> None:
    body = bytes(range(256)) * 4096 + b"\r\n0\r\n\r\n"  # 1 MiB plus chunk-like bytes
    r = await client.post("/echo", content=body)
    assert r.status_code == 200
    assert r.content == body


async def test_slow_reader_is_back_pressured(qp: QueueProxy, app: RunningApp) -> None:
    """200 MB offered to a client that reads slowly: the queue-proxy must not buffer it."""
    total = 200 * MB
    base_rss = qp.rss_kb()
    conn = await RawConn.open(qp.port, limit=64 * 1024)
    peak = base_rss
    got = 0
    try:
        await conn.send(b"GET /large?bytes=%d HTTP/1.1\r\nHost: h\r\n\r\n" % total)
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while loop.time() < end and got < 8 * MB:
            data = await asyncio.wait_for(conn.reader.read(32 * 1024), 5)
            assert data, "connection closed early"
            got += len(data)
            peak = max(peak, qp.rss_kb())
            await asyncio.sleep(0.005)  # deliberate: this client reads slowly
        sent = app.state.large_sent
    finally:
        await conn.close()
    assert got > 0
    # Without back-pressure the app would have pushed (nearly) all 200 MB by now.
    assert sent < 64 * MB, f"app sent {sent} bytes to a client that read {got}"
    assert peak < 80 * 1024, f"queue-proxy VmRSS peaked at {peak} kB (base {base_rss} kB)"
    await eventually(lambda: app.state.in_flight == 0, what="app request finished")


async def test_websocket_echo(qp: QueueProxy, app: RunningApp) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(qp.url("/ws"), timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws,
    ):
        await ws.send_str("hi")
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.TEXT
        assert msg.data == "echo: hi"
        payload = bytes(range(256)) * 1000
        await ws.send_bytes(payload)
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.BINARY
        assert msg.data == payload
        for i in range(20):
            await ws.send_str(f"m{i}")
        for i in range(20):
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.data == f"echo: m{i}"
        await ws.send_str("close")
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await eventually(lambda: app.state.in_flight == 0, what="websocket handler finished")


async def test_websocket_upgrade_response_headers(qp: QueueProxy) -> None:
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 101
    assert resp.header("upgrade") is not None
    assert resp.header("upgrade").lower() == "websocket"  # type: ignore[union-attr]
    assert "upgrade" in (resp.header("connection") or "").lower()
    assert resp.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_sse_events_arrive_one_by_one(client: httpx.AsyncClient, app: RunningApp) -> None:
    """Each event must reach the client before the app is allowed to send the next one."""
    n = 4
    async with client.stream("GET", "/sse", params={"n": str(n), "gated": "1"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("transfer-encoding") == "chunked"
        events: list[str] = []
        buf = ""
        it = r.aiter_text()
        while len(events) < n:
            buf += await asyncio.wait_for(it.__anext__(), 5)
            while "\n\n" in buf:
                ev, buf = buf.split("\n\n", 1)
                events.append(ev)
                if len(events) < n:
                    app.state.sse_step()  # only now may the app write the next event
        assert events == [f"id: {i}\ndata: event {i}" for i in range(n)]
        rest = [chunk async for chunk in it]
        assert "".join(rest) == ""


async def test_sse_with_interval(client: httpx.AsyncClient) -> None:
    r = await client.get("/sse", params={"n": "3", "interval_ms": "20"})
    assert r.status_code == 200
    assert r.text == "".join(f"id: {i}\ndata: event {i}\n\n" for i in range(3))


async def test_json_roundtrip_of_unicode(client: httpx.AsyncClient) -> None:
    payload = json.dumps({"s": "héllo ✓"}).encode()
    r = await client.post("/echo", content=payload, headers={"Content-Type": "application/json"})
    assert r.json() == {"s": "héllo ✓"}

"""Upstream failures as seen through the queue-proxy (SPEC §1.8, §1.9)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.apps.upstream import RunningApp

from .conftest import StartQP, make_client
from .helpers import QueueProxy, RawConn, free_ports


async def test_upstream_down_is_502_naming_the_dial_error(start_qp: StartQP) -> None:
    (port,) = free_ports(1)
    qp = await start_qp({"CONTAINER_CONCURRENCY": "1"}, user_port=port)
    async with make_client(qp.url()) as client:
        for _ in range(3):  # the breaker slot is released each time
            r = await client.get("/hello")
            assert r.status_code == 502
            assert r.text == f"dial tcp 127.0.0.1:{port}: connect: connection refused\n"
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            assert r.headers["x-content-type-options"] == "nosniff"
        # Probes are answered by the queue-proxy itself.
        r = await client.get(
            "/", headers={"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
        )
        assert r.status_code == 200


@pytest.mark.parametrize("mode", ["cl", "chunked"])
@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1")
async def test_app_crash_mid_response_is_not_a_clean_end(
    mode: str, qp: QueueProxy, app: RunningApp
) -> None:
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(b"GET /crash?mode=%s HTTP/1.1\r\nHost: h\r\n\r\n" % mode.encode())
        # The client sees the connection end inside the body, never a complete response.
        with pytest.raises(asyncio.IncompleteReadError):
            await conn.read_response(timeout=5)
    finally:
        await conn.close()
    # The slot is free and the next request succeeds.
    async with make_client(qp.url()) as client:
        r = await client.get("/hello")
        assert r.status_code == 200
        assert r.text == "hello"


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1")
async def test_app_crash_seen_by_httpx_as_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/crash", params={"mode": "cl"})
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/crash", params={"mode": "chunked"})
    r = await client.get("/hello")
    assert r.status_code == 200


# --------------------------------------------------------------------------- raw upstreams

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[RawHandler], Awaitable[int]]]:
    """Start hand-written upstream servers (for misbehaving apps); returns their port."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> int:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            writers.append(w)
            try:
                await handler(r, w)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield start
    for w in writers:
        w.close()
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def test_close_delimited_upstream_response_is_rechunked(
    raw_upstream: Callable[[RawHandler], Awaitable[int]], start_qp: StartQP
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        w.write(b"part one, ")
        await w.drain()
        w.write(b"part two")
        await w.drain()

    port = await raw_upstream(handler)
    qp = await start_qp(user_port=port)
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    assert resp.chunked
    assert resp.body == b"part one, part two"


async def test_malformed_upstream_response_is_502(
    raw_upstream: Callable[[RawHandler], Awaitable[int]], start_qp: StartQP
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()

    port = await raw_upstream(handler)
    qp = await start_qp(user_port=port)
    async with make_client(qp.url()) as client:
        r = await client.get("/")
    assert r.status_code == 502
    assert r.text.endswith("\n")


async def test_upstream_closes_without_answer_is_502(
    raw_upstream: Callable[[RawHandler], Awaitable[int]], start_qp: StartQP
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")

    port = await raw_upstream(handler)
    qp = await start_qp({"CONTAINER_CONCURRENCY": "1"}, user_port=port)
    async with make_client(qp.url()) as client:
        for _ in range(2):
            r = await client.get("/")
            assert r.status_code == 502
            assert r.text.endswith("\n")


async def test_small_request_body_not_read_by_app(client: httpx.AsyncClient) -> None:
    """The app answers without reading a small body: the connection stays usable."""
    for _ in range(3):
        r = await client.post("/hello", content=b"x" * 10_000)
        assert r.status_code == 200
        assert r.text == "hello"


async def test_upstream_connection_close_not_forwarded_and_not_reused(
    raw_upstream: Callable[[RawHandler], Awaitable[int]], start_qp: StartQP
) -> None:
    """The app closes after each response (``Connection: close``): the header is hop-by-hop,
    the client's connection stays open, and the next request gets a fresh upstream."""
    conns = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await w.drain()

    port = await raw_upstream(handler)
    qp = await start_qp(user_port=port)
    conn = await RawConn.open(qp.port)
    try:
        for _ in range(3):
            await conn.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            resp = await conn.read_response()
            assert (resp.status, resp.body) == (200, b"ok")
            assert resp.header("connection") is None
    finally:
        await conn.close()
    assert conns == 3


async def test_dead_pooled_connection_is_retried_transparently(
    raw_upstream: Callable[[RawHandler], Awaitable[int]], start_qp: StartQP
) -> None:
    """The app drops a kept-alive connection just as the next request arrives on it (an idle
    timeout race). Nothing was answered, so a body-less request is retried on a new one."""
    seen = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal seen
        await r.readuntil(b"\r\n\r\n")
        seen += 1
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await w.drain()
        await r.readuntil(b"\r\n\r\n")  # the second request on this connection: drop it
        seen += 1

    port = await raw_upstream(handler)
    qp = await start_qp({"CONTAINER_CONCURRENCY": "1"}, user_port=port)
    async with make_client(qp.url()) as client:
        for _ in range(3):
            r = await client.get("/")
            assert r.status_code == 200
            assert r.text == "first"


async def test_interim_103_relayed(
    raw_upstream: Callable[[RawHandler], Awaitable[int]], start_qp: StartQP
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await w.drain()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await w.drain()

    port = await raw_upstream(handler)
    qp = await start_qp(user_port=port)
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        hints = await conn.read_response()
        final = await conn.read_response()
    finally:
        await conn.close()
    assert hints.status == 103
    assert hints.header("link") == "</style.css>; rel=preload"
    assert (final.status, final.body) == (200, b"done")


async def test_large_response_header_passes(
    raw_upstream: Callable[[RawHandler], Awaitable[int]], start_qp: StartQP
) -> None:
    value = b"v" * 200_000

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nX-Big: " + value + b"\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    port = await raw_upstream(handler)
    qp = await start_qp(user_port=port)
    conn = await RawConn.open(qp.port, limit=1 << 20)
    try:
        await conn.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    assert resp.header("x-big") == value.decode()
    assert resp.body == b"ok"

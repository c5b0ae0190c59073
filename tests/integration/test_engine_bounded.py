"""Bounded buffering over real loopback sockets (issue 7): slow readers and writers on either
side never make the engine buffer without bound, and a very large body streams through a real
queue-proxy with its RSS flat.

The slow-peer tests run the engine in the test's loop, so they assert on transport state (reads
paused, write buffers bounded) rather than on timing. ``KND_TEST_BIG_BODY_BYTES`` sets the size
of the large-body test (default 1 GiB; about 5-10 s here).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dataplane.proxy import Exchange, HTTPServer, ServerConnection
from dataplane.upstream import UpstreamPool

from .conftest import StartQP
from .helpers import eventually

MiB = 1 << 20
BIG_BODY = int(os.environ.get("KND_TEST_BIG_BODY_BYTES", str(1 << 30)))
BLOCK = bytes(range(256)) * 4096  # 1 MiB


class Upstream(asyncio.Protocol):
    """A raw HTTP/1.1 upstream: answers each request head with ``size`` bytes (Content-Length),
    or, with ``read_body=False``, never reads anything after the head."""

    def __init__(self, size: int, *, read_body: bool = True) -> None:
        self.size = size
        self.read_body = read_body
        self.sent = 0
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._paused = False
        self._pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self._buf is None:
            return
        self._buf += data
        if b"\r\n\r\n" not in self._buf:
            return
        self._buf = None  # type: ignore[assignment]
        assert self.transport is not None
        if not self.read_body:
            self.transport.pause_reading()
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
        self._pending = self.size
        self._pump()

    def _pump(self) -> None:
        t = self.transport
        assert t is not None
        while self._pending and not self._paused and not t.is_closing():
            n = min(len(BLOCK), self._pending)
            t.write(BLOCK[:n] if n < len(BLOCK) else BLOCK)
            self._pending -= n
            self.sent += n

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()


async def start_upstream(
    factory: Callable[[], Upstream],
) -> tuple[asyncio.Server, list[Upstream]]:
    made: list[Upstream] = []

    def make() -> Upstream:
        p = factory()
        made.append(p)
        return p

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    return server, made


async def stop_upstream(server: asyncio.Server, made: list[Upstream]) -> None:
    server.close()
    for p in made:
        if p.transport is not None:
            p.transport.abort()
    await server.wait_closed()


@pytest.fixture
async def engine() -> AsyncIterator[Callable[[int], Any]]:
    """Factory: an engine server in this loop proxying everything to ``127.0.0.1:port``."""
    servers: list[HTTPServer] = []
    pools: list[UpstreamPool] = []

    async def start(port: int) -> HTTPServer:
        pool = UpstreamPool("127.0.0.1", port)
        pools.append(pool)

        def handler(ex: Exchange) -> None:
            ex.proxy(pool)

        srv = HTTPServer(handler)
        # A socket.socket: the test loop is asyncio's own (the engine's listen_socket gives a
        # bare _socket.socket, which only uvloop accepts).
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        await srv.start("127.0.0.1", 0, sock=sock)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.shutdown(timeout=1.0)
    for pool in pools:
        pool.close()


def the_connection(srv: HTTPServer) -> ServerConnection:
    (conn,) = srv.connections
    return conn


def small_buffer_client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.setblocking(False)
    return s


async def test_slow_reader_pauses_the_upstream_and_bounds_the_buffer(engine: Any) -> None:
    """A client that does not read a 256 MiB response: the engine stops reading the upstream
    once the client's socket and our write buffer are full; its buffer stays bounded."""
    size = 256 * MiB
    up_server, ups = await start_upstream(lambda: Upstream(size))
    loop = asyncio.get_running_loop()
    srv = await engine(up_server.sockets[0].getsockname()[1])
    s = small_buffer_client()
    try:
        await loop.sock_connect(s, ("127.0.0.1", srv.port))
        await loop.sock_sendall(s, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")

        def upstream_paused() -> bool:
            if not srv.connections:
                return False
            conn = the_connection(srv)
            ex = conn.active
            up = ex.upstream if ex is not None else None
            return up is not None and up.read_paused and not up.transport.is_reading()

        await eventually(upstream_paused, timeout=10, what="upstream reading paused")
        conn = the_connection(srv)
        # Our write buffer towards the client: at most the high-water mark plus one read.
        assert conn.transport.get_write_buffer_size() <= 1 * MiB
        assert conn.write_paused
        # The upstream is blocked too: only socket buffers' worth of the body left it.
        (up,) = ups
        assert up._paused
        assert up.sent < 32 * MiB, up.sent
        # Nothing was lost: the client now reads the whole response.
        got = 0
        buf = bytearray(MiB)
        head_seen = False
        while True:
            n = await asyncio.wait_for(loop.sock_recv_into(s, buf), 10)
            assert n, "connection closed early"
            if not head_seen:
                i = bytes(buf[:n]).find(b"\r\n\r\n")
                assert i > 0
                got += n - i - 4
                head_seen = True
            else:
                got += n
            if got >= size:
                break
        assert got == size
    finally:
        s.close()
        await stop_upstream(up_server, ups)


async def test_slow_upstream_reader_pauses_the_client_and_bounds_the_buffer(engine: Any) -> None:
    """An upstream that never reads the request body: the engine stops reading the client."""
    up_server, ups = await start_upstream(lambda: Upstream(0, read_body=False))
    loop = asyncio.get_running_loop()
    srv = await engine(up_server.sockets[0].getsockname()[1])
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    size = 256 * MiB
    sent = 0
    try:
        w.write(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)

        async def offer() -> None:
            nonlocal sent
            while sent < size:
                w.write(BLOCK)
                sent += len(BLOCK)
                await w.drain()

        writer = asyncio.create_task(offer())

        def client_paused() -> bool:
            if not srv.connections:
                return False
            conn = the_connection(srv)
            ex = conn.active
            return (
                ex is not None
                and ex.upstream is not None
                and ex.upstream.write_paused
                and not conn.transport.is_reading()
            )

        await eventually(client_paused, timeout=10, what="client reading paused")
        conn = the_connection(srv)
        ex = conn.active
        assert ex is not None and ex.upstream is not None
        assert ex.upstream.transport.get_write_buffer_size() <= 1 * MiB
        assert ex.body_buf is None  # nothing held back in the exchange either
        assert not writer.done()
        assert sent < 64 * MiB, sent
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    finally:
        w.close()
        await stop_upstream(up_server, ups)
    del r, loop


async def test_big_body_streams_through_a_queue_proxy_with_flat_rss(start_qp: StartQP) -> None:
    """``KND_TEST_BIG_BODY_BYTES`` (1 GiB) up and the same down through a real queue-proxy:
    every byte arrives and the queue-proxy's VmRSS stays within a few MiB of its start."""
    size = BIG_BODY
    loop = asyncio.get_running_loop()

    class Echo(asyncio.Protocol):
        """Reads a Content-Length body and answers it back as it arrives (raw, cheap)."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]
            self.head = b""
            self.left = -1

        def data_received(self, data: bytes) -> None:
            if self.left < 0:
                self.head += data
                i = self.head.find(b"\r\n\r\n")
                if i < 0:
                    return
                data = self.head[i + 4 :]
                self.left = size
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            self.left -= len(data)
            self.t.write(data)

        def pause_writing(self) -> None:
            self.t.pause_reading()

        def resume_writing(self) -> None:
            self.t.resume_reading()

    app = await loop.create_server(Echo, "127.0.0.1", 0)
    qp = await start_qp({"CONTAINER_CONCURRENCY": "1"}, user_port=app.sockets[0].getsockname()[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    base = peak = qp.rss_kb()
    try:
        await loop.sock_connect(s, ("127.0.0.1", qp.port))
        await loop.sock_sendall(
            s, b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size
        )

        async def upload() -> None:
            left = size
            view = memoryview(BLOCK)
            while left:
                n = min(left, len(BLOCK))
                await loop.sock_sendall(s, view[:n])
                left -= n

        sender = asyncio.create_task(upload())
        buf = bytearray(4 * MiB)
        got = 0
        head = b""
        checked = 0
        while got < size:
            n = await asyncio.wait_for(loop.sock_recv_into(s, buf), 10)
            assert n, f"connection closed after {got} body bytes"
            data = buf[:n]
            if head is not None:
                head += bytes(data)
                i = head.find(b"\r\n\r\n")
                if i < 0:
                    continue
                assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head[:200]
                data = bytearray(head[i + 4 :])
                head = None  # type: ignore[assignment]
            if got < MiB:  # spot-check the content at the start
                off = got % len(BLOCK)
                want = (BLOCK[off:] + BLOCK)[: len(data)]
                assert bytes(data[: len(want)]) == want[: len(data)]
            got += len(data)
            if got - checked >= 64 * MiB:
                checked = got
                peak = max(peak, qp.rss_kb())
        await asyncio.wait_for(sender, 10)
        assert got == size
    finally:
        s.close()
        app.close()
    grown = peak - base
    assert grown < 16 * 1024, f"queue-proxy VmRSS grew {grown} kB (base {base} kB, peak {peak})"

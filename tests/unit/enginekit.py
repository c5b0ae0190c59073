"""In-memory harness for protocol tests of the proxy engine (``dataplane.proxy``/``upstream``).

No sockets, no sleeps: a :class:`FakeLoop` whose callbacks and timers run only when a test calls
:meth:`FakeLoop.run_ready` or :meth:`FakeLoop.advance`; :class:`FakeTransport`s that record what
the engine writes and how it drives flow control; and a :class:`Kit` that wires a real
``HTTPServer``/``ServerConnection`` to real pooled ``UpstreamConnection``s on fake transports.

Each test file adds an autouse fixture calling :func:`check_all` so that every kit is checked
after its test: no ``on_done`` called twice, no exception logged by the engine, no bytes written
to a transport after it was closed or half-closed, ``server.inflight`` equal to the exchanges
still active.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from dataplane.proxy import Exchange, HTTPServer, ServerConfig, ServerConnection
from dataplane.upstream import DialError, UpstreamConnection, UpstreamPool

DATE = b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
PEER = ("10.0.0.1", 40000)
UPSTREAM_ADDR = ("127.0.0.1", 8080)
START = 1000.0


class FixedDate:
    """Stands in for ``HTTPServer.date`` so responses can be compared byte for byte."""

    def line(self) -> bytes:
        return DATE


class Handle:
    """A scheduled callback (what ``call_soon``/``call_later`` return)."""

    __slots__ = ("args", "callback", "cancelled", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[..., Any], args: tuple[Any, ...]):
        self.when = when
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Handle) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class FakeLoop:
    """The loop methods the engine uses; nothing runs until the test says so."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self._seq = itertools.count()
        self._ready: deque[Handle] = deque()
        self._timers: list[Handle] = []

    def time(self) -> float:
        return self.now

    def get_debug(self) -> bool:
        return False

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        h = Handle(self.now, next(self._seq), callback, args)
        self._ready.append(h)
        return h

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Handle:
        h = Handle(when, next(self._seq), callback, args)
        heapq.heappush(self._timers, h)
        return h

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        return self.call_at(self.now + delay, callback, *args)

    def create_task(self, coro: Any) -> Any:
        coro.close()
        raise AssertionError("the engine created a task; tests expect callbacks only")

    def run_ready(self) -> None:
        """Run ``call_soon`` callbacks (and those they schedule) until none is left."""
        for _ in range(10_000):
            if not self._ready:
                return
            h = self._ready.popleft()
            if not h.cancelled:
                h.callback(*h.args)
        raise AssertionError("call_soon callbacks keep rescheduling themselves")

    def advance(self, dt: float) -> None:
        """Move the clock ``dt`` seconds forward, running due timers in time order."""
        end = self.now + dt
        self.run_ready()
        while self._timers and self._timers[0].when <= end:
            h = heapq.heappop(self._timers)
            if h.cancelled:
                continue
            self.now = max(self.now, h.when)
            h.callback(*h.args)
            self.run_ready()
        self.now = end

    def timers(self) -> list[Handle]:
        """Live (not cancelled) timers, earliest first."""
        return sorted(h for h in self._timers if not h.cancelled)


class FakeTransport(asyncio.Transport):
    """Records writes and calls; the test plays the peer with ``feed``/``peer_eof``/...

    ``close``/``abort`` deliver ``connection_lost`` on the next ``run_ready`` like asyncio does.
    Writes after ``close``/``abort``/``write_eof`` go to ``late_writes`` (a real transport drops
    them or raises), so tests can tell them apart.
    """

    def __init__(self, loop: FakeLoop, peer: Any = PEER) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: Any = None
        self.peer = peer
        self.writes: list[bytes] = []
        self.late_writes: list[bytes] = []
        self.calls: list[str] = []
        self.reading = True
        self.closing = False
        self.aborted = False
        self.eof = False
        self.lost = False
        self.write_limit: int | None = None  # bytes the peer takes before it stops reading
        self.eof_capable = True  # False: like an SSL transport, no write_eof
        self.write_blocked = False

    # -- what the engine calls -------------------------------------------------------------
    def write(self, data: Any) -> None:
        data = bytes(data)
        if self.closing or self.eof:
            self.late_writes.append(data)
            return
        self.writes.append(data)
        if self.write_limit is not None and not self.write_blocked:
            self.write_limit -= len(data)
            if self.write_limit < 0:  # like a real transport: pause_writing inside write()
                self.block()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return self.eof_capable

    def write_eof(self) -> None:
        self.calls.append("write_eof")
        self.eof = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.calls.append("close")
        self._shut(None)

    def abort(self) -> None:
        self.calls.append("abort")
        self.aborted = True
        self._shut(None)

    def _shut(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)

    # -- what the test (the peer) does -----------------------------------------------------
    def take(self) -> bytes:
        """Everything written since the last ``take``."""
        data = b"".join(self.writes)
        self.writes.clear()
        return data

    def feed(self, data: bytes, *, step: int = 0) -> None:
        """Deliver ``data`` (in pieces of ``step`` bytes if given), then run ready callbacks."""
        pieces = [data] if step <= 0 else [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            assert not self.lost and not self.closing, "peer sends on a closed transport"
            assert self.reading, "peer would block: the engine paused reading this transport"
            self.protocol.data_received(piece)
        self.loop.run_ready()

    def peer_eof(self) -> None:
        """The peer half-closed (FIN). Like asyncio: unless the protocol keeps the transport
        half-open, the transport closes itself (not counted as a ``close`` call)."""
        keep = self.protocol.eof_received()
        if not keep:
            self._shut(None)
        self.loop.run_ready()

    def peer_lost(self, exc: Exception | None = None) -> None:
        """The connection is gone at once (a reset when ``exc`` is given)."""
        self.closing = True
        self._lost(exc)
        self.loop.run_ready()

    def block(self) -> None:
        """The peer stopped reading: our write buffer is over its high-water mark."""
        self.write_blocked = True
        self.protocol.pause_writing()

    def unblock(self) -> None:
        """The peer read everything: the write buffer drained."""
        self.write_blocked = False
        self.write_limit = None
        self.protocol.resume_writing()
        self.loop.run_ready()

    @property
    def closed(self) -> bool:
        """The engine closed or aborted it (not counting a close after the peer's EOF)."""
        return "close" in self.calls or "abort" in self.calls


class FakePool(UpstreamPool):
    """An ``UpstreamPool`` whose dials are finished by the test (through the real ``_dial``)."""

    def __init__(self, kit: Kit) -> None:
        super().__init__(*UPSTREAM_ADDR, loop=kit.loop)  # type: ignore[arg-type]
        self.kit = kit
        self.dialing: deque[Exchange] = deque()
        self._outcome: UpstreamConnection | Exception | None = None

    def connect(self, ex: Exchange) -> None:
        self.connecting += 1
        self.dialing.append(ex)

    async def dial(self) -> UpstreamConnection:
        outcome = self._outcome
        self._outcome = None
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    def _run_dial(self, outcome: UpstreamConnection | Exception) -> None:
        ex = self.dialing.popleft()
        self._outcome = outcome
        coro = self._dial(ex)
        try:
            coro.send(None)
        except StopIteration:
            pass
        else:  # pragma: no cover
            coro.close()
            raise AssertionError("dial awaited something")
        self.kit.loop.run_ready()

    def complete_dial(self) -> FakeTransport:
        """The oldest pending dial succeeds with a new connection; returns its transport."""
        t = self.kit.new_upstream()
        self._run_dial(t.protocol)
        return t

    def fail_dial(self, reason: str) -> None:
        self._run_dial(DialError(reason))


# -- checks every kit gets after its test ---------------------------------------------------
class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_errors = _ErrorLog()
logging.getLogger("dataplane").addHandler(_errors)
_kits: list[Kit] = []


def check_all() -> None:
    """Check the kits created since the last call (see :meth:`Kit.check`)."""
    kits = [k for k in _kits if not k.checked]
    _kits.clear()
    for k in kits:
        k.check()


class Kit:
    """A server with a fake loop, fixed Date, fake pool; records exchanges and ``on_done``.

    ``handler`` defaults to proxying every request to ``pool``; with ``defer=True`` the
    handler only keeps the exchange in ``held`` (the test calls ``ex.proxy`` later).
    """

    def __init__(
        self,
        handler: Callable[[Exchange], None] | None = None,
        config: ServerConfig | None = None,
        *,
        defer: bool = False,
    ) -> None:
        self.loop = FakeLoop()
        self.server = HTTPServer(self._handle, config or ServerConfig(), loop=self.loop)  # type: ignore[arg-type]
        self.server.date = FixedDate()  # type: ignore[assignment]
        self.pool = FakePool(self)
        self.defer = defer
        self.handler = handler
        self.exchanges: list[Exchange] = []
        self.held: list[Exchange] = []
        self.done: list[Exchange] = []
        self.upstreams: list[FakeTransport] = []
        self.clients: list[FakeTransport] = []
        self.checked = False
        self._first_error = len(_errors.records)
        _kits.append(self)

    def _handle(self, ex: Exchange) -> None:
        self.exchanges.append(ex)
        ex.on_done = self.done.append
        if self.handler is not None:
            self.handler(ex)
        elif self.defer:
            self.held.append(ex)
        else:
            ex.proxy(self.pool)

    # -- connections -----------------------------------------------------------------------
    def client(self, peer: Any = PEER) -> FakeTransport:
        """A new downstream connection; returns its transport (``.protocol`` is the conn)."""
        conn = ServerConnection(self.server)
        t = FakeTransport(self.loop, peer)
        t.protocol = conn
        conn.connection_made(t)
        self.clients.append(t)
        return t

    def new_upstream(self) -> FakeTransport:
        up = UpstreamConnection(self.pool)
        t = FakeTransport(self.loop, UPSTREAM_ADDR)
        t.protocol = up
        up.connection_made(t)
        self.upstreams.append(t)
        return t

    def idle_upstream(self) -> FakeTransport:
        """A connection released into the pool, so the next ``acquire`` returns it."""
        t = self.new_upstream()
        self.pool.release(t.protocol)
        return t

    # -- assertions ------------------------------------------------------------------------
    def done_once(self, ex: Exchange) -> None:
        assert ex.done, "the exchange has not ended"
        assert self.done.count(ex) == 1, f"on_done called {self.done.count(ex)} times"

    def logged_errors(self) -> list[str]:
        return [r.getMessage() for r in _errors.records[self._first_error :]]

    def expect_logged(self, *messages: str) -> None:
        """Assert that the engine logged exactly these errors so far, and accept them."""
        assert self.logged_errors() == list(messages)
        self._first_error = len(_errors.records)

    def check(self) -> None:
        self.checked = True
        for ex in self.done:
            assert self.done.count(ex) == 1, "on_done called more than once"
        assert self.logged_errors() == []
        for t in self.clients + self.upstreams:
            assert t.late_writes == [], f"written after close/write_eof: {t.late_writes!r}"
        active = sum(1 for t in self.clients if t.protocol.active is not None)
        assert self.server.inflight == active, "server.inflight out of step"


def request(
    target: bytes = b"/",
    *lines: bytes,
    method: bytes = b"GET",
    host: bytes | None = b"example.com",
    version: bytes = b"1.1",
    body: bytes = b"",
) -> bytes:
    """A request head (Host first unless ``host`` is None) plus ``body``."""
    head = [method + b" " + target + b" HTTP/" + version]
    if host is not None:
        head.append(b"Host: " + host)
    head += lines
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def response(status: bytes = b"200 OK", *lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join([b"HTTP/1.1 " + status, *lines]) + b"\r\n\r\n" + body


def upstream_head(
    target: bytes = b"/",
    *lines: bytes,
    method: bytes = b"GET",
    host: bytes = b"example.com",
    xff: bytes | None = PEER[0].encode(),
    tail: tuple[bytes, ...] = (),
) -> bytes:
    """The request head the engine is expected to send upstream: Host first, the forwarded
    ``lines`` in order, X-Forwarded-For (``xff``), then the lines the engine adds (``tail``)."""
    parts = [method + b" " + target + b" HTTP/1.1", b"Host: " + host, *lines]
    if xff is not None:
        parts.append(b"X-Forwarded-For: " + xff)
    parts += tail
    return b"\r\n".join(parts) + b"\r\n\r\n"


def ok(body: bytes = b"hi", *lines: bytes) -> bytes:
    """An upstream ``200 OK`` with a Content-Length body."""
    return response(b"200 OK", *lines, b"Content-Length: %d" % len(body), body=body)


def client_ok(body: bytes = b"hi", *lines: bytes) -> bytes:
    """What the client gets for ``ok(body, *lines)`` (Go's reason phrase, our Date)."""
    return (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(line + b"\r\n" for line in lines)
        + b"Content-Length: %d\r\n" % len(body)
        + DATE
        + b"\r\n"
        + body
    )


def error_response(status: bytes, message: bytes, *, close: bool = False) -> bytes:
    """A local ``Exchange.error`` response (Go's ``http.Error``) as the client gets it."""
    body = message + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + DATE
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


def dechunk(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a complete chunked body into its chunks and its trailer block (may be b"")."""
    chunks = []
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            trailers = data[pos:]
            assert trailers.endswith(b"\r\n"), "chunked body not terminated"
            return chunks, trailers[:-2]
        chunks.append(data[pos : pos + size])
        assert data[pos + size : pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2

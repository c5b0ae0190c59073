"""The HTTP/1.1 proxy engine: downstream connections, per-request exchanges, the server.

Design (see STYLE.md): callback-driven ``asyncio.Protocol``s on uvloop, no Task or Future per
request. A :class:`ServerConnection` feeds what it reads to a sans-I/O
:class:`~dataplane.h1reader.RequestReader` and is its sink; it owns connection state only; each
request gets an :class:`Exchange` that owns request state and, while proxying, one pooled
:class:`~dataplane.upstream.UpstreamConnection`. Bodies stream both ways with back-pressure:
a peer that cannot take more data pauses reading on the other side. Pipelined requests are
parsed ahead, queued and answered in order; upstream connections are never pipelined.

A handler is a plain callable ``handler(request)`` taking a :class:`~dataplane.request.Request`
(an ``Exchange`` here, an ``H2Stream`` on h2c). It may answer at once (``respond``, ``error``),
start proxying (``proxy``), or keep the request and do either later (a breaker queue, a drain
wait). ``request.on_done`` is called exactly once when it ends, whichever way it ends. The
protocol's decisions (checks, heads, framing, keep-alive) are :mod:`dataplane.h1core`'s; the
headers indexed for the handler are the engine's plus those its ServerConfig declares.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from .h1core import (
    HOST_MARKS,
    IDLE_CLOSE,
    IDLE_REFUSE,
    M_CHUNKED,
    M_CLOSE,
    M_NONE,
    NEXT_CLOSE,
    NEXT_DRAIN,
    NEXT_RUN,
    after_exchange,
    ends_with_close,
    framing_error,
    interim_relayed,
    last_chunk,
    may_retry,
    must_close,
    request_head,
    request_line_error,
    response_start,
    upstream_error_text,
    upstream_reusable,
    when_idle,
)
from .h1reader import (
    FEED_OK,
    FEED_UPGRADE,
    FEED_WAIT,
    H1Request,
    RequestReader,
    ResponseReader,
)
from .handle import RequestHandle
from .http1 import (
    TARGET_MARKS,
    DateCache,
    error_body_headers,
    go_request_target,
    request_actions,
    status_line,
    trailer_names,
)
from .sockets import listen_socket
from .upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from .request import Handler

__all__ = ["Exchange", "HTTPServer", "ServerConfig", "ServerConnection"]

log = logging.getLogger("dataplane.proxy")

_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"

# Reasons for pausing reads on a downstream connection (bit mask).
P_BODY: Final = 1  # request body buffered while waiting for an upstream
P_UPSTREAM: Final = 2  # upstream cannot take more (its transport paused writing)
P_PIPELINE: Final = 4  # a pipelined request waits for the current one

_DISCARD_LIMIT: Final = 256 * 1024
# Go's transport replays a request on a fresh connection only for these methods (or with an
# Idempotency-Key header), and only when the reused connection failed before any response.
_IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
_LINGER: Final = 0.5  # seconds to keep reading (and discarding) after closing our side
_SWEEP_INTERVAL: Final = 0.05


class ServerConfig:
    """Limits and behaviour switches of one server."""

    __slots__ = (
        "body_buffer",
        "forwarded_shim",
        "header_timeout",
        "host_from",
        "index_headers",
        "max_header_bytes",
        "max_headers",
        "raw_actions",
        "req_actions",
        "strip_headers",
        "timeout_body",
        "tunnel_drain_timeout",
    )

    def __init__(
        self,
        *,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 256,
        header_timeout: float = 60.0,
        body_buffer: int = 64 * 1024,
        timeout_body: bytes = b"request timeout",
        host_from: bytes | None = None,
        forwarded_shim: bool = False,
        tunnel_drain_timeout: float = 60.0,
        index_headers: Iterable[bytes] = (),
        strip_headers: Iterable[bytes] = (),
    ) -> None:
        """``index_headers``: request headers the handler reads (``exchange.header(name)``),
        still forwarded; ``strip_headers``: headers the handler reads that are never forwarded.
        ``host_from``: a header that, when present and not empty, replaces Host upstream (the
        queue-proxy's K-Original-Host); it is stripped. Only names listed here, and those the
        engine itself handles (see :data:`dataplane.http1.REQ_ACTIONS`), are indexed."""
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.header_timeout = header_timeout
        self.body_buffer = body_buffer
        self.timeout_body = timeout_body
        self.host_from = host_from.lower() if host_from else None
        self.index_headers = tuple(n.lower() for n in index_headers)
        strip = tuple(n.lower() for n in strip_headers)
        if self.host_from is not None and self.host_from not in strip:
            strip += (self.host_from,)
        self.strip_headers = strip
        # The merged classification table, built once per server (one dict lookup per header).
        self.req_actions = request_actions(self.index_headers, strip)
        # The same, by header name as clients spell it ("User-Agent"): (lower-case name,
        # action or -1), learnt as names arrive; bounded (RAW_NAMES_MAX). A hit skips the
        # lower() and gives the lower-case name whose hash is already known.
        self.raw_actions: dict[bytes, tuple[bytes, int]] = {}
        self.forwarded_shim = forwarded_shim
        self.tunnel_drain_timeout = tunnel_drain_timeout


#: How long an ``Expect: 100-continue`` request waits for the app's own ``100 Continue`` before
#: the proxy invites the body itself (Go's http.Transport ExpectContinueTimeout, which
#: Knative's transports keep).
EXPECT_CONTINUE_TIMEOUT: Final = 1.0
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange(H1Request):
    """One HTTP/1.1 request/response exchange on a downstream connection (a
    :class:`~dataplane.request.Request`; its wire state: framing, body buffers, pipelining,
    the upstream connection and the tunnel)."""

    __slots__ = (
        "body_buf",
        "body_buf_size",
        "closing",
        "conn",
        "early",
        "head_sent",
        "out",
        "replay",
        "resp_mode",
        "retried",
        "sent_continue",
        "tunnel_eofs",
        "upstream",
    )

    def __init__(self, conn: ServerConnection) -> None:
        super().__init__(conn.server, conn.peer, conn.peer_port)
        self.conn = conn
        self.body_buf: list[bytes] | None = None
        self.body_buf_size = 0
        self.sent_continue = False
        self.upstream: UpstreamConnection | None = None
        self.head_sent = False
        self.replay: bytes | None = None
        self.retried = False
        self.resp_mode = M_NONE
        self.closing = False
        self.out: list[bytes] = []
        self.early: list[bytes] | None = None
        self.tunnel_eofs = 0

    # -- request view -----------------------------------------------------------------------
    def _hdr_names(self) -> set[bytes]:
        """Lower-case names of the pass-through headers (slow; rare paths only)."""
        return {
            line.partition(b":")[0].lower().removeprefix(b"x-")
            for line in b"".join(self.hdr_out).split(_CRLF)
        }

    # -- local responses -------------------------------------------------------------------
    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: bytes = b"",
        *,
        content_length: bool = True,
    ) -> None:
        """Answer locally with a complete response. ``headers`` are ready-made header lines."""
        if self.done or self.resp_started:
            return
        conn = self.conn
        if conn.closed:
            self._finish()
            return
        parts = [status_line(status), headers]
        if content_length:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(conn.server.date.line())
        if must_close(
            self.keep_alive,
            self.server.shutting_down,
            self.upgrade,
            self.expect_continue,
            self.sent_continue,
            self.body_done,
        ):
            self.closing = True
            if self.version != "1.0":  # (HTTP/1.0's default; Go writes none either)
                parts.append(b"Connection: close\r\n")
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(_CRLF)
        if body and self.method != b"HEAD":
            parts.append(body)
        self.resp_status = status
        self.resp_size = len(body)
        self.resp_started = True
        conn.transport.write(b"".join(parts))
        self._finish()

    def refuse(self, status: int, reason: str) -> None:
        """Refuse the request before any handler sees it, as Go's server does (its answer to
        these always says ``Connection: close``, to an HTTP/1.0 client too)."""
        self.keep_alive = False
        body = reason.encode() + b"\n"
        headers = error_body_headers(body)
        if self.version == "1.0":
            headers += b"Connection: close\r\n"
        self.respond(status, body, headers, content_length=False)

    # -- proxying --------------------------------------------------------------------------
    def proxy(
        self, pool: UpstreamPool, *, host: bytes | None = None, extra_headers: bytes = b""
    ) -> None:
        """Forward this request to ``pool``'s destination and stream the response back."""
        if self.done:
            return
        self.pool = pool
        self.host_override = host
        self.extra_headers = extra_headers
        up = pool.acquire()
        if up is not None:
            self.attach(up)
        else:
            pool.connect(self)

    def attach(self, up: UpstreamConnection) -> None:
        """Called with a ready upstream connection (pooled or new)."""
        if self.done:
            assert self.pool is not None
            self.pool.release(up)
            return
        self.upstream = up
        up.exchange = self
        conn = self.conn
        cfg = self.server.config
        hdr = self.hdr
        host = self.host_override
        if host is None:
            host_from = cfg.host_from
            host = hdr.get(host_from) if host_from is not None else None
            if not host:
                host = hdr.get(b"host")
                if not host:  # HTTP/1.0 without Host: name the upstream, as Go's transport does
                    host = self.pool.authority if self.pool is not None else b""
        head = request_head(
            self.method,
            self.target,
            host,
            hdr,
            self.hdr_out,
            self.peer,
            cfg.forwarded_shim,
            self.req_chunked,
            self.upgrade,
            self.extra_headers,
        )
        if not self.has_body and (
            self.method in _IDEMPOTENT or b"idempotency-key" in self._hdr_names()
        ):
            self.replay = head
        parts = [head]  # (and what follows it, if anything does)
        if self.upgrade:
            # Bytes after an upgrade request's head go through as they are, like a transparent
            # proxy: a body first (if the request declared one), then tunnel data after 101.
            if self.early:
                parts += self.early
                self.early = None
                self.body_buf_size = 0
                conn.resume(P_BODY)
        elif self.body_buf:
            if self.req_chunked:
                for chunk in self.body_buf:
                    parts += (b"%x\r\n" % len(chunk), chunk, _CRLF)
            else:
                parts += self.body_buf
            self.body_buf = None
            self.body_buf_size = 0
            conn.resume(P_BODY)
        if self.body_done and self.req_chunked:
            parts.append(self._last_chunk())
        self.head_sent = True
        up.transport.write(head if len(parts) == 1 else b"".join(parts))
        if self.expect_continue and not self.body_done and not self.sent_continue:
            conn.loop.call_later(EXPECT_CONTINUE_TIMEOUT, self._continue_anyway)
        if conn.write_paused and not up.read_paused:
            up.read_paused = True
            up.transport.pause_reading()
        if up.write_paused:
            conn.pause(P_UPSTREAM)

    def _continue_anyway(self) -> None:
        """The app said nothing within EXPECT_CONTINUE_TIMEOUT of an ``Expect: 100-continue``
        request: invite the body ourselves (a client that waits for the invitation would
        otherwise wait until a timeout; Go's transport gives up waiting after the same second
        and starts reading the body, which makes its server send ``100 Continue``)."""
        if self.done or self.resp_started or self.sent_continue or self.body_done:
            return
        if self.version == "1.1" and self.upstream is not None:
            self.sent_continue = True
            self.out.append(_CONTINUE)
            self.flush_out()

    def upstream_paused(self) -> None:
        """The upstream cannot take more: stop reading the client."""
        self.conn.pause(P_UPSTREAM)

    def upstream_resumed(self) -> None:
        self.conn.resume(P_UPSTREAM)

    def connect_failed(self, reason: str) -> None:
        if self.done:
            return
        log.warning("error reverse proxying request: %s", reason)
        self.error(502, reason)

    def _last_chunk(self) -> bytes:
        return last_chunk(self.req_trailers)

    # -- request body (from ServerConnection) ----------------------------------------------
    def feed_body(self, data: bytes) -> None:
        if self.done:
            conn = self.conn
            conn.discarded += len(data)
            if conn.discarded > _DISCARD_LIMIT:
                conn.close_lingering()
            return
        up = self.upstream
        if up is not None and self.head_sent and not self.upgrade:
            if self.req_chunked:
                up.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                up.transport.write(data)
            return
        buf = self.body_buf
        if buf is None:
            self.body_buf = buf = []
        buf.append(data)
        self.body_buf_size += len(data)
        if self.body_buf_size > self.conn.server.config.body_buffer:
            self.conn.pause(P_BODY)

    def body_complete(self) -> None:
        self.body_done = True
        if self.done:
            return
        up = self.upstream
        if up is not None and self.head_sent and self.req_chunked and not self.upgrade:
            up.transport.write(self._last_chunk())

    # -- response (from UpstreamConnection) ------------------------------------------------
    def relay_interim(self, r: ResponseReader, status: int) -> None:
        if not interim_relayed(self.version, self.resp_started, status, self.sent_continue):
            return  # (a late 100 Continue: said already, see _continue_anyway)
        if status == 100:
            self.sent_continue = True
        self.out += (status_line(status), *r.resp_out, _CRLF)

    def response_head(self, r: ResponseReader, status: int) -> None:
        self.resp_status = status
        conn = self.conn
        method = self.method
        if method == b"HEAD":
            r.head_only()
        mode, close = response_start(
            self.out,
            method,
            status,
            self.version,
            r.resp_chunked,
            r.resp_clen,
            r.resp_out,
            r.resp_conn,
            self.resp_extra,
            b"" if r.saw_date else conn.server.date.line(),
            must_close(
                self.keep_alive,
                self.server.shutting_down,
                self.upgrade,
                self.expect_continue,
                self.sent_continue,
                self.body_done,
            ),
            r.resp_trailer,
        )
        self.resp_mode = mode
        if close:
            self.closing = True
        self.resp_started = True
        if self.deadlines is not None:
            self.last_write = conn.loop.time()

    def response_body(self, data: bytes) -> None:
        n = len(data)
        self.resp_size += n
        if self.resp_mode == M_CHUNKED:
            self.out += (b"%x\r\n" % n, data, _CRLF)
        elif self.resp_mode != M_NONE:
            self.out.append(data)

    def flush_out(self) -> None:
        out = self.out
        if out:
            if not self.conn.closed:
                self.conn.transport.write(b"".join(out) if len(out) > 1 else out[0])
                if self.deadlines is not None:
                    self.last_write = self.conn.loop.time()
            out.clear()

    def upstream_complete(self, up: UpstreamConnection) -> None:
        """The upstream response is complete: finish the client response, pool the connection."""
        r = up.reader
        if self.resp_mode == M_CHUNKED:
            if r.trailers:
                self.out += (b"0\r\n", *r.trailers, _CRLF)
            else:
                self.out.append(_LAST_CHUNK)
        self.flush_out()
        self.upstream = None
        pool = self.pool
        assert pool is not None
        if not up.closed and upstream_reusable(
            r.keep_alive,
            r.resp_clen is not None or r.resp_chunked,
            self.resp_mode,
            self.body_done,
            self.upgrade,
        ):
            pool.release(up)
        else:
            up.close()
        self._finish()

    def upstream_lost(self, up: UpstreamConnection, exc: Exception | None) -> None:
        """The upstream connection closed while this exchange was using it."""
        if self.done:
            return
        r = up.reader
        framed = r.resp_clen is not None or r.resp_chunked
        if ends_with_close(exc is not None, self.resp_started, framed, self.resp_mode):
            self.flush_out()
            r.resp_complete = True
            self.upstream_complete(up)
            return
        self.upstream_failed(up, upstream_error_text(exc))

    def upstream_failed(self, up: UpstreamConnection, reason: str) -> None:
        if self.done:
            up.abort()
            return
        self.upstream = None
        up.abort()
        if self.pool is not None and may_retry(
            up.reused, up.got_bytes, self.replay is not None, self.retried
        ):
            self.retried = True
            self.head_sent = False
            self.pool.connect(self)
            return
        if not self.resp_started:
            log.warning("error reverse proxying request: %s", reason)
            self.out.clear()
            self.error(502, reason)
            return
        # Mid-response failure: the client must see a truncated response, not a clean end.
        self.flush_out()
        self.closing = True
        self.conn.close()
        self._finish()

    # -- upgrade tunnel ----------------------------------------------------------------------
    def start_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: relay the head, then copy bytes both ways."""
        conn = self.conn
        r = up.reader
        if not self.upgrade or r.status != 101:
            self.upstream_failed(up, "unexpected protocol switch from upstream")
            return
        if self.deadline:
            # Upgraded connections outlive the request timeouts (like a hijacked Go conn).
            conn.server.timed.discard(self)
            self.deadline = 0.0
        self.deadlines = None
        self.resp_status = 101
        self.resp_started = True
        head = [status_line(101), *r.resp_out]
        if self.resp_extra:  # the handler's lines (the activator's wait header) are on a 101 too
            head.append(self.resp_extra)
        head += (b"Connection: Upgrade\r\nUpgrade: ", r.resp_upgrade or b"", _CRLF, _CRLF)
        if rest:
            head.append(rest)
        conn.transport.write(b"".join(head))
        up.tunnel = True
        conn.tunnel = up

    def tunnel_from_upstream(self, data: bytes) -> None:
        if not self.conn.closed:
            self.conn.transport.write(data)

    def tunnel_eof(self, *, from_upstream: bool) -> bool:
        """Half-close one direction; close both once both directions ended."""
        self.tunnel_eofs += 1
        up = self.upstream
        conn = self.conn
        if self.tunnel_eofs >= 2 or up is None:
            self.tunnel_closed()
            return False
        peer = conn.transport if from_upstream else up.transport
        if peer.can_write_eof():
            peer.write_eof()
            return True
        self.tunnel_closed()
        return False

    def tunnel_closed(self) -> None:
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.close()
        self.closing = True
        self.conn.close()
        self._finish()

    # -- timers ----------------------------------------------------------------------------
    def timed_out(self) -> None:
        """A revision timeout fired: 504 if nothing was sent yet, else append the message."""
        self.interrupt(504, self.server.config.timeout_body)

    def interrupt(self, status: int, msg: bytes) -> None:
        """End the exchange now (upstream aborted): ``status`` and ``msg`` if nothing was sent
        yet, else ``msg`` appended where the framing allows, and the connection closed."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()
        self.out.clear()
        if not self.resp_started:
            self.respond(
                status, msg, b"Content-Type: text/plain; charset=utf-8\r\n", content_length=True
            )
            return
        conn = self.conn
        mode = self.resp_mode
        if not conn.closed:
            if mode == M_CHUNKED:
                conn.transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(msg), msg))
                self.closing = self.closing or not self.body_done
            elif mode == M_CLOSE:
                conn.transport.write(msg)
                self.closing = True
            else:
                self.closing = True
        if self.closing:
            conn.close()
        self._finish()

    # -- end -------------------------------------------------------------------------------
    def _ended(self) -> None:
        self.conn.exchange_done(self)

    def retire(self) -> None:
        """Handed over to another protocol (see ServerConnection.hand_over): done, silently."""
        self.done = True
        if self.deadline:
            self.server.timed.discard(self)

    def abort(self) -> None:
        """The client connection is gone: drop the upstream side and release everything."""
        if self.done:
            return
        self.aborted = True
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()
        self.closing = True
        self._finish()


class ServerConnection(asyncio.Protocol):
    """One downstream HTTP/1.1 connection."""

    __slots__ = (
        "_dispatching",
        "_ready",
        "active",
        "closed",
        "discarded",
        "failed",
        "header_tick",
        "lingering",
        "loop",
        "paused",
        "peer",
        "peer_port",
        "pending",
        "reader",
        "server",
        "transport",
        "tunnel",
        "upgrade_pending",
        "write_paused",
    )

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        cfg = server.config
        self.reader = RequestReader(
            self,
            actions=cfg.req_actions,
            raw_actions=cfg.raw_actions,
            max_header_bytes=cfg.max_header_bytes,
            max_headers=cfg.max_headers,
        )
        self.peer = b""
        self.peer_port = 0
        self.lingering: asyncio.TimerHandle | None = None
        self.active: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.closed = False
        self.paused = 0
        self.write_paused = False
        self.header_tick = 0
        self.discarded = 0
        self.tunnel: UpstreamConnection | None = None
        self.upgrade_pending = False
        self._dispatching = False
        # A request whose head was parsed from the bytes being fed: dispatched only once all
        # of them are parsed, so that bad bytes read with it keep it from ever going upstream.
        self._ready: Exchange | None = None
        self.failed: tuple[int, str] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            ip = peer[0]
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]  # IPv4 client on the dual-stack listener: report it as Go does
            self.peer = ip.encode()
            self.peer_port = peer[1]
        self.server.connections.add(self)
        # With h2c on, the first bytes are held while they could still be the start of the
        # 24-byte HTTP/2 preface (whose first 18 bytes parse as an HTTP/1 head).
        self.reader.sniffing = self.server.h2c is not None
        # Like Go's ReadHeaderTimeout, a new connection must send its first request in time.
        self.header_tick = self.server.tick

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.write(data)
            return
        if self.lingering is not None:
            return
        if self.upgrade_pending:
            self._early_data(data)
            return
        if self.failed is not None:
            return
        reader = self.reader
        step = reader.feed(data)
        if step == FEED_OK:
            if self._ready is not None:
                self._dispatch_ready()
        elif step == FEED_UPGRADE:
            self._dispatch_ready()
            self._upgrade_request(reader.rest)
        elif step != FEED_WAIT:  # FEED_ERROR
            h2c = self.server.h2c
            preface = reader.preface
            if (
                h2c is not None
                and preface is not None
                and self.active is None
                and self._ready is None  # (a request before it in the read is answered first)
                and not self.pending
                and h2c(self, preface)
            ):
                return  # the connection now belongs to the h2c protocol
            self._parse_error(*reader.error)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None and self.active is not None:
            return self.active.tunnel_eof(from_upstream=False)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.lingering is not None:
            self.lingering.cancel()
        ex = self.active
        if ex is not None:
            ex.abort()
        self.pending.clear()
        self.reader.parsing = None
        self._ready = None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.active
        if ex is not None:
            up = ex.upstream
            if up is not None and not up.read_paused:
                up.read_paused = True
                up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None:
            up = ex.upstream
            if up is not None and up.read_paused:
                up.read_paused = False
                up.transport.resume_reading()

    # -- read flow control -----------------------------------------------------------------
    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.transport.close()

    def close_lingering(self) -> None:
        """Close after the response, without losing it: shut our side down, then discard what
        the client still sends for up to 0.5 s (a plain close with unread input sends a reset
        that can destroy the response in flight, as Go's server also avoids)."""
        t = self.transport
        if self.closed or self.lingering is not None or t.is_closing():
            return
        if not t.can_write_eof():
            t.close()
            return
        t.write_eof()
        self.lingering = self.loop.call_later(_LINGER, t.close)
        if self.paused:
            self.paused = 0
            t.resume_reading()

    # -- protocol switch -------------------------------------------------------------------
    def hand_over(self, protocol: asyncio.Protocol) -> asyncio.Transport:
        """Give the transport to ``protocol`` (h2c) and retire: this connection never reads,
        writes or counts a request again. The request being served, if any (an ``Upgrade:
        h2c`` request, carried on by the new protocol as its stream 1), ends here without a
        response or ``on_done`` of its own. Returns the transport, reading."""
        server = self.server
        server.connections.discard(self)
        ex = self.active
        if ex is not None:
            self.active = None
            server.inflight -= 1
            ex.retire()
        self.pending.clear()
        self.reader.parsing = None
        self._ready = None
        self.closed = True
        transport = self.transport
        transport.set_protocol(protocol)
        if self.paused:
            self.paused = 0
            transport.resume_reading()
        return transport

    # -- what the reader parsed (RequestSink) ---------------------------------------------
    def request_begun(self) -> Exchange:
        if self.active is None and self._ready is None:
            # the clock of a pipelined head starts when its turn comes
            self.header_tick = self.server.tick or 1
        return Exchange(self)

    def head_parsed(self, req: H1Request) -> None:
        ex: Exchange = req  # type: ignore[assignment]  # (what request_begun made)
        self.header_tick = 0
        # Served at once on an idle connection, else queued behind the requests before it
        # (answers go out in request order; pipelined requests never go upstream together).
        if (
            self.active is None
            and self._ready is None
            and not self.pending
            and not self._dispatching
        ):
            self._ready = ex  # dispatched by data_received once this read is parsed
        else:
            self.pending.append(ex)
            self.pause(P_PIPELINE)

    def drained(self, req: H1Request) -> None:
        if self.active is None and not self.closed:
            # The response went out before the body ended; the body is now drained.
            self.discarded = 0
            if cast(Exchange, req).closing:
                self.close_lingering()
            else:
                self._run_pending()

    # -- request lifecycle -----------------------------------------------------------------
    def _dispatch_ready(self) -> None:
        ex = self._ready
        if ex is not None:
            self._ready = None
            self._dispatch(ex)

    def _dispatch(self, ex: Exchange) -> None:
        self.active = ex
        server = self.server
        server.inflight += 1
        ex.start = self.loop.time()
        # (the common request, HTTP/1.1 and not CONNECT, skips the call)
        bad = (
            request_line_error(ex.version, ex.method)
            if ex.version != "1.1" or ex.method == b"CONNECT"
            else None
        )
        if bad is not None:
            ex.refuse(*bad)
            return
        t = ex.target
        star = False
        if t[:1] != b"/":
            star = t == b"*"
            if not star and not _absolute_form(ex):
                ex.refuse(400, "malformed request target")
                return
        if 1 in ex.target.translate(TARGET_MARKS):  # the common target skips the call
            fwd = go_request_target(ex.target)
            if fwd is None:
                ex.refuse(400, "malformed request target: invalid URL escape")
                return
            ex.target = fwd
        hdr = ex.hdr
        host = hdr.get(b"host")
        # (the common request, a valid Host and no Transfer-Encoding, skips the call)
        bad = (
            framing_error(ex.version, host, ex.req_chunked, hdr.get(b"transfer-encoding"))
            if not host or ex.req_chunked or 1 in host.translate(HOST_MARKS)
            else None
        )
        if bad is not None:
            ex.refuse(*bad)
            return
        trailer = ex.hdr.get(b"trailer") if ex.req_chunked else None
        if trailer is not None:
            names = trailer_names(trailer)
            if names is None:
                ex.refuse(400, "bad trailer key")
                return
            ex.hdr[b"trailer"] = names
        if star and ex.method == b"OPTIONS":
            # The server's own question (RFC 9110 9.3.7): Go's server answers it before any
            # handler (200, empty), so the app never sees it and no stats count it.
            ex.respond(200)
            return
        try:
            server.handler(ex)
        except Exception:
            log.exception("handler failed")
            if not ex.done:
                ex.keep_alive = False
                ex.error(500, "internal error")

    def exchange_done(self, ex: Exchange) -> None:
        """Called by an exchange as it ends (response complete, error or abort)."""
        if self.active is ex:
            self.active = None
            self.server.inflight -= 1
        if self.closed:
            return
        nxt = self.reader.parsing
        step = after_exchange(
            ex.closing,
            ex.upgrade,
            ex is nxt,
            bool(self.pending),
            self.failed is not None,
            self.server.shutting_down,
        )
        if step == NEXT_CLOSE:
            self.close_lingering()
            return
        if self.paused:
            self.resume(P_BODY | P_UPSTREAM)
        if nxt is not None and nxt is not ex and not nxt.headers_complete:
            self.header_tick = self.server.tick or 1  # its turn: the header clock starts
        if step == NEXT_DRAIN:
            self.discarded = 0  # the rest of the body is read and dropped (bounded)
        elif step == NEXT_RUN:
            self._run_pending()

    def _run_pending(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.active is None and self.pending and not self.closed:
                nxt = self.pending.popleft()
                self._dispatch(nxt)
            if not self.pending and self.failed is None:
                self.resume(P_PIPELINE)
        finally:
            self._dispatching = False
        if self.active is not None or self.pending:
            return
        failed = self.failed
        step = when_idle(
            failed is not None, self.reader.parsing is not None, self.server.shutting_down
        )
        if step == IDLE_REFUSE:
            assert failed is not None
            self._write_error_and_close(*failed)
        elif step == IDLE_CLOSE:
            self.close()

    def _upgrade_request(self, rest: bytes) -> None:
        # httptools stops at the end of an upgrade request's head; what follows is tunnel data.
        self.upgrade_pending = True
        if rest:
            self._early_data(rest)

    def _early_data(self, data: bytes) -> None:
        ex = self.pending[-1] if self.pending else self.active  # the last parsed request
        if ex is None or ex.done:
            return
        up = ex.upstream
        if up is not None and ex.head_sent:
            up.transport.write(data)
            return
        if ex.early is None:
            ex.early = []
        ex.early.append(data)
        ex.body_buf_size += len(data)
        if ex.body_buf_size > self.server.config.body_buffer:
            self.pause(P_BODY)

    def _parse_error(self, status: int, reason: str) -> None:
        """The reader refused the bytes read (``status``, ``reason``): answer what came before
        them, then refuse and close."""
        reader = self.reader
        ex = cast("Exchange | None", reader.parsing)
        reader.parsing = None
        ready = self._ready
        if ready is not None:
            self._ready = None
            if ready is not ex:
                self._dispatch(ready)  # complete before the bad bytes: answered first
            # else: the bad bytes are its own body: it never reaches the handler
        if self.closed or self.lingering is not None:
            return  # already closing after an earlier response: the bad bytes are dropped
        active = self.active
        if ex is not None and ex is active and not ex.done:
            # The body of the request being served is malformed: abort it.
            up = ex.upstream
            if up is not None:
                ex.upstream = None
                up.abort()
            if not ex.resp_started:
                ex.keep_alive = False
                ex.error(400, reason)
            else:
                ex.closing = True
                self.close()
                ex._finish()
            return
        if ex is not None and self.pending and self.pending[-1] is ex:
            self.pending.pop()  # a queued request whose body turned out malformed
        # Requests parsed before the bad bytes are answered first; then the error, then close.
        self.failed = (status, reason)
        self.pause(P_PIPELINE)
        if self.active is None and not self.pending:
            self._write_error_and_close(status, reason)

    def _write_error_and_close(self, status: int, reason: str) -> None:
        if self.closed or self.lingering is not None:
            return  # already closing after an earlier response: the bad bytes are dropped
        body = reason.encode() + b"\n"
        self.transport.write(
            status_line(status) + error_body_headers(body) + b"Connection: close\r\n\r\n" + body
        )
        self.close_lingering()


def _absolute_form(ex: Exchange) -> bool:
    """Rewrite an absolute-form target (``http://host/path``) to origin form + Host."""
    t = ex.target
    i = t.find(b"://")
    if i <= 0 or t[:i].lower() not in (b"http", b"https"):
        return False
    rest = t[i + 3 :]
    j = rest.find(b"/")
    q = rest.find(b"?")
    if j < 0 or (0 <= q < j):
        j = q
    if j < 0:
        authority, path = rest, b"/"
    else:
        authority, path = rest[:j], rest[j:]
        if path[:1] == b"?":
            path = b"/" + path
    authority = authority.rpartition(b"@")[2]  # never forward user info as the Host
    if not authority:
        return False
    ex.hdr[b"host"] = authority
    ex.target = path
    return True


class HTTPServer:
    """A listening HTTP/1.1 server running ``handler`` for every request."""

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.handler = handler
        self.config = config or ServerConfig()
        self.loop = loop or asyncio.get_event_loop()
        self.connections: set[ServerConnection] = set()
        self.inflight = 0
        self.shutting_down = False
        self.tick = 1
        self.date = DateCache()
        self.timed: set[RequestHandle] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.TimerHandle | None = None
        # HTTP/2 with prior knowledge (dataplane/h2c.py): called with a connection that opened
        # with the HTTP/2 preface and the bytes read so far from the preface on; True if it
        # took the connection over (ServerConnection.hand_over).
        self.h2c: Callable[[ServerConnection, bytes], bool] | None = None

    async def start(
        self,
        host: str | None,
        port: int,
        *,
        sock: Any = None,
        backlog: int = 2048,
        ssl: Any = None,
    ) -> None:
        """Listen on ``host:port`` (or ``sock``); with ``ssl`` (an ``ssl.SSLContext``), TLS."""
        if sock is None:
            try:
                sock = listen_socket(host, port, backlog)
            except ValueError:  # a host name: let the loop resolve it
                sock = None
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: ServerConnection(self), sock=sock, backlog=backlog, ssl=ssl
            )
        else:
            self._server = await self.loop.create_server(
                lambda: ServerConnection(self),
                host,
                port,
                backlog=backlog,
                reuse_address=True,
                ssl=ssl,
            )
        self._ticker = self.loop.call_later(1.0, self._tick)

    @property
    def port(self) -> int:
        socks = getattr(self._server, "sockets", None)
        return int(socks[0].getsockname()[1]) if socks else 0

    def watch(self, ex: RequestHandle) -> None:
        """Have the deadline sweep look after ``ex`` (see ``Exchange.set_timeouts``)."""
        self.timed.add(ex)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        due = [ex for ex in self.timed if ex.deadline <= now]
        for ex in due:
            try:
                ex.check_deadline(now)
            except Exception:
                log.exception("timeout handling failed")
                self.timed.discard(ex)
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep) if self.timed else None

    def _tick(self) -> None:
        self.tick += 1
        limit = self.config.header_timeout
        if limit > 0:
            for c in list(self.connections):
                t = c.header_tick
                if t and self.tick - t > limit and c.active is None:
                    c.close()
        self._ticker = self.loop.call_later(1.0, self._tick)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def interrupt_all(self, status: int, msg: bytes) -> int:
        """Stop now: every request in flight is ended (``status`` and ``msg`` when nothing was
        sent yet, see :meth:`Exchange.interrupt`) and every connection closed; returns how
        many requests were ended."""
        self.shutting_down = True
        self.stop_accepting()
        n = 0
        for c in list(self.connections):
            ex = c.active
            if ex is not None and not ex.done and c.tunnel is None:
                ex.interrupt(status, msg)
                n += 1
            c.close()
        return n

    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting, close idle connections, let active requests
        finish (their responses carry ``Connection: close``), then close what remains.
        Upgraded (tunnelled) connections get ``config.tunnel_drain_timeout`` at most."""
        self.shutting_down = True
        self.stop_accepting()
        for c in list(self.connections):
            if c.active is None and c.reader.parsing is None and not c.pending:
                c.close()
        loop = self.loop
        start = loop.time()
        delay = 0.005
        while self.connections:
            busy = [c for c in self.connections if c.tunnel is None]
            elapsed = loop.time() - start
            if not busy and elapsed >= self.config.tunnel_drain_timeout:
                break
            if timeout is not None and elapsed >= timeout:
                break
            for c in list(self.connections):
                if c.active is None and c.reader.parsing is None and not c.pending:
                    c.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        for c in list(self.connections):
            c.transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            await self._server.wait_closed()

"""The h2c protocol: downstream connections whose streams run the handler, multiplexed upstream.

Compiled with mypyc (setup.py); :mod:`dataplane.h2proxy` is its interpreted front.

Sans-I/O HTTP/2 connections (:mod:`dataplane.h2frames`, our own codec compiled with mypyc; with
the ``h2`` library it replaced, an h2c request cost the queue-proxy ten times the CPU) inside
two ``asyncio.Protocol`` s:

- :class:`H2ServerConnection` takes over a downstream connection that opened with the HTTP/2
  preface. Each request stream becomes an :class:`~dataplane.h2stream.H2Stream` (a Request)
  and goes to the server's handler, exactly as an HTTP/1 request does.
- :class:`H2Upstream` is one client connection per destination carrying every proxied stream.

Flow control is end to end: request DATA is acknowledged to the client (WINDOW_UPDATE) only as
it is handed to the upstream connection within the upstream's window, and response DATA is
acknowledged upstream only as it goes into the client's window; a paused transport stops the
pumping. Buffers are therefore bounded by the windows we advertise. Trailers pass through
(``grpc-status``). A client RST_STREAM cancels the upstream stream (and ends the exchange, so
its breaker slot or lease is freed); an upstream RST_STREAM resets the client's stream once the
response has started, else it is a 502 like any upstream failure (REFUSED_STREAM stays
REFUSED_STREAM, which gRPC clients retry). An upstream GOAWAY refuses the streams it did not
process and retires the connection; :meth:`H2ServerConnection.goaway` starts a drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final

from .forwarded import forwarded_value
from .h2frames import (
    ConnectionTerminated,
    DataReceived,
    ErrorCodes,
    Event,
    H2Conn,
    H2Error,
    InformationalReceived,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingCodes,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
    code_name,
    goaway_frame,
)
from .h2stream import H2Stream
from .http1 import (
    H_CLEN,
    H_DROP,
    H_HOST,
    H_KEEP,
    H_TE,
    H_XFF,
    TARGET_MARKS,
    go_request_target,
)
from .proxy import Exchange

if TYPE_CHECKING:
    from .h2c import H2Hub
    from .proxy import HTTPServer, ServerConnection
    from .request import Handler, Request
    from .upstream import UpstreamPool

__all__ = ["H2ServerConnection", "H2Upstream", "take_over", "upgrade"]

log = logging.getLogger("dataplane.h2")

# What we let a peer send before acknowledging it: per stream and per connection. The buffers
# of a stream never exceed its window, so these bound memory.
STREAM_WINDOW: Final = 256 * 1024
CONNECTION_WINDOW: Final = 4 * 1024 * 1024
MAX_STREAMS: Final = 1000
MAX_STREAM_ID: Final = 2**31 - 1
_HOP: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_STATUS_FAMILY: Final = {101}


def _connection(client: bool) -> H2Conn:
    # Inbound headers are validated on the server side (any client); the app's responses are
    # trusted as an HTTP/1 upstream's are.
    return H2Conn(client_side=client, validate_inbound=not client)


def _header_lines(raw: bytes) -> list[tuple[bytes, bytes]]:
    """``Name: value\\r\\n`` lines as lower-case HTTP/2 header pairs (hop-by-hop ones dropped)."""
    out: list[tuple[bytes, bytes]] = []
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            lname = name.strip().lower()
            if lname not in _HOP:
                out.append((lname, value.strip()))
    return out


def _send_within_window(h2: H2Conn, sid: int, buf: list[bytes], end: bool = False) -> int:
    """Queue DATA frames of stream ``sid`` from ``buf`` while its send window and the frame size
    allow (sent bytes leave ``buf``); returns how many bytes were queued. ``end``: the last
    frame, if ``buf`` empties, carries END_STREAM (no empty DATA frame after it)."""
    sent = 0
    while buf:
        window = h2.local_flow_control_window(sid)
        if window <= 0:
            break
        chunk = buf[0]
        n = min(window, len(chunk), h2.max_outbound_frame_size)
        if n < len(chunk):
            h2.send_data(sid, chunk[:n])
            buf[0] = chunk[n:]
        else:
            buf.pop(0)
            h2.send_data(sid, chunk, end and not buf)
        sent += n
    return sent


def take_over(hub: H2Hub, conn: ServerConnection, data: bytes) -> bool:
    """Carry on ``conn`` (HTTP/1, which read the HTTP/2 preface: ``data`` starts with it) as an
    h2c connection: a hand-over, the HTTP/1 side retires (ServerConnection.hand_over)."""
    h2conn = H2ServerConnection(hub, conn.server, conn.peer, conn.peer_port)
    h2conn.start(conn.hand_over(h2conn), data)
    return True


def upgrade(hub: H2Hub, ex: Request, handler: Handler) -> bool:
    """``Upgrade: h2c`` on a bodiless HTTP/1.1 request: answer 101, continue the connection as
    HTTP/2 with the request as stream 1 (RFC 7540 §3.2)."""
    if not isinstance(ex, Exchange):
        return False
    conn = ex.conn
    settings = ex.find_header(b"http2-settings")
    if settings is None or conn.closed or conn.pending or conn.reader.parsing not in (None, ex):
        return False
    h2conn = H2ServerConnection(hub, conn.server, conn.peer, conn.peer_port)
    try:
        h2conn.h2.initiate_upgrade_connection(settings.strip())
    except (H2Error, ValueError):
        return False  # a malformed HTTP2-Settings: carry on as HTTP/1.1
    transport = conn.transport
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    # The HTTP/1 side retires; its request goes on as stream 1 (it has no response of its own).
    conn.hand_over(h2conn)
    h2conn.start(transport, b"", upgraded=True)
    st = h2conn.new_stream(1)
    st.method = ex.method
    st.target = ex.target
    st.hdr = ex.hdr
    st.hdr.pop(b"upgrade", None)
    st.hdr.pop(b"connection", None)
    st.hdr_out = [
        part
        for line in b"".join(ex.hdr_out).split(b"\r\n")
        if line and line.partition(b":")[0].strip().lower() != b"http2-settings"
        for part in (line, b"\r\n")
    ]
    st.req_ended = st.body_done = True
    h2conn.dispatch(st, handler)
    h2conn.flush()
    return True


class _H2Output:
    """Writing what the h2 state machine queued, now or once per loop iteration (both sides)."""

    h2: H2Conn
    transport: asyncio.Transport | None
    closed: bool
    loop: asyncio.AbstractEventLoop
    _flush_pending: bool
    _reading: bool  # in data_received, which flushes when it is done

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Flush once at the end of this loop iteration (coalesces frames into one write), or
        at the end of the read being handled on this connection."""
        if not self._flush_pending and not self._reading:
            self._flush_pending = True
            self.loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_pending = False
        self.flush()


class H2ServerConnection(_H2Output, asyncio.Protocol):
    """One downstream h2c connection."""

    def __init__(self, hub: H2Hub, server: HTTPServer, peer: bytes, peer_port: int) -> None:
        self.hub = hub
        self.server = server
        self.peer = peer  # the client, as the HTTP/1 connection it came from saw it
        self.peer_port = peer_port
        self.loop = server.loop
        self.h2 = _connection(False)
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.closed = False
        self.going_away = False
        self.last_sid = 0
        self.blocked: set[H2Stream] = set()  # streams with response data waiting for window
        self._flush_pending = False
        self._reading = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def start(self, transport: asyncio.Transport, data: bytes, upgraded: bool = False) -> None:
        self.transport = transport
        self.hub.connections.add(self)
        h2 = self.h2
        if not upgraded:  # (initiate_upgrade_connection did it)
            h2.initiate_connection()
        h2.update_settings(
            {
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.server.config.max_header_bytes,
            }
        )
        # Enforced from now on (h2 would wait for the client's SETTINGS ACK).
        h2.decoder.max_header_list_size = self.server.config.max_header_bytes
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        if self.hub.shutting_down or self.server.shutting_down:
            self.goaway()
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            log.info("h2c client protocol error: %s", e)
            self.flush()
            self.close()
            return
        self._reading = True
        try:
            for ev in events:
                try:
                    self._event(ev)
                except H2Error as skipped:  # a stream that closed under us: drop that event
                    log.debug("h2c event %r skipped: %s", ev, skipped)
        finally:
            self._reading = False
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.hub.connections.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            st.reset = True
            self.release_buffers(st)  # the upstream's window back (ours is gone anyway)
            if not st.done:
                st.abort()
            else:
                self.cancel_upstream(st)

    def pause_writing(self) -> None:
        # A client that does not read its answers is not read either: else its PINGs,
        # SETTINGS and resets would pile their replies up in our buffer without bound.
        self.write_paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        for st in list(self.blocked):
            self._pump(st)
        self.flush()

    # -- output ----------------------------------------------------------------------------
    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def goaway(self) -> None:
        """Start draining: GOAWAY naming the last stream we take; later ones are refused."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.flush()
        # Written by hand: h2's close_connection() would refuse the frames of the streams that
        # are still running, which we want to finish.
        if self.transport is not None:
            self.transport.write(goaway_frame(self.last_sid, 0))
        if not self.streams:
            self.close()

    # -- events ----------------------------------------------------------------------------
    def _event(self, ev: Event) -> None:
        if isinstance(ev, DataReceived):
            st = self.streams.get(ev.stream_id)
            n = ev.flow_controlled_length
            if st is None or (st.done and st.up is None):
                self._ack(ev.stream_id, n)
                return
            data = ev.data
            if n > len(data):
                self._ack(ev.stream_id, n - len(data))  # padding
            if ev.ends:  # (StreamEnded follows) the body's last frame goes on with END_STREAM
                st.req_ended = True
            if data:
                st.req_buf.append(data)
                if st.up is not None:
                    st.up.pump_request(st)
                    st.up.flush_soon()
        elif isinstance(ev, RequestReceived):
            self._request(ev.stream_id, ev.headers or [], ev.too_large)
        elif isinstance(ev, StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.req_ended = True
                st.body_done = True
                if st.up is not None:
                    st.up.pump_request(st)
                    st.up.flush_soon()
                if st.done and not st.out_buf and not st.out_end:
                    self.streams.pop(st.sid, None)
        elif isinstance(ev, TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.req_h2_trailers = [(n, v) for n, v in ev.headers or [] if n not in _HOP]
        elif isinstance(ev, WindowUpdated):
            if ev.stream_id:
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    self._pump(st)
            else:
                for st in list(self.blocked):
                    self._pump(st)
        elif isinstance(ev, StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.reset = True
                self.release_buffers(st)
                if not st.done:
                    st.abort()  # cancels the upstream stream; on_done frees the slot
                else:
                    self.cancel_upstream(st)
        elif isinstance(ev, ConnectionTerminated):
            self.going_away = True
            if not self.streams:
                self.close()

    def release_buffers(self, st: H2Stream) -> None:
        """Bytes buffered for a stream that is over are acknowledged, not just dropped: the
        response bytes to the upstream connection (shared by every client of the pod: each
        dropped byte would shrink its window for good), the request bytes to this one."""
        if st.out_buf:
            n = sum(len(b) for b in st.out_buf)
            st.out_buf.clear()
            up = st.up
            if up is not None:
                up.ack(st, n)
        if st.req_buf:
            n = sum(len(b) for b in st.req_buf)
            st.req_buf.clear()
            self._ack(st.sid, n)

    def _ack(self, sid: int, n: int) -> None:
        if n <= 0 or self.closed:
            return
        try:
            self.h2.acknowledge_received_data(n, sid)
        except H2Error:
            pass
        self.flush_soon()

    def _request(
        self, sid: int, headers: list[tuple[bytes, bytes]], too_large: bool = False
    ) -> None:
        if self.going_away:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        st = self.new_stream(sid)
        hdr = st.hdr
        out = st.hdr_out
        authority = b""
        actions = self.server.config.req_actions
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    st.method = value
                elif name == b":path":
                    st.target = value
                elif name == b":authority":
                    authority = value
                continue
            act = actions.get(name)
            if act is None:
                out += (name, b": ", value, b"\r\n")
            elif act == H_KEEP:
                if name not in hdr:
                    hdr[name] = value
                out += (name, b": ", value, b"\r\n")
            elif act == H_HOST:
                if not authority:
                    authority = value
            elif act == H_XFF:
                prior = hdr.get(name)
                hdr[name] = value if prior is None else prior + b", " + value
            elif act == H_TE:
                if value.strip().lower() == b"trailers":
                    hdr[name] = b"trailers"
            elif act == H_CLEN or (act != H_DROP and name not in hdr):
                hdr[name] = value
        hdr[b"host"] = authority
        if 1 in st.target.translate(TARGET_MARKS):  # the common :path skips the call
            # As over HTTP/1.1 (and as Go's queue-proxy): a path that is not a valid encoding
            # goes re-escaped as Go's transport writes it, bytes >= 0x80 percent-encoded; a '%'
            # without two hex digits is refused, here as Go's HTTP/2 server refuses it: the
            # stream reset with PROTOCOL_ERROR (url.ParseRequestURI fails).
            fwd = go_request_target(st.target)
            if fwd is None:
                self.reset_stream(st, ErrorCodes.PROTOCOL_ERROR)
                return
            st.target = fwd
        if too_large:  # answered here, as over HTTP/1.1: the handler never sees it
            st.error(431, "request header fields too large")
            return
        self.dispatch(st, self.server.handler)

    def new_stream(self, sid: int) -> H2Stream:
        self.last_sid = sid
        st = H2Stream(self.server, self.peer, self.peer_port, self, sid)
        st.start = self.loop.time()
        self.streams[sid] = st
        return st

    def dispatch(self, st: H2Stream, handler: Handler) -> None:
        try:
            handler(st)
        except Exception:
            log.exception("handler failed")
            if not st.done:
                st.error(500, "internal error")

    # -- called by H2Stream ----------------------------------------------------------------
    def respond(self, st: H2Stream, status: int, body: bytes, headers: bytes) -> None:
        if st.reset or self.closed:
            return
        hs = [(b":status", b"%d" % status), *_header_lines(headers)]
        if not any(n == b"content-length" for n, _ in hs):
            hs.append((b"content-length", b"%d" % len(body)))
        try:
            self.h2.send_headers(st.sid, hs, end_stream=not body)
        except H2Error:
            self.streams.pop(st.sid, None)
            return
        if st.req_buf and st.up is None:
            # Answered here: the request body buffered so far will never be forwarded.
            n = sum(len(b) for b in st.req_buf)
            st.req_buf.clear()
            self._ack(st.sid, n)
        if body:
            st.out_buf.append(body)
            st.out_end = True
            self._pump(st)
        elif st.req_ended:
            self.streams.pop(st.sid, None)
        self.flush()

    def proxy(self, st: H2Stream, pool: UpstreamPool) -> None:
        self.hub.upstream(pool).open(st)

    def timed_out(self, st: H2Stream) -> None:
        self.cancel_upstream(st)
        if not st.resp_started:
            st.respond(
                504,
                self.server.config.timeout_body,
                b"Content-Type: text/plain; charset=utf-8\r\n",
            )
            return
        self.reset_stream(st, ErrorCodes.CANCEL)
        st.finish()

    def cancel_upstream(self, st: H2Stream) -> None:
        up = st.up
        if up is not None:
            up.cancel(st)
        elif st.pool is not None:  # still waiting for the connection or for stream room
            waiting_on = self.hub.upstreams.get((st.pool.host, st.pool.port))
            if waiting_on is not None:
                waiting_on.forget(st)

    def reset_stream(self, st: H2Stream, code: int) -> None:
        self.streams.pop(st.sid, None)
        self.release_buffers(st)
        if st.reset or self.closed:
            return
        st.reset = True
        try:
            self.h2.reset_stream(st.sid, code)
        except H2Error:
            pass
        self.flush()

    # -- called by H2Upstream --------------------------------------------------------------
    def response_interim(self, st: H2Stream, headers: list[tuple[bytes, bytes]]) -> None:
        """An interim (1xx) response from upstream goes to the client, as Go's ReverseProxy
        relays them (``103 Early Hints`` and the like), before the final head only; 101 has no
        meaning in HTTP/2 (RFC 9113 8.6) and goes nowhere."""
        if st.resp_started or st.reset or self.closed:
            return
        hs = [(n, v) for n, v in headers if n not in _HOP and (n[:1] != b":" or n == b":status")]
        if (b":status", b"101") in hs:
            return
        try:
            self.h2.send_headers(st.sid, hs)
        except H2Error:
            return
        self.flush_soon()

    def response_head(
        self, st: H2Stream, headers: list[tuple[bytes, bytes]], end: bool = False
    ) -> None:
        """Response headers from upstream; ``end``: a headers-only response (gRPC's
        trailers-only errors), relayed as one HEADERS frame with END_STREAM."""
        raw_status = b""
        hs: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b":status":
                raw_status = value
            elif name[:1] != b":" and name not in _HOP:
                hs.append((name, value))
        if len(raw_status) != 3 or not raw_status.isdigit():
            # (Go's wording.) This stream fails with a 502; the pod's connection goes on.
            self.cancel_upstream(st)
            self.upstream_failed(
                st,
                "malformed response from server: "
                + ("malformed non-numeric" if raw_status else "missing")
                + " status pseudo header",
                0,
            )
            return
        status = int(raw_status)
        if st.resp_extra:
            hs += _header_lines(st.resp_extra)
        st.resp_status = status
        st.resp_started = True
        if st.deadlines is not None:
            st.last_write = self.loop.time()
        if st.reset or self.closed:
            return
        try:
            self.h2.send_headers(st.sid, [(b":status", b"%d" % status), *hs], end_stream=end)
        except H2Error:
            self.reset_stream(st, ErrorCodes.INTERNAL_ERROR)
            return
        if end:
            st.resp_ended = True
            self._sent(st)

    def response_data(self, st: H2Stream, data: bytes, ends: bool = False) -> None:
        """Response body from upstream; ``ends``: its last frame (no trailers: they would
        come in a HEADERS frame after it), so END_STREAM goes out on the last DATA frame."""
        st.resp_size += len(data)
        if st.reset or self.closed:
            up = st.up
            if up is not None:
                up.ack(st, len(data))
            return
        st.out_buf.append(data)
        st.out_size += len(data)
        if ends:
            st.out_end = True
        self._pump(st)

    def response_end(self, st: H2Stream, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if st.resp_ended:
            return
        if st.reset or self.closed:
            if not st.done:
                st.finish()
            return
        st.out_trailers = trailers
        st.out_end = True
        self._pump(st)

    def upstream_failed(self, st: H2Stream, reason: str, code: int) -> None:
        """The upstream stream or connection failed (``code``: the RST_STREAM code, if any)."""
        if st.done:
            return
        if not st.resp_started and code != ErrorCodes.REFUSED_STREAM:
            log.warning("error reverse proxying request: %s", reason)
            st.error(502, reason)
            return
        self.reset_stream(st, code or ErrorCodes.INTERNAL_ERROR)
        st.finish()

    def _pump(self, st: H2Stream) -> None:
        """Send what the client's windows allow; acknowledge it upstream."""
        if st.reset or self.closed:
            self.blocked.discard(st)
            return
        h2 = self.h2
        sid = st.sid
        buf = st.out_buf
        sent = 0
        try:
            end = st.out_end and not st.out_trailers
            if not self.write_paused:
                sent = _send_within_window(h2, sid, buf, end)
            if not buf and st.out_end:
                st.out_end = False
                st.resp_ended = True
                if st.out_trailers:
                    h2.send_headers(sid, st.out_trailers, end_stream=True)
                elif not (end and sent):  # (else END_STREAM went on the last DATA frame)
                    h2.end_stream(sid)
                self._sent(st)
        except H2Error:
            self.blocked.discard(st)
            self.reset_stream(st, ErrorCodes.INTERNAL_ERROR)
            if not st.done:
                st.finish()
            return
        if buf:
            self.blocked.add(st)
        else:
            self.blocked.discard(st)
        if sent:
            st.out_size -= sent
            if st.deadlines is not None:
                st.last_write = self.loop.time()
            up = st.up
            if up is not None and st.up_sid:
                up.ack(st, sent)

    def _sent(self, st: H2Stream) -> None:
        """The response ended on the wire."""
        if st.req_ended or st.up is None:
            self.streams.pop(st.sid, None)
        if not st.done:
            st.finish()
        if self.going_away and not self.streams:
            self.flush()
            self.close()


class H2Upstream(_H2Output, asyncio.Protocol):
    """One multiplexed h2c client connection to a destination."""

    def __init__(self, hub: H2Hub, pool: UpstreamPool) -> None:
        self.hub = hub
        self.host = pool.host
        self.port = pool.port
        self.authority = pool.authority
        self.loop = hub.loop
        self.dial_timeout = pool.dial_timeout
        # Internal TLS (the activator to a pod's TLS port): h2 by ALPN, verified as the pool's
        # HTTP/1.1 connections are (name, CA, then the revision's SAN in connection_made).
        self.tls = pool.tls
        self.scheme = b"http" if pool.tls is None else b"https"
        self.h2 = _connection(True)
        self.streams: dict[int, H2Stream] = {}
        self.waiting: deque[H2Stream] = deque()
        self.transport: asyncio.Transport | None = None
        self.connected = False
        self.closed = False
        self.usable = True  # new streams may use it (False after GOAWAY or loss)
        self.write_paused = False
        self._dirty: set[H2ServerConnection] = set()  # downstream connections to flush
        self.blocked: set[H2Stream] = set()  # streams with request data waiting for window
        self._flush_pending = False
        self._reading = False
        self._dial: asyncio.Task[None] | None = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        tls = self.tls
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: self,
                    self.host,
                    self.port,
                    ssl=None if tls is None else tls.h2_context,
                    server_hostname=None if tls is None else tls.server_name,
                ),
                max(self.dial_timeout, 1.0),
            )
        except (TimeoutError, OSError) as e:
            if isinstance(e, TimeoutError):
                reason = f"timed out dialing {self.host}:{self.port}"
            elif tls is not None:
                from .upstream import _dial_error_text  # (a failure path only)

                reason = _dial_error_text(self.host, self.port, e)
            else:
                reason = f"dial tcp {self.host}:{self.port}: connect: {_os_text(e)}"
            self._lost(reason)
        finally:
            self._dial = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.tls is not None:
            err = self.tls.verify(transport)
            if err is None:
                sslobj = transport.get_extra_info("ssl_object")
                alpn = None if sslobj is None else sslobj.selected_alpn_protocol()
                if alpn != "h2":
                    err = f"the pod did not negotiate h2 (ALPN: {alpn})"
            if err is not None:
                self._lost(f"tls: dial {self.host}:{self.port}: {err}")
                return
        self.connected = True
        h2 = self.h2
        h2.initiate_connection()
        h2.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW, SettingCodes.ENABLE_PUSH: 0}
        )
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._start_waiting()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self.flush()
            self._lost(f"h2c protocol error from upstream: {e}")
            return
        dirty = self._dirty
        self._reading = True
        try:
            for ev in events:
                try:
                    self._event(ev)
                except H2Error as skipped:  # (not "e": mypyc typed that as ProtocolError)
                    log.debug("h2c upstream event %r skipped: %s", ev, skipped)
        finally:
            self._reading = False
        self.flush()
        if dirty:
            for c in dirty:
                c.flush_soon()
            dirty.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ConnectionResetError):
            reason = "read: connection reset by peer"
        elif exc is None:
            reason = "EOF"
        else:
            reason = str(exc) or type(exc).__name__
        self._lost(reason)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for st in list(self.blocked):
            self.pump_request(st)
        self.flush()

    # -- streams ---------------------------------------------------------------------------
    def open(self, st: H2Stream) -> None:
        if self.closed:
            st.link.upstream_failed(st, "upstream connection closed", 0)
            return
        if not self.connected or self.waiting or not self._has_room():
            self.waiting.append(st)
            return
        self._send_head(st)
        self.flush_soon()

    def _has_room(self) -> bool:
        # Our own count: h2's open_outbound_streams scans every stream it knows.
        return len(self.streams) < self.h2.remote_max_concurrent_streams

    def _start_waiting(self) -> None:
        while self.waiting and self._has_room() and self.usable:
            st = self.waiting.popleft()
            if not st.done:
                self._send_head(st)
        if not self.usable and not self.streams and not self.closed:
            self.close()  # retired (stream ids spent, or GOAWAY) and now idle

    def _send_head(self, st: H2Stream) -> None:
        try:
            sid = self.h2.get_next_available_stream_id()
        except H2Error:
            # 2**30 streams on this connection: it retires once its streams are over, and
            # this stream and those waiting go to a fresh one.
            self.waiting.appendleft(st)
            self._goaway(MAX_STREAM_ID)
            return
        st.up = self
        st.up_sid = sid
        self.streams[sid] = st
        end = st.req_ended and not st.req_buf and st.req_h2_trailers is None
        self.h2.send_headers(sid, self._request_headers(st), end_stream=end)
        if end:
            st.req_end_sent = True
        else:
            self.pump_request(st)

    def _request_headers(self, st: H2Stream) -> list[tuple[bytes, bytes]]:
        cfg = st.server.config
        hdr = st.hdr
        host = st.host_override
        if host is None:
            host_from = cfg.host_from
            host = hdr.get(host_from) if host_from is not None else None
            if not host:
                host = hdr.get(b"host") or self.authority
        hs = [
            (b":method", st.method),
            (b":scheme", self.scheme),
            (b":authority", host),
            (b":path", st.target),
        ]
        # The pass-through lines: (name, ": ", value, CRLF) groups as _request and handlers
        # add them, read as pairs; from the first other shape on, parsed as lines.
        out = st.hdr_out
        i = 0
        n = len(out)
        while i + 3 < n and out[i + 1] == b": " and out[i + 3] == b"\r\n":
            hs.append((out[i].lower(), out[i + 2]))
            i += 4
        if i < n:
            for line in b"".join(out[i:]).split(b"\r\n"):
                name, sep, value = line.partition(b": ")
                if sep:
                    hs.append((name.lower(), value))
        if b"te" in hdr:
            hs.append((b"te", b"trailers"))
        clen = hdr.get(b"content-length")
        if clen is not None:
            hs.append((b"content-length", clen))
        prior = hdr.get(b"x-forwarded-for")
        peer = st.peer
        if peer:
            hs.append((b"x-forwarded-for", prior + b", " + peer if prior else peer))
        elif prior is not None:
            hs.append((b"x-forwarded-for", prior))
        if cfg.forwarded_shim and b"forwarded" not in hdr:
            fwd = forwarded_value(
                prior, hdr.get(b"x-forwarded-host"), hdr.get(b"x-forwarded-proto")
            )
            if fwd is not None:
                hs.append((b"forwarded", fwd))
        if st.extra_headers:
            hs += _header_lines(st.extra_headers)
        return hs

    def pump_request(self, st: H2Stream) -> None:
        """Send buffered request body within the upstream's windows; acknowledge the client."""
        sid = st.up_sid
        if not sid or self.closed or sid not in self.streams:
            self.blocked.discard(st)
            if st.req_buf and st.up_sid:  # the upstream stream is over: discard, acknowledge
                n = sum(len(b) for b in st.req_buf)
                st.req_buf.clear()
                st.link._ack(st.sid, n)
            return
        h2 = self.h2
        buf = st.req_buf
        sent = 0
        try:
            if not self.write_paused:
                end = st.req_ended and not st.req_end_sent and st.req_h2_trailers is None
                sent = _send_within_window(h2, sid, buf, end)
                if end and sent and not buf:
                    st.req_end_sent = True  # (on the last DATA frame)
            if not buf and st.req_ended and not st.req_end_sent:
                st.req_end_sent = True
                if st.req_h2_trailers:
                    h2.send_headers(sid, st.req_h2_trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
        except H2Error as e:
            log.debug("h2c upstream send failed: %s", e)
        if buf:
            self.blocked.add(st)
        else:
            self.blocked.discard(st)
        if sent:
            st.link._ack(st.sid, sent)

    def ack(self, st: H2Stream, n: int) -> None:
        """``n`` response bytes of ``st`` went to the client: open the upstream window."""
        if self.closed or n <= 0:
            return
        try:
            self.h2.acknowledge_received_data(n, st.up_sid)
        except H2Error:
            pass
        self.flush_soon()

    def cancel(self, st: H2Stream) -> None:
        """The client gave up on ``st``: RST_STREAM(CANCEL) upstream."""
        sid = st.up_sid
        if self.streams.pop(sid, None) is None:
            return
        if not self.closed:
            try:
                self.h2.reset_stream(sid, ErrorCodes.CANCEL)
            except H2Error:
                pass
            self._start_waiting()
            self.flush_soon()

    def forget(self, st: H2Stream) -> None:
        try:
            self.waiting.remove(st)
        except ValueError:
            pass

    # -- events ----------------------------------------------------------------------------
    def _event(self, ev: Event) -> None:
        sid = ev.stream_id
        if sid:
            st0 = self.streams.get(sid)
            if st0 is not None:
                self._dirty.add(st0.link)
        if isinstance(ev, DataReceived):
            n = ev.flow_controlled_length
            st = self.streams.get(ev.stream_id)
            if st is None:
                self._ack_raw(ev.stream_id, n)
                return
            if n > len(ev.data):
                self._ack_raw(ev.stream_id, n - len(ev.data))
            if ev.data:
                st.link.response_data(st, ev.data, ev.ends)
        elif isinstance(ev, ResponseReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.link.response_head(st, ev.headers or [], ev.stream_ended)
        elif isinstance(ev, InformationalReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.link.response_interim(st, ev.headers)
        elif isinstance(ev, TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.out_trailers = [(n, v) for n, v in ev.headers or [] if n not in _HOP]
        elif isinstance(ev, StreamEnded):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                if not st.resp_started:
                    st.link.upstream_failed(st, "upstream ended the stream without a response", 0)
                else:
                    st.link.response_end(st, st.out_trailers)
                if not st.req_end_sent:
                    # The response is complete before the request: stop the upload.
                    st.req_end_sent = True
                    try:
                        self.h2.reset_stream(ev.stream_id, ErrorCodes.NO_ERROR)
                    except H2Error:
                        pass
                self._start_waiting()
        elif isinstance(ev, StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                code = int(ev.error_code or 0)
                name = code_name(code)
                st.link.upstream_failed(
                    st, f"stream error: stream ID {ev.stream_id}; {name}; received from peer", code
                )
                self._start_waiting()
        elif isinstance(ev, WindowUpdated):
            if ev.stream_id:
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    self.pump_request(st)
            else:
                for st in list(self.blocked):
                    self.pump_request(st)
        elif isinstance(ev, RemoteSettingsChanged):
            self._start_waiting()
        elif isinstance(ev, ConnectionTerminated):
            self._goaway(int(ev.last_stream_id or 0))

    def _goaway(self, last: int) -> None:
        """The upstream is going away: refuse what it did not take, use a new connection."""
        self.usable = False
        self.hub.upstream_gone(self)
        for sid in [s for s in self.streams if s > last]:
            st = self.streams.pop(sid)
            st.link.upstream_failed(st, "upstream refused the stream", ErrorCodes.REFUSED_STREAM)
        waiting = list(self.waiting)
        self.waiting.clear()
        for st in waiting:  # never sent: they can go on a fresh connection
            if not st.done and st.pool is not None:
                self.hub.upstream(st.pool).open(st)
        if not self.streams:
            self.close()

    def _ack_raw(self, sid: int, n: int) -> None:
        if n > 0:
            try:
                self.h2.acknowledge_received_data(n, sid)
            except H2Error:
                pass

    def _lost(self, reason: str) -> None:
        self.closed = True
        self.usable = False
        self.hub.upstream_gone(self)
        streams = list(self.streams.values()) + list(self.waiting)
        self.streams.clear()
        self.waiting.clear()
        links = set()
        for st in streams:
            st.link.upstream_failed(st, reason, 0)
            links.add(st.link)
        for c in links:
            c.flush()
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self._dial is not None:
            self._dial.cancel()
        if not self.closed:
            self.closed = True
            self.usable = False
            if self.transport is not None:
                try:
                    self.h2.close_connection()
                    self.transport.write(self.h2.data_to_send())
                except H2Error:
                    pass
                self.transport.close()


def _os_text(e: OSError) -> str:
    import errno

    if e.errno == errno.ECONNREFUSED:
        return "connection refused"
    return (e.strerror or str(e)).lower()

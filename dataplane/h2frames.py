"""A lean sans-I/O HTTP/2 connection (RFC 9113): frames in, events out; calls in, frames out.

It replaces the ``h2`` library on the proxy's h2c paths (:mod:`dataplane.h2engine`) with the part
of it a proxy needs, compiled with mypyc like the HTTP/1 engine. Under h2load through the
queue-proxy, ``h2``, ``hyperframe`` and ``hpack`` took about two thirds of the CPU (a state
machine per stream driven by enum lookups, a frame object per frame, debug logging per call).
The interface follows ``h2``'s names where the proxy used them (``receive_data``,
``send_headers``, ``send_data``, ``acknowledge_received_data``, ``data_to_send`` and the
events), so the proxy code reads the same and ``h2`` remains the reference the tests compare
against.

What it checks (the peer may be any client): the preface, frame sizes and stream ids, the
stream states (idle, open, half-closed, closed), flow control both ways, header blocks
(CONTINUATION, HPACK, the size we announced), and on the server side the request header rules
of RFC 9113 §8.2-8.3 and content-length. Connection errors queue a GOAWAY with the RFC's code
and raise :class:`ProtocolError`; stream errors queue a RST_STREAM and, if the stream was
already handed to the application, yield a :class:`StreamReset` for it.

Flow control: received DATA counts against our windows until the application acknowledges it
(``acknowledge_received_data``); a WINDOW_UPDATE is sent once a quarter of the window has been
acknowledged, so small messages do not each cost a frame.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from typing import Final

from .hpack import Decoder, Encoder, HPACKError, OversizedHeaderList

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCodes",
    "Event",
    "H2Conn",
    "H2Error",
    "InformationalReceived",
    "ProtocolError",
    "RemoteSettingsChanged",
    "RequestReceived",
    "ResponseReceived",
    "SettingCodes",
    "StreamClosedError",
    "StreamEnded",
    "StreamReset",
    "TrailersReceived",
    "WindowUpdated",
    "code_name",
    "goaway_frame",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

F_END_STREAM: Final = 0x1
F_ACK: Final = 0x1
F_END_HEADERS: Final = 0x4
F_PADDED: Final = 0x8
F_PRIORITY: Final = 0x20

MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384


class ErrorCodes:
    """RFC 9113 §7 error codes."""

    NO_ERROR: Final = 0x0
    PROTOCOL_ERROR: Final = 0x1
    INTERNAL_ERROR: Final = 0x2
    FLOW_CONTROL_ERROR: Final = 0x3
    SETTINGS_TIMEOUT: Final = 0x4
    STREAM_CLOSED: Final = 0x5
    FRAME_SIZE_ERROR: Final = 0x6
    REFUSED_STREAM: Final = 0x7
    CANCEL: Final = 0x8
    COMPRESSION_ERROR: Final = 0x9
    CONNECT_ERROR: Final = 0xA
    ENHANCE_YOUR_CALM: Final = 0xB
    INADEQUATE_SECURITY: Final = 0xC
    HTTP_1_1_REQUIRED: Final = 0xD


_CODE_NAMES: Final = {
    v: k for k, v in vars(ErrorCodes).items() if k.isupper() and isinstance(v, int)
}


def code_name(code: int) -> str:
    """``CANCEL`` for 8; unknown codes by number."""
    name = _CODE_NAMES.get(code)
    return name if name is not None else f"unknown error code {code:#x}"


class SettingCodes:
    """RFC 9113 §6.5.2 setting identifiers."""

    HEADER_TABLE_SIZE: Final = 0x1
    ENABLE_PUSH: Final = 0x2
    MAX_CONCURRENT_STREAMS: Final = 0x3
    INITIAL_WINDOW_SIZE: Final = 0x4
    MAX_FRAME_SIZE: Final = 0x5
    MAX_HEADER_LIST_SIZE: Final = 0x6


class H2Error(Exception):
    """A call the connection's state does not allow (e.g. sending on a closed stream)."""


class StreamClosedError(H2Error):
    """The stream is closed (or was never opened)."""


class ProtocolError(H2Error):
    """The peer broke the protocol: a GOAWAY with ``error_code`` is queued; close after sending."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code


class _StreamError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# -- events ---------------------------------------------------------------------------------
class Event:
    stream_id: int = 0


class RequestReceived(Event):
    """A request head. ``too_large``: its header list passed the size we announced, and
    ``headers`` holds the fields before the limit (answer 431, RFC 9113 10.5.1)."""

    def __init__(
        self,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        ended: bool,
        too_large: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = ended
        self.too_large = too_large


class ResponseReceived(Event):
    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = ended


class InformationalReceived(Event):
    """An interim (1xx) response head (client side), before the final one."""

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class TrailersReceived(Event):
    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class DataReceived(Event):
    def __init__(
        self, stream_id: int, data: bytes, flow_controlled_length: int, ends: bool = False
    ) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length
        self.ends = ends  # the frame had END_STREAM (a StreamEnded event follows)


class StreamEnded(Event):
    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset(Event):
    def __init__(self, stream_id: int, error_code: int, remote: bool = True) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote_reset = remote


class WindowUpdated(Event):
    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id = stream_id
        self.delta = delta


class RemoteSettingsChanged(Event):
    def __init__(self, changed: dict[int, int]) -> None:
        self.changed = changed


class ConnectionTerminated(Event):
    def __init__(self, error_code: int, last_stream_id: int, additional_data: bytes) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.additional_data = additional_data


# -- frames ---------------------------------------------------------------------------------
# A frame header: 24-bit length and 8-bit type as one 32-bit field, flags, stream id. One
# ``pack`` costs a third of two ``to_bytes``, a ``bytes`` and two concatenations.
_pack_head: Final = struct.Struct(">IBI").pack


def _head(length: int, ftype: int, flags: int, sid: int) -> bytes:
    return _pack_head(length << 8 | ftype, flags, sid)


def goaway_frame(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame, for a drain that writes it outside the state machine."""
    return (
        _head(8 + len(debug), GOAWAY, 0, 0)
        + last_stream_id.to_bytes(4, "big")
        + error_code.to_bytes(4, "big")
        + debug
    )


def _settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings.items())


# RFC 9113 §8.2.2: fields that are specific to one connection.
_CONNECTION_FIELDS: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":authority", b":path"))
# Bytes a field name may hold (RFC 9110 token, lower case only); values: no NUL, CR, LF.
_NAME_CHARS: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# Translation tables that map a byte a name (value) must not hold to 1, any other to 0: one
# table translate and a memchr for the int 1 (``translate(None, deletechars)`` builds its table
# at every call, and three ``find`` calls parse their arguments three times: 3.5 x the cost).
_NAME_MARKS: Final = bytes(0 if c in _NAME_CHARS else 1 for c in range(256))
_VALUE_MARKS: Final = bytes(1 if c in (0x00, 0x0A, 0x0D) else 0 for c in range(256))


def _bad_value(value: bytes) -> bool:
    """A field value holding CR, LF or NUL (RFC 9113 §8.2.1)."""
    return 1 in value.translate(_VALUE_MARKS)


def _valid_request(headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 9113 §8.2-8.3.1 for a request's header list (a malformed one is a stream error)."""
    seen: set[bytes] = set()
    regular = False
    method = b""
    for name, value in headers:
        if not name:
            return False
        if name[0] == 0x3A:  # ':'
            if regular or name in seen or name not in _REQUEST_PSEUDO:
                return False
            seen.add(name)
            if name == b":method":
                method = value
        else:
            regular = True
            if name in _CONNECTION_FIELDS:
                return False
            if name == b"te" and value != b"trailers":
                return False
            if 1 in name.translate(_NAME_MARKS):  # not a (lower-case) token
                return False
        if value and (value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09) or _bad_value(value)):
            return False
    if method == b"CONNECT":
        return b":authority" in seen and b":path" not in seen and b":scheme" not in seen
    return b":method" in seen and b":scheme" in seen and b":path" in seen


def _valid_trailers(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if not name or name[0] == 0x3A or name in _CONNECTION_FIELDS:
            return False
        if _bad_value(value):
            return False
    return True


class _Stream:
    __slots__ = (
        "clen",
        "got",
        "headers_in",
        "local_closed",
        "recv_unacked",
        "recv_window",
        "remote_closed",
        "send_window",
        "sid",
    )

    def __init__(self, sid: int, send_window: int, recv_window: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = recv_window  # what the peer may still send
        self.recv_unacked = 0  # received, acknowledged by the application, not yet updated
        self.local_closed = False
        self.remote_closed = False
        self.headers_in = False  # the (final) response or the request head arrived
        self.clen = -1  # the request's content-length, if any
        self.got = 0  # request body bytes received


_MAX_CONTINUATIONS: Final = 256  # frames in one header block
_RESET_MEMORY: Final = 1024  # ids of streams we reset lately: their late frames are ignored
# Rapid reset (CVE-2023-44487): a client that opens streams and resets them at once makes the
# server start work that MAX_CONCURRENT_STREAMS never bounds. Streams the client resets before
# they are over draw on a token bucket (a burst, refilled per second and by each stream that
# completes); past it the connection gets GOAWAY ENHANCE_YOUR_CALM, as Go's and nginx's servers
# answer it. The refill by completed streams keeps a busy shared connection (the activator's to
# a pod, carrying every client's cancellations) within budget as long as most streams complete.
_RESET_BURST: Final = 1000
_RESET_RATE: Final = 200.0
# Longer than any content-length a request can carry (2**63 has 19 digits); int() of more than
# 4300 digits raises ValueError.
_MAX_CLEN_DIGITS: Final = 19


class H2Conn:
    """One HTTP/2 connection's state, either side (``client_side``)."""

    def __init__(
        self,
        client_side: bool,
        validate_inbound: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client_side = client_side
        self.validate = validate_inbound and not client_side
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.out = bytearray()
        self.inbuf = b""
        self.preface_pending = not client_side  # a server first reads the client preface
        self.settings_seen = False  # the peer's first frame must be SETTINGS
        self.streams: dict[int, _Stream] = {}
        self.reset_ids: dict[int, None] = {}  # streams we reset (ordered: oldest first)
        self.highest_in = 0  # highest stream id the peer opened
        self.highest_out = 0  # highest stream id we opened
        self.dead = False  # a connection error was raised: read nothing more
        self.clock: Callable[[], float] = time.monotonic if clock is None else clock
        self.reset_tokens = float(_RESET_BURST)  # client resets allowed now (server side)
        self.reset_stamp = -1.0  # when reset_tokens was computed (-1: not yet)
        # The peer's settings and our view of its windows.
        self.remote_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        self.remote_max_concurrent_streams = 2**31 - 1
        self.send_window = DEFAULT_WINDOW  # connection-level, what we may still send
        # Ours.
        self.local_settings: dict[int, int] = {}
        self.local_initial_window = DEFAULT_WINDOW
        self.local_max_streams = 2**31 - 1
        self.max_inbound_frame_size = DEFAULT_FRAME_SIZE
        self.recv_window = DEFAULT_WINDOW  # connection-level, what the peer may still send
        self.recv_window_max = DEFAULT_WINDOW
        self.recv_unacked = 0
        # The header block being read (HEADERS then CONTINUATION).
        self.hb_sid = 0
        self.hb_flags = 0
        self.hb_parts: list[bytes] = []
        self.hb_size = 0
        self.hb_self_dependent = False
        # The last request header list found valid: the decoder hands back the same list for a
        # block it has seen (read-only), so a client's repeated head is checked once.
        self.valid_request: list[tuple[bytes, bytes]] | None = None

    # -- set-up -----------------------------------------------------------------------------
    def initiate_connection(self) -> None:
        """Queue the preface (client) and our SETTINGS."""
        if self.client_side:
            self.out += PREFACE
            self.local_settings[SettingCodes.ENABLE_PUSH] = 0
        payload = _settings_payload(self.local_settings)
        self.out += _head(len(payload), SETTINGS, 0, 0) + payload

    def update_settings(self, settings: dict[int, int]) -> None:
        """Announce ``settings``; we apply them at once (they only ever widen what we accept,
        except the header list size, which the caller enforces from now on as h2 did)."""
        for k, v in settings.items():
            self.local_settings[k] = v
            if k == SettingCodes.INITIAL_WINDOW_SIZE:
                delta = v - self.local_initial_window
                self.local_initial_window = v
                for s in self.streams.values():
                    s.recv_window += delta
            elif k == SettingCodes.MAX_CONCURRENT_STREAMS:
                self.local_max_streams = v
            elif k == SettingCodes.MAX_HEADER_LIST_SIZE:
                self.decoder.max_header_list_size = v
        payload = _settings_payload(settings)
        self.out += _head(len(payload), SETTINGS, 0, 0) + payload

    def increment_flow_control_window(self, increment: int) -> None:
        """Widen the connection's receive window by ``increment``."""
        self.recv_window += increment
        self.recv_window_max += increment
        self.out += _head(4, WINDOW_UPDATE, 0, 0) + increment.to_bytes(4, "big")

    def initiate_upgrade_connection(self, settings_header: bytes) -> None:
        """Server side of ``Upgrade: h2c``: apply the client's HTTP2-Settings (acknowledged by
        the 101, RFC 7540 §3.2.1), send our SETTINGS, and make stream 1 half-closed (remote)."""
        pad = b"=" * (-len(settings_header) % 4)
        try:
            payload = base64.urlsafe_b64decode(settings_header + pad)
        except ValueError as e:
            raise H2Error(f"malformed HTTP2-Settings: {e}") from None
        if len(payload) % 6:
            raise H2Error("malformed HTTP2-Settings: not a SETTINGS payload")
        try:
            self._apply_settings(payload)  # no ACK: the 101 acknowledges them
        except ProtocolError as bad:
            raise H2Error(str(bad)) from None
        self.initiate_connection()
        self.preface_pending = True  # the client still sends the preface after the 101
        st = _Stream(1, self.remote_initial_window, self.local_initial_window)
        st.remote_closed = True
        st.headers_in = True
        self.streams[1] = st
        self.highest_in = 1

    # -- output -----------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        if not self.out:
            return b""
        data = bytes(self.out)
        self.out.clear()
        return data

    def get_next_available_stream_id(self) -> int:
        sid = self.highest_out + 2 if self.highest_out else (1 if self.client_side else 2)
        if sid > MAX_WINDOW:
            raise H2Error("no stream ids left on this connection")
        return sid

    def _open(self, sid: int) -> _Stream:
        st = self.streams.get(sid)
        if st is None or st.local_closed:
            raise StreamClosedError(f"stream {sid} is closed")
        return st

    def send_headers(
        self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None:
        st = self.streams.get(sid)
        if st is None:
            if not self.client_side or sid <= self.highest_out or not sid & 1:
                raise StreamClosedError(f"stream {sid} is closed")
            st = _Stream(sid, self.remote_initial_window, self.local_initial_window)
            self.streams[sid] = st
            self.highest_out = sid
        elif st.local_closed:
            raise StreamClosedError(f"stream {sid} is closed")
        block = self.encoder.encode(headers)
        flags = F_END_STREAM if end_stream else 0
        limit = self.max_outbound_frame_size
        out = self.out
        if len(block) <= limit:
            out += _head(len(block), HEADERS, flags | F_END_HEADERS, sid)
            out += block
        else:
            out += _head(limit, HEADERS, flags, sid)
            out += block[:limit]
            pos = limit
            while pos < len(block):
                part = block[pos : pos + limit]
                pos += limit
                last = pos >= len(block)
                out += _head(len(part), CONTINUATION, F_END_HEADERS if last else 0, sid)
                out += part
        if end_stream:
            self._local_end(st)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        st = self._open(sid)
        n = len(data)
        if n > self.send_window or n > st.send_window:
            raise H2Error(f"{n} bytes exceed the flow-control window")
        if n > self.max_outbound_frame_size:
            raise H2Error(f"{n} bytes exceed the frame size")
        self.send_window -= n
        st.send_window -= n
        self.out += _head(n, DATA, F_END_STREAM if end_stream else 0, sid)
        self.out += data
        if end_stream:
            self._local_end(st)

    def end_stream(self, sid: int) -> None:
        st = self._open(sid)
        self.out += _head(0, DATA, F_END_STREAM, sid)
        self._local_end(st)

    def _local_end(self, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            del self.streams[st.sid]
            if self.reset_tokens < _RESET_BURST:
                self.reset_tokens += 1.0  # a completed stream earns back a reset

    def reset_stream(self, sid: int, error_code: int = 0) -> None:
        st = self.streams.pop(sid, None)
        if st is None and (sid in self.reset_ids or not self._was_opened(sid)):
            raise StreamClosedError(f"stream {sid} is closed")
        self.out += _head(4, RST_STREAM, 0, sid) + error_code.to_bytes(4, "big")
        self._remember_reset(sid)

    def _remember_reset(self, sid: int) -> None:
        ids = self.reset_ids
        ids[sid] = None
        if len(ids) > _RESET_MEMORY:
            del ids[next(iter(ids))]

    def _was_opened(self, sid: int) -> bool:
        mine = bool(sid & 1) == self.client_side
        return 0 < sid <= (self.highest_out if mine else self.highest_in)

    def local_flow_control_window(self, sid: int) -> int:
        st = self._open(sid)
        return min(self.send_window, st.send_window)

    def acknowledge_received_data(self, n: int, sid: int) -> None:
        """The application consumed ``n`` bytes of ``sid``: reopen that much window (batched)."""
        if n <= 0:
            return
        self._ack_connection(n)
        st = self.streams.get(sid)
        if st is not None and not st.remote_closed:
            st.recv_unacked += n
            if st.recv_unacked >= self.local_initial_window >> 2:
                inc = st.recv_unacked
                st.recv_unacked = 0
                st.recv_window += inc
                self.out += _head(4, WINDOW_UPDATE, 0, sid) + inc.to_bytes(4, "big")

    def _ack_connection(self, n: int) -> None:
        self.recv_unacked += n
        if self.recv_unacked >= self.recv_window_max >> 2:
            inc = self.recv_unacked
            self.recv_unacked = 0
            self.recv_window += inc
            self.out += _head(4, WINDOW_UPDATE, 0, 0) + inc.to_bytes(4, "big")

    def close_connection(self, error_code: int = 0) -> None:
        self.out += goaway_frame(self.highest_in, error_code)

    # -- input ------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Parse what arrived; return the events. A connection error queues GOAWAY and raises
        :class:`ProtocolError`."""
        events: list[Event] = []
        if self.dead:
            return events
        if self.inbuf:
            data = self.inbuf + data
            self.inbuf = b""
        try:
            pos = 0
            if self.preface_pending:
                n = min(len(data), len(PREFACE))
                if data[:n] != PREFACE[:n]:
                    raise ProtocolError("invalid HTTP/2 preface", ErrorCodes.PROTOCOL_ERROR)
                if n < len(PREFACE):
                    self.inbuf = data
                    return events
                self.preface_pending = False
                pos = len(PREFACE)
            end = len(data)
            max_size = self.max_inbound_frame_size
            while end - pos >= 9:
                length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
                if length > max_size:
                    raise ProtocolError(
                        f"frame of {length} bytes above {max_size}", ErrorCodes.FRAME_SIZE_ERROR
                    )
                if end - pos - 9 < length:
                    break
                ftype = data[pos + 3]
                flags = data[pos + 4]
                sid = (
                    (data[pos + 5] & 0x7F) << 24
                    | data[pos + 6] << 16
                    | data[pos + 7] << 8
                    | data[pos + 8]
                )
                payload = data[pos + 9 : pos + 9 + length]
                pos += 9 + length
                self._frame(events, ftype, flags, sid, payload)
            if pos < end:
                self.inbuf = data[pos:]
        except ProtocolError as e:
            self.dead = True
            self.out += goaway_frame(self.highest_in, e.error_code)
            raise
        return events

    def _frame(self, events: list[Event], ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self.hb_sid and (ftype != CONTINUATION or sid != self.hb_sid):
            raise ProtocolError("header block interrupted", ErrorCodes.PROTOCOL_ERROR)
        if not self.settings_seen:
            if ftype != SETTINGS or flags & F_ACK:
                raise ProtocolError("first frame is not SETTINGS", ErrorCodes.PROTOCOL_ERROR)
            self.settings_seen = True
        if ftype == DATA:
            self._data(events, flags, sid, payload)
        elif ftype == HEADERS:
            self._headers(events, flags, sid, payload)
        elif ftype == CONTINUATION:
            if not self.hb_sid:
                raise ProtocolError("CONTINUATION without HEADERS", ErrorCodes.PROTOCOL_ERROR)
            self.hb_parts.append(payload)
            self.hb_size += len(payload)
            # Bounded in bytes and in frames (a flood of empty CONTINUATIONs costs memory too).
            if (
                self.hb_size > self.decoder.max_header_list_size + 65536
                or len(self.hb_parts) > _MAX_CONTINUATIONS
            ):
                raise ProtocolError("header block too large", ErrorCodes.ENHANCE_YOUR_CALM)
            if flags & F_END_HEADERS:
                block = b"".join(self.hb_parts)
                hsid = self.hb_sid
                self.hb_sid = 0
                self.hb_parts = []
                self._header_block(events, self.hb_flags, hsid, block, self.hb_self_dependent)
        elif ftype == WINDOW_UPDATE:
            self._window_update(events, sid, payload)
        elif ftype == RST_STREAM:
            if sid == 0:
                raise ProtocolError("RST_STREAM on stream 0", ErrorCodes.PROTOCOL_ERROR)
            if len(payload) != 4:
                raise ProtocolError("RST_STREAM size", ErrorCodes.FRAME_SIZE_ERROR)
            st = self.streams.pop(sid, None)
            if st is not None:
                if not self.client_side:
                    self._count_reset()
                events.append(StreamReset(sid, int.from_bytes(payload, "big")))
            elif not self._was_opened(sid):
                raise ProtocolError(f"RST_STREAM on idle stream {sid}", ErrorCodes.PROTOCOL_ERROR)
        elif ftype == SETTINGS:
            if sid:
                raise ProtocolError("SETTINGS on a stream", ErrorCodes.PROTOCOL_ERROR)
            if flags & F_ACK:
                if payload:
                    raise ProtocolError("SETTINGS ACK with payload", ErrorCodes.FRAME_SIZE_ERROR)
                return
            if len(payload) % 6:
                raise ProtocolError("SETTINGS size", ErrorCodes.FRAME_SIZE_ERROR)
            changed = self._apply_settings(payload)
            self.out += _head(0, SETTINGS, F_ACK, 0)
            events.append(RemoteSettingsChanged(changed))
            delta = changed.get(SettingCodes.INITIAL_WINDOW_SIZE, -1)
            if delta >= 0:
                events.append(WindowUpdated(0, 0))  # streams may send more now
        elif ftype == PING:
            if sid:
                raise ProtocolError("PING on a stream", ErrorCodes.PROTOCOL_ERROR)
            if len(payload) != 8:
                raise ProtocolError("PING size", ErrorCodes.FRAME_SIZE_ERROR)
            if not flags & F_ACK:
                self.out += _head(8, PING, F_ACK, 0) + payload
        elif ftype == GOAWAY:
            if sid:
                raise ProtocolError("GOAWAY on a stream", ErrorCodes.PROTOCOL_ERROR)
            if len(payload) < 8:
                raise ProtocolError("GOAWAY size", ErrorCodes.FRAME_SIZE_ERROR)
            last = int.from_bytes(payload[:4], "big") & MAX_WINDOW
            code = int.from_bytes(payload[4:8], "big")
            events.append(ConnectionTerminated(code, last, payload[8:]))
        elif ftype == PRIORITY:
            if sid == 0:
                raise ProtocolError("PRIORITY on stream 0", ErrorCodes.PROTOCOL_ERROR)
            if len(payload) != 5:
                self._stream_error(events, sid, ErrorCodes.FRAME_SIZE_ERROR)
            elif int.from_bytes(payload[:4], "big") & MAX_WINDOW == sid:
                # Depending on itself: a stream error (RFC 9113 §5.3.1), whatever its state.
                self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
        elif ftype == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE (push is disabled)", ErrorCodes.PROTOCOL_ERROR)
        # Unknown frame types are ignored (RFC 9113 §4.1).

    def _count_reset(self) -> None:
        """The client reset a stream that was not over: draw on the reset budget."""
        now = self.clock()
        tokens = self.reset_tokens
        if self.reset_stamp >= 0:
            tokens = min(float(_RESET_BURST), tokens + (now - self.reset_stamp) * _RESET_RATE)
        self.reset_stamp = now
        if tokens < 1.0:
            raise ProtocolError(
                "too many streams reset by the client", ErrorCodes.ENHANCE_YOUR_CALM
            )
        self.reset_tokens = tokens - 1.0

    def _apply_settings(self, payload: bytes) -> dict[int, int]:
        """Apply the peer's settings; returns {id: new value} ({4: delta} for the window)."""
        changed: dict[int, int] = {}
        for i in range(0, len(payload), 6):
            key = (payload[i] << 8) | payload[i + 1]
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == SettingCodes.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(
                        "INITIAL_WINDOW_SIZE too large", ErrorCodes.FLOW_CONTROL_ERROR
                    )
                delta = value - self.remote_initial_window
                self.remote_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise ProtocolError("window overflow", ErrorCodes.FLOW_CONTROL_ERROR)
                changed[key] = max(delta, 0)
            elif key == SettingCodes.MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise ProtocolError("MAX_FRAME_SIZE out of range", ErrorCodes.PROTOCOL_ERROR)
                self.max_outbound_frame_size = value
                changed[key] = value
            elif key == SettingCodes.ENABLE_PUSH:
                if value > 1 or (value and self.client_side):
                    raise ProtocolError("ENABLE_PUSH invalid", ErrorCodes.PROTOCOL_ERROR)
                changed[key] = value
            elif key == SettingCodes.HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
                changed[key] = value
            elif key == SettingCodes.MAX_CONCURRENT_STREAMS:
                self.remote_max_concurrent_streams = value
                changed[key] = value
            else:
                changed[key] = value  # MAX_HEADER_LIST_SIZE (advisory) and unknown ones
        return changed

    def _window_update(self, events: list[Event], sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError("WINDOW_UPDATE size", ErrorCodes.FRAME_SIZE_ERROR)
        inc = int.from_bytes(payload, "big") & MAX_WINDOW
        if sid == 0:
            if inc == 0:
                raise ProtocolError("WINDOW_UPDATE of 0", ErrorCodes.PROTOCOL_ERROR)
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                raise ProtocolError("connection window overflow", ErrorCodes.FLOW_CONTROL_ERROR)
            events.append(WindowUpdated(0, inc))
            return
        st = self.streams.get(sid)
        if st is None:
            if not self._was_opened(sid):
                raise ProtocolError(f"WINDOW_UPDATE on idle stream {sid}", 1)
            return  # a closed stream: late updates are fine
        if inc == 0:
            self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
            return
        st.send_window += inc
        if st.send_window > MAX_WINDOW:
            self._stream_error(events, sid, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        events.append(WindowUpdated(sid, inc))

    def _stream_error(self, events: list[Event], sid: int, code: int) -> None:
        """RST_STREAM ``code``; the application learns of it if it knew the stream."""
        st = self.streams.pop(sid, None)
        if sid in self.reset_ids and st is None:
            return
        self.out += _head(4, RST_STREAM, 0, sid) + code.to_bytes(4, "big")
        self._remember_reset(sid)
        if st is not None and st.headers_in:
            events.append(StreamReset(sid, code, False))

    def _data(self, events: list[Event], flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ProtocolError("DATA on stream 0", ErrorCodes.PROTOCOL_ERROR)
        n = len(payload)
        if n > self.recv_window:
            raise ProtocolError("connection window exceeded", ErrorCodes.FLOW_CONTROL_ERROR)
        self.recv_window -= n
        data = payload
        if flags & F_PADDED:
            if not n or payload[0] >= n:
                raise ProtocolError("padding too long", ErrorCodes.PROTOCOL_ERROR)
            data = payload[1 : n - payload[0]]
        st = self.streams.get(sid)
        if st is None or st.remote_closed or not st.headers_in:
            if st is None and not self._was_opened(sid):
                raise ProtocolError(f"DATA on idle stream {sid}", ErrorCodes.PROTOCOL_ERROR)
            self._ack_connection(n)  # nobody will consume it
            if st is not None and not st.headers_in:
                raise ProtocolError("DATA before HEADERS", ErrorCodes.PROTOCOL_ERROR)
            self._stream_error(events, sid, ErrorCodes.STREAM_CLOSED)
            return
        if n > st.recv_window:
            raise ProtocolError("stream window exceeded", ErrorCodes.FLOW_CONTROL_ERROR)
        st.recv_window -= n
        end = bool(flags & F_END_STREAM)
        if st.clen >= 0:
            st.got += len(data)
            if st.got > st.clen or (end and st.got != st.clen):
                self._ack_connection(n)
                self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
                return
        events.append(DataReceived(sid, data, n, end))
        if end:
            self._remote_end(events, st)

    def _remote_end(self, events: list[Event], st: _Stream) -> None:
        st.remote_closed = True
        if st.local_closed:
            del self.streams[st.sid]
            if self.reset_tokens < _RESET_BURST:
                self.reset_tokens += 1.0
        events.append(StreamEnded(st.sid))

    def _headers(self, events: list[Event], flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ProtocolError("HEADERS on stream 0", ErrorCodes.PROTOCOL_ERROR)
        start = 0
        end = len(payload)
        if flags & F_PADDED:
            if not end:
                raise ProtocolError("padding too long", ErrorCodes.PROTOCOL_ERROR)
            pad = payload[0]
            start = 1
            end -= pad
        if flags & F_PRIORITY:
            start += 5
        if end < start:
            raise ProtocolError("padding too long", ErrorCodes.PROTOCOL_ERROR)
        block = payload[start:end]
        self_dependent = False
        if flags & F_PRIORITY:
            dep = int.from_bytes(payload[start - 5 : start - 1], "big") & MAX_WINDOW
            self_dependent = dep == sid  # a stream error (RFC 9113 §5.3.1), after decoding
        if flags & F_END_HEADERS:
            self._header_block(events, flags, sid, block, self_dependent)
        else:
            self.hb_sid = sid
            self.hb_flags = flags
            self.hb_self_dependent = self_dependent
            self.hb_parts = [block]
            self.hb_size = len(block)

    def _header_block(
        self, events: list[Event], flags: int, sid: int, block: bytes, self_dependent: bool = False
    ) -> None:
        # Decode first, whatever becomes of the stream: the HPACK state is the connection's.
        too_large = False
        try:
            headers = self.decoder.decode(block)
        # (Distinct names per handler: mypyc types an exception variable by its first use.)
        except OversizedHeaderList as big:
            # A request head too large is that request's problem (431, as Go's server answers
            # it): the other streams of the connection (a gRPC channel's calls) go on.
            headers = big.headers
            too_large = True
            big_text = str(big)
        except HPACKError as bad:
            raise ProtocolError(str(bad), ErrorCodes.COMPRESSION_ERROR) from None
        end = bool(flags & F_END_STREAM)
        st = self.streams.get(sid)
        if too_large and (st is not None or self.client_side):
            raise ProtocolError(big_text, ErrorCodes.ENHANCE_YOUR_CALM)
        if st is None:
            if sid in self.reset_ids:
                return  # we reset it: ignore what was in flight
            if self.client_side or not sid & 1:
                if self._was_opened(sid):
                    self._stream_error(events, sid, ErrorCodes.STREAM_CLOSED)
                    return
                raise ProtocolError(f"HEADERS on stream {sid}", ErrorCodes.PROTOCOL_ERROR)
            if sid <= self.highest_in:
                raise ProtocolError(f"HEADERS on closed stream {sid}", ErrorCodes.STREAM_CLOSED)
            self.highest_in = sid
            if self_dependent:
                self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
                return
            if len(self.streams) >= self.local_max_streams:
                self._stream_error(events, sid, ErrorCodes.REFUSED_STREAM)
                return
            if self.validate and headers is not self.valid_request:
                if not _valid_request(headers):
                    self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
                    return
                if not too_large:
                    self.valid_request = headers
            clen = -1
            for name, value in headers:
                if name == b"content-length":
                    if (
                        not value.isdigit()
                        or len(value) > _MAX_CLEN_DIGITS
                        or (clen >= 0 and int(value) != clen)
                    ):
                        clen = -2
                        break
                    clen = int(value)
            if clen == -2 or (end and clen > 0):
                self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
                return
            st = _Stream(sid, self.remote_initial_window, self.local_initial_window)
            st.headers_in = True
            st.clen = clen
            self.streams[sid] = st
            events.append(RequestReceived(sid, headers, end, too_large))
            if end:
                self._remote_end(events, st)
            return
        if self_dependent:
            self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
            return
        if st.remote_closed:
            self._stream_error(events, sid, ErrorCodes.STREAM_CLOSED)
            return
        if not st.headers_in:  # a response (client side), after any number of 1xx heads
            status = b""
            for name, value in headers:
                if name == b":status":
                    status = value
                    break
            if status[:1] == b"1" and len(status) == 3:
                if end:
                    self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
                else:
                    events.append(InformationalReceived(sid, headers))
                return
            st.headers_in = True
            events.append(ResponseReceived(sid, headers, end))
            if end:
                self._remote_end(events, st)
            return
        # Trailers: they end the stream and carry no pseudo-header.
        if not end or (self.validate and not _valid_trailers(headers)):
            self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
            return
        if st.clen >= 0 and st.got != st.clen:
            self._stream_error(events, sid, ErrorCodes.PROTOCOL_ERROR)
            return
        events.append(TrailersReceived(sid, headers))
        self._remote_end(events, st)

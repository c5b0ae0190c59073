"""HTTP/2 mode of tools/differential.py: h2c (prior knowledge) requests through both
queue-proxies, each in front of its own h2c recording app.

    python tools/differential.py --h2 --b /path/to/other/queue-proxy [--count 300]

Both Knative's Go queue-proxy and ours forward an HTTP/2 request to the app over h2c (Go picks
its transport by the request's protocol version, we by the downstream connection's), so both
sides are set up alike: Knative's environment, the user port on an h2c app.

The client (the ``h2`` library, validation off so that it can send what HTTP/2 forbids) opens
one connection per request, sends it, reads the response to the end (interim 1xx, status,
headers, body, trailers) or to the RST_STREAM or GOAWAY that ended it, then asks for
``/again`` on the same connection to tell whether the connection survived. The app (``h2``,
validation off so that it records what it is sent as sent) records each stream's :method,
:path, :authority, other pseudo-headers and regular headers in order, body, trailers, or the
reset that ended it, and answers as ``x-diff-respond`` asks (``RESPONSES``).

Requests are generated from a seed (``generate``): methods, paths with escapes and raw bytes,
``te``, the connection-specific headers HTTP/2 forbids, uppercase names, Knative headers, large
headers, bodies with and without ``content-length``, a ``content-length`` that does not match
the body, request trailers, gRPC calls. Comparison, grouping and the report are
tools/differential.py's; the differences on purpose are ``KNOWN_H2``.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any

import differential as d
from differential import AppView, Lines, Observation, _s
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import H2Error

Headers = list[tuple[bytes, bytes]]


def _code(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def _config(client_side: bool) -> H2Configuration:
    # validation and normalisation off both ways: the client must be able to send what HTTP/2
    # forbids, and each end must see what the proxy sent, not what h2 would accept.
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


class _Sender:
    """A stream's request body and trailers, sent as the peer's flow-control window allows."""

    def __init__(self, conn: H2Connection, sid: int, body: bytes, trailers: Headers) -> None:
        self.conn, self.sid, self.body, self.trailers = conn, sid, body, trailers
        self.done = False

    def pump(self) -> None:
        if self.done:
            return
        try:
            while self.body:
                n = min(
                    self.conn.local_flow_control_window(self.sid),
                    self.conn.max_outbound_frame_size,
                    len(self.body),
                )
                if n <= 0:
                    return
                last = n == len(self.body) and not self.trailers
                self.conn.send_data(self.sid, self.body[:n], end_stream=last)
                self.body = self.body[n:]
            if self.trailers:
                self.conn.send_headers(self.sid, self.trailers, end_stream=True)
        except H2Error:  # the stream was closed (reset) meanwhile
            pass
        self.done = True


# --------------------------------------------------------------------------- the app

_GRPC_MSG = b"\x00\x00\x00\x00\x02hi"  # a length-prefixed gRPC message


def _plain(status: bytes, body: bytes, *extra: tuple[bytes, bytes]) -> tuple[Headers, bytes]:
    return [(b":status", status), (b"content-length", b"%d" % len(body)), *extra], body


# x-diff-respond: (interim responses, headers, body, trailers, reset after the head (code))
RESPONSES: dict[str, tuple[list[Headers], Headers, bytes, Headers, int | None]] = {
    "ok": ([], [(b":status", b"200")], b"ok", [], None),  # no content-type, no length
    "cl": ([], *_plain(b"200", b"ok", (b"content-type", b"text/plain")), [], None),
    "204": ([], [(b":status", b"204"), (b"x-a", b"1")], b"", [], None),
    "404": ([], *_plain(b"404", b"nope"), [], None),
    "500": ([], *_plain(b"500", b"boom"), [], None),
    "trailers": (
        [], [(b":status", b"200"), (b"content-type", b"text/plain")], b"ok",
        [(b"x-sum", b"2")], None,
    ),
    "grpc-error": (  # trailers-only: one HEADERS frame that ends the stream
        [], [(b":status", b"200"), (b"content-type", b"application/grpc"),
             (b"grpc-status", b"13"), (b"grpc-message", b"boom")], b"", [], None,
    ),
    "grpc-ok": (
        [], [(b":status", b"200"), (b"content-type", b"application/grpc")], _GRPC_MSG,
        [(b"grpc-status", b"0")], None,
    ),
    "103": (
        [[(b":status", b"103"), (b"link", b"</s.css>; rel=preload")]],
        *_plain(b"200", b"ok", (b"content-type", b"text/plain")), [], None,
    ),
    "big": ([], *_plain(b"200", bytes(range(256)) * 400, (b"content-type", b"x/y")), [], None),
    "rst": ([], [], b"", [], ErrorCodes.INTERNAL_ERROR),  # reset before any response
    "rst-mid": (  # reset after the head and some body
        [], [(b":status", b"200"), (b"content-type", b"text/plain")], b"part", [],
        ErrorCodes.INTERNAL_ERROR,
    ),
}  # fmt: skip


@dataclass
class _AppStream:
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers = field(default_factory=list)


def _view(st: _AppStream, reset: str = "") -> AppView:
    pseudo = {k: v for k, v in st.headers if k.startswith(b":")}
    others = [
        (_s(k), _s(v)) for k, v in st.headers if k not in (b":method", b":path", b":authority")
    ]
    return AppView(
        _s(pseudo.get(b":method", b"")),
        _s(pseudo.get(b":path", b"")),
        others,  # :scheme and any other pseudo-header stay in, compared with the rest
        _s(st.body),
        [(_s(k), _s(v)) for k, v in st.trailers],
        authority=_s(pseudo.get(b":authority", b"")),
        reset=reset,
    )


class H2Recorder(d.Recorder):
    """The h2c recording app: one per side; streams are found by their x-diff-id."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn = H2Connection(_config(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, _AppStream] = {}
        senders: dict[int, _Sender] = {}
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, RequestReceived):
                        streams[ev.stream_id] = _AppStream(list(ev.headers))
                    elif isinstance(ev, DataReceived):
                        if ev.stream_id in streams:
                            streams[ev.stream_id].body += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, TrailersReceived) and ev.stream_id in streams:
                        streams[ev.stream_id].trailers = list(ev.headers)
                    elif isinstance(ev, StreamEnded) and ev.stream_id in streams:
                        st = streams.pop(ev.stream_id)
                        self._record(st, "")
                        sender = self._respond(conn, ev.stream_id, st)
                        if sender is not None:
                            senders[ev.stream_id] = sender
                    elif isinstance(ev, StreamReset):
                        senders.pop(ev.stream_id, None)
                        if ev.stream_id in streams:
                            self._record(streams.pop(ev.stream_id), _code(ev.error_code))
                    elif isinstance(ev, ConnectionTerminated):
                        for st in streams.values():
                            self._record(st, "GOAWAY " + _code(ev.error_code))
                        streams.clear()
                for sid, sender in list(senders.items()):
                    sender.pump()
                    if sender.done:
                        del senders[sid]
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, H2Error, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _record(self, st: _AppStream, reset: str) -> None:
        rid = next((_s(v) for k, v in st.headers if k.lower() == b"x-diff-id"), "?")
        view = _view(st, reset)
        # with neither :authority nor host the proxy names the app's address: its port differs
        # between the sides
        mine = f"127.0.0.1:{self.port}"
        if view.authority == mine:
            view.authority = "127.0.0.1:<app port>"
        self.seen[rid] = view

    @staticmethod
    def _respond(conn: H2Connection, sid: int, st: _AppStream) -> _Sender | None:
        low = {k.lower(): v for k, v in st.headers}
        interim, head, body, trailers, reset = RESPONSES.get(
            _s(low.get(b"x-diff-respond", b"cl")), RESPONSES["cl"]
        )
        if low.get(b":method") == b"HEAD" or head[:1] == [(b":status", b"204")]:
            body, trailers = b"", []
        for h in interim:
            conn.send_headers(sid, h)
        if head:
            conn.send_headers(sid, head, end_stream=not body and not trailers and reset is None)
        if reset is not None:
            if body:
                conn.send_data(sid, body)
            conn.reset_stream(sid, reset)
            return None
        if not body and not trailers:
            return None
        return _Sender(conn, sid, body, trailers)


# --------------------------------------------------------------------------- requests


@dataclass
class H2Request:
    name: str
    headers: Headers  # pseudo-headers first
    body: bytes = b""
    trailers: Headers = field(default_factory=list)
    empty_data: bool = False  # end the stream with an empty DATA frame, not on HEADERS


_PATHS = [
    b"/", b"/a/b", b"/a?x=1&y=2", b"/%41%2f", b"/a%2Fb", b"/caf\xc3\xa9", b"/?q=\xc3\xbc",
    b"/a|b", b'/a"b', b"/a{b}", b"/a^b", b"/a!b(c)*", b"/a+b=c;d@e:f$&,", b"/%zz", b"/a%4",
    b"//double", b"/./a/../b", b"/a?", b"/a b", b"*",
]  # fmt: skip
_HEADER_SETS: list[Headers] = [
    [],
    [(b"te", b"trailers")],
    [(b"te", b"gzip")],  # malformed in HTTP/2 (only "trailers")
    [(b"connection", b"keep-alive")],  # connection-specific: malformed in HTTP/2
    [(b"keep-alive", b"timeout=5")],
    [(b"upgrade", b"h2c")],
    [(b"transfer-encoding", b"chunked")],
    [(b"proxy-connection", b"keep-alive")],
    [(b"X-Upper", b"1")],  # uppercase name: malformed in HTTP/2
    [(b"x-forwarded-for", b"10.1.1.1")],
    [(b"forwarded", b"for=10.0.0.1"), (b"x-forwarded-proto", b"https")],
    [(b"k-original-host", b"original.example")],
    [(b"knative-serving-revision", b"r"), (b"knative-serving-namespace", b"n")],
    [(b"knative-proxy", b"activator"), (b"k-network-hash", b"x")],
    [(b"x-dup", b"1"), (b"x-dup", b"2"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
    [(b"x-utf8", b"caf\xc3\xa9")],
    [(b"user-agent", b"kube-probe/1.30"), (b"k-kubelet-probe", b"queue")],
    [(b"host", b"other.example")],
    [(b"x-large", b"a" * 8000)],
    [(b"x-large", b"b" * 20000)],  # more than one frame: CONTINUATION
    [(b"x-large", b"c" * 70000)],
]
_BODY_KINDS = ["none", "cl", "no-cl", "cl-short", "cl-long", "trailers", "empty-data", "big"]


def _grpc_request(rnd: random.Random, i: int, respond: str) -> H2Request:
    msg = rnd.randbytes(rnd.choice([0, 3, 100]))
    body = b"\x00" + len(msg).to_bytes(4, "big") + msg
    headers: Headers = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.Echo/Unary"),
        (b":authority", b"diff.example"), (b"x-diff-id", b"%d" % i),
        (b"x-diff-respond", respond.encode()), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"), (b"grpc-timeout", b"5S"), (b"user-agent", b"grpc-python/1.0"),
    ]  # fmt: skip
    return H2Request(f"{i}:grpc {respond} msg={len(msg)}", headers, body)


def generate(count: int, seed: int) -> list[H2Request]:
    """``count`` HTTP/2 requests from ``seed`` (the same list on every run with the same seed)."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        respond = rnd.choice(list(RESPONSES))
        if rnd.random() < 0.15:
            out.append(_grpc_request(rnd, i, rnd.choice(["grpc-ok", "grpc-error", "rst"])))
            continue
        method = rnd.choice([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"])
        path = rnd.choice(_PATHS)
        if path == b"*":
            method = b"OPTIONS"
        pseudo: Headers = [(b":method", method), (b":scheme", b"http"), (b":path", path)]
        how = rnd.random()
        if how < 0.85:
            pseudo.append((b":authority", b"diff.example"))
        elif how < 0.95:  # no :authority, a host header instead
            pseudo.append((b"host", b"diff.example"))
        headers = [*pseudo, (b"x-diff-id", b"%d" % i), (b"x-diff-respond", respond.encode())]
        headers += rnd.choice(_HEADER_SETS)
        kind = rnd.choice(_BODY_KINDS) if method in (b"POST", b"PUT", b"PATCH") else "none"
        payload = rnd.randbytes(rnd.choice([1, 10, 1000])) if kind != "big" else b"z" * 100000
        req = H2Request("", headers)
        if kind in ("cl", "cl-short", "cl-long", "trailers", "big"):
            n = len(payload) + {"cl-short": -1, "cl-long": 1}.get(kind, 0)
            headers.append((b"content-length", b"%d" % n))
        if kind != "none":
            req.body = payload
        if kind == "trailers":
            req.trailers = [(b"x-t", b"1")]
        if kind == "empty-data":
            req.body = b""
            req.empty_data = True
        req.name = f"{i}:{_s(method)} {path!r} {respond} body={kind}" + (
            f" +{_s(headers[len(pseudo) + 2][0])}" if len(headers) > len(pseudo) + 2 else ""
        )
        out.append(req)
    return out


# --------------------------------------------------------------------------- the client

_AGAIN: Headers = [
    (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/again"),
    (b":authority", b"diff.example"), (b"x-diff-id", b"again"),
]  # fmt: skip


@dataclass
class _Got:
    status: int = 0
    headers: Lines = field(default_factory=list)
    body: bytes = b""
    trailers: Lines = field(default_factory=list)
    interim: list[str] = field(default_factory=list)
    ended: str | None = None  # None: not yet; "": normally; else how


def _lines(headers: Any) -> Lines:
    return [(_s(k), _s(v)) for k, v in headers if not k.startswith(b":")]


async def send(port: int, req: H2Request, *, timeout: float = 3.0) -> Observation:
    """``req`` on a new h2c connection, then ``/again`` on the same one (``kept``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = H2Connection(_config(client_side=True))
    conn.initiate_connection()
    got: dict[int, _Got] = {1: _Got()}
    goaway: list[str] = []
    try:
        end = not req.body and not req.trailers and not req.empty_data
        conn.send_headers(1, req.headers, end_stream=end)
        sender = _Sender(conn, 1, req.body, req.trailers)
        if req.empty_data:
            conn.send_data(1, b"", end_stream=True)
        elif not end:
            sender.pump()
        writer.write(conn.data_to_send())
        await _read(reader, writer, conn, got, 1, sender, goaway, timeout)
        first = got[1]
        kept: bool | None = None
        if not goaway and first.ended not in ("closed", "timeout"):
            got[3] = _Got()
            try:
                conn.send_headers(3, _AGAIN, end_stream=True)
            except H2Error:  # our end closed the connection (the proxy broke the protocol)
                got[3].ended = "closed"
            else:
                writer.write(conn.data_to_send())
                await _read(reader, writer, conn, got, 3, None, goaway, 2.0)
            kept = got[3].status == 200 and got[3].ended == ""
        return Observation(
            first.status, first.headers, _s(first.body), None, kept,
            trailers=first.trailers, reset=first.ended or "", interim=first.interim,
        )  # fmt: skip
    finally:
        writer.close()


async def _read(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    conn: H2Connection,
    got: dict[int, _Got],
    sid: int,
    sender: _Sender | None,
    goaway: list[str],
    timeout: float,
) -> None:
    """Read until stream ``sid`` ended (``got[sid].ended`` says how)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    g = got[sid]
    buf = b""
    while g.ended is None:
        try:
            data = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except TimeoutError:
            g.ended = "timeout"
            return
        except ConnectionError:
            data = b""
        if not data:
            g.ended = "closed" if not goaway else goaway[0]
            return
        # one frame at a time: h2 refuses any frame after a GOAWAY (e.g. the SETTINGS ack that
        # Go sends after it) and would lose the GOAWAY event with the rest of the batch
        buf += data
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = 9 + int.from_bytes(buf[:3], "big")
            frame, buf = buf[:n], buf[n:]
            try:
                events = conn.receive_data(frame)
            except H2Error as e:
                if not goaway:  # the proxy broke the protocol towards the client
                    g.ended = f"client protocol error: {type(e).__name__}"
                return
            _events(conn, got, events, goaway)
        if sender is not None:
            sender.pump()
        writer.write(conn.data_to_send())


def _events(conn: H2Connection, got: dict[int, _Got], events: list[Any], goaway: list[str]) -> None:
    for ev in events:
        s = got.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, InformationalResponseReceived) and s is not None:
            hs = dict(ev.headers)
            rest = ";".join(f"{_s(k)}={_s(v)}" for k, v in ev.headers if k != b":status")
            s.interim.append(f"{_s(hs.get(b':status', b''))} {rest}")
        elif isinstance(ev, ResponseReceived) and s is not None:
            s.status = int(dict(ev.headers).get(b":status", b"0"))
            s.headers = _lines(ev.headers)
        elif isinstance(ev, DataReceived):
            if s is not None:
                s.body += ev.data
            try:
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            except H2Error:
                pass
        elif isinstance(ev, TrailersReceived) and s is not None:
            s.trailers = _lines(ev.headers)
        elif isinstance(ev, StreamEnded) and s is not None:
            s.ended = ""
        elif isinstance(ev, StreamReset) and s is not None and s.ended is None:
            # (a reset after the response ended, e.g. NO_ERROR to stop a request body
            # nobody reads, RFC 9113 8.1, leaves the response whole)
            s.ended = "RST_STREAM " + _code(ev.error_code)
        elif isinstance(ev, ConnectionTerminated):
            goaway.append("GOAWAY " + _code(ev.error_code))
            for other in got.values():
                if other.ended is None:
                    other.ended = goaway[0]


# --------------------------------------------------------------------------- the sides


_STREAM_ID = re.compile(r"stream ID \d+")


class H2Side(d.Side):
    def __init__(self, name: str, exe: str, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(name, exe, extra_env)
        self.rec = H2Recorder()

    async def observe(self, i: int, g: H2Request) -> Observation:  # type: ignore[override]
        try:
            o = await send(self.port, g)
        except ConnectionError:
            o = Observation(0, [], "", None, reset="closed")
        self.rec.seen.pop("again", None)
        # a 502 naming the app's reset names its stream on the proxy's connection to the app:
        # a number, and the length of the text, that differ between the sides (for a HEAD,
        # whose 502 has the text's length and no text, the length is not compared)
        body = _STREAM_ID.sub("stream ID <n>", o.body)
        headers = o.headers
        head = (b":method", b"HEAD") in g.headers
        if body != o.body or (head and o.status == 502):
            headers = [(k, "<n>" if k == "content-length" else v) for k, v in headers]
        return replace(o, headers=headers, body=body, app=self.rec.seen.pop(str(i), None))


# --------------------------------------------------------------------------- known differences
# Differences between ours (a) and Knative's Go queue-proxy (b) over HTTP/2 that are on purpose
# (docs/queue-proxy.md, "Where it differs from Knative's Go queue-proxy").


def _malformed_answered(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """Malformed request headers (a connection-specific field, ``te`` other than ``trailers``):
    both refuse before the app; we reset the stream with PROTOCOL_ERROR (RFC 9113 8.1.1), Go
    answers 400 naming the field (the RFC allows a response first)."""
    if (
        a.app is None
        and b.app is None
        and a.status == 0
        and a.reset == "RST_STREAM PROTOCOL_ERROR"
        and b.status == 400
        and ("in HTTP/2" in b.body or not b.body)  # (no body: the answer to a HEAD)
    ):
        b = replace(b, status=0, headers=[], body="", reset=a.reset)
    return a, b


def _go_closes_after_bad_name(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """A header name Go's framer refuses (uppercase): both reset that stream; when the request
    has a body, Go then takes its DATA as on an idle stream (the stream was never opened) and
    closes the connection (GOAWAY PROTOCOL_ERROR); we keep the connection."""
    if (
        a.app is None
        and b.app is None
        and a.reset == "RST_STREAM PROTOCOL_ERROR"
        # (the GOAWAY comes before the RST_STREAM or after it, ending the next stream)
        and (b.reset == "GOAWAY PROTOCOL_ERROR" or (b.reset == a.reset and b.kept is False))
    ):
        b = replace(b, reset=a.reset, kept=a.kept)
    return a, b


def _length_mismatch_reset(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """A content-length that does not match the DATA: we reset the client's stream with
    PROTOCOL_ERROR (RFC 9113 8.1.1: malformed) and cancel the app's stream if it was opened;
    Go forwards and its transport fails (502 "request declared a Content-Length of N but only
    wrote M bytes"), or resets the client's stream before the app for a body over the length.
    A request the queue-proxy answers itself (a probe) gets Go's answer, written before the
    body is read; ours resets as it reads the frames, before the answer is written."""
    if not (a.status == 0 and a.reset == "RST_STREAM PROTOCOL_ERROR"):
        return a, b
    if a.app is not None and a.app.reset != "CANCEL":
        return a, b
    go_502 = b.status == 502 and "request declared a Content-Length" in b.body
    go_answered_itself = a.app is None and b.app is None and b.status not in (0, 502)
    if go_502 or go_answered_itself or (b.status == 0 and b.reset == a.reset):
        app = a.app
        if a.app is not None and b.app is not None:
            app = replace(b.app, body=a.app.body, reset=a.app.reset)
        b = replace(b, status=0, headers=[], body="", reset=a.reset, app=app)
    return a, b


def _length_zero_added(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """Go adds ``content-length: 0`` to a response without body that has no length (a gRPC
    trailers-only error, ...) and to a POST, PUT or PATCH without body going to the app (as
    over HTTP/1.1); over HTTP/2 the END_STREAM flag already says so, we add nothing."""
    zero = ("content-length", "0")
    if zero in b.headers and not d._has(a.headers, "content-length") and not b.body:
        b = replace(b, headers=[h for h in b.headers if h != zero])
    if (
        a.app is not None
        and b.app is not None
        and zero in b.app.headers
        and not d._has(a.app.headers, "content-length")
    ):
        b = replace(b, app=replace(b.app, headers=[h for h in b.app.headers if h != zero]))
    return a, b


def _head_reset_after_head(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """The app resets a HEAD request's stream after its response head: we pass the reset on,
    Go's transport takes a HEAD response as complete at its head and ends the stream."""
    if (
        a.app is not None
        and a.app.method == "HEAD"
        and a.reset.startswith("RST_STREAM")
        and not b.reset
        and a.status == b.status
    ):
        a = replace(a, reset="")
    return a, b


def _header_list_limit(a: Observation, b: Observation) -> tuple[Observation, Observation]:
    """A request header list over QUEUE_MAX_HEADER_BYTES (64 KiB, advertised in
    SETTINGS_MAX_HEADER_LIST_SIZE) gets 431, as over HTTP/1.1; Go takes up to 1 MiB (and here
    fails towards the app, which advertises 64 KiB too: 502)."""
    if a.app is None and a.status == 431:
        b = replace(
            b, status=431, headers=a.headers, body=a.body, reset=a.reset, kept=a.kept, app=None
        )
    return a, b


KNOWN_H2: d.Known = (
    ("Content-Type guessed by Go", d._content_type_guessed),
    ("request trailers reach the app", d._request_trailers_kept),
    ("malformed request reset, Go answers 400", _malformed_answered),
    ("Go closes the connection after a bad header name", _go_closes_after_bad_name),
    ("content-length mismatch reset", _length_mismatch_reset),
    ("content-length: 0 added by Go", _length_zero_added),
    ("HEAD reset after its head passed on", _head_reset_after_head),
    ("header list over 64 KiB answered 431, Go takes 1 MiB", _header_list_limit),
)

MODE: dict[str, Any] = {"side": H2Side, "requests": generate, "known": KNOWN_H2}

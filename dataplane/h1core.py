"""The sans-I/O decisions of the HTTP/1.1 proxy: plain values in, a decision or bytes out.

:mod:`dataplane.proxy` (the ``asyncio.Protocol`` side) asks these functions what to do and
moves the bytes; nothing here touches a transport, a loop or a connection object, so each rule
is tested with byte strings alone (tests/unit/test_h1core.py). What lives here:

- request checks at dispatch (:func:`request_line_error`, :func:`framing_error`,
  :func:`unsupported_version`) and keep-alive as Go reads it (:func:`keep_alive_asked`);
- how a response is framed towards the client, and its head (:func:`response_start`), when the
  connection ends after it (:func:`must_close`), which 1xx go through (:func:`interim_relayed`);
- the request head sent upstream (:func:`request_head`) and chunked framing pieces
  (:func:`last_chunk`);
- the upstream connection: reuse after a response (:func:`upstream_reusable`), a close that
  ends a response (:func:`ends_with_close`), the one transparent retry (:func:`may_retry`), the
  502 reason (:func:`upstream_error_text`);
- requests on one client connection, answered in order: the step after an exchange
  (:func:`after_exchange`) and on an idle connection (:func:`when_idle`); whether a parsed
  request is served at once or queued is one test inline in ``ServerConnection.head_parsed``,
  where a call would cost more than the test on every request.

Reading requests from bytes is :mod:`dataplane.h1reader`'s (also sans I/O); body buffering and
flow control are the connection's, as they are I/O. On the
interpreted build a call costs about what its work does, so the common request skips the
checks (see ``ServerConnection._dispatch``) and the hot decisions are few, wide functions.
Compiled with mypyc with the engine.
"""

from __future__ import annotations

import re
from typing import Final

from .forwarded import forwarded_value
from .http1 import connection_tokens, status_line

__all__ = [
    "IDLE_CLOSE",
    "IDLE_READ",
    "IDLE_REFUSE",
    "M_CHUNKED",
    "M_CLOSE",
    "M_NONE",
    "M_RAW",
    "NEXT_CLOSE",
    "NEXT_DRAIN",
    "NEXT_READ",
    "NEXT_RUN",
    "after_exchange",
    "ends_with_close",
    "framing_error",
    "interim_relayed",
    "keep_alive_asked",
    "last_chunk",
    "lines_without",
    "may_retry",
    "must_close",
    "request_head",
    "request_line_error",
    "response_start",
    "unsupported_version",
    "upstream_error_text",
    "upstream_reusable",
    "when_idle",
]

# Response framing towards the client.
M_NONE: Final = 0  # no body (HEAD, 1xx, 204, 304)
M_RAW: Final = 1  # Content-Length passthrough
M_CHUNKED: Final = 2  # re-chunked
M_CLOSE: Final = 3  # delimited by closing the connection (HTTP/1.0 clients)

_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_BASIC_CONN_TOKENS: Final = frozenset((b"keep-alive", b"close", b"upgrade"))
_LENGTH_METHODS: Final = frozenset((b"POST", b"PUT", b"PATCH"))
#: hdr key: the first X-Forwarded-For line when there were several (the Forwarded shim's).
XFF_FIRST: Final = b":xff-first"
#: Bytes Go's httpguts.ValidHostHeader allows in a Host (Go answers others with 400).
HOST_BYTES: Final = (
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!$%&'()*+,-.:;=[]_~"
)
#: ``1 in host.translate(HOST_MARKS)``: the Host has a byte outside HOST_BYTES (a table
#: translate; ``translate(None, HOST_BYTES)`` would build its table again at every call).
HOST_MARKS: Final = bytes(0 if c in HOST_BYTES else 1 for c in range(256))


def add_line(out: list[bytes], name: bytes, value: bytes) -> None:
    """Add a header line to ``out``, a list of (name, ": ", value, CRLF) groups. Four appends:
    compiled, ``out += (name, b": ", value, CRLF)`` builds a tuple and frees it (about 200
    instructions more per line)."""
    out.append(name)
    out.append(b": ")
    out.append(value)
    out.append(_CRLF)


def lines_without(out: list[bytes], names: set[bytes]) -> list[bytes]:
    """The header lines of ``out`` (pieces that join into whole lines, each ending in CRLF:
    a reader's (name, ": ", value, CRLF) groups, or runs of lines as received) but those whose
    lower-case name is in ``names``; each kept line is followed by a CRLF item. (Rare: only a
    Connection header naming further headers asks.)"""
    kept: list[bytes] = []
    for line in b"".join(out).split(_CRLF):
        if line and line.partition(b":")[0].lower() not in names:
            kept += (line, _CRLF)
    return kept


# -- requests ----------------------------------------------------------------------------------
_VERSION_TOKEN: Final = re.compile(rb" HTTP/([0-9])\.[0-9]\r?\n")


def unsupported_version(data: bytes) -> bool:
    """The parser refused a request in ``data``: does its request line carry a well-formed
    ``HTTP/x.y`` with a major version other than 1? Go answers those 505, other bad versions
    400."""
    m = _VERSION_TOKEN.search(data)
    return m is not None and m.group(1) != b"1"


def keep_alive_asked(version: str, connection: bytes | None) -> bool:
    """Whether a request asks to keep its connection, read as Go reads it: from Connection
    only (llhttp also honours ``Proxy-Connection``, which Go ignores)."""
    tokens = connection_tokens(connection) if connection else set()
    if version == "1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


def request_line_error(version: str, method: bytes) -> tuple[int, str] | None:
    """A request line the proxy refuses (status, reason), before its target is looked at."""
    if version != "1.1" and version != "1.0":
        if version == "0.9":
            return 400, "malformed HTTP request"
        return 505, "unsupported protocol version"
    if method == b"CONNECT":
        return 405, "CONNECT is not supported"
    return None


def framing_error(
    version: str, host: bytes | None, chunked: bool, te: bytes | None
) -> tuple[int, str] | None:
    """Host and Transfer-Encoding checks (status, reason) once the target is in origin form;
    ``te``: the Transfer-Encoding value (None without one)."""
    if not host:
        if version == "1.1":
            return 400, "missing required Host header"
    elif 1 in host.translate(HOST_MARKS):  # a byte not allowed in a Host
        return 400, "malformed Host header"
    if chunked:
        if version == "1.0":
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (Go ignores it,
            # llhttp honours it: a front end and we could disagree on where the body ends).
            return 400, "Transfer-Encoding in an HTTP/1.0 request"
        if te is None or te.strip().lower() != b"chunked":
            return 501, "unsupported transfer encoding"
    return None


def request_head(
    method: bytes,
    target: bytes,
    host: bytes,
    hdr: dict[bytes, bytes],
    hdr_out: list[bytes],
    peer: bytes,
    forwarded_shim: bool = False,
    chunked: bool = False,
    upgrade: bool = False,
    extra_headers: bytes = b"",
) -> bytes:
    """The head of the request as sent upstream (Go ReverseProxy's rewrite): ``hdr`` holds the
    indexed headers, ``hdr_out`` the pass-through lines (pieces that join into them: see
    :func:`lines_without`);
    headers the Connection header names are dropped, TE only as ``trailers``, the peer appended
    to X-Forwarded-For, the body framing re-declared."""
    parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, _CRLF]
    ctoks = hdr.get(b"connection")
    listed: set[bytes] | None = None  # the further hop-by-hop names Connection lists
    if (
        ctoks is not None
        and ctoks not in _BASIC_CONN_TOKENS  # (as usually spelt: no lower() then)
        and ctoks.lower() not in _BASIC_CONN_TOKENS
    ):
        listed = connection_tokens(ctoks) - _BASIC_CONN_TOKENS
        if listed:
            parts += lines_without(hdr_out, listed)
        else:
            parts += hdr_out
    else:
        parts += hdr_out
    if b"te" in hdr and (listed is None or b"te" not in listed):
        parts.append(b"TE: trailers\r\n")
    prior = (
        hdr.get(b"x-forwarded-for") if listed is None or b"x-forwarded-for" not in listed else None
    )
    if peer:  # (appends: a tuple here would be built and freed for every request)
        parts.append(b"X-Forwarded-For: ")
        parts.append(prior + b", " + peer if prior else peer)
        parts.append(_CRLF)
    elif prior is not None:
        parts += (b"X-Forwarded-For: ", prior, _CRLF)
    if forwarded_shim and b"forwarded" not in hdr:
        fwd = forwarded_value(
            hdr.get(XFF_FIRST, prior),
            hdr.get(b"x-forwarded-host"),
            hdr.get(b"x-forwarded-proto"),
        )
        if fwd is not None:
            parts += (b"Forwarded: ", fwd, _CRLF)
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
        trailer = hdr.get(b"trailer")
        if trailer:  # Go's transport announces the declared trailers again
            parts += (b"Trailer: ", trailer, _CRLF)
    else:
        clen = hdr.get(b"content-length")
        if clen is not None:
            parts.append(b"Content-Length: ")
            parts.append(clen)
            parts.append(_CRLF)
        elif method in _LENGTH_METHODS:
            # Go's transport declares an empty body for these methods ("many servers expect
            # a Content-Length"), and apps behind Knative see it.
            parts.append(b"Content-Length: 0\r\n")
    if upgrade:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", hdr.get(b"upgrade", b""), _CRLF)
    if extra_headers:
        parts.append(extra_headers)
    parts.append(_CRLF)
    return b"".join(parts)


def last_chunk(trailers: list[bytes] | None) -> bytes:
    """The end of a chunked body, with its trailer lines (name, ": ", value, CRLF groups)."""
    if trailers:
        return b"0\r\n" + b"".join(trailers) + _CRLF
    return _LAST_CHUNK


# -- responses ---------------------------------------------------------------------------------
def must_close(
    keep_alive: bool,
    shutting_down: bool,
    upgrade: bool,
    expect_continue: bool,
    sent_continue: bool,
    body_done: bool,
) -> bool:
    """The client connection ends after this response: the client asked (or spoke HTTP/1.0
    without keep-alive), the server drains, an upgrade was refused, or a body announced with
    ``Expect: 100-continue`` was neither invited nor received (its bytes may still come)."""
    return (
        not keep_alive
        or shutting_down
        or upgrade
        or (expect_continue and not sent_continue and not body_done)
    )


def response_start(
    out: list[bytes],
    method: bytes,
    status: int,
    version: str,
    chunked: bool,
    clen: bytes | None,
    resp_out: list[bytes],
    resp_conn: bytes | None,
    resp_extra: bytes,
    date_line: bytes,
    close: bool,
    trailer: bytes | None = None,
) -> tuple[int, bool]:
    """How a proxied response goes to the client: its framing mode (no body, as received with
    Content-Length, re-chunked, or delimited by close for an HTTP/1.0 client) and whether the
    connection ends after it; its head is appended to ``out`` (pieces that join into it: the
    caller joins them with the body that follows, once).

    ``chunked``/``clen``: the upstream's framing (``clen`` its Content-Length value);
    ``resp_out``: its pass-through lines (pieces, as ``hdr_out``); ``resp_conn``: its
    Connection value (the headers it names are dropped); ``date_line``: ``Date:`` when the
    upstream sent none (else empty); ``close``: :func:`must_close` said so; ``trailer``: the
    trailer names a chunked upstream announced, announced again. An HTTP/1.0 client gets no
    ``Connection: close`` (the end of the connection is HTTP/1.0's default; Go writes none
    either). One function, not three: on the interpreted build each call costs as much as the
    work."""
    if method == b"HEAD" or status == 204 or status == 304:
        mode = M_NONE
    elif chunked or clen is None:
        mode = M_CHUNKED if version == "1.1" else M_CLOSE
    else:
        mode = M_RAW
    parts = out
    parts.append(status_line(status))
    if (
        resp_conn is not None
        and resp_conn not in _BASIC_CONN_TOKENS  # (as usually spelt: no lower() then)
        and resp_conn.lower() not in _BASIC_CONN_TOKENS
        and (connection_tokens(resp_conn) - _BASIC_CONN_TOKENS)
    ):
        parts += lines_without(resp_out, connection_tokens(resp_conn))
    else:
        parts += resp_out
    if resp_extra:
        parts.append(resp_extra)
    if clen is not None and mode in (M_RAW, M_NONE):
        parts.append(b"Content-Length: ")  # (appends, as in request_head)
        parts.append(clen)
        parts.append(_CRLF)
    elif mode == M_CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if trailer is not None:
        parts += (b"Trailer: ", trailer, _CRLF)
    if date_line:
        parts.append(date_line)
    if close or mode == M_CLOSE:
        close = True
        if version != "1.0":
            parts.append(b"Connection: close\r\n")
    elif version == "1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(_CRLF)
    return mode, close


def interim_relayed(version: str, resp_started: bool, status: int, sent_continue: bool) -> bool:
    """Whether an interim (1xx) response from the upstream goes to the client: only an
    HTTP/1.1 client understands one, never after the final head, and ``100 Continue`` once."""
    return version == "1.1" and not resp_started and not (status == 100 and sent_continue)


# -- the upstream connection -------------------------------------------------------------------
def upstream_reusable(
    keep_alive: bool, framed: bool, mode: int, body_sent: bool, upgrade: bool
) -> bool:
    """After a complete response: whether the upstream connection can carry another request.
    The upstream keeps it alive, the response had a length (``framed``: Content-Length or
    chunked) or no body (a body ended by the upstream closing cannot be followed), the whole
    request body went up (an answer before the end of the body leaves the rest unsent), and the
    request did not ask to switch protocols."""
    return keep_alive and body_sent and not upgrade and (framed or mode == M_NONE)


def ends_with_close(failed: bool, resp_started: bool, framed: bool, mode: int) -> bool:
    """The upstream closed its connection: whether that ends the response (a body delimited by
    the close: no Content-Length, not chunked) rather than breaking it."""
    return not failed and resp_started and not framed and mode != M_NONE


def may_retry(reused: bool, got_bytes: bool, replayable: bool, retried: bool) -> bool:
    """A pooled connection failed before any response byte: the upstream closed it as we reused
    it, so the request was never processed. One transparent retry on a fresh connection, for a
    request that can be sent again (no body; idempotent or with an Idempotency-Key)."""
    return reused and not got_bytes and replayable and not retried


def upstream_error_text(exc: BaseException | None) -> str:
    """The 502 reason for an upstream connection lost mid-exchange (Go's words)."""
    if isinstance(exc, ConnectionResetError):
        return "read: connection reset by peer"
    if exc is None:
        return "EOF"
    return str(exc) or type(exc).__name__


# -- requests on one client connection (pipelining) --------------------------------------------
# What the connection does once a request's exchange has ended (:func:`after_exchange`).
NEXT_CLOSE: Final = 1  # close it (lingering): the response said so, or a tunnel ended
NEXT_DRAIN: Final = 2  # the request's body still arrives: read it to its end, then go on
NEXT_RUN: Final = 3  # run what waits: a pipelined request, a refusal held back, the server's drain
NEXT_READ: Final = 4  # nothing waits: read the next request

# What a connection with no active request does once the queue is empty (:func:`when_idle`).
IDLE_READ: Final = 1  # read on
IDLE_REFUSE: Final = (
    2  # write the refusal held back for bad bytes after the answered requests, close
)
IDLE_CLOSE: Final = 3  # the server drains and no request is under way: close


def after_exchange(
    closing: bool, upgrade: bool, body_pending: bool, queued: bool, refusal: bool, draining: bool
) -> int:
    """The step after an exchange ended: ``closing`` (its response ends the connection),
    ``upgrade`` (it was a tunnel), ``body_pending`` (its request body is still arriving),
    ``queued`` (pipelined requests wait), ``refusal`` (a refusal is held back for bad bytes read
    after them), ``draining`` (the server shuts down)."""
    if closing or upgrade:
        return NEXT_CLOSE
    if body_pending:
        return NEXT_DRAIN
    if queued or refusal or draining:
        return NEXT_RUN
    return NEXT_READ


def when_idle(refusal: bool, parsing: bool, draining: bool) -> int:
    """No request is active and none waits: write the held-back refusal, close a draining
    connection between requests, or read on."""
    if refusal:
        return IDLE_REFUSE
    if draining and not parsing:
        return IDLE_CLOSE
    return IDLE_READ

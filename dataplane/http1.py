"""HTTP/1.1 constants and small helpers shared by the proxy engine and its handlers.

Everything on the hot path is precomputed bytes: status lines, header-name classification
tables (lower-case name -> action) and canned error responses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Final

__all__ = [
    "RAW_NAMES_MAX",
    "REQ_ACTIONS",
    "RESP_ACTIONS",
    "TARGET_MARKS",
    "DateCache",
    "escape_high_bytes",
    "go_request_target",
    "request_actions",
    "status_line",
    "trailer_names",
]

# Go's net/http status texts (the queue-proxy writes Go's reason phrases, not the upstream's).
_REASONS: Final = {
    100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    208: "Already Reported", 226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Request Entity Too Large",
    414: "Request URI Too Long", 415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable", 417: "Expectation Failed", 418: "I'm a teapot",
    421: "Misdirected Request", 422: "Unprocessable Entity", 423: "Locked",
    424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required",
    428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates", 507: "Insufficient Storage", 508: "Loop Detected",
    510: "Not Extended", 511: "Network Authentication Required",
}  # fmt: skip

_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason.encode()) for code, reason in _REASONS.items()
}


def status_line(code: int) -> bytes:
    """``HTTP/1.1 <code> <reason>\\r\\n`` with Go's reason phrase (``status code N`` if none)."""
    line = _STATUS_LINES.get(code)
    if line is not None:
        return line
    return b"HTTP/1.1 %03d %s\r\n" % (code, b"status code %d" % code)


# --- request header actions (keys: lower-case header names) ---------------------------------
# The engine's own table knows HTTP only: hop-by-hop and framing headers, Host, the forwarding
# headers its X-Forwarded-For and Forwarded logic reads, and Expect. A component adds the names
# its handler wants to read (H_KEEP: indexed and forwarded) and those it consumes (H_STRIP:
# indexed, never forwarded) through its ServerConfig; :func:`request_actions` merges them once
# per server. Headers not in the merged table are copied through untouched on the fast path.
H_DROP: Final = 1  # hop-by-hop or re-framed by us: never forwarded as received
H_KEEP: Final = 2  # forwarded, and remembered for the handler (first value)
H_HOST: Final = 3  # Host: remembered, re-emitted first by the head builder
H_XFF: Final = (
    4  # X-Forwarded-For: remembered (all values joined) and re-emitted with the peer added
)
H_STRIP: Final = (
    5  # a component's own header: remembered (first value) for the handler, never forwarded
)
H_CONNECTION: Final = 6  # Connection: remembered (its tokens name further hop-by-hop headers)
H_TE: Final = 7  # TE: dropped except that "trailers" survives (Go ReverseProxy parity)
H_UPGRADE: Final = 8  # Upgrade: remembered; re-emitted only on upgrade requests
H_CLEN: Final = 9  # Content-Length: remembered; re-emitted by the framing logic
H_TENC: Final = 10  # Transfer-Encoding: remembered; re-framed by us
H_TRAILER: Final = 12  # Trailer: remembered (all lines joined); re-announced on chunked requests
H_PROXY_CONN: Final = (
    13  # Proxy-Connection: remembered (llhttp reads it as Connection; Go does not)
)

#: The engine's table: what HTTP itself (and the proxy's forwarding logic) needs.
REQ_ACTIONS: Final[dict[bytes, int]] = {
    b"host": H_HOST,
    b"connection": H_CONNECTION,
    b"keep-alive": H_DROP,
    b"proxy-connection": H_PROXY_CONN,
    b"proxy-authenticate": H_DROP,
    b"proxy-authorization": H_DROP,
    b"te": H_TE,
    b"trailer": H_TRAILER,
    b"transfer-encoding": H_TENC,
    b"upgrade": H_UPGRADE,
    b"content-length": H_CLEN,
    b"x-forwarded-for": H_XFF,
    b"x-forwarded-host": H_KEEP,
    b"x-forwarded-proto": H_KEEP,
    b"forwarded": H_KEEP,
    b"expect": H_KEEP,
}


#: Header names (as received) whose classification a server or the upstream side remembers:
#: a client that sends ever new names costs a lower() each, never memory beyond this.
RAW_NAMES_MAX: Final = 512


def request_actions(index: Iterable[bytes] = (), strip: Iterable[bytes] = ()) -> dict[bytes, int]:
    """The engine's table plus a component's headers: ``index`` (read by its handler, still
    forwarded) and ``strip`` (read by its handler, never forwarded). Names are case-insensitive;
    a name the engine already handles keeps the engine's action (ValueError if asked to strip
    it: the engine's framing depends on it)."""
    table = dict(REQ_ACTIONS)
    for name in index:
        table.setdefault(name.lower(), H_KEEP)
    for name in strip:
        lname = name.lower()
        if lname in REQ_ACTIONS:
            raise ValueError(f"header {name!r} is handled by the engine and cannot be stripped")
        table[lname] = H_STRIP
    return table


# --- response header actions ----------------------------------------------------------------
R_DROP: Final = 1
R_CLEN: Final = 2
R_TENC: Final = 3
R_CONNECTION: Final = 4
R_UPGRADE: Final = 5
R_DATE: Final = 6
R_TRAILER: Final = 7  # Trailer: remembered; re-announced for a chunked response (Go ReverseProxy)

RESP_ACTIONS: Final[dict[bytes, int]] = {
    b"connection": R_CONNECTION,
    b"keep-alive": R_DROP,
    b"proxy-connection": R_DROP,
    b"proxy-authenticate": R_DROP,
    b"proxy-authorization": R_DROP,
    b"te": R_DROP,
    b"trailer": R_TRAILER,
    b"transfer-encoding": R_TENC,
    b"upgrade": R_UPGRADE,
    b"content-length": R_CLEN,
    b"date": R_DATE,
}


_DAYS: Final = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS: Final = (
    b"Jan",
    b"Feb",
    b"Mar",
    b"Apr",
    b"May",
    b"Jun",
    b"Jul",
    b"Aug",
    b"Sep",
    b"Oct",
    b"Nov",
    b"Dec",
)


def http_date(ts: float) -> bytes:
    """IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    t = time.gmtime(ts)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


class DateCache:
    """The ``Date:`` header line, rebuilt at most once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + http_date(now) + b"\r\n"
        return self._line


def connection_tokens(value: bytes) -> set[bytes]:
    """Lower-case tokens of a Connection header value."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def error_body_headers(body: bytes) -> bytes:
    """Header lines of a Go ``http.Error`` response carrying ``body``."""
    return (
        b"Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
        b"Content-Length: %d\r\n" % len(body)
    )


# --- request targets as Go's queue-proxy forwards them ----------------------------------------
# Go's server parses the target with url.ParseRequestURI and its transport writes
# URL.RequestURI(): a path that is not a valid encoding (a byte Go's url.shouldEscape escapes
# that validEncoded does not allow: bytes >= 0x80, space, '"', '#', '<', '>', '\\', '^', '`',
# '{', '|', '}') is decoded and re-escaped as a whole; a valid path goes as received; the query
# always goes as received. A '%' not followed by two hex digits in the path is a 400.

_ALNUM: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# url.validEncoded(path, encodePath): bytes a path may hold as it is.
_PATH_VALID: Final = _ALNUM + b"-_.~$&+,/:;=@!'()*[]%"
# The quick check of a whole target (one translate, measured ~0.4 us less per request than
# splitting off the query first): a target of these bytes goes as it is. Any other byte, '%'
# included, sends it to the slow path, which looks at the path alone.
_TARGET_QUICK: Final = _ALNUM + b"-_.~$&+,/:;=@!'()*[]?"
#: ``1 in target.translate(TARGET_MARKS)``: the target has a byte outside that set. A table
#: translate and a memchr cost ~40 ns; ``translate(None, deletechars)`` rebuilds its table per
#: call (measured: 1,600 instructions per request, 1.3 % of the engine's).
TARGET_MARKS: Final = bytes(0 if c in _TARGET_QUICK else 1 for c in range(256))
# url.escape(path, encodePath): what each byte becomes.
_PATH_ESCAPE: Final = tuple(
    bytes([c]) if c in _ALNUM or c in b"-_.~$&+,/:;=@" else b"%%%02X" % c for c in range(256)
)
_BAD_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESCAPE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_HIGH: Final = re.compile(rb"[\x80-\xff]+")


def _unhex(m: re.Match[bytes]) -> bytes:
    return bytes((int(m[1], 16),))


def go_request_target(target: bytes) -> bytes | None:
    """``target`` (origin form) as Go's reverse proxy sends it upstream; None if Go refuses it.

    The common target (only path bytes that need no escaping, no '%', no query) costs one
    ``translate``."""
    if 1 not in target.translate(TARGET_MARKS):
        return target
    path, q, query = target.partition(b"?")
    if _BAD_ESCAPE.search(path) is not None:
        return None
    if not path.translate(None, _PATH_VALID):
        return target  # a valid encoding: RawPath is kept as received
    raw = _ESCAPE.sub(_unhex, path)
    esc = _PATH_ESCAPE
    return b"".join([esc[c] for c in raw]) + q + query


def escape_high_bytes(seg: bytes) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """``seg`` with every byte >= 0x80 percent-encoded (what llhttp accepts in a target), and
    the runs replaced: (start, end) in the result and the original bytes."""
    out: list[bytes] = []
    runs: list[tuple[int, int, bytes]] = []
    pos = 0
    size = 0
    for m in _HIGH.finditer(seg):
        plain = seg[pos : m.start()]
        raw = m[0]
        enc = b"".join([b"%%%02X" % c for c in raw])
        out += (plain, enc)
        size += len(plain)
        runs.append((size, size + len(enc), raw))
        size += len(enc)
        pos = m.end()
    out.append(seg[pos:])
    return b"".join(out), runs


def restore_high_bytes(
    esc: bytes, start: int, end: int, runs: list[tuple[int, int, bytes]]
) -> bytes:
    """``esc[start:end]`` with the runs :func:`escape_high_bytes` encoded given back."""
    out: list[bytes] = []
    i = start
    for s, e, raw in runs:
        if e <= start or s >= end:
            continue
        out += (esc[i:s], raw)
        i = e
    out.append(esc[i:end])
    return b"".join(out)


_TOKEN: Final = frozenset(_ALNUM + b"!#$%&'*+-.^_`|~")
_BAD_TRAILER_KEYS: Final = frozenset((b"Transfer-Encoding", b"Trailer", b"Content-Length"))


def _canonical_key(name: bytes) -> bytes:
    """Go's textproto.CanonicalMIMEHeaderKey (names with a non-token byte stay as they are)."""
    if not name or any(c not in _TOKEN for c in name):
        return name
    return b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))


def trailer_names(value: bytes, sep: bytes = b",") -> bytes | None:
    """The ``Trailer:`` line value Go announces again for a chunked message declaring ``value``
    (canonical names, sorted, joined by ``sep``: its transport joins a request's with ``,``, its
    ReverseProxy a response's with ``, ``); None for a forbidden name (Go refuses the message:
    400 for a request, 502 for a response)."""
    names = set()
    for part in value.split(b","):
        name = part.strip(b" \t")
        if not name:
            continue
        key = _canonical_key(name)
        if key in _BAD_TRAILER_KEYS:
            return None
        names.add(key)
    return sep.join(sorted(names))

"""HTTP/1.1 constants and small helpers shared by the proxy engine and its handlers.

Everything on the hot path is precomputed bytes: status lines, header-name classification
tables (lower-case name -> action) and canned error responses.
"""

from __future__ import annotations

import time

__all__ = [
    "REQ_ACTIONS",
    "RESP_ACTIONS",
    "DateCache",
    "status_line",
]

# Go's net/http status texts (the queue-proxy writes Go's reason phrases, not the upstream's).
_REASONS = {
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

_STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason.encode()) for code, reason in _REASONS.items()
}


def status_line(code: int) -> bytes:
    """``HTTP/1.1 <code> <reason>\\r\\n`` with Go's reason phrase (``status code N`` if none)."""
    line = _STATUS_LINES.get(code)
    if line is not None:
        return line
    return b"HTTP/1.1 %03d %s\r\n" % (code, b"status code %d" % code)


# --- request header actions (keys: lower-case header names) ---------------------------------
# Headers not listed here are copied through untouched on the fast path.
H_DROP = 1  # hop-by-hop or re-framed by us: never forwarded as received
H_KEEP = 2  # forwarded, and remembered for the handler (probe headers, UA, ...)
H_HOST = 3  # Host: remembered, re-emitted first by the head builder
H_XFF = 4  # X-Forwarded-For: remembered (all values joined) and re-emitted with the peer added
H_STRIP = 5  # Knative routing headers: remembered for the handler, never forwarded
H_CONNECTION = 6  # Connection: remembered (its tokens name further hop-by-hop headers)
H_TE = 7  # TE: dropped except that "trailers" survives (Go ReverseProxy parity)
H_UPGRADE = 8  # Upgrade: remembered; re-emitted only on upgrade requests
H_CLEN = 9  # Content-Length: remembered; re-emitted by the framing logic
H_TENC = 10  # Transfer-Encoding: remembered; re-framed by us
H_ORIGHOST = 11  # K-Original-Host: remembered; consumed by the queue-proxy

REQ_ACTIONS: dict[bytes, int] = {
    b"host": H_HOST,
    b"connection": H_CONNECTION,
    b"keep-alive": H_DROP,
    b"proxy-connection": H_DROP,
    b"proxy-authenticate": H_DROP,
    b"proxy-authorization": H_DROP,
    b"te": H_TE,
    b"trailer": H_DROP,
    b"transfer-encoding": H_TENC,
    b"upgrade": H_UPGRADE,
    b"content-length": H_CLEN,
    b"x-forwarded-for": H_XFF,
    b"knative-serving-revision": H_STRIP,
    b"knative-serving-namespace": H_STRIP,
    b"k-original-host": H_ORIGHOST,
    b"user-agent": H_KEEP,
    b"k-network-probe": H_KEEP,
    b"k-network-hash": H_KEEP,
    b"k-kubelet-probe": H_KEEP,
    b"k-proxy-request": H_KEEP,
    b"x-forwarded-host": H_KEEP,
    b"x-forwarded-proto": H_KEEP,
    b"forwarded": H_KEEP,
    b"expect": H_KEEP,
    b"traceparent": H_KEEP,
    b"x-b3-traceid": H_KEEP,
    b"referer": H_KEEP,
    b"knative-serving-tag": H_KEEP,
    b"knative-serving-default-route": H_KEEP,
    b"k-passthrough-lb": H_KEEP,
}

# --- response header actions ----------------------------------------------------------------
R_DROP = 1
R_CLEN = 2
R_TENC = 3
R_CONNECTION = 4
R_UPGRADE = 5
R_DATE = 6

RESP_ACTIONS: dict[bytes, int] = {
    b"connection": R_CONNECTION,
    b"keep-alive": R_DROP,
    b"proxy-connection": R_DROP,
    b"proxy-authenticate": R_DROP,
    b"proxy-authorization": R_DROP,
    b"te": R_DROP,
    b"trailer": R_DROP,
    b"transfer-encoding": R_TENC,
    b"upgrade": R_UPGRADE,
    b"content-length": R_CLEN,
    b"date": R_DATE,
}


_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (
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

"""Reading HTTP/1.1 requests and responses, sans I/O: bytes in, parsed messages out.

A :class:`RequestReader` is fed what a client connection reads (:meth:`RequestReader.feed`)
and tells its sink what the bytes held: a request begun (the sink makes its object), its head
parsed, its body in pieces and its end; :meth:`~RequestReader.feed` returns whether the bytes
were all taken (:data:`FEED_OK`), held as a possible HTTP/2 preface (:data:`FEED_WAIT`), ended
an upgrade request's head (:data:`FEED_UPGRADE`, the rest in ``reader.rest``) or were refused
(:data:`FEED_ERROR`, ``reader.error`` the status and reason; ``reader.preface`` the HTTP/2
bytes when the connection opened with the HTTP/2 preface). It never touches a transport, a
loop or a timer, so a test is byte strings in and the sink's record out
(tests/unit/test_h1reader.py); :class:`dataplane.proxy.ServerConnection` is the sink on a real
socket and decides what to do with each request (serve it, queue it behind the one being
answered, refuse the connection).

A :class:`ResponseReader` does the same for an upstream connection's responses, one per request:
fed each read with the request it answers as the sink, it reports 1xx heads, the final head (its
framing and connection headers kept apart from those passed through), body pieces and the end,
or refuses what Go's transport refuses; :class:`dataplane.upstream.UpstreamConnection` feeds it.

Parsing is llhttp's (httptools), whose callbacks land here; the reader adds what Go's server
does and llhttp does not: limits on the request line and header block, header names indexed as
their component declared them (the ``actions`` table of :func:`dataplane.http1.request_actions`),
request targets with bytes >= 0x80, trailers, and the 505 for an HTTP major version other
than 1. Compiled with mypyc with the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import httptools

from .h1core import XFF_FIRST, add_line, keep_alive_asked, unsupported_version
from .h1scan import NATIVE, scan
from .handle import RequestHandle
from .http1 import (
    H_CLEN,
    H_CONNECTION,
    H_DROP,
    H_HOST,
    H_KEEP,
    H_PROXY_CONN,
    H_TE,
    H_TENC,
    H_TRAILER,
    H_UPGRADE,
    H_XFF,
    R_CLEN,
    R_CONNECTION,
    R_DATE,
    R_TENC,
    R_TRAILER,
    R_UPGRADE,
    RAW_NAMES_MAX,
    RESP_ACTIONS,
    connection_tokens,
    escape_high_bytes,
    restore_high_bytes,
    trailer_names,
)

if TYPE_CHECKING:
    from .proxy import Exchange, HTTPServer, ServerConnection

__all__ = [
    "FEED_ERROR",
    "FEED_OK",
    "FEED_UPGRADE",
    "FEED_WAIT",
    "H2_PREFACE",
    "H1Request",
    "RequestReader",
    "RequestSink",
    "ResponseReader",
    "ResponseSink",
]

#: The client connection preface of HTTP/2 (RFC 9113 §3.4).
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PREFACE_HEAD: Final = H2_PREFACE[:18]  # the part httptools parses as a request head

FEED_OK: Final = 0  # every byte parsed
FEED_WAIT: Final = 1  # the bytes so far may be the HTTP/2 preface cut short: held until more arrive
FEED_UPGRADE: Final = 2  # an upgrade request's head ended; ``rest``: the bytes after it
FEED_ERROR: Final = 3  # refused: ``error`` is (status, reason); parse nothing more

_CRLF: Final = b"\r\n"
#: Header places a reader remembers the names of (per connection: see RequestReader.on_header),
#: and the longest name it remembers (so an idle connection holds at most 24 short names).
NAMES_REMEMBERED: Final = 24
NAME_REMEMBERED_MAX: Final = 64

_T = TypeVar("_T")

# Translated by this table, a request target of visible ASCII is left as it is (any other
# byte changes).
_TARGET_TABLE: Final = bytes(i if 0x21 <= i < 0x7F else 0x21 for i in range(256))
# Header lines the quick path takes in a response (llhttp's path has no limit of its own).
_RESP_FIELDS_MAX: Final = 1 << 20
#: Whether the quick path (RequestReader._quick, ResponseReader._quick) is taken by default:
#: when this module runs compiled and the C scan of a head is built (dataplane.h1scan).
#: Interpreted, the quick path costs more than llhttp's callbacks (callgrind, the engine
#: benchmark: 163,537 instructions per request against 143,463, measured when it split heads
#: into lines in Python, before the C scan).
QUICK: Final = not __file__.endswith(".py") and NATIVE


def _remember(
    names: list[bytes],
    values: list[_T],
    wanted: bytearray,
    at: int,
    name: bytes,
    value: _T,
    want: bool,
) -> None:
    """Keep a header's name, and what it was found to mean, at its place ``at`` for the
    connection's next message (after a miss only: the places fill in order; a long name is not
    kept); ``wanted[at]``: whether the quick path must look at a line of that name (see
    :mod:`dataplane.h1scan`)."""
    if len(name) > NAME_REMEMBERED_MAX:
        return
    if at < len(names):
        names[at] = name
        values[at] = value
        wanted[at] = want
    elif at < NAMES_REMEMBERED:  # (at == len(names))
        names.append(name)
        values.append(value)
        wanted.append(want)


def _act(hdr: dict[bytes, bytes], lname: bytes, act: int, value: bytes) -> None:
    """What a request header that is not passed through means (its action ``act``, H_*)."""
    if act == H_HOST:
        if lname in hdr:
            raise _ParseLimit(400, "too many Host headers")
        hdr[lname] = value
    elif act == H_XFF:
        prior = hdr.get(lname)
        if prior is None:
            hdr[lname] = value
        else:
            hdr.setdefault(XFF_FIRST, prior)  # the shim reads the first header line
            hdr[lname] = prior + b", " + value
    elif act == H_CONNECTION:
        prior = hdr.get(lname)
        hdr[lname] = value if prior is None else prior + b"," + value
    elif act == H_TE:
        if b"trailers" in connection_tokens(value):
            hdr[lname] = b"trailers"
    elif act == H_TRAILER:
        prior = hdr.get(lname)
        hdr[lname] = value if prior is None else prior + b"," + value
    elif act != H_DROP and lname not in hdr:  # strip, upgrade, framing
        hdr[lname] = value


class _ParseLimit(Exception):
    """Raised from a callback to stop llhttp; it surfaces as the ``__context__`` of its
    HttpParserError."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class H1Request(RequestHandle):
    """A request as the reader fills it: the request line and headers (the handle's), and
    what only HTTP/1.1's wire says (keep-alive, ``Expect: 100-continue``, trailers)."""

    __slots__ = ("expect_continue", "headers_complete", "keep_alive", "req_trailers")

    def __init__(self, server: HTTPServer, peer: bytes, peer_port: int) -> None:
        super().__init__(server, peer, peer_port)
        self.keep_alive = True
        self.headers_complete = False
        self.req_trailers: list[bytes] | None = None
        self.expect_continue = False

    def feed_body(self, data: bytes) -> None:
        """A piece of the request body, as parsed (chunked framing removed)."""

    def body_complete(self) -> None:
        """The request body ended (trailers, if any, are in ``req_trailers``)."""
        self.body_done = True


class RequestSink(Protocol):
    """What a :class:`RequestReader` tells (the connection, or a test's recorder)."""

    def request_begun(self) -> H1Request:
        """A request line starts: return the object the reader fills."""

    def head_parsed(self, req: H1Request) -> None:
        """``req``'s head is complete (its body, if any, follows through ``feed_body``)."""

    def drained(self, req: H1Request) -> None:
        """``req``'s body ended after ``req`` was done (answered before its body was read)."""


class RequestReader:
    """Parses the requests of one connection (see the module docstring)."""

    __slots__ = (
        "_actions",
        "_body_seen",
        "_hdr_bytes",
        "_hdr_count",
        "_head_seen",
        "_knowns",
        "_left",
        "_line_of",
        "_line_open",
        "_max_hdr_bytes",
        "_max_hdrs",
        "_max_head_bytes",
        "_names",
        "_parser",
        "_raw_actions",
        "_read",
        "_sink",
        "_sniffed",
        "_wanted",
        "error",
        "parsing",
        "preface",
        "quick",
        "rest",
        "sniffing",
    )

    def __init__(
        self,
        sink: ServerConnection,
        *,
        actions: dict[bytes, int],
        raw_actions: dict[bytes, tuple[bytes, int]],
        max_header_bytes: int,
        max_headers: int,
        sniff_h2: bool = False,
        quick: bool = QUICK,
    ) -> None:
        """``actions``: lower-case header name → action (:mod:`dataplane.http1`'s ``H_*``;
        names not in it are passed through); ``raw_actions``: the same by the name as clients
        spell it, learnt here (shared by a server's connections, bounded). ``sniff_h2``: hold
        the first bytes while they may be the HTTP/2 preface.

        ``sink`` is any :class:`RequestSink`; it is typed as the one there is in the engine so
        that mypyc calls it natively (tests pass their own on the interpreted build)."""
        self._sink = sink
        self._parser = httptools.HttpRequestParser(self)
        self._actions = actions
        self._raw_actions = raw_actions
        self._max_hdr_bytes = max_header_bytes
        self._max_hdrs = max_headers
        # request line and header block are limited separately; their sum bounds a raw head
        self._max_head_bytes = 2 * max_header_bytes + 64
        self._hdr_bytes = 0  # budgets left for the head being parsed
        self._hdr_count = 0
        # The header names of the last requests by their place in the head, as spelt, and what
        # ``raw_actions`` says of each (see on_header).
        self._names: list[bytes] = []
        self._knowns: list[tuple[bytes, int]] = []
        self._wanted = bytearray()  # (1 at a place whose name the reader acts on)
        self._head_seen = 0  # raw bytes received for the head being parsed
        self._body_seen = 0  # body bytes parsed for the request being parsed
        # A head cut across reads: whether its request line is still open (see _feed_8bit).
        self._line_open = False
        # The read being fed when it begins with a request line (no request being parsed and
        # fed whole), and the one the request begun first in it may read its version from.
        self._read = b""
        self._line_of = b""
        self.sniffing = sniff_h2
        #: Take the quick path for the requests it can parse (see :meth:`_quick`).
        self.quick = quick
        self._left = -1  # bytes left of the body of a request the quick path read (-1: none)
        self._sniffed = b""
        #: The request being parsed (its head, or its body), if any.
        self.parsing: H1Request | None = None
        #: After FEED_ERROR: the status and reason to answer with.
        self.error: tuple[int, str] = (400, "")
        #: After FEED_ERROR: the bytes an HTTP/2 protocol must be fed when the connection
        #: opened with the HTTP/2 preface, else None.
        self.preface: bytes | None = None
        #: After FEED_UPGRADE: the bytes that followed the upgrade request's head.
        self.rest = b""

    # -- feeding -----------------------------------------------------------------------------
    def feed(self, data: bytes) -> int:
        """Parse the bytes of one read; returns FEED_OK, FEED_WAIT, FEED_UPGRADE or FEED_ERROR."""
        if self.sniffing:
            data = self._sniffed + data
            if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                self._sniffed = data  # maybe HTTP/2 cut short: wait for the rest
                return FEED_WAIT
            self.sniffing = False
            self._sniffed = b""
        if self.quick:
            data = self._quick_feed(data)
            if not data:
                return FEED_OK
        ex = self.parsing
        in_head = ex is None or not ex.headers_complete
        if in_head:
            self._head_seen += len(data)
        try:
            # Fed line by line: a head with bytes >= 0x80, and a read in which a body may end
            # with more bytes after it (a pipelined request, whose request line must be
            # followed across reads in case its target holds such bytes).
            by_lines = not data.isascii() if in_head else self._body_may_end_in(data)
            self._read = data if ex is None and not by_lines else b""
            if by_lines:
                self._feed_8bit(data)
            else:
                self._parser.feed_data(data)
                self._read = b""
                if in_head and self.parsing is not None and not self.parsing.headers_complete:
                    self._track_line(ex, data)
        except httptools.HttpParserUpgrade as e:
            self.rest = data[e.args[0] :]
            return FEED_UPGRADE
        except httptools.HttpParserError as e:
            self.preface = self._h2_preface(data)
            cause = e.__context__
            if isinstance(cause, _ParseLimit):
                self.error = (cause.status, str(cause))
            elif in_head and str(e) == "Invalid HTTP version" and unsupported_version(data):
                self.error = (505, "unsupported protocol version")  # Go's status and words
            else:
                self.error = (400, "malformed request: " + str(e))
            return FEED_ERROR
        if in_head and self._head_seen > self._max_head_bytes:
            ex = self.parsing
            if ex is not None and not ex.headers_complete:
                # A head still unfinished past both limits: httptools keeps accumulating an
                # unterminated line (on_url/on_header only see it once it ends), so stop here.
                self.preface = None
                if self._hdr_count == self._max_hdrs:  # no header line yet
                    self.error = (414, "request URI too long")
                else:
                    self.error = (431, "request header fields too large")
                return FEED_ERROR
        return FEED_OK

    def _learn(self, at: int, name: bytes) -> tuple[bytes, int]:
        """A header name that is not the one at its place ``at`` last time: its lower-case
        name and action (``raw_actions`` by the name as spelt, else ``actions``), remembered
        at that place for the next request."""
        known = self._raw_actions.get(name)
        if known is None:
            lname = name.lower()
            known = (lname, self._actions.get(lname, -1))
            if len(self._raw_actions) < RAW_NAMES_MAX:
                self._raw_actions[name] = known
        _remember(self._names, self._knowns, self._wanted, at, name, known, known[1] >= 0)
        return known

    # -- the quick path ----------------------------------------------------------------------
    def _quick_feed(self, data: bytes) -> bytes:
        """Read what the quick path can of a read: the requests it takes (see :meth:`_quick`)
        and their bodies; returns the bytes left for llhttp (a request it did not take, and
        all after it), empty when none are."""
        while data:
            ex = self.parsing
            if ex is not None:
                left = self._left
                if left < 0:
                    return data  # llhttp is reading this request
                n = len(data)
                if n < left:
                    self._left = left - n
                    self._body_seen += n
                    ex.feed_body(data)
                    return b""
                self._left = -1
                self._body_seen += left
                ex.feed_body(data if n == left else data[:left])
                data = data[left:] if n > left else b""
                self.on_message_complete()
                continue
            rest = self._quick(data)
            if rest is None:
                return data
            data = rest
        return b""

    def _quick(self, data: bytes) -> bytes | None:
        """Read a request that begins ``data`` without llhttp, if it is of the kind clients
        send most, and return the bytes after its head (its body, if any, and what follows);
        None, having told the sink nothing, for any other: llhttp reads it as before, errors
        and limits included.

        Taken: the head whole in the read, printable ASCII lines ended by CRLF, no
        continuation lines; GET, HEAD, POST, PUT, DELETE, OPTIONS or PATCH, a target that
        begins with "/", HTTP/1.1; header names of token characters, within the limits; at
        most one Host and one Content-Length (of digits); no Transfer-Encoding, Upgrade,
        Proxy-Connection or ``Connection: close`` (llhttp refuses what follows such a
        request). The lines passed through go upstream as the client wrote them, in runs of
        its bytes (see ResponseReader._quick)."""
        found = scan(data, self._names, self._wanted, self._max_hdrs)
        if found is None:
            return None
        head_end = found[0]
        line = data[: found[1]]
        # (a chain, not a loop over a tuple of methods: compiled, the loop cost ~500
        # instructions more per request)
        c = line[0]
        if c == 0x47 and line.startswith(b"GET "):
            method = b"GET"
        elif c == 0x50 and line.startswith(b"POST "):
            method = b"POST"
        elif c == 0x48 and line.startswith(b"HEAD "):
            method = b"HEAD"
        elif c == 0x50 and line.startswith(b"PUT "):
            method = b"PUT"
        elif c == 0x44 and line.startswith(b"DELETE "):
            method = b"DELETE"
        elif c == 0x4F and line.startswith(b"OPTIONS "):
            method = b"OPTIONS"
        elif c == 0x50 and line.startswith(b"PATCH "):
            method = b"PATCH"
        else:
            return None
        begin = len(method) + 1
        stop = len(line) - 9
        if stop <= begin or line[begin] != 0x2F or not line.endswith(b" HTTP/1.1"):
            return None
        target = line[begin:stop]
        if target.translate(_TARGET_TABLE) is not target or len(target) > self._max_hdr_bytes:
            return None
        # The header bytes llhttp's path would count (see on_header), at most: the head
        # after the request line, less its CRLFs but one per line.
        if head_end - 4 - len(line) + found[2] > self._max_hdr_bytes:
            return None
        knowns = self._knowns
        # Read into these, handed to the request once it is taken (no sink is told earlier).
        hdr: dict[bytes, bytes] = {}
        out: list[bytes] = []
        run = len(line) + 2  # where the run of lines passed through began in ``data``
        j = 3
        while j < len(found):  # the lines scan listed: five ints each
            place = found[j]
            pos = found[j + 1]
            if place >= 0:  # the name at this place last time, one the reader acts on
                known = knowns[place]
            else:
                known = self._learn(-1 - place, data[pos : pos + found[j + 2]])
            lname, act = known
            if act >= 0:
                if act in (H_TENC, H_UPGRADE, H_PROXY_CONN):
                    return None
                end = pos + found[j + 4]
                value = data[pos + found[j + 3] : end]
                if act == H_KEEP:  # forwarded, and the first value remembered
                    if lname not in hdr:
                        hdr[lname] = value
                else:
                    if act in (H_HOST, H_CLEN):
                        if lname in hdr:  # (llhttp's path refuses the second)
                            return None
                        if act == H_CLEN and (not value.isdigit() or len(value) > 15):
                            return None
                    elif act == H_CONNECTION and (
                        value != b"keep-alive" and b"close" in connection_tokens(value)
                    ):
                        return None
                    if run < pos:
                        out.append(data[run:pos])
                    run = end + 2
                    _act(hdr, lname, act, value)
            j += 5
        if run < head_end - 2:
            out.append(data[run : head_end - 2])
        rest = data[head_end:] if head_end < len(data) else b""
        # Taken: from here on the request is told to the sink.
        ex = self._sink.request_begun()
        self.parsing = ex
        self._line_open = False
        self._body_seen = 0
        self._line_of = b""
        self._read = b""
        ex.target = target
        ex.hdr = hdr
        ex.hdr_out = out
        ex.headers_complete = True
        ex.method = method
        ex.version = "1.1"
        ex.keep_alive = True
        ex.upgrade = False
        ex.req_chunked = False
        self._head_seen = 0
        expect = hdr.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            ex.expect_continue = True
        self._sink.head_parsed(ex)
        left = 0
        clen = hdr.get(b"content-length")
        if clen is not None:
            for j in range(len(clen)):  # (its digits: int() costs ~800 instructions)
                left = left * 10 + clen[j] - 0x30
        if left == 0:
            self.on_message_complete()
        else:
            self._left = left
        return rest

    def _h2_preface(self, data: bytes) -> bytes | None:
        """After a parse error on ``data``: if the connection opened with the HTTP/2 preface,
        the bytes from the preface on (what an HTTP/2 protocol must be fed), else None."""
        seen_before = self._head_seen - len(data)  # preface bytes fed by earlier reads
        cut = len(_PREFACE_HEAD) - seen_before
        if seen_before < 0 or cut < 0 or not data.startswith(_PREFACE_HEAD[seen_before:]):
            return None
        return _PREFACE_HEAD + data[cut:]

    def _track_line(self, before: H1Request | None, data: bytes) -> None:
        """After a read that left a head unfinished: is its request line still open? (Only
        a later read with bytes >= 0x80 asks; "unknown" answers no, which refuses them.)"""
        # (find, not ``in``: see _body_may_end_in)
        if self.parsing is before:
            self._line_open = self._line_open and data.find(b"\n") < 0
        else:  # the head began in this read
            self._line_open = before is None and data.lstrip(b"\r\n").find(b"\n") < 0

    def _body_left(self) -> int:
        """Bytes of the Content-Length body being parsed still to come (-1: not known, e.g.
        chunked)."""
        ex = self.parsing
        if ex is None or ex.req_chunked:
            return -1
        clen = ex.hdr.get(b"content-length")
        if clen is None or not clen.isdigit():
            return -1
        return int(clen) - self._body_seen

    def _body_may_end_in(self, data: bytes) -> bool:
        """A read arrives in a body: may the body end within it with bytes after it, so that a
        pipelined request follows (whose target may hold bytes >= 0x80, which llhttp refuses)?
        A Content-Length body: one lookup. A chunked body can only end after an empty line:
        two searches of the read (and a look at its first bytes, for an ending split across
        reads). With ``find``: ``b"..." in data`` first tries its operand as an integer on
        CPython 3.11, and raising and clearing that TypeError costs ~2,000 instructions."""
        ex = self.parsing
        if ex is not None and ex.req_chunked:
            return (
                data.find(b"\n\r\n") >= 0
                or data.find(b"\n\n") >= 0
                or data[:1] == b"\n"
                or data[:2] == b"\r\n"
            )
        return 0 <= self._body_left() < len(data)

    def _feed_8bit(self, data: bytes) -> None:
        """Feed a read line by line: one whose head holds bytes >= 0x80, or in which a body may
        end with a pipelined request after it (rare either way).

        Go accepts bytes >= 0x80 in a request target, llhttp refuses them. So each request
        line is fed with those bytes percent-encoded, and the target llhttp reports gets its
        original bytes back (Go keeps a query as received and re-escapes the path: see
        ``go_request_target``, applied at dispatch). Header lines and bodies are fed as they
        are: llhttp accepts such bytes in header values (obs-text) and bodies."""
        parser = self._parser
        n = len(data)
        pos = 0
        line_open = self._line_open
        while pos < n:
            ex = self.parsing
            if ex is None:
                line_open = True  # between messages: a request line comes next
            elif ex.headers_complete:  # a body
                if ex.req_chunked:
                    pos = self._feed_chunked(data, pos, n)
                    if pos >= n:
                        return
                    line_open = True  # it ended: a request line follows
                    continue
                left = self._body_left()
                if left <= 0 or pos + left >= n:
                    self._feed_from(data, pos, n)
                    return
                self._feed_from(data, pos, pos + left)  # its end; a request line follows
                pos += left
                line_open = True
                continue
            end = data.find(b"\n", pos)
            stop = n if end < 0 else end + 1
            seg = data[pos:stop]
            if line_open and not seg.isascii():
                before = len(ex.target) if ex is not None else 0
                esc, runs = escape_high_bytes(seg)
                parser.feed_data(esc)
                ex = self.parsing
                if ex is not None:
                    piece = ex.target[before:]
                    start = esc.find(piece) if piece else -1
                    while start > 0 and esc[start - 1] != 0x20:  # the target follows a space
                        start = esc.find(piece, start + 1)
                    if start >= 0:
                        ex.target = ex.target[:before] + restore_high_bytes(
                            esc, start, start + len(piece), runs
                        )
            else:
                self._feed_from(data, pos, stop)
            if end >= 0 and self.parsing is not None:
                line_open = False
            pos = stop
        self._line_open = line_open

    def _feed_chunked(self, data: bytes, pos: int, n: int) -> int:
        """Feed a chunked body from ``data[pos:]`` up to its end, if it ends in this read;
        returns where the feeding stopped (``n``: all of it).

        Only llhttp knows where a chunked body ends, but it can only end after an empty line:
        the read is fed in pieces cut after each ``\n\r\n`` or ``\n\n`` (and after its first
        ``\n``, for an ending split across reads), and the body ended when the request being
        parsed changes. Chunk data rarely holds those patterns, so a read costs a few feeds."""
        ex = self.parsing
        first = data.find(b"\n", pos)
        cut = n if first < 0 else first + 1
        while True:
            self._feed_from(data, pos, cut)
            pos = cut
            if self.parsing is not ex or pos >= n:
                return pos
            cut = n
            for pattern in (b"\n\r\n", b"\n\n"):
                # (from where a match would end past the cut: one may begin before it)
                at = data.find(pattern, max(pos - len(pattern) + 1, 0))
                if at >= 0:
                    cut = min(cut, at + len(pattern))

    def _feed_from(self, data: bytes, start: int, stop: int) -> None:
        try:
            self._parser.feed_data(data[start:stop])
        except httptools.HttpParserUpgrade as e:  # its offset is into the whole read
            raise httptools.HttpParserUpgrade(start + e.args[0]) from None

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = self._sink.request_begun()
        self._hdr_bytes = self._max_hdr_bytes
        self._hdr_count = self._max_hdrs
        self._line_open = False  # unknown until the read that began it is parsed
        self._body_seen = 0
        self._line_of = self._read  # (only the first request begun in a read)
        self._read = b""

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.target += url
        if len(ex.target) > self._max_hdr_bytes:
            raise _ParseLimit(414, "request URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        count = self._hdr_count - 1
        self._hdr_count = count
        left = self._hdr_bytes - (len(name) + len(value) + 4)
        self._hdr_bytes = left
        if (count | left) < 0:  # either budget spent
            raise _ParseLimit(431, "request header fields too large")
        if ex.headers_complete:  # chunked-body trailer
            if ex.req_trailers is None:
                ex.req_trailers = []
            add_line(ex.req_trailers, name, value)
            return
        # A client sends the same names in the same order on each request of a connection:
        # this header's name is first compared with the one at its place last time (a memcmp),
        # and only looked up by hash when it differs (hashing the fresh name and probing the
        # dict cost ~430 instructions compiled).
        at = self._max_hdrs - 1 - count  # this header's place in the head
        names = self._names
        same = at < len(names) and names[at] == name
        lname, act = self._knowns[at] if same else self._learn(at, name)
        if act < 0 or act == H_KEEP:
            if act == H_KEEP:  # forwarded, and the first value remembered
                hdr = ex.hdr
                if lname not in hdr:
                    hdr[lname] = value
            # A forwarded line: four appends, inline. ``+= (name, b": ", value, _CRLF)``
            # builds and frees a tuple (compiled: ~200 instructions a line), and a call to
            # add_line costs a frame (interpreted: ~230).
            out = ex.hdr_out
            out.append(name)
            out.append(b": ")
            out.append(value)
            out.append(_CRLF)
            return
        _act(ex.hdr, lname, act, value)

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        p = self._parser
        ex.headers_complete = True
        ex.method = method = p.get_method()
        ex.version = self._version(method, ex.target)
        ex.keep_alive = p.should_keep_alive()
        if not ex.keep_alive:
            # llhttp refuses any request after this one ("Data after `Connection: close`"),
            # Proxy-Connection's too: the quick path must not take one either.
            self.quick = False
        if b"proxy-connection" in ex.hdr:  # (rare: the common request skips the call)
            ex.keep_alive = keep_alive_asked(ex.version, ex.hdr.get(b"connection"))
        # llhttp upgrades a request with an Upgrade header (and Connection: upgrade) or CONNECT
        # only: any other is answered here, without the call.
        ex.upgrade = (b"upgrade" in ex.hdr or method == b"CONNECT") and p.should_upgrade()
        ex.req_chunked = b"transfer-encoding" in ex.hdr
        self._head_seen = 0
        expect = ex.hdr.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            ex.expect_continue = True
        self._sink.head_parsed(ex)

    def _version(self, method: bytes, target: bytes) -> str:
        """The request's HTTP version, "1.1" read off its request line when the read that
        began it holds that line whole (httptools formats a new string for each request).

        Where the line would end if spelt ``method SP target SP HTTP/1.1 CRLF``: llhttp parsed
        it, the line begins with the method, one space and the target (checked), and a line
        ends at its first LF, so if " HTTP/1.1\\r\\n" is there, it is the line's version. A
        slice and a compare: ``line.find`` costs ~900 instructions (its arguments are parsed
        as a tuple on CPython 3.11)."""
        line = self._line_of
        self._line_of = b""
        m = len(method)
        at = m + 1 + len(target)
        # The line must begin with the method and one space (no empty line before it, no run
        # of spaces): else a version-less HTTP/0.9 line such as "CONNECT" + 10 spaces +
        # "HTTP/1.1" would be read as 1.1 (its target being "HTTP/1.1"; found by a review).
        if (
            line[at : at + 11] == b" HTTP/1.1\r\n"  # (then line[m + 1] exists)
            and line[m] == 0x20
            and line[m + 1] != 0x20
        ):
            return "1.1"
        return self._parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        ex = self.parsing
        if ex is not None:
            ex.feed_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            ex.body_complete()
            if ex.done:
                self._sink.drained(ex)


# -- responses (the upstream side) -----------------------------------------------------------
class _BadResponse(Exception):
    """Raised from a parser callback to stop parsing an unacceptable response."""


# RESP_ACTIONS by response header name as upstreams spell it ("Content-Length"), -1 for a
# name passed through: learnt as names arrive, bounded (RAW_NAMES_MAX); saves a lower() a header.
_RESP_RAW: Final[dict[bytes, int]] = {}


class ResponseSink(Protocol):
    """What a :class:`ResponseReader` tells as it parses (the request the response answers)."""

    def relay_interim(self, r: ResponseReader, status: int) -> None:
        """A 1xx response head other than 101 (its headers in ``r.resp_out``)."""

    def response_head(self, r: ResponseReader, status: int) -> None:
        """The final response head (``r.resp_*`` describe it)."""

    def response_body(self, data: bytes) -> None:
        """A piece of the response body (chunked framing removed)."""


class ResponseReader:
    """Parses the responses on one upstream connection, one per request, sans I/O.

    :meth:`feed` takes a read and the sink of the request it answers, and returns FEED_OK
    (``resp_complete`` says whether the response ended; bytes after a complete response clear
    ``keep_alive``), FEED_UPGRADE (a 101's head ended; ``rest`` holds the bytes after it) or
    FEED_ERROR (``error`` says why: a malformed response, a transfer coding other than
    chunked, a bad trailer announcement). The head's framing and connection headers are kept
    apart from the headers passed through (``resp_out``, as the upstream spelt them)."""

    __slots__ = (
        "_acts",
        "_at",
        "_left",
        "_names",
        "_parser",
        "_sink",
        "_slow",
        "_stale",
        "_wanted",
        "error",
        "in_trailers",
        "interim",
        "keep_alive",
        "quick",
        "resp_chunked",
        "resp_clen",
        "resp_complete",
        "resp_conn",
        "resp_out",
        "resp_trailer",
        "resp_upgrade",
        "rest",
        "saw_date",
        "status",
        "trailers",
    )

    def __init__(self, quick: bool = QUICK) -> None:
        """``quick``: take the quick path for the responses it can parse (see :meth:`_quick`;
        tests turn it off to compare)."""
        self._parser = httptools.HttpResponseParser(self)
        self.quick = quick
        # The response being read is llhttp's (it was fed some of it), and the bytes left of
        # a body the quick path is reading (-1: none).
        self._slow = False
        self._left = -1
        # Any ResponseSink; typed as the one there is in the engine so that mypyc calls it
        # natively (through the Protocol: +700 instructions per proxied request, callgrind).
        self._sink: Exchange | None = None
        self._stale = False
        self.error = ""
        self.rest = b""
        self.status = 0
        # The header names of the last responses by their place, and their actions.
        self._names: list[bytes] = []
        self._acts: list[int] = []
        self._wanted = bytearray()
        self._at = 0
        self._reset()

    def _reset(self) -> None:
        self._at = 0
        self.resp_out: list[bytes] = []
        self.resp_clen: bytes | None = None
        self.resp_chunked = False
        self.resp_conn: bytes | None = None
        self.resp_upgrade: bytes | None = None
        self.resp_trailer: bytes | None = None
        self.saw_date = False
        self.interim = False
        self.in_trailers = False
        self.trailers: list[bytes] | None = None
        self.resp_complete = False
        self.keep_alive = False

    def feed(self, data: bytes, sink: Exchange) -> int:
        """Parse one read of the response to ``sink``'s request (see the class docstring)."""
        if self._left >= 0:
            self._quick_body(data, sink)
            return FEED_OK
        if not self._slow:
            if self.quick and not self.resp_complete and self._quick(data, sink):
                return FEED_OK
            self._slow = True
        self._sink = sink
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            self.rest = data[up.args[0] :]
            return FEED_UPGRADE
        except httptools.HttpParserError as e:
            # (distinct names per clause: mypyc types an ``except ... as`` name by its first
            # clause, and this clause catches errors that are not upgrades)
            if not self.resp_complete:
                cause = e.__context__
                self.error = str(cause) if isinstance(cause, _BadResponse) else str(e)
                return FEED_ERROR
            # Bytes after the complete response (a second response, junk): the response
            # stands, the connection is not reused.
            self.keep_alive = False
        finally:
            self._sink = None  # (a pooled connection keeps no finished request alive)
        return FEED_OK

    def head_only(self) -> None:
        """The request was HEAD: its response ends with its head (the parser, which cannot be
        told, would wait for a body; the next response gets a fresh one)."""
        self._stale = self._slow  # (the quick path did not feed it)
        self.resp_complete = True

    def next_response(self) -> None:
        """The connection is reused for another request."""
        self.resp_complete = False
        self._slow = False
        self._left = -1
        if self._stale:
            self._parser = httptools.HttpResponseParser(self)
            self._stale = False
        # (the head's state is reset by on_message_begin when the response starts)

    def _learn(self, at: int, name: bytes) -> int:
        """A header name that is not the one at its place ``at`` last time: its action
        (``_RESP_RAW`` by the name as spelt, else RESP_ACTIONS), remembered at that place."""
        act = _RESP_RAW.get(name, -2)
        if act == -2:  # a name not seen yet (as spelt)
            act = RESP_ACTIONS.get(name.lower(), -1)
            if len(_RESP_RAW) < RAW_NAMES_MAX:
                _RESP_RAW[name] = act
        _remember(self._names, self._acts, self._wanted, at, name, act, act >= 0)
        return act

    # -- the quick path ----------------------------------------------------------------------
    def _quick(self, data: bytes, sink: Exchange) -> bool:
        """Read a response that begins ``data`` without llhttp, if it is one of the kind
        upstreams send most: its head whole in the read, ``HTTP/1.1`` and a final status,
        printable ASCII lines ended by CRLF, no continuation lines, its body framed by one
        Content-Length of digits (or none, for 204, 304 and HEAD). Returns False, having told
        ``sink`` nothing, for any other: llhttp parses it as before, errors included.

        The head is checked, and its lines found, by :func:`dataplane.h1scan.scan`, which
        lists only the lines the reader must look at: a name not at its place in the last
        response, and the lines the proxy reads (Content-Length, Connection, Date, ...). The
        others go on as the upstream wrote them, in runs: one slice of the read for each run
        between the lines read, where llhttp's path costs a callback and four list items a
        line."""
        found = scan(data, self._names, self._wanted, _RESP_FIELDS_MAX)
        if found is None:
            return False
        head_end = found[0]
        line_end = found[1]
        if (
            line_end < 12
            or not data.startswith(b"HTTP/1.1 ")
            or (line_end > 12 and data[12] != 0x20)
        ):
            return False
        d0 = data[9] - 0x30
        d1 = data[10] - 0x30
        d2 = data[11] - 0x30
        if not (2 <= d0 <= 5 and 0 <= d1 <= 9 and 0 <= d2 <= 9):
            return False
        status = d0 * 100 + d1 * 10 + d2
        self._reset()
        acts = self._acts
        out = self.resp_out
        run = line_end + 2  # where the run of lines passed through began in ``data``
        j = 3
        while j < len(found):  # the lines scan listed: five ints each
            place = found[j]
            pos = found[j + 1]
            if place >= 0:  # the name at this place last time, one the reader acts on
                act = acts[place]
            else:
                act = self._learn(-1 - place, data[pos : pos + found[j + 2]])
            if act == R_DATE:
                self.saw_date = True
            elif act >= 0:
                if act == R_TENC or (act == R_CLEN and self.resp_clen is not None):
                    self._reset()  # chunked (llhttp reads it), or refused (llhttp says why)
                    return False
                if run < pos:
                    out.append(data[run:pos])
                end = pos + found[j + 4]
                self._act(act, data[pos + found[j + 3] : end])
                run = end + 2
            j += 5
        if run < head_end - 2:
            out.append(data[run : head_end - 2])
        clen = self.resp_clen
        if clen is not None and (not clen.isdigit() or len(clen) > 15):
            self._reset()  # a length llhttp must judge (even where no body follows)
            return False
        left = 0
        if status != 204 and status != 304:
            if clen is None:
                self._reset()  # delimited by the end of the connection (llhttp's path)
                return False
            if sink.method != b"HEAD":
                for j in range(len(clen)):  # (its digits: int() costs ~800 instructions)
                    left = left * 10 + clen[j] - 0x30
        conn = self.resp_conn
        self.keep_alive = (
            conn is None or conn == b"keep-alive" or b"close" not in connection_tokens(conn)
        )
        self.in_trailers = True
        self.resp_trailer = None  # (announced trailers go with chunked responses only)
        self.status = status
        sink.response_head(self, status)
        if left == 0 or self.resp_complete:  # no body, or HEAD's (head_only said so)
            self.resp_complete = True
            if head_end < len(data):
                self.keep_alive = False  # bytes after the response
            return True
        self._left = left
        if head_end < len(data):
            self._quick_body(data[head_end:], sink)
        return True

    def _quick_body(self, data: bytes, sink: Exchange) -> None:
        """A read of the body the quick path reads (``_left`` bytes of it still to come)."""
        left = self._left
        n = len(data)
        if n < left:
            self._left = left - n
            sink.response_body(data)
            return
        self._left = -1
        if n == left:
            sink.response_body(data)
        else:
            sink.response_body(data[:left])
            self.keep_alive = False  # bytes after the response
        self.resp_complete = True

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.resp_complete:
            raise _BadResponse("more than one response")  # stops the parser here
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            if self.trailers is None:
                self.trailers = []
            add_line(self.trailers, name, value)
            return
        at = self._at  # this header's place in the head (see RequestReader.on_header)
        self._at = at + 1
        names = self._names
        same = at < len(names) and names[at] == name
        act = self._acts[at] if same else self._learn(at, name)
        if act < 0 or act == R_DATE:
            if act == R_DATE:
                self.saw_date = True
            out = self.resp_out  # (inline appends, as in the request reader)
            out.append(name)
            out.append(b": ")
            out.append(value)
            out.append(_CRLF)
        else:
            self._act(act, value)

    def _act(self, act: int, value: bytes) -> None:
        """What a header that is not passed through means (its action ``act``, R_*)."""
        if act == R_CLEN:
            self.resp_clen = value
        elif act == R_TENC:
            if value.strip().lower() != b"chunked":
                raise _BadResponse(f"unsupported transfer encoding: {value.decode('latin-1')}")
            self.resp_chunked = True
        elif act == R_CONNECTION:
            self.resp_conn = value if self.resp_conn is None else self.resp_conn + b"," + value
        elif act == R_UPGRADE:
            self.resp_upgrade = value
        elif act == R_TRAILER:
            prior = self.resp_trailer
            self.resp_trailer = value if prior is None else prior + b"," + value
        # R_DROP: hop-by-hop, not forwarded

    def on_headers_complete(self) -> None:
        sink = self._sink
        assert sink is not None
        self.status = status = self._parser.get_status_code()
        if status < 200:
            self.interim = True
            if status != 101:
                sink.relay_interim(self, status)
            return
        self.in_trailers = True
        if self.resp_trailer is not None:
            # Go's client reads a Trailer announcement only on a chunked response, and its
            # ReverseProxy announces those names again (Trailer itself is hop-by-hop).
            if self.resp_chunked:
                names = trailer_names(self.resp_trailer, b", ")
                if names is None:
                    raise _BadResponse("bad trailer key")
                self.resp_trailer = names or None
            else:
                self.resp_trailer = None
        # Read now: once the message completes the parser state is reset.
        self.keep_alive = self._parser.should_keep_alive()
        sink.response_head(self, status)

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.resp_complete = True

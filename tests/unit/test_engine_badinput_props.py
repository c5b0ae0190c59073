"""Property-based tests of the engine's request parsing path (issue 7), in memory.

1. Whatever the read boundaries, the upstream sees exactly the requests the client sent:
   same methods, targets, end-to-end headers in order, and bodies (Content-Length or chunked,
   re-chunked by us), one request at a time.
2. Arbitrary damage to a valid request (bytes replaced, inserted, cut) never crashes the
   engine, never leaves it inconsistent, and never puts anything upstream that a strict parser
   would not read as exactly the requests the handler accepted.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .enginekit import Kit, client_ok, ok

TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12
)
VALUE = st.text(
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,;=/:\"'()",
    max_size=30,
).map(str.strip)
# Valid targets only: a '%' always starts an escape (Go refuses "/%zz" with 400).
PATH = st.lists(
    st.one_of(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~/=&?", max_size=8),
        st.sampled_from(["%2F", "%41", "%e9", "%25"]),
    ),
    max_size=6,
).map(lambda parts: "/" + "".join(parts))


@dataclass
class Req:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | None  # None: no body framing at all
    chunks: list[bytes] | None  # chunked: how the client chunks ``body``

    def wire(self) -> bytes:
        lines = [self.method + b" " + self.target + b" HTTP/1.1", b"Host: example.com"]
        lines += [k + b": " + v for k, v in self.headers]
        if self.chunks is not None:
            lines.append(b"Transfer-Encoding: chunked")
            body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in self.chunks if c) + b"0\r\n\r\n"
        elif self.body is not None:
            lines.append(b"Content-Length: %d" % len(self.body))
            body = self.body
        else:
            body = b""
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


@st.composite
def requests(draw: st.DrawFn) -> Req:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    target = draw(PATH).encode()
    names = draw(st.lists(TOKEN, max_size=6))
    # X- prefix: stay clear of the headers the engine rewrites (hop-by-hop, framing, Host...).
    headers = [(b"X-" + n.encode(), draw(VALUE).encode()) for n in names]
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    body = chunks = None
    if kind != "none":
        body = draw(st.binary(max_size=300))
        if kind == "chunked":
            cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
            bounds = [0, *cuts, len(body)]
            chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    return Req(method, target, headers, body, chunks)


@dataclass
class Seen:
    """Requests as a strict parser reads them from the upstream's bytes."""

    msgs: list[dict[str, object]] = field(default_factory=list)
    complete: int = 0

    def on_message_begin(self) -> None:
        self.msgs.append({"url": b"", "headers": [], "body": b""})

    def on_url(self, url: bytes) -> None:
        self.msgs[-1]["url"] += url  # type: ignore[operator]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.msgs[-1]["headers"].append((name, value))  # type: ignore[attr-defined]

    def on_body(self, body: bytes) -> None:
        self.msgs[-1]["body"] += body  # type: ignore[operator]

    def on_message_complete(self) -> None:
        self.complete += 1


def _escape_high(target: bytes) -> bytes:
    return re.sub(rb"[\x80-\xff]", lambda m: b"%%%02X" % m.group()[0], target)


def parse_upstream(
    data: bytes, targets: list[bytes] | None = None
) -> tuple[Seen, httptools.HttpRequestParser]:
    """Parse what went upstream strictly. As Go's queue-proxy, the engine forwards raw bytes
    >= 0x80 of a query as they came (llhttp refuses them): those request lines, found by the
    exchanges' ``targets`` in order, are percent-encoded for this parser only."""
    for t in targets or ():
        if re.search(rb"[\x80-\xff]", t):
            data = data.replace(
                b" " + t + b" HTTP/1.1\r\n", b" " + _escape_high(t) + b" HTTP/1.1\r\n", 1
            )
    seen = Seen()
    p = httptools.HttpRequestParser(seen)
    p.feed_data(data)  # raises on anything malformed
    return seen, p


def serve(data: bytes, cuts: list[int]) -> tuple[Kit, bytes, bytes]:
    """Feed ``data`` split at ``cuts``, answering each request as soon as the upstream has all
    of it; return the kit, what went upstream and what the client got."""
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    upstream = b""
    answered = 0

    def pump() -> None:
        nonlocal upstream, answered
        while not up.closing:
            upstream += up.take()
            seen, _ = parse_upstream(upstream, [ex.target for ex in k.exchanges])
            if seen.complete <= answered:
                return
            answered += 1
            up.feed(ok())

    bounds = [0, *sorted(set(cuts)), len(data)]
    for a, b in itertools.pairwise(bounds):
        pump()
        if c.closing or c.lost:
            break
        assert c.reading, "the engine stopped reading with nothing left to wait for"
        if a < b:
            c.feed(data[a:b])
    pump()
    upstream += up.take()
    return k, upstream, c.take()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(requests(), min_size=1, max_size=3), data=st.data())
def test_read_boundaries_never_change_what_goes_upstream(
    reqs: list[Req], data: st.DataObject
) -> None:
    wire = b"".join(r.wire() for r in reqs)
    cuts = data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=8))
    k, upstream, client = serve(wire, cuts)
    seen, _ = parse_upstream(upstream)
    assert seen.complete == len(reqs) == len(seen.msgs)
    for r, m in zip(reqs, seen.msgs, strict=True):
        assert m["url"] == r.target
        hdrs = m["headers"]
        assert isinstance(hdrs, list)
        assert [
            h for h in hdrs if h[0].startswith(b"X-") and h[0] != b"X-Forwarded-For"
        ] == r.headers
        assert m["body"] == (r.body or b"")
        if r.chunks is not None:
            assert (b"Transfer-Encoding", b"chunked") in hdrs
    assert client == client_ok() * len(reqs)
    assert [ex.method for ex in k.exchanges] == [r.method for r in reqs]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    wire = bytearray(b"".join(r.wire() for r in draw(st.lists(requests(), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        i = draw(st.integers(0, len(wire)))
        junk = draw(
            st.one_of(
                st.sampled_from(
                    [
                        b"\r",
                        b"\n",
                        b"\x00",
                        b" ",
                        b"\t",
                        b":",
                        b"\r\n",
                        b"0",
                        b"-",
                        b"\x7f",
                        b"\xff",
                    ]
                ),
                st.binary(min_size=1, max_size=3),
            )
        )
        if op == "replace" and i < len(wire):
            wire[i : i + len(junk)] = junk
        elif op == "insert":
            wire[i:i] = junk
        elif i < len(wire):
            del wire[i]
    return bytes(wire)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire=damaged(), data=st.data())
def test_damaged_requests_never_confuse_the_engine(wire: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=5))
    k, upstream, client = serve(wire, cuts)
    # What went upstream parses strictly, as at most the requests the handler accepted.
    seen, _ = parse_upstream(upstream, [ex.target for ex in k.exchanges])
    assert len(seen.msgs) <= len(k.exchanges)
    for m, ex in zip(seen.msgs, k.exchanges, strict=False):
        assert m["url"] == _escape_high(ex.target)
    # The client only ever gets whole HTTP/1.1 responses.
    assert client == b"" or client.startswith(b"HTTP/1.1 ")
    k.check()  # nothing logged, no write after close, inflight in step

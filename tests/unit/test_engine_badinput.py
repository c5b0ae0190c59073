"""Engine protocol tests: hostile and malformed requests (issue 7, "bad input").

Every case is refused with its status and the connection closed, and nothing reaches the
upstream: the handler never sees the request and the pooled upstream connection is not written
to. Request smuggling needs two parsers that disagree on where a request ends; the engine never
forwards bytes as received (it re-frames bodies itself) and refuses every ambiguous framing, so
the only parser that matters is ours. When the bad bytes of a body arrive after its head was
already forwarded (a streaming proxy cannot wait for the whole body), the upstream connection is
aborted with the request incomplete: it saw only well-formed chunks and never the last one.
"""

from __future__ import annotations

import pytest

from dataplane.proxy import ServerConfig

from .enginekit import Kit, client_ok, ok, request, upstream_head


def _post(*lines: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return request(b"/p", *lines, method=b"POST", body=body, version=version)


# Requests whose head is bad: refused before the handler runs, whatever the delivery.
BAD_HEADS = {
    # framing that two parsers could read differently
    "cl-and-te": _post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    "te-and-cl": _post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"),
    "duplicate-cl": _post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
    "conflicting-cl": _post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
    "cl-list": _post(b"Content-Length: 5, 5", body=b"hello"),
    "cl-sign": _post(b"Content-Length: +5", body=b"hello"),
    "cl-negative": _post(b"Content-Length: -1", body=b"hello"),
    "cl-not-a-number": _post(b"Content-Length: 5x", body=b"hello"),
    "cl-empty": _post(b"Content-Length: ", body=b"hello"),
    "cl-overflow": _post(b"Content-Length: 99999999999999999999999", body=b"hello"),
    "te-twice": _post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    "te-chunked-not-last": _post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"),
    "te-identity": _post(b"Transfer-Encoding: identity", body=b"hello"),
    "te-space-before-colon": _post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"),
    "te-in-http10": _post(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", version=b"1.0"),
    "te-obs-fold": _post(b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n"),
    "trailer-content-length": _post(
        b"Transfer-Encoding: chunked", b"Trailer: content-length", body=b"0\r\n\r\n"
    ),
    "trailer-trailer": _post(
        b"Transfer-Encoding: chunked", b"Trailer: X-A, Trailer", body=b"0\r\n\r\n"
    ),
    # obs-fold, bare CR / LF, NUL and other controls
    "obs-fold-space": request(b"/", b"X-A: one", b" two"),
    "obs-fold-tab": request(b"/", b"X-A: one", b"\ttwo"),
    "bare-lf-everywhere": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare-lf-after-header": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "bare-cr-after-header": b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n",
    "bare-cr-in-value": request(b"/", b"X-A: b\rc"),
    "bare-cr-after-request-line": b"GET / HTTP/1.1\rHost: a\r\n\r\n",
    "nul-in-value": request(b"/", b"X-A: b\x00c"),
    "nul-in-name": request(b"/", b"X-\x00A: b"),
    "nul-in-target": request(b"/a\x00b"),
    "ctl-in-value": request(b"/", b"X-A: a\x01b"),
    "del-in-value": request(b"/", b"X-A: a\x7fb"),
    "space-in-name": request(b"/", b"X A: b"),
    "empty-name": request(b"/", b": b"),
    "whitespace-before-first-header": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    # methods
    "method-lower-case": request(method=b"get"),
    "method-unknown": request(method=b"FOO"),
    "method-bad-char": request(method=b"G@T"),
    "method-empty": b" / HTTP/1.1\r\nHost: a\r\n\r\n",
    # targets and versions
    "target-relative": request(b"foo"),
    "target-authority-form": request(b"example.com:80"),
    "target-space": request(b"/a b"),
    "target-tab": request(b"/a\tb"),
    "target-ctl": request(b"/a\x01b"),
    "target-del": request(b"/a\x7fb"),
    "target-8bit-with-ctl": request(b"/a\xff\x01b"),
    "target-8bit-with-space": request(b"/a\xff b\xff"),
    "target-bad-escape": request(b"/a%zzb"),
    "target-short-escape": request(b"/a%4"),
    "target-8bit-bad-escape": request(b"/\xc3%\xbc"),
    "target-8bit-relative": request(b"\xc3\xbc"),
    "header-name-8bit": request(b"/", b"X-\xc3\xbc: 1"),
    "target-other-scheme": request(b"ftp://x/"),
    "target-absolute-without-host": request(b"http:///"),
    "version-garbage": request(version=b"1.x"),
    "version-lower-case": b"GET / http/1.1\r\nHost: a\r\n\r\n",
    "no-version": b"GET /\r\nHost: a\r\n\r\n",
    # Host
    "host-twice": request(b"/", b"Host: b"),
    "host-with-space": request(host=b"a b"),
    "host-with-slash": request(host=b"a/b"),
    "host-with-at": request(host=b"user@a"),
    "absolute-target-bad-authority": request(b"http://a b/"),
}


def _refused(data: bytes, *, step: int = 0, config: ServerConfig | None = None) -> bytes:
    """Feed ``data`` on a connection with a warm upstream; check the refusal and return it."""
    k = Kit(config=config)
    up = k.idle_upstream()
    c = k.client()
    c.feed(data, step=step)
    got = c.take()
    assert k.exchanges == [], "the handler saw the request"
    assert up.writes == [], f"forwarded: {b''.join(up.writes)!r}"
    assert "write_eof" in c.calls, "connection left open"
    assert k.server.inflight == 0
    k.loop.advance(0.5)  # the lingering close ends
    assert c.closed
    return got


@pytest.mark.parametrize("step", [0, 1], ids=["one-read", "bytewise"])
@pytest.mark.parametrize("data", list(BAD_HEADS.values()), ids=list(BAD_HEADS))
def test_bad_head_is_400_closed_and_not_forwarded(data: bytes, step: int) -> None:
    got = _refused(data, step=step)
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), got
    assert b"\r\nConnection: close\r\n" in got


@pytest.mark.parametrize("name", ["cl-and-te", "nul-in-value", "obs-fold-space", "host-twice"])
def test_bad_head_after_a_good_request(name: str) -> None:
    """Pipelined behind a valid request: that one is answered, then 400, then close; the
    upstream saw the valid request only."""
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/first") + BAD_HEADS[name])
    assert up.take() == upstream_head(b"/first")
    up.feed(ok())
    got = c.take()
    assert got.startswith(client_ok())
    assert got[len(client_ok()) :].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert [ex.target for ex in k.exchanges] == [b"/first"]
    assert up.writes == []
    assert "write_eof" in c.calls


CHUNKED = _post(b"Transfer-Encoding: chunked")
# Request bodies whose chunked framing is bad (the head is fine).
BAD_CHUNKS = {
    "size-not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "size-negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "size-0x-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "size-overflow": b"10000000000000000000\r\nhello\r\n0\r\n\r\n",
    "size-trailing-space": b"5 \r\nhello\r\n0\r\n\r\n",
    "size-empty": b"\r\nhello\r\n0\r\n\r\n",
    "data-longer-than-size": b"3\r\nhello\r\n0\r\n\r\n",
    "bare-lf-after-size": b"5\nhello\n0\n\n",
    "bare-cr-in-extension": b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    "bare-lf-after-data": b"5\r\nhello\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", list(BAD_CHUNKS.values()), ids=list(BAD_CHUNKS))
def test_bad_chunk_with_its_head_is_400_and_not_forwarded(body: bytes) -> None:
    got = _refused(CHUNKED + body)
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), got


@pytest.mark.parametrize("body", list(BAD_CHUNKS.values()), ids=list(BAD_CHUNKS))
def test_bad_chunk_after_the_head_went_upstream_aborts_it(body: bytes) -> None:
    """The head arrived (and was forwarded) first: the upstream connection is aborted with the
    request unfinished, having seen only the head and well-formed chunks of ours."""
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(CHUNKED)
    head = upstream_head(b"/p", method=b"POST", tail=(b"Transfer-Encoding: chunked",))
    assert up.take() == head
    c.feed(body, step=1)
    sent = up.take()
    assert b"0\r\n\r\n" not in sent, "the upstream got a complete request"
    while sent:  # what went upstream after the head is whole chunks (re-framed by us)
        size, _, rest = sent.partition(b"\r\n")
        n = int(size, 16)
        assert n > 0 and rest[n : n + 2] == b"\r\n", sent
        sent = rest[n + 2 :]
    assert up.aborted
    assert c.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert "write_eof" in c.calls
    k.done_once(k.exchanges[0])


def test_content_length_body_is_never_forwarded_past_its_length() -> None:
    """Bytes beyond a Content-Length body are the next request, never the same upstream
    request's body (the classic CL.TE/TE.CL outcome); here they are a bad request: 400."""
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(_post(b"Content-Length: 5", body=b"hello") + b"GARBAGE\r\n\r\n")
    head = upstream_head(b"/p", method=b"POST", tail=(b"Content-Length: 5",))
    assert up.take() == head + b"hello"
    up.feed(ok())
    got = c.take()
    assert got.startswith(client_ok())
    assert got[len(client_ok()) :].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert "write_eof" in c.calls


LIMITS = ServerConfig(max_header_bytes=256, max_headers=8)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request(b"/" + b"a" * 300), b"414 Request URI Too Long"),
        (b"GET /" + b"a" * 1000, b"414 Request URI Too Long"),  # line never ends
        (request(b"/", b"X-Big: " + b"b" * 300), b"431 Request Header Fields Too Large"),
        (
            request(b"/", *(b"X-%d: 1" % i for i in range(8))),
            b"431 Request Header Fields Too Large",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 1000,
            b"431 Request Header Fields Too Large",
        ),
    ],
    ids=["uri", "uri-unterminated", "header", "too-many-headers", "header-unterminated"],
)
@pytest.mark.parametrize("step", [0, 1], ids=["one-read", "bytewise"])
def test_oversized_heads_are_refused_and_not_forwarded(
    data: bytes, status: bytes, step: int
) -> None:
    got = _refused(data, step=step, config=LIMITS)
    assert got.startswith(b"HTTP/1.1 " + status + b"\r\n"), got


class TestHeaderTimeout:
    """Heads not complete within ``header_timeout`` (Knative's 60 s ReadHeaderTimeout, here
    injected short; the fake loop's clock, no waiting)."""

    def _kit(self) -> Kit:
        k = Kit(config=ServerConfig(header_timeout=2))
        k.server._ticker = k.loop.call_later(1.0, k.server._tick)  # type: ignore[assignment]
        return k

    def test_slowloris_is_closed_however_steady_its_bytes(self) -> None:
        k = self._kit()
        up = k.idle_upstream()
        c = k.client()
        data = request(b"/", *(b"X-%d: v" % i for i in range(20)))
        sent = 0
        while not c.closed:
            assert k.loop.now < 1000.0 + 4, "still open past the header timeout"
            c.feed(data[sent : sent + 1])  # one byte every 100 ms: never a complete head
            sent += 1
            k.loop.advance(0.1)
        assert sent < len(data)
        assert k.exchanges == [] and up.writes == []

    def test_a_request_in_time_is_served(self) -> None:
        k = self._kit()
        up = k.idle_upstream()
        c = k.client()
        data = request()
        for i in range(len(data)):
            c.feed(data[i : i + 1])
            k.loop.advance(1.5 / len(data))
        up.feed(ok())
        assert c.take() == client_ok()
        assert not c.closed


@pytest.mark.parametrize(
    "first",
    [request(host=None), request(host=b"a b"), request(method=b"CONNECT")],
    ids=["no-host", "bad-host", "connect"],
)
def test_refused_request_then_bad_bytes_in_the_same_read(first: bytes) -> None:
    """A request refused before the handler (it closes the connection) followed in the same
    read by bytes that do not parse: one response, then the close; nothing written after it
    and reading goes on (to drain) until the lingering close ends."""
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(first + b"\rGARBAGE\r\n\r\n")
    got = c.take()
    assert got.count(b"HTTP/1.1 ") == 1, got
    assert c.calls == ["write_eof"]
    assert c.reading
    c.feed(b"more bytes to discard")
    k.loop.advance(0.5)
    assert c.calls == ["write_eof", "close"]
    assert k.exchanges == [] and up.writes == []

"""The sans-I/O HTTP/1.1 decisions (dataplane/h1core.py): values and byte strings only."""

from __future__ import annotations

import pytest

from dataplane.h1core import (
    IDLE_CLOSE,
    IDLE_READ,
    IDLE_REFUSE,
    M_CHUNKED,
    M_CLOSE,
    M_NONE,
    M_RAW,
    NEXT_CLOSE,
    NEXT_DRAIN,
    NEXT_READ,
    NEXT_RUN,
    XFF_FIRST,
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

DATE = b"Date: Mon, 07 Dec 2026 11:00:00 GMT\r\n"


def _start(*args: object) -> tuple[int, bool, bytes]:
    """response_start, its head joined (it appends the head's pieces to a list)."""
    out: list[bytes] = [b"(before)"]
    mode, close = response_start(out, *args)  # type: ignore[arg-type]
    assert out[0] == b"(before)"  # (appended to what the list held)
    return mode, close, b"".join(out[1:])


def lines(*pairs: tuple[bytes, bytes]) -> list[bytes]:
    out: list[bytes] = []
    for name, value in pairs:
        out += (name, b": ", value, b"\r\n")
    return out


class TestRequestChecks:
    @pytest.mark.parametrize(
        ("version", "method", "want"),
        [
            ("1.1", b"GET", None),
            ("1.0", b"POST", None),
            ("0.9", b"GET", (400, "malformed HTTP request")),
            ("2.0", b"GET", (505, "unsupported protocol version")),
            ("1.1", b"CONNECT", (405, "CONNECT is not supported")),
        ],
    )
    def test_request_line(self, version: str, method: bytes, want: object) -> None:
        assert request_line_error(version, method) == want

    @pytest.mark.parametrize(
        ("version", "host", "chunked", "te", "want"),
        [
            ("1.1", b"example.com", False, None, None),
            ("1.0", None, False, None, None),  # HTTP/1.0 may omit Host
            ("1.1", None, False, None, (400, "missing required Host header")),
            ("1.1", b"", False, None, (400, "missing required Host header")),
            ("1.1", b"ex ample", False, None, (400, "malformed Host header")),
            ("1.1", b"h", True, b" Chunked ", None),
            ("1.0", b"h", True, b"chunked", (400, "Transfer-Encoding in an HTTP/1.0 request")),
            ("1.1", b"h", True, b"gzip, chunked", (501, "unsupported transfer encoding")),
        ],
    )
    def test_framing(
        self, version: str, host: bytes | None, chunked: bool, te: bytes | None, want: object
    ) -> None:
        assert framing_error(version, host, chunked, te) == want


class TestRequestHead:
    def test_plain(self) -> None:
        head = request_head(
            b"GET", b"/a?b", b"example.com", {}, lines((b"Accept", b"*/*")), b"10.0.0.1"
        )
        assert head == (
            b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n"
            b"X-Forwarded-For: 10.0.0.1\r\n\r\n"
        )

    def test_connection_named_headers_dropped_and_framing_redeclared(self) -> None:
        hdr = {b"connection": b"X-Hop", b"content-length": b"3", b"x-forwarded-for": b"1.1.1.1"}
        out = lines((b"X-Hop", b"1"), (b"X-Keep", b"2"))
        head = request_head(b"POST", b"/", b"h", hdr, out, b"10.0.0.1")
        assert head == (
            b"POST / HTTP/1.1\r\nHost: h\r\nX-Keep: 2\r\n"
            b"X-Forwarded-For: 1.1.1.1, 10.0.0.1\r\nContent-Length: 3\r\n\r\n"
        )

    def test_chunked_with_trailers_te_and_upgrade(self) -> None:
        hdr = {b"te": b"trailers", b"trailer": b"X-Sum", b"upgrade": b"websocket"}
        head = request_head(b"GET", b"/", b"h", hdr, [], b"", False, True, True, b"K: v\r\n")
        assert head == (
            b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: X-Sum\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nK: v\r\n\r\n"
        )

    def test_forwarded_shim_uses_the_first_xff_line(self) -> None:
        hdr = {
            b"x-forwarded-for": b"1.1.1.1, 2.2.2.2",
            XFF_FIRST: b"1.1.1.1",
            b"x-forwarded-proto": b"https",
        }
        head = request_head(b"GET", b"/", b"h", hdr, [], b"10.0.0.1", True)
        assert b"\r\nForwarded: for=1.1.1.1;proto=https\r\n" in head

    def test_last_chunk(self) -> None:
        assert last_chunk(None) == b"0\r\n\r\n"
        assert last_chunk(lines((b"X-Sum", b"9"))) == b"0\r\nX-Sum: 9\r\n\r\n"


class TestResponse:
    @pytest.mark.parametrize(
        ("method", "status", "version", "chunked", "clen", "want"),
        [
            (b"GET", 200, "1.1", False, b"5", M_RAW),
            (b"HEAD", 200, "1.1", False, b"5", M_NONE),
            (b"GET", 204, "1.1", False, None, M_NONE),
            (b"GET", 304, "1.1", False, b"5", M_NONE),
            (b"GET", 200, "1.1", True, None, M_CHUNKED),
            (b"GET", 200, "1.1", False, None, M_CHUNKED),  # until-close upstream: re-chunked
            (b"GET", 200, "1.0", True, None, M_CLOSE),  # HTTP/1.0 client: close delimits
        ],
    )
    def test_mode(
        self, method: bytes, status: int, version: str, chunked: bool, clen: bytes | None, want: int
    ) -> None:
        mode, close, _ = _start(method, status, version, chunked, clen, [], None, b"", b"", False)
        assert mode == want and close == (want == M_CLOSE)

    def test_head_raw(self) -> None:
        out = lines((b"Content-Type", b"text/plain"))
        _, close, head = _start(b"GET", 200, "1.1", False, b"5", out, None, b"", DATE, False)
        assert not close
        assert head == (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n" + DATE + b"\r\n"
        )

    def test_head_http10_keep_alive_connection_tokens_and_extra(self) -> None:
        out = lines((b"X-Hop", b"1"), (b"X-A", b"2"))
        _, _, head = _start(b"GET", 201, "1.0", False, b"0", out, b"X-Hop", b"W: 3\r\n", b"", False)
        assert head == (
            b"HTTP/1.1 201 Created\r\nX-A: 2\r\nW: 3\r\nContent-Length: 0\r\n"
            b"Connection: keep-alive\r\n\r\n"
        )

    def test_head_chunked_and_closing(self) -> None:
        mode, close, head = _start(b"GET", 200, "1.1", False, None, [], None, b"", b"", True)
        assert (mode, close) == (M_CHUNKED, True)
        assert head == (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )

    def test_must_close(self) -> None:
        assert not must_close(True, False, False, False, False, False)
        assert must_close(False, False, False, False, False, False)  # client asked
        assert must_close(True, True, False, False, False, False)  # draining
        assert must_close(True, False, True, False, False, False)  # upgrade refused
        # Expect: 100-continue, body neither invited nor received: its bytes may still come
        assert must_close(True, False, False, True, False, False)
        assert not must_close(True, False, False, True, True, False)
        assert not must_close(True, False, False, True, False, True)


# -- interim responses -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "started", "status", "sent", "relayed"),
    [
        ("1.1", False, 103, False, True),
        ("1.1", False, 100, False, True),
        ("1.1", False, 100, True, False),  # 100 Continue once
        ("1.1", False, 103, True, True),  # other 1xx are not limited
        ("1.1", True, 103, False, False),  # never after the final head
        ("1.0", False, 100, False, False),  # HTTP/1.0 has no 1xx
    ],
)
def test_interim_relayed(
    version: str, started: bool, status: int, sent: bool, relayed: bool
) -> None:
    assert interim_relayed(version, started, status, sent) is relayed


# -- the upstream connection -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keep_alive", "framed", "mode", "body_sent", "upgrade", "reusable"),
    [
        (True, True, M_RAW, True, False, True),
        (True, False, M_NONE, True, False, True),  # HEAD / 204 / 304: no body to delimit
        (True, False, M_CHUNKED, True, False, False),  # body ended by the close
        (False, True, M_RAW, True, False, False),  # the upstream said close
        (True, True, M_RAW, False, False, False),  # request body not all sent
        (True, True, M_RAW, True, True, False),  # an upgrade request
    ],
)
def test_upstream_reusable(
    keep_alive: bool, framed: bool, mode: int, body_sent: bool, upgrade: bool, reusable: bool
) -> None:
    assert upstream_reusable(keep_alive, framed, mode, body_sent, upgrade) is reusable


def test_ends_with_close() -> None:
    assert ends_with_close(False, True, False, M_CHUNKED)  # until-close body, re-chunked
    assert ends_with_close(False, True, False, M_CLOSE)
    assert not ends_with_close(True, True, False, M_CLOSE)  # an error, not an end
    assert not ends_with_close(False, False, False, M_CLOSE)  # no head yet
    assert not ends_with_close(False, True, True, M_RAW)  # a length was promised
    assert not ends_with_close(False, True, False, M_NONE)


def test_may_retry_once_and_only_unprocessed() -> None:
    assert may_retry(reused=True, got_bytes=False, replayable=True, retried=False)
    assert not may_retry(reused=False, got_bytes=False, replayable=True, retried=False)
    assert not may_retry(reused=True, got_bytes=True, replayable=True, retried=False)
    assert not may_retry(reused=True, got_bytes=False, replayable=False, retried=False)
    assert not may_retry(reused=True, got_bytes=False, replayable=True, retried=True)


def test_upstream_error_text() -> None:
    assert upstream_error_text(None) == "EOF"
    assert upstream_error_text(ConnectionResetError()) == "read: connection reset by peer"
    assert upstream_error_text(OSError("broken")) == "broken"
    assert upstream_error_text(TimeoutError()) == "TimeoutError"


# -- pipelining --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "step"),
    [
        ({}, NEXT_READ),
        ({"closing": True, "body_pending": True, "queued": True}, NEXT_CLOSE),
        ({"upgrade": True}, NEXT_CLOSE),
        ({"body_pending": True, "queued": True}, NEXT_DRAIN),  # drain first, then the queue
        ({"queued": True}, NEXT_RUN),
        ({"refusal": True}, NEXT_RUN),
        ({"draining": True}, NEXT_RUN),
    ],
)
def test_after_exchange(flags: dict[str, bool], step: int) -> None:
    args = {
        "closing": False,
        "upgrade": False,
        "body_pending": False,
        "queued": False,
        "refusal": False,
        "draining": False,
        **flags,
    }
    assert after_exchange(**args) == step


def test_when_idle() -> None:
    assert when_idle(refusal=True, parsing=True, draining=True) == IDLE_REFUSE
    assert when_idle(refusal=False, parsing=False, draining=True) == IDLE_CLOSE
    assert when_idle(refusal=False, parsing=True, draining=True) == IDLE_READ  # a head arrives
    assert when_idle(refusal=False, parsing=False, draining=False) == IDLE_READ

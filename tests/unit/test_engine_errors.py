"""Engine protocol tests: requests answered locally with an error (head limits, malformed or
unsupported requests, a failing handler) and the lingering close that follows."""

from __future__ import annotations

import pytest

from dataplane.proxy import Exchange, ServerConfig

from .enginekit import (
    Kit,
    client_ok,
    error_response,
    ok,
    request,
)


def parse_error(status: bytes, message: bytes) -> bytes:
    """The response to bytes the parser rejects: no Date (like Go's), always close."""
    body = message + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"X-Content-Type-Options: nosniff\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + b"Connection: close\r\n\r\n"
        + body
    )


URI_TOO_LONG = parse_error(b"414 Request URI Too Long", b"request URI too long")
FIELDS_TOO_LARGE = parse_error(
    b"431 Request Header Fields Too Large", b"request header fields too large"
)
LIMITS = ServerConfig(max_header_bytes=200, max_headers=4)
DELIVERY = ["packet", "bytewise", "pipelined"]


def rejected(data: bytes, delivery: str, config: ServerConfig = LIMITS) -> bytes:
    """What the client gets for ``data`` that must be rejected; checks the close."""
    k = Kit(config=config)
    up = k.idle_upstream()
    c = k.client()
    if delivery == "pipelined":
        c.feed(request(b"/first") + data)
        up.feed(ok())
        got = c.take()
        assert got.startswith(client_ok())
        got = got[len(client_ok()) :]
        k.done_once(k.exchanges[0])
        assert len(k.exchanges) == 1
    else:
        c.feed(data, step=1 if delivery == "bytewise" else 0)
        got = c.take()
        assert k.exchanges == []
    assert "write_eof" in c.calls
    return got


@pytest.mark.parametrize("delivery", DELIVERY)
class TestHeadLimits:
    def test_uri_too_long(self, delivery: str) -> None:
        assert rejected(request(b"/" + b"a" * 250), delivery) == URI_TOO_LONG

    def test_uri_too_long_before_the_line_ends(self, delivery: str) -> None:
        assert rejected(b"GET /" + b"a" * 250, delivery) == URI_TOO_LONG

    def test_header_fields_too_large(self, delivery: str) -> None:
        assert rejected(request(b"/", b"X-Big: " + b"b" * 250), delivery) == FIELDS_TOO_LARGE

    def test_header_fields_too_large_in_total(self, delivery: str) -> None:
        lines = [b"X-%d: " % i + b"v" * 60 for i in range(3)]  # each < 200, not in all
        assert rejected(request(b"/", *lines), delivery) == FIELDS_TOO_LARGE

    def test_too_many_headers(self, delivery: str) -> None:
        lines = [b"X-%d: 1" % i for i in range(4)]  # and Host: 5 in all, 4 allowed
        assert rejected(request(b"/", *lines), delivery) == FIELDS_TOO_LARGE

    def test_limits_are_inclusive(self, delivery: str) -> None:
        k = Kit(config=LIMITS)
        up = k.idle_upstream()
        c = k.client()
        lines = [b"X-%d: 1" % i for i in range(3)]  # with Host: 4 headers
        req = request(b"/" + b"a" * 150, *lines)
        c.feed(req + req if delivery == "pipelined" else req, step=int(delivery == "bytewise"))
        up.feed(ok())
        assert c.take() == client_ok()
        assert k.exchanges[0].target == b"/" + b"a" * 150

    def test_header_fields_too_large_before_the_line_ends(self, delivery: str) -> None:
        data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 1000
        if delivery == "pipelined":
            # Behind a complete request in the same packet, the bytes of the unfinished head
            # are only counted from the next packet on (the parser gives no offsets): what it
            # accumulates stays bounded by that packet plus the limit.
            k = Kit(config=LIMITS)
            up = k.idle_upstream()
            c = k.client()
            c.feed(request(b"/first") + data)
            up.feed(ok())
            assert c.take() == client_ok()
            c.feed(b"b" * 500)
            assert c.take() == FIELDS_TOO_LARGE
            assert "write_eof" in c.calls
            return
        assert rejected(data, delivery) == FIELDS_TOO_LARGE


class TestMalformed:
    def test_content_length_with_transfer_encoding(self) -> None:
        data = request(
            b"/",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            method=b"POST",
            body=b"0\r\n\r\n",
        )
        got = rejected(data, "packet")
        assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"\r\nConnection: close\r\n" in got

    def test_duplicate_host(self) -> None:
        data = request(b"/", b"Host: other.example")
        assert rejected(data, "packet") == parse_error(b"400 Bad Request", b"too many Host headers")

    def test_invalid_method(self) -> None:
        got = rejected(b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", "packet")
        assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")


class TestRefused:
    """Well-formed requests the engine refuses before the handler runs."""

    @pytest.mark.parametrize(
        ("data", "status", "message"),
        [
            (request(host=None), b"400 Bad Request", b"missing required Host header"),
            (
                request(b"/", b"Host:", host=None),
                b"400 Bad Request",
                b"missing required Host header",
            ),
            (
                request(
                    b"/",
                    b"Transfer-Encoding: gzip, chunked",
                    method=b"POST",
                    body=b"0\r\n\r\n",
                ),
                b"501 Not Implemented",
                b"unsupported transfer encoding",
            ),
            (
                request(b"example.com:443", method=b"CONNECT"),
                b"405 Method Not Allowed",
                b"CONNECT is not supported",
            ),
            (
                request(version=b"2.0"),
                b"505 HTTP Version Not Supported",
                b"unsupported protocol version",
            ),
        ],
    )
    def test_refused_with_close(self, data: bytes, status: bytes, message: bytes) -> None:
        k = Kit()
        c = k.client()
        c.feed(data)
        assert c.take() == error_response(status, message, close=True)
        assert k.exchanges == []  # the handler never saw it
        assert c.calls == ["write_eof"]
        assert k.server.inflight == 0
        k.loop.advance(0.5)
        assert c.calls == ["write_eof", "close"]

    def test_host_header_present_with_host_first(self) -> None:
        k = Kit(lambda ex: ex.respond(204))
        c = k.client()
        c.feed(request(host=b"a.example"))
        assert c.take().startswith(b"HTTP/1.1 204 No Content\r\n")


class TestLocalErrors:
    def test_handler_exception_is_a_500_with_close(self) -> None:
        def handler(ex: Exchange) -> None:
            raise RuntimeError("boom")

        k = Kit(handler)
        c = k.client()
        c.feed(request())
        assert c.take() == error_response(
            b"500 Internal Server Error", b"internal error", close=True
        )
        k.done_once(k.exchanges[0])
        k.expect_logged("handler failed")

    def test_expect_continue_with_a_local_error_closes(self) -> None:
        k = Kit(lambda ex: ex.error(403, "denied"))
        c = k.client()
        c.feed(request(b"/", b"Expect: 100-continue", b"Content-Length: 5", method=b"POST"))
        assert c.take() == error_response(b"403 Forbidden", b"denied", close=True)
        assert c.calls == ["write_eof"]
        k.done_once(k.exchanges[0])

    def test_local_error_keeps_the_connection(self) -> None:
        k = Kit(lambda ex: ex.error(403, "denied"))
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 5", method=b"POST", body=b"hello"))
        c.feed(request(b"/again"))
        assert c.take() == error_response(b"403 Forbidden", b"denied") * 2
        assert c.calls == []

    def test_local_error_before_the_body_then_the_body_is_skipped(self) -> None:
        k = Kit(lambda ex: ex.error(403, "denied"))
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 5", method=b"POST"))
        assert c.take() == error_response(b"403 Forbidden", b"denied")
        c.feed(b"hello" + request(b"/again"))
        assert c.take() == error_response(b"403 Forbidden", b"denied")
        assert [ex.target for ex in k.exchanges] == [b"/p", b"/again"]

    @pytest.mark.parametrize(
        ("lines", "connection", "calls"),
        [
            ((b"Connection: keep-alive",), b"Connection: keep-alive\r\n", []),
            ((), b"", ["write_eof"]),  # HTTP/1.0 closes by default: Go says nothing
        ],
    )
    def test_http10_local_answer(
        self, lines: tuple[bytes, ...], connection: bytes, calls: list[str]
    ) -> None:
        k = Kit(lambda ex: ex.respond(200, b"ok"))
        c = k.client()
        c.feed(request(b"/", *lines, version=b"1.0"))
        assert c.take() == client_ok(b"ok").replace(b"\r\n\r\n", b"\r\n" + connection + b"\r\n")
        assert c.calls == calls

    def test_head_error_has_no_body(self) -> None:
        k = Kit(lambda ex: ex.error(403, "denied"))
        c = k.client()
        c.feed(request(method=b"HEAD"))
        assert c.take() == error_response(b"403 Forbidden", b"denied")[: -len(b"denied\n")]

    def test_failing_on_done_does_not_stop_the_connection(self) -> None:
        def on_done(ex: Exchange) -> None:
            raise RuntimeError("boom")

        def handler(ex: Exchange) -> None:
            ex.on_done = on_done
            ex.respond(200, b"ok")

        k = Kit(handler)
        c = k.client()
        c.feed(request(b"/1"))
        c.feed(request(b"/2"))
        assert c.take() == client_ok(b"ok") * 2
        k.expect_logged("on_done callback failed", "on_done callback failed")

    def test_respond_twice_is_ignored(self) -> None:
        def handler(ex: Exchange) -> None:
            ex.respond(200, b"one")
            ex.respond(500, b"two")
            ex.error(502, "three")

        k = Kit(handler)
        c = k.client()
        c.feed(request())
        assert c.take() == client_ok(b"one")
        k.done_once(k.exchanges[0])


class TestLingeringClose:
    def test_write_eof_then_close_after_the_linger(self) -> None:
        k = Kit(lambda ex: ex.error(400, "bad"))
        c = k.client()
        c.feed(request(b"/", b"Connection: close"))
        assert c.take() == error_response(b"400 Bad Request", b"bad", close=True)
        assert c.calls == ["write_eof"]
        c.feed(b"unread request bytes are read and dropped")
        assert c.take() == b""
        assert len(k.exchanges) == 1
        k.loop.advance(0.49)
        assert c.calls == ["write_eof"]
        k.loop.advance(0.01)
        assert c.calls == ["write_eof", "close"]
        assert c.lost

    def test_plain_close_without_write_eof(self) -> None:
        k = Kit(lambda ex: ex.error(400, "bad"))
        c = k.client()
        c.eof_capable = False  # e.g. TLS
        c.feed(request(b"/", b"Connection: close"))
        assert c.take() == error_response(b"400 Bad Request", b"bad", close=True)
        assert c.calls == ["close"]

    def test_paused_reading_resumes_to_drain(self) -> None:
        k = Kit(config=LIMITS)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1") + request(b"/2") + b"BAD\r\n\r\n")
        assert c.calls == ["pause_reading"]
        up.feed(ok())
        up.feed(ok())
        assert c.calls == ["pause_reading", "write_eof", "resume_reading"]

"""Engine protocol tests: upstream failures before and during a response, and the one
transparent retry of a bodyless request on a reused connection the server had closed."""

from __future__ import annotations

import pytest

from .enginekit import (
    DATE,
    Kit,
    client_ok,
    error_response,
    ok,
    request,
    response,
    upstream_head,
)

POST = request(b"/p", b"Content-Length: 2", method=b"POST", body=b"hi")
POST_SENT = upstream_head(b"/p", method=b"POST", tail=(b"Content-Length: 2",)) + b"hi"


class TestRetry:
    @pytest.mark.parametrize("loss", ["eof", "reset"])
    def test_bodyless_request_retried_once_on_a_new_connection(self, loss: str) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/r"))
        assert up.take() == upstream_head(b"/r")
        if loss == "eof":
            up.peer_eof()
        else:
            up.peer_lost(ConnectionResetError())
        assert c.take() == b""  # nothing to the client yet
        assert len(k.pool.dialing) == 1
        nup = k.pool.complete_dial()
        assert nup.take() == upstream_head(b"/r")
        nup.feed(ok())
        assert c.take() == client_ok()
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 1
        assert k.pool.acquire() is nup.protocol

    def test_no_second_retry(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/r"))
        up.peer_eof()
        nup = k.pool.complete_dial()
        nup.peer_eof()
        assert c.take() == error_response(b"502 Bad Gateway", b"EOF")
        assert not k.pool.dialing
        k.done_once(k.exchanges[0])
        assert c.calls == []  # the client connection stays usable

    def test_head_with_content_length_zero_is_replayed(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 0", method=b"OPTIONS"))
        up.peer_eof()
        assert len(k.pool.dialing) == 1

    @pytest.mark.parametrize("key", [b"Idempotency-Key: 7", b"X-Idempotency-Key: 7"])
    def test_bodyless_post_with_idempotency_key_is_replayed(self, key: bytes) -> None:
        # Go's transport: non-idempotent methods are replayed only with an idempotency key
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 0", key, method=b"POST"))
        up.peer_eof()
        assert len(k.pool.dialing) == 1

    @pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH"])
    def test_bodyless_non_idempotent_request_is_not_replayed(self, method: bytes) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 0", method=method))
        up.peer_eof()
        assert not k.pool.dialing
        assert c.take() == error_response(b"502 Bad Gateway", b"EOF")

    def test_retry_dial_fails(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/r"))
        up.peer_eof()
        k.pool.fail_dial("dial tcp 127.0.0.1:8080: connect: connection refused")
        assert c.take() == error_response(
            b"502 Bad Gateway", b"dial tcp 127.0.0.1:8080: connect: connection refused"
        )
        k.done_once(k.exchanges[0])

    def test_client_gone_during_the_retry_dial(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/r"))
        up.peer_eof()
        c.peer_lost()
        k.done_once(k.exchanges[0])
        assert k.exchanges[0].aborted
        nup = k.pool.complete_dial()
        assert nup.take() == b""
        assert k.pool.idle_count == 1  # the unused new connection is pooled


class TestNoRetry:
    @pytest.mark.parametrize(
        ("loss", "message"), [("eof", b"EOF"), ("reset", b"read: connection reset by peer")]
    )
    def test_request_with_body(self, loss: str, message: bytes) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(POST)
        assert up.take() == POST_SENT
        if loss == "eof":
            up.peer_eof()
        else:
            up.peer_lost(ConnectionResetError())
        assert c.take() == error_response(b"502 Bad Gateway", message)
        assert not k.pool.dialing
        k.done_once(k.exchanges[0])

    def test_chunked_request(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Transfer-Encoding: chunked", method=b"POST", body=b"0\r\n\r\n"))
        up.peer_eof()
        assert c.take() == error_response(b"502 Bad Gateway", b"EOF")

    def test_new_connection(self) -> None:
        k = Kit()
        c = k.client()
        c.feed(request(b"/r"))
        up = k.pool.complete_dial()
        assert up.take() == upstream_head(b"/r")
        up.peer_lost(ConnectionResetError())
        assert c.take() == error_response(b"502 Bad Gateway", b"read: connection reset by peer")
        assert not k.pool.dialing

    def test_after_the_first_response_byte(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/r"))
        up.feed(b"HTTP/1.1 200 OK\r\n")
        up.peer_eof()
        assert c.take() == error_response(b"502 Bad Gateway", b"EOF")
        assert not k.pool.dialing


class TestFailures:
    def test_dial_failure(self) -> None:
        k = Kit()
        c = k.client()
        c.feed(request())
        k.pool.fail_dial("dial tcp 127.0.0.1:8080: connect: connection refused")
        assert c.take() == error_response(
            b"502 Bad Gateway", b"dial tcp 127.0.0.1:8080: connect: connection refused"
        )
        k.done_once(k.exchanges[0])
        c.feed(request(b"/again"))
        nup = k.pool.complete_dial()
        assert nup.take() == upstream_head(b"/again")

    def test_malformed_response(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
        head, _, body = c.take().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert body.startswith(b"malformed response from upstream: ")
        assert up.calls == ["abort"]
        k.done_once(k.exchanges[0])

    def test_mid_response_loss_with_content_length(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(response(b"200 OK", b"Content-Length: 10", body=b"ab"))
        assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n" + DATE + b"\r\nab"
        up.peer_eof()
        assert c.take() == b""
        assert c.calls == ["close"]  # a short body and a closed connection: no clean end
        k.done_once(k.exchanges[0])
        assert not k.exchanges[0].aborted
        assert not k.pool.dialing
        assert k.pool.idle_count == 0

    def test_mid_response_loss_with_chunked(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nab\r\n"))
        c.take()
        up.peer_lost(ConnectionResetError())
        assert c.take() == b""  # no last chunk
        assert c.calls == ["close"]
        k.done_once(k.exchanges[0])

    def test_mid_response_loss_drops_pipelined_requests(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1") + request(b"/2"))
        up.feed(response(b"200 OK", b"Content-Length: 10", body=b"ab"))
        up.peer_eof()
        k.loop.run_ready()
        assert c.lost
        assert len(k.exchanges) == 1
        assert not k.pool.dialing


def test_dial_error_without_text_says_eof() -> None:
    # uvloop raises a bare ConnectionResetError() when the peer closes during a TLS handshake
    from dataplane.upstream import _dial_error_text

    assert _dial_error_text("10.0.0.1", 8112, ConnectionResetError()) == (
        "dial tcp 10.0.0.1:8112: EOF"
    )
    assert _dial_error_text("10.0.0.1", 8112, TimeoutError()) == (
        "dial tcp 10.0.0.1:8112: TimeoutError"
    )
    refused = ConnectionRefusedError(111, "Connection refused")
    assert _dial_error_text("10.0.0.1", 80, refused) == (
        "dial tcp 10.0.0.1:80: connect: connection refused"
    )

"""Engine protocol tests: pipelined requests are answered strictly in order, one at a time
upstream, and a malformed request ends the connection only after the ones before it."""

from __future__ import annotations

from dataplane.proxy import Exchange

from .enginekit import (
    DATE,
    Kit,
    client_ok,
    error_response,
    ok,
    request,
    upstream_head,
)


def deny_or_proxy(k: Kit) -> None:
    def handler(ex: Exchange) -> None:
        if ex.path == b"/deny":
            ex.error(403, "denied")
        else:
            ex.proxy(k.pool)

    k.handler = handler


def bad_request(message: bytes) -> bytes:
    """The response to a request the parser rejects (no Date, like Go's)."""
    body = message + b"\n"
    return (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"X-Content-Type-Options: nosniff\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + b"Connection: close\r\n\r\n"
        + body
    )


def test_three_requests_in_one_packet_one_at_a_time_upstream() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/1") + request(b"/2") + request(b"/3"))
    assert c.calls == ["pause_reading"]  # nothing more is read while requests are queued
    assert [ex.target for ex in k.exchanges] == [b"/1"]
    assert up.take() == upstream_head(b"/1")  # upstream connections are never pipelined
    up.feed(ok(b"one"))
    assert up.take() == upstream_head(b"/2")
    assert c.take() == client_ok(b"one")
    up.feed(ok(b"two"))
    assert up.take() == upstream_head(b"/3")
    up.feed(ok(b"three"))
    assert c.take() == client_ok(b"two") + client_ok(b"three")
    assert c.calls == ["pause_reading", "resume_reading"]
    assert len(k.upstreams) == 1
    for ex in k.exchanges:
        k.done_once(ex)
    c.feed(request(b"/4"))
    assert up.take() == upstream_head(b"/4")


def test_local_answer_between_proxied_requests_keeps_order() -> None:
    k = Kit()
    deny_or_proxy(k)
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/1") + request(b"/deny") + request(b"/3"))
    # The local answer must wait for the proxied response before it: its handler has not run.
    assert [ex.target for ex in k.exchanges] == [b"/1"]
    assert c.take() == b""
    up.feed(ok(b"one"))
    assert c.take() == client_ok(b"one") + error_response(b"403 Forbidden", b"denied")
    assert up.take() == upstream_head(b"/1") + upstream_head(b"/3")
    up.feed(ok(b"three"))
    assert c.take() == client_ok(b"three")
    assert len(k.done) == 3
    assert c.calls == ["pause_reading", "resume_reading"]


def test_deferred_first_request_holds_back_the_second() -> None:
    k = Kit(defer=True)
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/1") + request(b"/2"))
    first = k.held[0]
    assert len(k.held) == 1
    first.respond(204)
    assert c.take() == b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n" + DATE + b"\r\n"
    assert [ex.target for ex in k.held] == [b"/1", b"/2"]
    k.held[1].proxy(k.pool)
    assert up.take() == upstream_head(b"/2")


def test_pipelined_bodies_are_kept_with_their_requests() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(
        request(b"/1")
        + request(b"/2", b"Content-Length: 5", method=b"POST", body=b"hello")
        + request(
            b"/3",
            b"Transfer-Encoding: chunked",
            method=b"POST",
            body=b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        )
    )
    assert up.take() == upstream_head(b"/1")
    up.feed(ok(b"1"))
    assert up.take() == upstream_head(b"/2", method=b"POST", tail=(b"Content-Length: 5",)) + (
        b"hello"
    )
    up.feed(ok(b"2"))
    assert up.take() == upstream_head(
        b"/3", method=b"POST", tail=(b"Transfer-Encoding: chunked",)
    ) + (b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    up.feed(ok(b"3"))
    assert c.take() == client_ok(b"1") + client_ok(b"2") + client_ok(b"3")
    assert len(k.done) == 3


def test_second_head_split_across_packets() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    data = request(b"/1") + request(b"/2")
    c.feed(data[:-10])
    assert c.calls == []
    c.feed(data[-10:])
    assert c.calls == ["pause_reading"]
    up.feed(ok())
    up.feed(ok())
    assert up.take() == upstream_head(b"/1") + upstream_head(b"/2")
    assert c.take() == client_ok() * 2


def test_requests_after_connection_close_are_not_served() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/1", b"Connection: close") + request(b"/2"))
    up.feed(ok())
    assert c.take() == client_ok().replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    assert up.take() == upstream_head(b"/1")
    assert len(k.exchanges) == 1
    assert "write_eof" in c.calls
    k.loop.advance(1)
    assert c.lost


class TestMalformed:
    def test_after_two_valid_requests(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1") + request(b"/2") + b"GARBAGE\r\n\r\n")
        up.feed(ok(b"one"))
        assert c.take() == client_ok(b"one")
        up.feed(ok(b"two"))
        assert c.take() == client_ok(b"two") + bad_request(
            b"malformed request: Invalid method encountered"
        )
        assert up.take() == upstream_head(b"/1") + upstream_head(b"/2")
        assert [ex.target for ex in k.done] == [b"/1", b"/2"]
        assert c.calls[-2:] == ["write_eof", "resume_reading"]  # linger: read and discard
        c.feed(request(b"/ignored"))
        assert c.take() == b""
        k.loop.advance(0.5)
        assert c.calls[-1] == "close"
        assert c.lost

    def test_arriving_while_a_request_is_served(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1"))
        c.feed(b"GARBAGE\r\n\r\n")
        assert c.take() == b""
        assert c.calls == ["pause_reading"]
        up.feed(ok())
        assert c.take() == client_ok() + bad_request(
            b"malformed request: Invalid method encountered"
        )
        k.done_once(k.exchanges[0])

    def test_body_of_the_active_request(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1", b"Transfer-Encoding: chunked", method=b"POST"))
        up.take()
        c.feed(b"zz\r\n")
        assert c.take() == error_response(
            b"400 Bad Request", b"malformed request: Invalid character in chunk size", close=True
        )
        assert up.calls == ["abort"]
        k.done_once(k.exchanges[0])
        assert c.calls == ["write_eof"]

    def test_body_of_a_queued_request(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(
            request(b"/1")
            + request(b"/2", b"Transfer-Encoding: chunked", method=b"POST", body=b"zz\r\n")
        )
        up.feed(ok())
        assert c.take() == client_ok() + bad_request(
            b"malformed request: Invalid character in chunk size"
        )
        assert up.take() == upstream_head(b"/1")
        assert len(k.exchanges) == 1  # the queued request never reached the handler
        assert k.pool.idle_count == 1

"""Engine protocol tests: request timeouts (``Exchange.set_timeouts``) enforced by the server's
50 ms sweep on a fake clock, and the header timeout enforced by the once-a-second tick."""

from __future__ import annotations

from dataplane.proxy import Exchange, ServerConfig
from dataplane.timeouts import TimeoutPolicy

from .enginekit import (
    DATE,
    Kit,
    client_ok,
    ok,
    request,
    response,
    upstream_head,
)

GATEWAY_TIMEOUT = (
    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 15\r\n" + DATE + b"\r\nrequest timeout"
)


def timed_kit(policy: TimeoutPolicy, *, proxy: bool = True) -> Kit:
    def handler(ex: Exchange) -> None:
        ex.set_timeouts(policy)
        if proxy:
            ex.proxy(k.pool)
        else:
            k.held.append(ex)

    k = Kit(handler)
    return k


class TestTotal:
    def test_504_before_the_response(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        k.loop.advance(0.95)
        assert c.take() == b""
        k.loop.advance(0.15)
        assert c.take() == GATEWAY_TIMEOUT
        assert up.calls == ["abort"]
        k.done_once(k.exchanges[0])
        assert c.calls == []  # the connection stays open for the next request
        assert k.server.timed == set()
        k.loop.advance(0.1)
        assert k.server._sweeper is None  # nothing left to watch: the sweep stops
        c.feed(request(b"/next"))
        nup = k.pool.complete_dial()
        assert nup.take() == upstream_head(b"/next")

    def test_chunk_appended_after_a_chunked_response_started(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nab\r\n"))
        assert c.take() == (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + DATE + b"\r\n2\r\nab\r\n"
        )
        k.loop.advance(1.1)
        assert c.take() == b"f\r\nrequest timeout\r\n0\r\n\r\n"
        assert up.calls == ["abort"]
        assert c.calls == []  # the response ended cleanly and the request was read
        k.done_once(k.exchanges[0])

    def test_chunked_response_and_unread_request_body_closes(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 10", method=b"POST", body=b"abc"))
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nab\r\n"))
        c.take()
        k.loop.advance(1.1)
        assert c.take() == b"f\r\nrequest timeout\r\n0\r\n\r\n"
        assert c.calls == ["close"]
        k.done_once(k.exchanges[0])

    def test_content_length_response_in_progress_closes(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(response(b"200 OK", b"Content-Length: 5", body=b"ab"))
        c.take()
        k.loop.advance(1.1)
        assert c.take() == b""  # nothing can be added to a Content-Length body
        assert c.calls == ["close"]
        assert up.calls == ["abort"]
        k.done_once(k.exchanges[0])

    def test_close_delimited_response_gets_the_message_then_close(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(version=b"1.0"))
        up.feed(response(b"200 OK", body=b"ab"))
        c.take()
        k.loop.advance(1.1)
        assert c.take() == b"request timeout"
        assert c.calls == ["close"]

    def test_while_the_handler_holds_the_request(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0), proxy=False)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        k.loop.advance(1.1)
        assert c.take() == GATEWAY_TIMEOUT
        k.done_once(k.exchanges[0])
        k.held[0].proxy(k.pool)  # too late: nothing happens
        assert up.take() == b""
        assert k.pool.idle_count == 1

    def test_while_dialling(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        c = k.client()
        c.feed(request())
        k.loop.advance(1.1)
        assert c.take() == GATEWAY_TIMEOUT
        up = k.pool.complete_dial()
        assert up.take() == b""
        assert k.pool.idle_count == 1
        k.done_once(k.exchanges[0])

    def test_completed_exchange_is_no_longer_watched(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(ok())
        assert k.server.timed == set()
        k.loop.advance(2)
        assert c.take() == client_ok()
        assert k.server._sweeper is None
        k.done_once(k.exchanges[0])

    def test_each_pipelined_request_has_its_own_clock(self) -> None:
        k = timed_kit(TimeoutPolicy(1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1") + request(b"/2"))
        k.loop.advance(0.8)
        up.feed(ok())  # /2 starts now
        k.loop.advance(0.8)
        assert c.take() == client_ok()
        k.loop.advance(0.3)
        assert c.take() == GATEWAY_TIMEOUT


class TestResponseStartAndIdle:
    def test_response_start_limit_stops_once_the_head_is_out(self) -> None:
        k = timed_kit(TimeoutPolicy(0, response_start=1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        k.loop.advance(0.5)
        up.feed(response(b"200 OK", b"Content-Length: 4", body=b"ab"))
        k.loop.advance(5)
        up.feed(b"cd")
        assert c.take() == client_ok(b"abcd")
        k.done_once(k.exchanges[0])

    def test_response_start_limit_fires(self) -> None:
        k = timed_kit(TimeoutPolicy(10, response_start=1.0))
        k.idle_upstream()
        c = k.client()
        c.feed(request())
        k.loop.advance(0.95)
        assert c.take() == b""
        k.loop.advance(0.15)
        assert c.take() == GATEWAY_TIMEOUT

    def test_idle_limit_counts_from_the_last_write(self) -> None:
        k = timed_kit(TimeoutPolicy(10, idle=1.0))
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked"))
        for _ in range(5):
            k.loop.advance(0.6)
            up.feed(b"1\r\nx\r\n")
        assert c.take().endswith(b"1\r\nx\r\n" * 5)
        k.loop.advance(0.95)
        assert c.take() == b""
        k.loop.advance(0.15)
        assert c.take() == b"f\r\nrequest timeout\r\n0\r\n\r\n"
        k.done_once(k.exchanges[0])


class TestHeaderTimeout:
    def _ticking(self, header_timeout: float) -> Kit:
        k = Kit(config=ServerConfig(header_timeout=header_timeout))
        k.server._ticker = k.loop.call_later(1.0, k.server._tick)  # what start() arms
        return k

    def test_idle_new_connection_closed(self) -> None:
        k = self._ticking(3)
        c = k.client()
        k.loop.advance(3.5)
        assert c.calls == []
        k.loop.advance(1)
        assert c.calls == ["close"]

    def test_partial_head_closed(self) -> None:
        k = self._ticking(3)
        c = k.client()
        k.loop.advance(2.5)
        c.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
        k.loop.advance(2)
        c.feed(b"X-Slow: 1\r\n")
        assert c.calls == []
        k.loop.advance(2)
        assert c.calls == ["close"]

    def test_partial_pipelined_head_waits_for_the_request_before_it(self) -> None:
        k = self._ticking(3)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1") + b"GET /2 HTTP/1.1\r\nHo")
        k.loop.advance(5)  # a slow upstream: the client waits for /1 before sending more
        assert c.calls == []
        up.feed(ok())
        assert c.take() == client_ok()
        assert not k.exchanges[0].aborted

    def test_served_and_idle_keep_alive_connection_left_open(self) -> None:
        k = self._ticking(3)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        k.loop.advance(10)  # a slow upstream is not a header timeout
        up.feed(ok())
        k.loop.advance(10)  # an idle keep-alive connection is not either
        assert c.calls == []

"""Engine protocol tests: request bodies buffered until an upstream is attached, and
back-pressure both ways (a peer that cannot take more pauses reading on the other side)."""

from __future__ import annotations

from dataplane.proxy import ServerConfig

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

POST_HEAD = upstream_head(b"/p", method=b"POST", tail=(b"Content-Length: 30",))
CHUNKED_HEAD = upstream_head(b"/p", method=b"POST", tail=(b"Transfer-Encoding: chunked",))


class TestBodyBuffer:
    def test_flushed_in_order_on_attach_with_pause_past_the_limit(self) -> None:
        k = Kit(config=ServerConfig(body_buffer=10), defer=True)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 30", method=b"POST", body=b"aaaaa"))
        c.feed(b"bbbbb")
        assert c.calls == []  # 10 bytes buffered: at the limit, not past it
        c.feed(b"c")
        assert c.calls == ["pause_reading"]
        k.held[0].proxy(k.pool)
        assert up.take() == POST_HEAD + b"aaaaabbbbbc"  # one write, in order
        assert c.calls == ["pause_reading", "resume_reading"]
        c.feed(b"d" * 19)
        assert up.take() == b"d" * 19
        up.feed(ok())
        assert c.take() == client_ok()
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 1

    def test_flushed_when_a_new_connection_is_dialled(self) -> None:
        k = Kit(config=ServerConfig(body_buffer=4), defer=True)
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 30", method=b"POST", body=b"a" * 5))
        assert c.calls == ["pause_reading"]
        k.held[0].proxy(k.pool)
        assert c.calls == ["pause_reading"]  # still no upstream: still paused
        up = k.pool.complete_dial()
        assert up.take() == POST_HEAD + b"a" * 5
        assert c.calls == ["pause_reading", "resume_reading"]
        c.feed(b"b" * 25)
        assert up.take() == b"b" * 25

    def test_body_arriving_while_dialling_is_kept(self) -> None:
        k = Kit()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 30", method=b"POST", body=b"a" * 10))
        c.feed(b"b" * 10)
        up = k.pool.complete_dial()
        c.feed(b"c" * 10)
        assert up.take() == POST_HEAD + b"a" * 10 + b"b" * 10 + b"c" * 10
        up.feed(ok())
        assert c.take() == client_ok()
        assert k.pool.idle_count == 1

    def test_chunked_body_rechunked_with_trailers_on_attach(self) -> None:
        k = Kit(defer=True)
        up = k.idle_upstream()
        c = k.client()
        c.feed(
            request(
                b"/p",
                b"Transfer-Encoding: chunked",
                method=b"POST",
                body=b"5\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 6\r\n\r\n",
            )
        )
        k.held[0].proxy(k.pool)
        assert up.take() == CHUNKED_HEAD + b"5\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 6\r\n\r\n"
        up.feed(ok())
        assert c.take() == client_ok()
        assert k.pool.idle_count == 1

    def test_chunked_body_partly_buffered_then_streamed(self) -> None:
        k = Kit(defer=True)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Transfer-Encoding: chunked", method=b"POST", body=b"2\r\nab\r\n"))
        k.held[0].proxy(k.pool)
        assert up.take() == CHUNKED_HEAD + b"2\r\nab\r\n"
        c.feed(b"1\r\nc\r\n0\r\n\r\n")
        assert up.take() == b"1\r\nc\r\n0\r\n\r\n"

    def test_local_answer_to_a_held_request_resumes_reading_to_drain(self) -> None:
        k = Kit(config=ServerConfig(body_buffer=4), defer=True)
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 100", method=b"POST", body=b"x" * 10))
        assert c.calls == ["pause_reading"]
        k.held[0].error(503, "busy")
        assert c.take() == error_response(b"503 Service Unavailable", b"busy")
        assert c.calls == ["pause_reading", "resume_reading"]
        c.feed(b"y" * 90 + request(b"/2"))
        assert [ex.target for ex in k.held] == [b"/p", b"/2"]
        k.done_once(k.held[0])

    def test_response_before_body_end_discards_the_rest(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 30", method=b"POST", body=b"a" * 10))
        up.feed(response(b"413 Request Entity Too Large", b"Content-Length: 0"))
        assert c.take() == (
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n" + DATE + b"\r\n"
        )
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 0  # the upstream did not read the whole body
        assert up.calls == ["close"]
        c.feed(b"b" * 20)  # the rest of the body is read and dropped
        c.feed(request(b"/next"))
        nup = k.pool.complete_dial()
        assert nup.take() == upstream_head(b"/next")
        nup.feed(ok())
        assert c.take() == client_ok()

    def test_discarding_is_bounded(self) -> None:
        k = Kit(lambda ex: ex.error(403, "denied"))
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 1000000", method=b"POST"))
        assert c.take() == error_response(b"403 Forbidden", b"denied")
        c.feed(b"x" * (200 * 1024))
        assert c.calls == []
        c.feed(b"x" * (100 * 1024))
        assert c.calls == ["write_eof"]
        k.loop.advance(0.5)
        assert c.calls == ["write_eof", "close"]


class TestBackPressure:
    def test_client_pause_writing_pauses_upstream_reading(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        up.feed(response(b"200 OK", b"Content-Length: 6", body=b"abc"))
        c.block()
        assert up.calls == ["pause_reading"]
        c.block()  # a second notice does not pause twice
        assert up.calls == ["pause_reading"]
        c.unblock()
        assert up.calls == ["pause_reading", "resume_reading"]
        up.feed(b"def")
        assert c.take() == client_ok(b"abcdef")
        assert k.pool.idle_count == 1

    def test_client_blocked_by_the_last_write_then_upstream_pooled_reading(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        c.write_limit = 10  # the response is more than the client takes
        up.feed(ok(b"x" * 100))
        assert c.take() == client_ok(b"x" * 100)
        # Paused as the response was written, then released to the pool: reading again.
        assert up.calls == ["pause_reading", "resume_reading"]
        assert k.pool.idle_count == 1
        # The client still is not reading: the next exchange starts with the upstream paused.
        c.feed(request(b"/2"))
        assert up.take() == upstream_head(b"/") + upstream_head(b"/2")
        assert up.calls[-1] == "pause_reading"
        c.unblock()
        assert up.calls[-1] == "resume_reading"
        up.feed(ok())
        assert c.take() == client_ok()

    def test_client_blocked_before_the_upstream_is_attached(self) -> None:
        k = Kit(defer=True)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        c.block()
        k.held[0].proxy(k.pool)
        assert up.calls == ["pause_reading"]
        c.unblock()
        assert up.calls == ["pause_reading", "resume_reading"]

    def test_upstream_pause_writing_pauses_client_reading(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 30", method=b"POST", body=b"a" * 10))
        up.block()
        assert c.calls == ["pause_reading"]
        up.unblock()
        assert c.calls == ["pause_reading", "resume_reading"]
        c.feed(b"b" * 20)
        assert up.take() == POST_HEAD + b"a" * 10 + b"b" * 20

    def test_upstream_blocked_by_the_body_write(self) -> None:
        k = Kit(defer=True)
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/p", b"Content-Length: 30", method=b"POST", body=b"a" * 10))
        up.write_limit = 50
        k.held[0].proxy(k.pool)  # head + buffered body overflow the upstream's buffer
        assert c.calls == ["pause_reading"]
        up.unblock()
        assert c.calls == ["pause_reading", "resume_reading"]

    def test_reading_resumes_only_when_every_reason_is_gone(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request(b"/1", b"Content-Length: 5", method=b"POST", body=b"hello") + request(b"/2"))
        assert c.calls == ["pause_reading"]  # /2 waits for /1
        up.block()
        up.unblock()
        assert c.calls == ["pause_reading"]  # /2 still waits
        up.feed(ok())
        assert c.calls == ["pause_reading", "resume_reading"]
        assert up.take().endswith(upstream_head(b"/2"))

    def test_paused_upstream_released_early_resumes(self) -> None:
        # The exchange ends (client gone) while the upstream's reading is paused.
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(request())
        c.block()
        c.peer_lost()
        assert up.calls == ["pause_reading", "abort"]
        k.done_once(k.exchanges[0])
        assert k.exchanges[0].aborted

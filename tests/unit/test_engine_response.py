"""Engine protocol tests: response framing towards the client, keep-alive and 1xx relaying."""

from __future__ import annotations

import pytest

from .enginekit import (
    DATE,
    FakeTransport,
    Kit,
    client_ok,
    dechunk,
    ok,
    request,
    response,
    upstream_head,
)


def proxied(req: bytes) -> tuple[Kit, FakeTransport, FakeTransport]:
    """A kit with one pooled upstream; ``req`` sent by a new client. Returns (kit, client,
    upstream), the upstream's request already taken."""
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(req)
    assert up.take().startswith(req.split(b" ", 1)[0])
    return k, c, up


class TestContentLength:
    def test_passthrough_and_pooled(self) -> None:
        k, c, up = proxied(request())
        up.feed(ok(b"hello", b"Content-Type: text/plain"))
        assert c.take() == client_ok(b"hello", b"Content-Type: text/plain")
        assert k.pool.idle_count == 1
        assert not up.closed and not c.closed
        k.done_once(k.exchanges[0])
        assert k.exchanges[0].resp_status == 200
        assert k.exchanges[0].resp_size == 5

    def test_body_streams_in_pieces(self) -> None:
        k, c, up = proxied(request())
        up.feed(response(b"200 OK", b"Content-Length: 10", body=b"abc"))
        assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n" + DATE + b"\r\nabc"
        assert k.done == []
        up.feed(b"defg")
        assert c.take() == b"defg"
        up.feed(b"hij")
        assert c.take() == b"hij"
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 1

    def test_same_pooled_connection_serves_the_next_request(self) -> None:
        k, c, up = proxied(request(b"/1"))
        up.feed(ok(b"one"))
        c.feed(request(b"/2"))
        assert up.take() == upstream_head(b"/2")
        up.feed(ok(b"two"))
        assert c.take() == client_ok(b"one") + client_ok(b"two")
        assert k.pool.idle_count == 1
        assert len(k.upstreams) == 1

    def test_go_reason_phrases(self) -> None:
        _k, c, up = proxied(request())
        up.feed(response(b"200 Fine", b"Content-Length: 0"))
        assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + DATE + b"\r\n"
        c.feed(request())
        up.feed(response(b"299 Whatever", b"Content-Length: 0"))
        assert c.take() == b"HTTP/1.1 299 status code 299\r\nContent-Length: 0\r\n" + DATE + b"\r\n"

    def test_response_hop_by_hop_headers_removed_and_date_kept(self) -> None:
        k, c, up = proxied(request())
        up.feed(
            response(
                b"200 OK",
                b"Connection: X-Hop, keep-alive",
                b"X-Hop: 1",
                b"Keep-Alive: timeout=4",
                b"Proxy-Authenticate: Basic",
                b"Trailer: X-T",
                b"Upgrade: foo",
                b"Date: Mon, 01 Jan 2024 00:00:00 GMT",
                b"X-Kept: 2",
                b"Content-Length: 0",
            )
        )
        assert c.take() == (
            b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Kept: 2\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        assert k.pool.idle_count == 1


class TestChunked:
    def test_chunks_and_trailers_relayed(self) -> None:
        k, c, up = proxied(request(b"/", b"TE: trailers"))
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", b"Trailer: X-Sum"))
        assert c.take() == (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n" + DATE + b"\r\n"
        )
        up.feed(b"4\r\nWiki\r\n")
        assert c.take() == b"4\r\nWiki\r\n"
        up.feed(b"5;ext=1\r\npedia\r\n")
        assert c.take() == b"5\r\npedia\r\n"
        assert k.done == []
        up.feed(b"0\r\nX-Sum: 9\r\n\r\n")
        assert c.take() == b"0\r\nX-Sum: 9\r\n\r\n"
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 1

    def test_chunk_boundaries_kept_within_one_packet(self) -> None:
        k, c, up = proxied(request())
        up.feed(
            response(
                b"200 OK", b"Transfer-Encoding: chunked", body=b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"
            )
        )
        assert c.take() == (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            + DATE
            + b"\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"
        )
        k.done_once(k.exchanges[0])

    def test_chunked_to_http10_client_is_close_delimited(self) -> None:
        k, c, up = proxied(request(version=b"1.0"))
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n"))
        assert c.take() == b"HTTP/1.1 200 OK\r\n" + DATE + b"\r\nabc"
        up.feed(b"0\r\nX-T: 1\r\n\r\n")
        assert c.take() == b""
        assert c.calls == ["write_eof"]
        assert k.pool.idle_count == 1  # the upstream response was complete and keep-alive
        k.done_once(k.exchanges[0])
        k.loop.advance(0.6)
        assert c.calls == ["write_eof", "close"]


class TestUntilClose:
    def test_http11_client_gets_chunked(self) -> None:
        k, c, up = proxied(request())
        up.feed(response(b"200 OK", b"X-A: 1", body=b"abc"))
        assert c.take() == (
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n"
            + DATE
            + b"\r\n3\r\nabc\r\n"
        )
        up.feed(b"de")
        assert c.take() == b"2\r\nde\r\n"
        assert k.done == []
        up.peer_eof()
        assert c.take() == b"0\r\n\r\n"
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 0
        assert c.calls == []  # the client connection stays open
        c.feed(request(b"/next"))
        assert k.pool.dialing  # a new upstream connection is needed
        nup = k.pool.complete_dial()
        assert nup.take() == upstream_head(b"/next")
        nup.feed(ok())
        assert c.take() == client_ok()

    def test_http10_client_gets_close_delimited(self) -> None:
        k, c, up = proxied(request(version=b"1.0"))
        up.feed(response(b"200 OK", b"X-A: 1", body=b"abc"))
        assert c.take() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + DATE + b"\r\nabc"
        up.feed(b"de")
        assert c.take() == b"de"
        up.peer_eof()
        assert c.take() == b""
        k.done_once(k.exchanges[0])
        assert c.calls == ["write_eof"]
        k.loop.advance(0.49)
        assert c.calls == ["write_eof"]
        k.loop.advance(0.02)
        assert c.calls == ["write_eof", "close"]

    def test_reset_is_not_a_clean_end(self) -> None:
        k, c, up = proxied(request())
        up.feed(response(b"200 OK", body=b"abc"))
        c.take()
        up.peer_lost(ConnectionResetError())
        assert c.take() == b""  # no last chunk: the client sees a truncated body
        assert c.closed
        k.done_once(k.exchanges[0])


class TestNoBody:
    def test_head_keeps_content_length_and_reuses_connection(self) -> None:
        k, c, up = proxied(request(method=b"HEAD"))
        up.feed(response(b"200 OK", b"Content-Length: 10"))
        assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n" + DATE + b"\r\n"
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 1
        # The parser expected a 10-byte body; the next response must parse from a clean state.
        c.feed(request(b"/next"))
        assert up.take() == upstream_head(b"/next")
        up.feed(ok(b"0123456789"))
        assert c.take() == client_ok(b"0123456789")
        k.done_once(k.exchanges[1])
        assert k.pool.idle_count == 1

    def test_head_with_chunked_response_reuses_connection(self) -> None:
        k, c, up = proxied(request(method=b"HEAD"))
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", b"X-A: 1"))
        assert c.take() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + DATE + b"\r\n"
        assert k.pool.idle_count == 1
        c.feed(request(b"/next"))
        assert up.take() == upstream_head(b"/next")
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nok\r\n0\r\n\r\n"))
        assert dechunk(c.take().split(b"\r\n\r\n", 1)[1]) == ([b"ok"], b"")
        assert k.pool.idle_count == 1

    @pytest.mark.parametrize(
        ("status", "lines"),
        [
            (b"204 No Content", (b"X-A: 1",)),
            (b"304 Not Modified", (b"ETag: x", b"Content-Length: 100")),
        ],
    )
    def test_204_304(self, status: bytes, lines: tuple[bytes, ...]) -> None:
        k, c, up = proxied(request())
        up.feed(response(status, *lines))
        head = b"".join(line + b"\r\n" for line in lines)
        assert c.take() == b"HTTP/1.1 " + status + b"\r\n" + head + DATE + b"\r\n"
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 1
        c.feed(request(b"/next"))
        assert up.take() == upstream_head(b"/next")


class TestConnectionHeader:
    def test_upstream_close_is_not_pooled_or_relayed(self) -> None:
        k, c, up = proxied(request())
        up.feed(ok(b"hi", b"Connection: close"))
        assert c.take() == client_ok(b"hi")
        assert k.pool.idle_count == 0
        assert up.calls == ["close"]
        assert c.calls == []
        k.done_once(k.exchanges[0])

    def test_upstream_http10_response(self) -> None:
        k, c, up = proxied(request())
        up.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        assert c.take() == client_ok(b"hi")
        assert k.pool.idle_count == 0
        assert up.calls == ["close"]

    def test_upstream_http10_keep_alive_response_is_pooled(self) -> None:
        k, c, up = proxied(request())
        up.feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi")
        assert c.take() == client_ok(b"hi")
        assert k.pool.idle_count == 1

    def test_client_close(self) -> None:
        k, c, up = proxied(request(b"/", b"Connection: close"))
        up.feed(ok())
        assert c.take() == client_ok().replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        assert k.pool.idle_count == 1  # the upstream side is unaffected
        assert c.calls == ["write_eof"]
        k.loop.advance(0.5)
        assert c.calls == ["write_eof", "close"]
        k.done_once(k.exchanges[0])

    def test_http10_keep_alive_client(self) -> None:
        _k, c, up = proxied(request(b"/", b"Connection: keep-alive", version=b"1.0"))
        up.feed(ok())
        assert c.take() == client_ok().replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")
        assert c.calls == []
        c.feed(request(b"/2", b"Connection: keep-alive", version=b"1.0"))
        assert up.take() == upstream_head(b"/2")

    def test_http10_client_without_keep_alive(self) -> None:
        _k, c, up = proxied(request(version=b"1.0"))
        up.feed(ok())
        assert c.take() == client_ok()  # closing is HTTP/1.0's default: Go says nothing
        assert c.calls == ["write_eof"]

    def test_shutting_down_answers_with_close(self) -> None:
        k, c, up = proxied(request())
        k.server.shutting_down = True
        up.feed(ok())
        assert c.take() == client_ok().replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        assert c.calls == ["write_eof"]


class TestInterim:
    def test_100_continue_relayed_then_body_then_final(self) -> None:
        req = request(b"/u", b"Expect: 100-continue", b"Content-Length: 5", method=b"POST")
        k, c, up = proxied(req)
        up.feed(response(b"100 Continue"))
        assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.feed(b"hello")
        assert up.take() == b"hello"
        up.feed(ok())
        assert c.take() == client_ok()  # no Connection: close, the body was read
        assert k.pool.idle_count == 1
        k.done_once(k.exchanges[0])

    def test_final_response_without_100_to_expect_closes(self) -> None:
        # The client may never send the body it announced: the connection cannot be reused.
        req = request(b"/u", b"Expect: 100-continue", b"Content-Length: 5", method=b"POST")
        k, c, up = proxied(req)
        up.feed(response(b"401 Unauthorized", b"Content-Length: 0"))
        assert c.take() == (
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n"
            + DATE
            + b"Connection: close\r\n\r\n"
        )
        assert c.calls == ["write_eof"]
        assert up.calls == ["close"]  # it did not get the body either
        k.done_once(k.exchanges[0])

    def test_103_early_hints_before_final(self) -> None:
        k, c, up = proxied(request())
        up.feed(response(b"103 Early Hints", b"Link: </s.css>; rel=preload"))
        assert c.take() == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        up.feed(response(b"103 Early Hints", b"Link: </a.js>; rel=preload") + ok())
        assert c.take() == (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n" + client_ok()
        )
        assert k.pool.idle_count == 1

    def test_not_relayed_to_http10_clients(self) -> None:
        _k, c, up = proxied(request(b"/", b"Connection: keep-alive", version=b"1.0"))
        up.feed(response(b"100 Continue") + response(b"103 Early Hints", b"Link: </s>"))
        assert c.take() == b""
        up.feed(ok())
        assert c.take() == client_ok().replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")

    def test_unexpected_101_is_a_bad_gateway(self) -> None:
        k, c, up = proxied(request())
        up.feed(response(b"101 Switching Protocols", b"Upgrade: foo", b"Connection: upgrade"))
        head, body = c.take().split(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert body == b"unexpected protocol switch from upstream\n"
        assert up.aborted
        k.done_once(k.exchanges[0])


class TestUnsolicitedBytes:
    """An upstream that sends more than one response: the client must get exactly one."""

    def test_second_response_in_same_packet_not_relayed(self) -> None:
        k, c, up = proxied(request())
        up.feed(ok(b"one") + ok(b"two"))
        assert c.take() == client_ok(b"one")
        assert k.pool.idle_count == 0
        k.done_once(k.exchanges[0])

    def test_partial_second_response_does_not_hang_the_exchange(self) -> None:
        k, c, up = proxied(request())
        up.feed(ok(b"one") + b"HTTP/1.1 200 OK\r\n")
        assert c.take() == client_ok(b"one")
        k.done_once(k.exchanges[0])
        assert k.pool.idle_count == 0

    def test_junk_after_response_keeps_the_client_connection(self) -> None:
        k, c, up = proxied(request())
        up.feed(ok(b"one") + b"X")
        assert c.take() == client_ok(b"one")
        assert c.calls == []
        assert k.pool.idle_count == 0

    def test_bytes_while_idle_close_the_pooled_connection(self) -> None:
        k, c, up = proxied(request())
        up.feed(ok())
        assert k.pool.idle_count == 1
        up.feed(b"HTTP/1.1 200 OK\r\n")
        assert up.calls == ["close"]
        c.feed(request(b"/next"))
        assert up.take() == b""
        nup = k.pool.complete_dial()
        assert nup.take() == upstream_head(b"/next")


def test_upstream_transfer_coding_other_than_chunked() -> None:
    _k, c, up = proxied(request())
    up.feed(response(b"200 OK", b"Transfer-Encoding: gzip, chunked", body=b"2\r\nGZ\r\n0\r\n\r\n"))
    assert c.take().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")

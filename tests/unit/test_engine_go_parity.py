"""Engine protocol tests for the wire differences a differential run against Knative's Go
queue-proxy found (tools/differential.py): each case is what Go's server, transport and
ReverseProxy do, byte for byte where the test compares bytes."""

from __future__ import annotations

import pytest

from dataplane.h1core import keep_alive_asked, unsupported_version

from .enginekit import (
    DATE,
    FakeTransport,
    Kit,
    client_ok,
    error_response,
    ok,
    request,
    response,
    upstream_head,
)


def proxied(req: bytes) -> tuple[Kit, FakeTransport, FakeTransport]:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(req)
    return k, c, up


class TestResponseTrailerAnnounced:
    """Go's ReverseProxy drops ``Trailer`` as hop-by-hop, then announces the trailer names its
    client read from a chunked response again (canonical names)."""

    def test_chunked_response_announces_its_trailers_again(self) -> None:
        k, c, up = proxied(request())
        up.take()
        chunked = b"Transfer-Encoding: chunked"
        up.feed(response(b"200 OK", chunked, b"Trailer: x-b, X-a", b"Trailer: x-c"))
        assert c.take() == (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-A, X-B, X-C\r\n"
            + DATE
            + b"\r\n"
        )
        up.feed(b"2\r\nok\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n")
        assert c.take() == b"2\r\nok\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        k.done_once(k.exchanges[0])

    def test_announcement_on_a_content_length_response_is_dropped(self) -> None:
        # Go's client ignores Trailer on a response that cannot carry trailers.
        k, c, up = proxied(request())
        up.take()
        up.feed(ok(b"hi", b"Trailer: X-A"))
        assert c.take() == client_ok(b"hi")
        k.done_once(k.exchanges[0])

    @pytest.mark.parametrize("key", [b"Content-Length", b"transfer-encoding", b"Trailer"])
    def test_forbidden_trailer_name_is_a_bad_gateway(self, key: bytes) -> None:
        k, c, up = proxied(request())
        up.take()
        up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", b"Trailer: X-A, " + key))
        assert c.take() == error_response(
            b"502 Bad Gateway", b"malformed response from upstream: bad trailer key"
        )
        assert up.closed
        k.done_once(k.exchanges[0])


class TestEmptyBodyLength:
    """Go's transport sends ``Content-Length: 0`` for a POST, PUT or PATCH without a body."""

    @pytest.mark.parametrize("method", [b"POST", b"PUT", b"PATCH"])
    def test_declared_for_methods_that_usually_carry_a_body(self, method: bytes) -> None:
        _k, c, up = proxied(request(b"/a", method=method))
        assert up.take() == upstream_head(b"/a", method=method, tail=(b"Content-Length: 0",))
        up.feed(ok())
        assert c.take() == client_ok()

    @pytest.mark.parametrize("method", [b"GET", b"HEAD", b"DELETE", b"OPTIONS"])
    def test_not_declared_for_other_methods(self, method: bytes) -> None:
        _k, _c, up = proxied(request(b"/a", method=method))
        assert up.take() == upstream_head(b"/a", method=method)

    def test_explicit_zero_length_is_kept_once(self) -> None:
        _k, _c, up = proxied(request(b"/a", b"Content-Length: 0", method=b"POST"))
        assert up.take() == upstream_head(b"/a", method=b"POST", tail=(b"Content-Length: 0",))


class TestHttp10Persistence:
    def test_proxy_connection_does_not_keep_an_http10_connection(self) -> None:
        # llhttp reads Proxy-Connection like Connection; Go reads Connection only.
        k, c, up = proxied(request(b"/", b"Proxy-Connection: keep-alive", version=b"1.0"))
        assert b"Proxy-Connection" not in up.take()
        up.feed(ok())
        assert c.take() == client_ok()
        assert c.calls == ["write_eof"]
        k.done_once(k.exchanges[0])

    def test_proxy_connection_close_does_not_close_http11(self) -> None:
        k, c, up = proxied(request(b"/", b"Proxy-Connection: close"))
        up.take()
        up.feed(ok())
        assert c.take() == client_ok()
        assert c.calls == []
        k.done_once(k.exchanges[0])

    def test_connection_keep_alive_still_keeps_http10(self) -> None:
        _k, c, up = proxied(
            request(b"/", b"Connection: keep-alive", b"Proxy-Connection: x", version=b"1.0")
        )
        up.take()
        up.feed(ok())
        assert c.take() == client_ok().replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")
        assert c.calls == []

    @pytest.mark.parametrize(
        ("version", "connection", "keep"),
        [
            ("1.1", None, True),
            ("1.1", b"Close", False),
            ("1.1", b"x, close", False),
            ("1.0", None, False),
            ("1.0", b"Keep-Alive", True),
            ("1.0", b"upgrade, keep-alive", True),
        ],
    )
    def test_keep_alive_asked(self, version: str, connection: bytes | None, keep: bool) -> None:
        assert keep_alive_asked(version, connection) is keep


class TestRefusedBeforeTheHandler:
    def test_http10_refusal_still_says_close(self) -> None:
        # Go's server writes these itself, "Connection: close" whatever the version.
        k = Kit()
        c = k.client()
        c.feed(request(b"/a%4", version=b"1.0"))
        assert c.take() == error_response(
            b"400 Bad Request", b"malformed request target: invalid URL escape"
        ).replace(DATE, b"Connection: close\r\n" + DATE)
        assert k.exchanges == []
        assert c.calls == ["write_eof"]

    @pytest.mark.parametrize("version", [b"9.9", b"2.5", b"0.1", b"3.0"])
    def test_well_formed_version_other_than_1_is_505(self, version: bytes) -> None:
        k = Kit()
        c = k.client()
        c.feed(request(b"/", version=version))
        body = b"unsupported protocol version\n"
        assert c.take() == (
            b"HTTP/1.1 505 HTTP Version Not Supported\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        assert k.exchanges == []

    @pytest.mark.parametrize("version", [b"1.2", b"1.10", b"x.y"])
    def test_other_bad_versions_stay_400(self, version: bytes) -> None:
        k = Kit()
        c = k.client()
        c.feed(request(b"/", version=version))
        assert c.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert k.exchanges == []

    def test_version_read_from_the_request_line(self) -> None:
        assert unsupported_version(b"GET / HTTP/9.9\r\nHost: a\r\n\r\n")
        assert unsupported_version(b"GET / HTTP/2.0\n")
        assert not unsupported_version(b"GET / HTTP/1.2\r\n")
        assert not unsupported_version(b"GET / HTTP/9.9")  # line not ended in this read


class TestOptionsAsterisk:
    """Go's server answers ``OPTIONS *`` itself: 200, empty, no handler."""

    def test_answered_by_the_server(self) -> None:
        k = Kit()
        c = k.client()
        c.feed(request(b"*", method=b"OPTIONS") + request(b"/next"))
        assert c.take().startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + DATE + b"\r\n")
        assert [ex.target for ex in k.exchanges] == [b"/next"]  # the handler saw only /next

    def test_body_is_read_and_discarded(self) -> None:
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(
            request(b"*", b"Content-Length: 5", method=b"OPTIONS", body=b"hello")
            + request(b"/next")
        )
        assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + DATE + b"\r\n"
        assert up.take() == upstream_head(b"/next")
        up.feed(ok())
        assert c.take() == client_ok()
        assert [ex.target for ex in k.exchanges] == [b"/next"]

    def test_host_is_still_required(self) -> None:
        k = Kit()
        c = k.client()
        c.feed(request(b"*", method=b"OPTIONS", host=None))
        assert c.take() == error_response(
            b"400 Bad Request", b"missing required Host header", close=True
        )
        assert k.exchanges == []


class TestExpectContinueFallback:
    """Go's transport waits a second for the app's ``100 Continue``, then sends the body anyway
    (its server says ``100 Continue`` to the client as the body is read)."""

    def _start(self) -> tuple[Kit, FakeTransport, FakeTransport]:
        k, c, up = proxied(
            request(b"/e", b"Expect: 100-continue", b"Content-Length: 5", method=b"POST")
        )
        assert up.take().startswith(b"POST /e HTTP/1.1\r\n")
        return k, c, up

    def test_silent_app_gets_the_body_after_a_second(self) -> None:
        k, c, up = self._start()
        k.loop.advance(0.99)
        assert c.take() == b""
        k.loop.advance(0.02)
        assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.feed(b"hello")
        assert up.take() == b"hello"
        up.feed(b"HTTP/1.1 100 Continue\r\n\r\n")  # the app's own, late: not said twice
        up.feed(ok())
        assert c.take() == client_ok()
        k.done_once(k.exchanges[0])

    def test_app_that_invites_the_body_is_relayed_once(self) -> None:
        k, c, up = self._start()
        up.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
        k.loop.advance(2)
        assert c.take() == b""
        c.feed(b"hello")
        assert up.take() == b"hello"
        up.feed(ok())
        assert c.take() == client_ok()

    def test_app_that_answers_at_once_needs_no_invitation(self) -> None:
        k, c, up = self._start()
        up.feed(response(b"417 Expectation Failed", b"Content-Length: 0"))
        assert c.take().startswith(b"HTTP/1.1 417 Expectation Failed\r\n")
        k.loop.advance(2)
        assert c.take() == b""

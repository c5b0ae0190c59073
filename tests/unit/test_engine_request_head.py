"""Engine protocol tests: the request head sent upstream (Go ReverseProxy + queue-proxy rules).

Every head is checked as the fast path reads it (one packet), as it arrives byte by byte, and
as the callback parser reads it (two pipelined copies in one packet), which must all agree.
"""

from __future__ import annotations

import pytest

from dataplane.proxy import Exchange, ServerConfig
from queueproxy.handler import server_config as qp_config

from .enginekit import (
    DATE,
    PEER,
    FakeTransport,
    Kit,
    client_ok,
    dechunk,
    ok,
    request,
    upstream_head,
)

MODES = ["packet", "bytewise", "pipelined"]


def forward(
    req: bytes, mode: str, config: ServerConfig | None = None, peer: object = PEER
) -> bytes:
    """What the upstream receives for ``req`` (head and body) when ``mode`` delivers it."""
    k = Kit(config=config)
    up = k.idle_upstream()
    c = k.client(peer)
    if mode == "packet":
        c.feed(req)
    elif mode == "bytewise":
        c.feed(req, step=1)
    else:
        c.feed(req + req)
        first = up.take()
        up.feed(ok())
        assert c.take() == client_ok()
        second = up.take()
        assert second == first, "the second pipelined copy was forwarded differently"
        up.feed(ok())
        assert c.take() == client_ok()
        assert len(k.done) == 2
        return first
    sent = up.take()
    up.feed(ok())
    assert c.take() == client_ok()
    k.done_once(k.exchanges[0])
    assert k.pool.idle_count == 1
    return sent


@pytest.mark.parametrize("mode", MODES)
class TestHead:
    def test_host_first_and_peer_appended(self, mode: str) -> None:
        req = request(b"/a?b=c", b"Accept: */*", b"X-A: 1", host=None)
        req = req.replace(b"X-A: 1\r\n", b"X-A: 1\r\nHost: h.example\r\nX-B: 2\r\n")
        assert forward(req, mode) == upstream_head(
            b"/a?b=c", b"Accept: */*", b"X-A: 1", b"X-B: 2", host=b"h.example"
        )

    def test_hop_by_hop_headers_removed(self, mode: str) -> None:
        req = request(
            b"/",
            b"Connection: keep-alive",
            b"Keep-Alive: timeout=5",
            b"X-Keep: 1",
            b"Proxy-Connection: keep-alive",
            b"Proxy-Authorization: Basic eDp5",
            b"Trailer: X-Sum",
            b"TE: gzip",
            b"Upgrade: h2c",
            b"X-Keep: 2",
        )
        assert forward(req, mode) == upstream_head(b"/", b"X-Keep: 1", b"X-Keep: 2")

    def test_connection_listed_headers_removed(self, mode: str) -> None:
        req = request(
            b"/",
            b"Connection: keep-alive, X-Foo",
            b"X-Foo: 1",
            b"x-bar: 2",
            b"X-Baz: 3",
            b"connection: X-BAR",
            b"User-Agent: curl",
        )
        assert forward(req, mode) == upstream_head(b"/", b"X-Baz: 3", b"User-Agent: curl")

    def test_connection_listed_tracked_header_removed(self, mode: str) -> None:
        # A tracked (remembered) header named by Connection is hop-by-hop too.
        req = request(b"/", b"User-Agent: curl", b"Connection: User-Agent", b"X-A: 1")
        assert forward(req, mode) == upstream_head(b"/", b"X-A: 1")

    @pytest.mark.parametrize(
        ("te", "sent"),
        [
            (b"TE: trailers", (b"TE: trailers",)),
            (b"TE: gzip, Trailers", (b"TE: trailers",)),
            (b"TE: trailers;q=0.5", ()),
            (b"TE: gzip", ()),
        ],
    )
    def test_te_trailers_kept(self, mode: str, te: bytes, sent: tuple[bytes, ...]) -> None:
        req = request(b"/", b"X-A: 1", te)
        assert forward(req, mode) == upstream_head(b"/", b"X-A: 1", *sent)

    @pytest.mark.parametrize(
        ("lines", "xff"),
        [
            ((), b"10.0.0.1"),
            ((b"X-Forwarded-For: 1.2.3.4",), b"1.2.3.4, 10.0.0.1"),
            (
                (b"X-Forwarded-For: 1.1.1.1", b"X-A: 1", b"x-forwarded-for: 2.2.2.2, 3.3.3.3"),
                b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1",
            ),
        ],
    )
    def test_x_forwarded_for(self, mode: str, lines: tuple[bytes, ...], xff: bytes) -> None:
        others = tuple(line for line in lines if not line.lower().startswith(b"x-forwarded-for"))
        assert forward(request(b"/", *lines), mode) == upstream_head(b"/", *others, xff=xff)

    @pytest.mark.parametrize(
        ("peer", "xff"),
        [
            (("::ffff:192.0.2.7", 1234, 0, 0), b"192.0.2.7"),
            (("2001:db8::1", 1234, 0, 0), b"2001:db8::1"),
            (None, None),
            ("/run/sock", None),
        ],
    )
    def test_x_forwarded_for_peer_forms(self, mode: str, peer: object, xff: bytes | None) -> None:
        assert forward(request(), mode, peer=peer) == upstream_head(xff=xff)

    def test_x_forwarded_for_kept_without_peer(self, mode: str) -> None:
        req = request(b"/", b"X-Forwarded-For: 1.2.3.4")
        assert forward(req, mode, peer=None) == upstream_head(xff=b"1.2.3.4")

    def test_forwarded_shim(self, mode: str) -> None:
        cfg = ServerConfig(forwarded_shim=True)
        req = request(
            b"/",
            b"X-Forwarded-For: 1.2.3.4, ::1",
            b"X-Forwarded-Host: h.example",
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-For: 5.6.7.8",
        )
        assert forward(req, mode, cfg) == upstream_head(
            b"/",
            b"X-Forwarded-Host: h.example",
            b"X-Forwarded-Proto: https",
            xff=b"1.2.3.4, ::1, 5.6.7.8, 10.0.0.1",
            # the shim reads the first X-Forwarded-For line only, as Knative's does
            tail=(b'Forwarded: for=1.2.3.4;host=h.example;proto=https, for="[::1]"',),
        )

    def test_forwarded_shim_keeps_existing_forwarded(self, mode: str) -> None:
        cfg = ServerConfig(forwarded_shim=True)
        req = request(b"/", b"Forwarded: for=9.9.9.9", b"X-Forwarded-For: 1.2.3.4")
        assert forward(req, mode, cfg) == upstream_head(
            b"/", b"Forwarded: for=9.9.9.9", xff=b"1.2.3.4, 10.0.0.1"
        )

    def test_forwarded_shim_needs_client_x_forwarded_headers(self, mode: str) -> None:
        # The peer address we append is not a reason to add Forwarded (Knative shims the
        # incoming request, before the reverse proxy appends the peer).
        cfg = ServerConfig(forwarded_shim=True)
        assert forward(request(), mode, cfg) == upstream_head()

    def test_no_forwarded_without_shim(self, mode: str) -> None:
        req = request(b"/", b"X-Forwarded-Proto: https")
        assert forward(req, mode) == upstream_head(b"/", b"X-Forwarded-Proto: https")

    def test_k_original_host_restored(self, mode: str) -> None:
        cfg = ServerConfig(host_from=b"K-Original-Host")
        req = request(b"/", b"K-Original-Host: orig.example", b"X-A: 1")
        assert forward(req, mode, cfg) == upstream_head(b"/", b"X-A: 1", host=b"orig.example")

    def test_k_original_host_ignored_when_not_configured(self, mode: str) -> None:
        req = request(b"/", b"K-Original-Host: orig.example", b"X-A: 1")
        head = forward(req, mode)
        assert head.startswith(b"GET / HTTP/1.1\r\nHost: example.com\r\n")

    def test_knative_routing_headers_stripped(self, mode: str) -> None:
        req = request(
            b"/",
            b"Knative-Serving-Revision: rev-1",
            b"Knative-Serving-Namespace: default",
            b"Knative-Serving-Tag: canary",
            b"Knative-Serving-Default-Route: true",
        )
        assert forward(req, mode, qp_config()) == upstream_head(
            b"/", b"Knative-Serving-Tag: canary", b"Knative-Serving-Default-Route: true"
        )

    def test_engine_alone_strips_no_knative_header(self, mode: str) -> None:
        lines = (b"Knative-Serving-Revision: rev-1", b"K-Original-Host: orig.example")
        assert forward(request(b"/", *lines), mode) == upstream_head(b"/", *lines)

    def test_declared_strip_header_is_not_forwarded(self, mode: str) -> None:
        cfg = ServerConfig(strip_headers=(b"X-Secret",), index_headers=(b"X-Seen",))
        req = request(b"/", b"X-Secret: s", b"X-Seen: 1", b"X-A: 1")
        assert forward(req, mode, cfg) == upstream_head(b"/", b"X-Seen: 1", b"X-A: 1")

    def test_content_length_preserved(self, mode: str) -> None:
        req = request(
            b"/p",
            b"Content-Type: text/plain",
            b"Content-Length: 5",
            method=b"POST",
            body=b"hello",
        )
        assert forward(req, mode) == upstream_head(
            b"/p", b"Content-Type: text/plain", method=b"POST", tail=(b"Content-Length: 5",)
        ) + (b"hello")

    def test_content_length_zero_preserved(self, mode: str) -> None:
        req = request(b"/p", b"Content-Length: 0", method=b"POST")
        assert forward(req, mode) == upstream_head(
            b"/p", method=b"POST", tail=(b"Content-Length: 0",)
        )

    def test_http10_without_host_names_the_upstream(self, mode: str) -> None:
        req = request(b"/old", b"Connection: keep-alive", host=None, version=b"1.0")
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(req, step=1 if mode == "bytewise" else 0)
        assert up.take() == upstream_head(b"/old", host=b"127.0.0.1:8080")
        up.feed(ok())
        assert c.take() == client_ok().replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")

    def test_absolute_form_target(self, mode: str) -> None:
        req = request(b"http://other.example:81/p?q=1", b"X-A: 1")
        assert forward(req, mode) == upstream_head(b"/p?q=1", b"X-A: 1", host=b"other.example:81")

    def test_headers_are_forwarded_as_received(self, mode: str) -> None:
        # Names keep their case and order; values keep inner whitespace and raw bytes;
        # duplicates stay.
        lines = (
            b"x-lower: a  b",
            b"X-UPPER: 1",
            b"X-Dup: 1",
            b"X-Dup: 2",
            b"Cookie: a=1; b=2",
            b"X-Utf8: caf\xc3\xa9",
        )
        assert forward(request(b"/", *lines), mode) == upstream_head(b"/", *lines)


def test_chunked_request_rechunked_with_trailers() -> None:
    """The declared trailers are announced again (as Go's transport does) and relayed."""
    req = request(
        b"/c",
        b"Transfer-Encoding: chunked",
        b"Trailer: X-Sum",
        method=b"POST",
        body=b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Sum: 8\r\n\r\n",
    )
    head = upstream_head(
        b"/c", method=b"POST", tail=(b"Transfer-Encoding: chunked", b"Trailer: X-Sum")
    )
    sent = forward(req, "packet")
    assert sent == head + b"5\r\nhello\r\n3\r\nabc\r\n0\r\nX-Sum: 8\r\n\r\n"
    for mode in ("bytewise", "pipelined"):
        sent = forward(req, mode)
        assert sent.startswith(head)
        chunks, trailers = dechunk(sent[len(head) :])
        assert b"".join(chunks) == b"helloabc"
        assert trailers == b"X-Sum: 8\r\n"


@pytest.mark.parametrize(
    ("target", "sent", "host"),
    [
        (b"http://h.example", b"/", b"h.example"),
        (b"http://h.example?x=1", b"/?x=1", b"h.example"),
        (b"HTTPS://h.example/a", b"/a", b"h.example"),
    ],
)
def test_request_target_forms(target: bytes, sent: bytes, host: bytes) -> None:
    req = request(target, method=b"OPTIONS")
    assert forward(req, "packet") == upstream_head(sent, method=b"OPTIONS", host=host)


def test_asterisk_form_other_than_options_is_forwarded() -> None:
    # (OPTIONS * is the server's own: tests/unit/test_engine_go_parity.py)
    assert forward(request(b"*"), "packet") == upstream_head(b"*")


def test_absolute_form_userinfo_not_in_host() -> None:
    req = request(b"http://user:pw@h.example/p")
    assert forward(req, "packet") == upstream_head(b"/p", host=b"h.example")


def test_empty_chunked_request() -> None:
    req = request(b"/c", b"Transfer-Encoding: chunked", method=b"POST", body=b"0\r\n\r\n")
    head = upstream_head(b"/c", method=b"POST", tail=(b"Transfer-Encoding: chunked",))
    for mode in MODES:
        assert forward(req, mode) == head + b"0\r\n\r\n"


def test_chunked_request_streamed_as_it_arrives() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/c", b"Transfer-Encoding: chunked", method=b"POST"))
    head = upstream_head(b"/c", method=b"POST", tail=(b"Transfer-Encoding: chunked",))
    assert up.take() == head
    c.feed(b"4\r\nWiki\r\n")
    assert up.take() == b"4\r\nWiki\r\n"
    c.feed(b"5\r\npedia\r\n0\r\n\r\n")
    assert up.take() == b"5\r\npedia\r\n0\r\n\r\n"
    up.feed(ok())
    assert c.take() == client_ok()
    k.done_once(k.exchanges[0])
    assert k.pool.idle_count == 1


def test_host_override_and_extra_headers() -> None:
    k = Kit(
        lambda ex: ex.proxy(k.pool, host=b"svc.local", extra_headers=b"X-Extra: 1\r\n"),
        ServerConfig(host_from=b"k-original-host"),
    )
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/", b"K-Original-Host: orig.example", b"Content-Length: 0", method=b"PUT"))
    assert up.take() == upstream_head(
        b"/",
        method=b"PUT",
        host=b"svc.local",
        tail=(b"Content-Length: 0", b"X-Extra: 1"),
    )


def test_handler_sees_stripped_and_tracked_headers() -> None:
    seen: list[Exchange] = []

    def handler(ex: Exchange) -> None:
        seen.append(ex)
        ex.respond(200)

    k = Kit(handler, qp_config())
    c: FakeTransport = k.client()
    c.feed(
        request(
            b"/p?x=1",
            b"Knative-Serving-Revision: rev-1",
            b"User-Agent: curl",
            b"X-Custom: v",
            b"K-Network-Probe: queue",
        )
    )
    ex = seen[0]
    assert ex.path == b"/p"
    assert ex.header(b"knative-serving-revision") == b"rev-1"
    assert ex.header(b"user-agent") == b"curl"
    assert ex.header(b"k-network-probe") == b"queue"
    assert ex.header(b"x-custom") is None
    assert ex.find_header(b"x-custom") == b"v"
    assert ex.find_header(b"x-missing") is None
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + DATE + b"\r\n"
    k.done_once(ex)


def test_handler_sees_only_declared_headers() -> None:
    seen: list[Exchange] = []

    def handler(ex: Exchange) -> None:
        seen.append(ex)
        ex.respond(200)

    k = Kit(handler, ServerConfig(index_headers=(b"X-Custom",)))
    k.client().feed(request(b"/", b"X-Custom: v", b"User-Agent: curl"))
    ex = seen[0]
    assert ex.header(b"x-custom") == b"v"
    assert ex.header(b"user-agent") is None  # not declared: only find_header sees it
    assert ex.find_header(b"user-agent") == b"curl"
    k.done_once(ex)


def test_engine_headers_cannot_be_stripped() -> None:
    with pytest.raises(ValueError, match="content-length"):
        ServerConfig(strip_headers=(b"Content-Length",))


@pytest.mark.parametrize("mode", MODES)
def test_connection_listed_x_forwarded_for_removed(mode: str) -> None:
    req = request(b"/", b"Connection: X-Forwarded-For", b"X-Forwarded-For: 6.6.6.6")
    assert forward(req, mode) == upstream_head(b"/", xff=b"10.0.0.1")


@pytest.mark.parametrize(
    ("lines", "announced"),
    [
        ((b"Trailer: x-sum",), b"X-Sum"),
        ((b"Trailer: x-b, X-A", b"trailer: x-c,,x-a"), b"X-A,X-B,X-C"),
        ((b"Trailer: ",), None),
    ],
)
def test_request_trailer_announcement(lines: tuple[bytes, ...], announced: bytes | None) -> None:
    """Go canonicalises, sorts and joins the names; nothing is announced for none."""
    req = request(
        b"/c", b"Transfer-Encoding: chunked", *lines, method=b"POST", body=b"0\r\nX-A: 1\r\n\r\n"
    )
    tail: tuple[bytes, ...] = (b"Transfer-Encoding: chunked",)
    if announced is not None:
        tail += (b"Trailer: " + announced,)
    head = upstream_head(b"/c", method=b"POST", tail=tail)
    for mode in MODES:
        assert forward(req, mode) == head + b"0\r\nX-A: 1\r\n\r\n"


def test_trailer_header_without_chunked_body_is_dropped() -> None:
    """Go keeps Trailer only on chunked requests (elsewhere it is a hop-by-hop header)."""
    req = request(b"/c", b"Trailer: X-Sum", b"Content-Length: 2", method=b"POST", body=b"ab")
    head = upstream_head(b"/c", method=b"POST", tail=(b"Content-Length: 2",))
    for mode in MODES:
        assert forward(req, mode) == head + b"ab"


# Raw bytes >= 0x80 in a target, and the other bytes Go's url.URL.RequestURI re-escapes: the
# path is decoded and re-escaped whole, the query goes as received.
TARGETS = [
    (b"/\xc3\xbc", b"/%C3%BC"),
    (b"/a\xffb", b"/a%FFb"),
    (b"/caf\xc3\xa9?q=\xc3\xa9&r=%C3%A9", b"/caf%C3%A9?q=\xc3\xa9&r=%C3%A9"),
    (b"/?\xc3\xbc", b"/?\xc3\xbc"),
    (b"/\xc3\xbc?", b"/%C3%BC?"),
    (b"/a%2Fb/\xc3\xbc", b"/a/b/%C3%BC"),  # %2F decoded like any escape once re-escaped
    (b"/a%2fb", b"/a%2fb"),  # a valid encoding goes as received
    (b"/a!b(c)/\xc3\xbc", b"/a%21b%28c%29/%C3%BC"),
    (b"/a|b", b"/a%7Cb"),
    (b'/a"b{c}^`', b"/a%22b%7Bc%7D%5E%60"),
    (b"/a#b", b"/a%23b"),
    (b"/a|b?x=|", b"/a%7Cb?x=|"),
    (b"/%e9%C3\xbc", b"/%E9%C3%BC"),
    (b"/a+b=c;d@e:f$&,", b"/a+b=c;d@e:f$&,"),
    (b"http://h.example/\xc3\xbc?\xc3\xbc", b"/%C3%BC?\xc3\xbc"),
]


@pytest.mark.parametrize(("target", "sent"), TARGETS)
@pytest.mark.parametrize("mode", MODES)
def test_target_escaped_as_go_does(target: bytes, sent: bytes, mode: str) -> None:
    host = b"h.example" if target.startswith(b"http:") else b"example.com"
    assert forward(request(target), mode) == upstream_head(sent, host=host)


def test_8bit_target_split_after_the_method() -> None:
    """A request line cut anywhere (here: after the space) still gets its bytes back."""
    req = request(b"/\xc3\xbc?\xc3\xbc", b"X-V: \xc3\xa9")
    for cut in range(1, len(req)):
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        c.feed(req[:cut])
        c.feed(req[cut:])
        assert up.take() == upstream_head(b"/%C3%BC?\xc3\xbc", b"X-V: \xc3\xa9"), cut
        up.feed(ok())
        assert c.take() == client_ok()


def test_8bit_header_value_cut_from_its_line_is_kept_raw() -> None:
    """A header value's bytes >= 0x80 are never escaped, wherever the reads are cut."""
    req = request(b"/a", b"X-V: caf\xc3\xa9")
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(req[: req.index(b"caf")])
    c.feed(req[req.index(b"caf") :])
    assert up.take() == upstream_head(b"/a", b"X-V: caf\xc3\xa9")


def test_8bit_targets_pipelined_in_one_read() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/\xc3\xa0") + request(b"/b?\xc3\xa1", b"X-V: \xc3\xa2"))
    assert up.take() == upstream_head(b"/%C3%A0")
    up.feed(ok())
    assert up.take() == upstream_head(b"/b?\xc3\xa1", b"X-V: \xc3\xa2")
    up.feed(ok())
    assert c.take() == client_ok() + client_ok()


def test_8bit_header_value_of_a_head_begun_after_a_body() -> None:
    """A pipelined head that begins in the read ending the previous body and is cut in its
    headers: its header value's bytes >= 0x80 stay raw (never taken for a request line)."""
    first = request(b"/1", b"Content-Length: 3", method=b"POST", body=b"abc")
    second = request(b"/2", b"X-V: caf\xc3\xa9")
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    # an earlier head cut in its request line leaves the connection's line state behind
    c.feed(first[:3])
    c.feed(first[3 : first.index(b"abc")])
    cut = second.index(b"caf")
    c.feed(b"abc" + second[:cut])
    c.feed(second[cut:])
    assert up.take() == upstream_head(b"/1", method=b"POST", tail=(b"Content-Length: 3",)) + b"abc"
    up.feed(ok())
    assert up.take() == upstream_head(b"/2", b"X-V: caf\xc3\xa9")
    up.feed(ok())
    assert c.take() == client_ok() + client_ok()


@pytest.mark.parametrize("body", [b"abc", b"\xff\x00\xfe"])
def test_8bit_target_pipelined_after_a_body_in_the_same_read(body: bytes) -> None:
    """A POST's Content-Length body and a pipelined request whose target holds bytes >= 0x80,
    in one read, however the head before them was cut (Go serves both)."""
    first = request(b"/1", b"Content-Length: 3", method=b"POST", body=body)
    second = request(b"/\xc3\xbc?\xc3\xbc", b"X-V: \xc3\xa9")
    head_end = first.index(body)
    for cut in (0, 5, head_end):  # all in one read, cut in the request line, after the head
        k = Kit()
        up = k.idle_upstream()
        c = k.client()
        if cut:
            c.feed(first[:cut])
        c.feed(first[cut:] + second)
        sent = up.take()
        assert sent == upstream_head(b"/1", method=b"POST", tail=(b"Content-Length: 3",)) + body, (
            cut
        )
        up.feed(ok())
        assert up.take() == upstream_head(b"/%C3%BC?\xc3\xbc", b"X-V: \xc3\xa9"), cut
        up.feed(ok())
        assert c.take() == client_ok() + client_ok()


def test_8bit_body_bytes_split_across_reads_stay_body() -> None:
    """Binary body bytes in later reads (the body not ending within them) are body, however
    many reads they take; the request after them is parsed as usual."""
    body = bytes(range(256)) * 4
    first = request(b"/1", b"Content-Length: %d" % len(body), method=b"POST", body=body)
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    head_end = first.index(body)
    c.feed(first[:head_end])
    for i in range(0, len(body), 100):
        c.feed(body[i : i + 100] + (request(b"/2") if i + 100 >= len(body) else b""))
    sent = up.take()
    assert (
        sent
        == upstream_head(b"/1", method=b"POST", tail=(b"Content-Length: %d" % len(body),)) + body
    )
    up.feed(ok())
    assert up.take() == upstream_head(b"/2")
    up.feed(ok())
    assert c.take() == client_ok() + client_ok()

"""Engine protocol tests: protocol upgrades (WebSocket style) tunnelled after a 101."""

from __future__ import annotations

from dataplane.proxy import Exchange, ServerConfig
from dataplane.timeouts import TimeoutPolicy

from .enginekit import (
    DATE,
    FakeTransport,
    Kit,
    ok,
    request,
    response,
    upstream_head,
)

UPGRADE = request(b"/ws", b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Key: k")
UPGRADE_SENT = upstream_head(
    b"/ws", b"Sec-WebSocket-Key: k", tail=(b"Connection: Upgrade", b"Upgrade: websocket")
)
SWITCH = response(
    b"101 Switching Protocols",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Accept: x",
)
SWITCH_RELAYED = (
    b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n"
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)


def tunnel(k: Kit) -> tuple[FakeTransport, FakeTransport]:
    up = k.idle_upstream()
    c = k.client()
    c.feed(UPGRADE)
    assert up.take() == UPGRADE_SENT
    up.feed(SWITCH)
    assert c.take() == SWITCH_RELAYED
    return c, up


def test_bytes_tunnelled_both_ways() -> None:
    k = Kit()
    c, up = tunnel(k)
    c.feed(b"\x81\x02hi")
    assert up.take() == b"\x81\x02hi"
    up.feed(b"\x81\x03hey")
    assert c.take() == b"\x81\x03hey"
    c.feed(b"GET / HTTP/1.1\r\n\r\n")  # no longer HTTP: passed through as it is
    assert up.take() == b"GET / HTTP/1.1\r\n\r\n"
    assert k.done == []  # the exchange lasts as long as the tunnel


def test_bytes_after_the_101_in_the_same_packet() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(UPGRADE)
    up.feed(SWITCH + b"frame")
    assert c.take() == SWITCH_RELAYED + b"frame"


def test_early_client_bytes_follow_the_head() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(UPGRADE + b"early")
    assert up.take() == UPGRADE_SENT + b"early"
    c.feed(b"more")  # before the 101: sent on, like a transparent proxy
    assert up.take() == b"more"


def test_early_bytes_of_a_pipelined_upgrade_go_to_its_own_upstream() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/1") + UPGRADE + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert up.take() == upstream_head(b"/1")
    up.feed(ok())
    assert up.take() == UPGRADE_SENT + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def test_early_bytes_buffered_until_an_upstream_is_attached() -> None:
    k = Kit(config=ServerConfig(body_buffer=8), defer=True)
    up = k.idle_upstream()
    c = k.client()
    c.feed(UPGRADE + b"early")
    c.feed(b"more")
    assert c.calls == ["pause_reading"]
    k.held[0].proxy(k.pool)
    assert up.take() == UPGRADE_SENT + b"earlymore"
    assert c.calls == ["pause_reading", "resume_reading"]


def test_half_closes_then_close() -> None:
    k = Kit()
    c, up = tunnel(k)
    c.peer_eof()
    assert up.calls == ["write_eof"]
    assert not c.closing  # still open: the other direction goes on
    up.feed(b"last")
    assert c.take() == b"last"
    assert k.done == []
    up.peer_eof()
    assert "close" in c.calls
    assert "close" in up.calls
    k.done_once(k.exchanges[0])
    assert not k.exchanges[0].aborted
    assert c.lost and up.lost


def test_upstream_half_close_first() -> None:
    k = Kit()
    c, up = tunnel(k)
    up.peer_eof()
    assert c.calls == ["write_eof"]
    c.feed(b"still")
    assert up.take() == b"still"
    c.peer_eof()
    k.done_once(k.exchanges[0])
    assert c.lost and up.lost


def test_upstream_lost() -> None:
    k = Kit()
    c, up = tunnel(k)
    up.peer_lost(ConnectionResetError())
    assert c.calls == ["close"]
    k.done_once(k.exchanges[0])


def test_client_lost() -> None:
    k = Kit()
    c, up = tunnel(k)
    c.peer_lost()
    assert up.calls == ["abort"]
    k.done_once(k.exchanges[0])
    assert k.exchanges[0].aborted


def test_back_pressure_in_the_tunnel() -> None:
    k = Kit()
    c, up = tunnel(k)
    c.block()
    assert up.calls == ["pause_reading"]
    c.unblock()
    assert up.calls == ["pause_reading", "resume_reading"]
    up.block()
    assert c.calls == ["pause_reading"]
    up.unblock()
    assert c.calls == ["pause_reading", "resume_reading"]


def test_tunnel_outlives_the_request_timeout() -> None:
    def handler(ex: Exchange) -> None:
        ex.set_timeouts(TimeoutPolicy(1.0))
        ex.proxy(k.pool)

    k = Kit(handler)
    c, up = tunnel(k)
    k.loop.advance(5)
    c.feed(b"ping")
    assert up.take() == b"ping"
    assert c.calls == []
    assert k.done == []


def test_upstream_refuses_the_upgrade() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(UPGRADE)
    up.take()
    up.feed(ok(b"no"))
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + DATE + b"Connection: close\r\n\r\nno"
    )
    assert up.calls == ["close"]  # it may have read tunnel bytes: never pooled
    assert k.pool.idle_count == 0
    k.done_once(k.exchanges[0])
    assert c.calls == ["write_eof"]
    c.feed(b"ignored")
    assert c.take() == b""
    k.loop.advance(0.5)
    assert c.calls == ["write_eof", "close"]


def test_101_without_an_upgrade_request_is_refused() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request())
    up.feed(SWITCH)
    assert c.take().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert up.aborted


def test_handler_header_lines_on_the_101() -> None:
    """The lines a handler adds to a proxied response (the activator's wait header) are on
    a 101 too."""

    def handler(ex: Exchange) -> None:
        ex.resp_extra = b"Knd-Activator-Wait-Ms: 12\r\n"
        ex.proxy(k.pool)

    k = Kit(handler)
    up = k.idle_upstream()
    c = k.client()
    c.feed(UPGRADE)
    assert up.take() == UPGRADE_SENT
    up.feed(SWITCH)
    assert c.take() == (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n"
        b"Knd-Activator-Wait-Ms: 12\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    c.feed(b"x")
    assert up.take() == b"x"

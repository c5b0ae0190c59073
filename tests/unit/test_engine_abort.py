"""Engine protocol tests: the client going away at each stage of an exchange. The upstream
side is dropped and ``on_done`` runs exactly once with ``aborted`` set."""

from __future__ import annotations

from .enginekit import (
    Kit,
    client_ok,
    ok,
    request,
    response,
)


def test_while_waiting_for_the_response() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request())
    c.peer_lost()
    assert up.calls == ["abort"]
    ex = k.exchanges[0]
    k.done_once(ex)
    assert ex.aborted
    assert k.pool.idle_count == 0
    assert k.server.inflight == 0
    assert k.server.connections == set()
    assert up.lost  # its connection_lost came after the abort: nothing more happens
    k.done_once(ex)


def test_mid_response() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request())
    up.feed(response(b"200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nab\r\n"))
    c.peer_lost(ConnectionResetError())
    assert up.calls == ["abort"]
    k.done_once(k.exchanges[0])
    assert k.exchanges[0].aborted


def test_while_the_request_body_streams() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/p", b"Content-Length: 10", method=b"POST", body=b"abc"))
    c.peer_lost()
    assert up.calls == ["abort"]
    k.done_once(k.exchanges[0])
    assert k.exchanges[0].aborted


def test_while_the_handler_holds_the_request() -> None:
    k = Kit(defer=True)
    up = k.idle_upstream()
    c = k.client()
    c.feed(request())
    c.peer_lost()
    ex = k.held[0]
    k.done_once(ex)
    assert ex.aborted
    ex.proxy(k.pool)  # a late proxy call does nothing
    ex.error(503, "late")
    assert up.take() == b""
    assert k.pool.idle_count == 1
    assert c.late_writes == []
    k.done_once(ex)


def test_while_dialling() -> None:
    k = Kit()
    c = k.client()
    c.feed(request())
    c.peer_lost()
    k.done_once(k.exchanges[0])
    up = k.pool.complete_dial()
    assert up.take() == b""
    assert k.pool.idle_count == 1  # the new connection is kept for the next request


def test_with_pipelined_requests_queued() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/1") + request(b"/2") + request(b"/3"))
    c.peer_lost()
    assert len(k.exchanges) == 1  # the queued ones never reach the handler
    k.done_once(k.exchanges[0])
    assert up.calls == ["abort"]


def test_after_the_response_nothing_more_happens() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request())
    up.feed(ok())
    assert c.take() == client_ok()
    c.peer_lost()
    ex = k.exchanges[0]
    k.done_once(ex)
    assert not ex.aborted
    assert k.pool.idle_count == 1
    assert up.calls == []


def test_client_closes_in_the_tunnel_before_101() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request(b"/ws", b"Connection: Upgrade", b"Upgrade: websocket"))
    c.peer_lost()
    assert up.calls == ["abort"]
    k.done_once(k.exchanges[0])


def test_during_lingering_close() -> None:
    k = Kit(lambda ex: ex.error(403, "denied"))
    c = k.client()
    c.feed(request(b"/", b"Connection: close"))
    assert c.calls == ["write_eof"]
    c.peer_lost()
    k.loop.advance(1)
    assert c.calls == ["write_eof"]  # the linger timer was cancelled
    assert k.loop.timers() == []
    k.done_once(k.exchanges[0])

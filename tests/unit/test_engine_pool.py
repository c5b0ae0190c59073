"""Engine protocol tests: the upstream keep-alive pool (LIFO reuse, idle sweep, limits) with
fake-transport connections and a fake clock."""

from __future__ import annotations

from .enginekit import Kit, client_ok, ok, request, upstream_head


def test_most_recently_released_is_reused_first() -> None:
    k = Kit()
    old = k.idle_upstream()
    new = k.idle_upstream()
    c = k.client()
    c.feed(request())
    assert new.take() == upstream_head()
    assert old.take() == b""
    assert k.pool.idle_count == 1


def test_idle_connections_closed_after_the_idle_timeout() -> None:
    k = Kit()
    up = k.idle_upstream()
    k.loop.advance(3.5)
    assert up.calls == []
    k.loop.advance(1)
    assert up.calls == ["close"]
    assert k.pool.idle_count == 0
    assert k.loop.timers() == []  # no sweep while nothing is idle


def test_reuse_restarts_the_idle_clock() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    k.loop.advance(3.5)
    c.feed(request())
    up.feed(ok())
    k.loop.advance(3.4)
    assert up.calls == []
    assert k.pool.idle_count == 1
    k.loop.advance(1)
    assert up.calls == ["close"]


def test_connection_closed_by_the_server_while_idle_is_skipped() -> None:
    k = Kit()
    up = k.idle_upstream()
    up.peer_eof()
    assert up.lost
    c = k.client()
    c.feed(request())
    assert up.late_writes == [] and up.take() == b""
    nup = k.pool.complete_dial()
    assert nup.take() == upstream_head()
    nup.feed(ok())
    assert c.take() == client_ok()


def test_max_idle() -> None:
    k = Kit()
    k.pool.max_idle = 1
    first = k.idle_upstream()
    second = k.idle_upstream()
    assert first.calls == []
    assert second.calls == ["close"]
    assert k.pool.idle_count == 1


def test_closed_pool_closes_idle_and_released_connections() -> None:
    k = Kit()
    idle = k.idle_upstream()
    busy = k.idle_upstream()
    c = k.client()
    c.feed(request())
    assert busy.take() == upstream_head()
    k.pool.close()
    assert idle.calls == ["close"]
    busy.feed(ok())
    assert c.take() == client_ok()
    assert busy.calls == ["close"]
    assert k.pool.idle_count == 0

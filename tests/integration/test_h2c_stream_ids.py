"""The pod's long-lived upstream h2c connection runs out of stream ids (2**31 - 1, after about
2**30 streams): it retires once its streams are over and new streams go to a fresh connection.

An engine server in the test's loop (so the test can move the connection's stream-id counter
near the end) proxies h2c to a scripted h2 app on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from h2.events import DataReceived

from dataplane.h2c import H2Hub
from dataplane.proxy import Exchange, HTTPServer
from dataplane.upstream import UpstreamPool

from .test_h2c_mapping import Upstream, _request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def app() -> AsyncIterator[Upstream]:
    u = Upstream()
    await u.start()
    yield u
    await u.close()


async def _ok(server: Any, path: bytes = b"/ok") -> bytes:
    events = await _request(server, path)
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


async def test_stream_ids_running_out_move_new_streams_to_a_fresh_connection(
    app: Upstream,
) -> None:
    loop = asyncio.get_running_loop()
    pool = UpstreamPool("127.0.0.1", app.port)

    def handler(ex: Exchange) -> None:
        ex.proxy(pool)

    srv = HTTPServer(handler)
    hub = H2Hub(loop)
    hub.enable(srv)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    await srv.start("127.0.0.1", 0, sock=sock)
    front = SimpleNamespace(port=sock.getsockname()[1])
    try:
        assert await _ok(front) == b"ok"
        (old,) = hub.upstreams.values()
        old.h2.highest_out = 2**31 - 3  # one stream id left: 2**31 - 1
        assert await _ok(front) == b"ok"
        assert old.h2.highest_out == 2**31 - 1 and old.usable
        assert await _ok(front) == b"ok"  # no id left on ``old``: a fresh connection
        assert not old.usable and old.closed  # retired, and closed as it was idle
        (new,) = hub.upstreams.values()
        assert new is not old and new.h2.highest_out == 1
        assert await _ok(front) == b"ok"
        assert app.connections == 2
    finally:
        await hub.shutdown(1.0)
        await srv.shutdown(timeout=1.0)
        pool.close()

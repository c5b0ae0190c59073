"""HTTP/2 cleartext (h2c) for the proxy engine's servers, loaded only when a client uses it.

:class:`H2Hub` is cheap to create and imports no HTTP/2 code: ``enable(server)`` makes an
:class:`~dataplane.proxy.HTTPServer` hand over any connection that opens with the HTTP/2
preface (prior knowledge, as Knative's ``h2c.NewHandler`` accepts on the same listener as
HTTP/1.1). The first such connection imports :mod:`dataplane.h2proxy` and its HTTP/2 codec
(:mod:`dataplane.h2frames`, :mod:`dataplane.hpack`), so a queue-proxy that never sees HTTP/2
keeps its small idle footprint.

The hub owns one multiplexed upstream h2c connection per destination and the downstream h2c
connections (for the drain: ``shutdown`` sends GOAWAY, lets open streams finish, then closes).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .proxy import HTTPServer, ServerConnection
    from .request import Request
    from .upstream import UpstreamPool

__all__ = ["H2Hub"]


class H2Hub:
    """The h2c state of one process: downstream connections and upstream connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections: set[Any] = set()  # h2proxy.H2ServerConnection
        self.upstreams: dict[tuple[str, int], Any] = {}  # h2proxy.H2Upstream
        self.shutting_down = False

    def enable(self, server: HTTPServer) -> None:
        """Accept HTTP/2 on ``server``'s listener beside HTTP/1.1: with prior knowledge, and by
        ``Upgrade: h2c`` on a request without a body (RFC 7540 §3.2)."""
        server.h2c = self.handover
        handler = server.handler

        def handle(ex: Request) -> None:
            if ex.upgrade and not self.shutting_down and _wants_h2c(ex):
                from .h2proxy import upgrade

                if upgrade(self, ex, handler):
                    return
            handler(ex)

        server.handler = handle

    def handover(self, conn: ServerConnection, data: bytes) -> bool:
        """``conn`` opened with the HTTP/2 preface (``data`` starts with it): take it over."""
        if self.shutting_down:
            return False
        from .h2proxy import take_over

        return take_over(self, conn, data)

    def upstream(self, pool: UpstreamPool) -> Any:
        """The h2c connection to ``pool``'s destination (dialled on first use)."""
        key = (pool.host, pool.port)
        up = self.upstreams.get(key)
        if up is None or not up.usable:
            from .h2proxy import H2Upstream

            up = self.upstreams[key] = H2Upstream(self, pool)
        return up

    def upstream_gone(self, up: Any) -> None:
        key = (up.host, up.port)
        if self.upstreams.get(key) is up:
            del self.upstreams[key]

    @property
    def streams(self) -> int:
        """Downstream streams in progress."""
        return sum(len(c.streams) for c in self.connections)

    async def shutdown(self, timeout: float | None = None) -> None:
        """GOAWAY to every client, wait for their open streams (up to ``timeout``), close."""
        self.shutting_down = True
        for c in list(self.connections):
            c.goaway()
        start = self.loop.time()
        delay = 0.005
        while any(c.streams for c in self.connections):
            if timeout is not None and self.loop.time() - start >= timeout:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        for c in list(self.connections):
            c.close()
        for up in list(self.upstreams.values()):
            up.close()
        self.upstreams.clear()


def _wants_h2c(ex: Request) -> bool:
    up = ex.hdr.get(b"upgrade")
    return (
        up is not None
        and up.strip().lower() == b"h2c"
        and not ex.has_body
        and ex.find_header(b"http2-settings") is not None
    )

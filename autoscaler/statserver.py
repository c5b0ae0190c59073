"""The autoscaler's stat server: activators' ``WireStatMessages`` over a websocket (SPEC §2.7).

Listens on any path (Knative's is ``:8080``), answers kubelet probes and plain requests with
200, upgrades websocket requests and decodes every binary frame as ``WireStatMessages``;
messages without a ``stat`` and non-binary frames are dropped. On shutdown every connection
gets close code 1012 ("Restarting"), as Knative's server sends. aiohttp is imported here only:
the embedded autoscaler of ``knd run`` takes stats by function call and never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from dataplane.statpb import DecodeError, WireStatMessage, decode_wire_stat_messages

__all__ = ["StatServer"]

log = logging.getLogger("autoscaler.statserver")


class StatServer:
    def __init__(self, on_stats: Callable[[list[WireStatMessage]], None]) -> None:
        self.on_stats = on_stats
        self._app = web.Application()
        self._app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(text="")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                try:
                    batch = decode_wire_stat_messages(msg.data)
                except DecodeError as e:
                    log.warning("dropping an undecodable stats frame: %s", e)
                    continue
                batch = [m for m in batch if m.stat is not None]
                if batch:
                    self.on_stats(batch)
        finally:
            self._sockets.discard(ws)
        return ws

    async def start(self, host: str | None, port: int) -> int:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        socks = getattr(server, "sockets", None) or []
        return int(socks[0].getsockname()[1]) if socks else port

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"Restarting")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

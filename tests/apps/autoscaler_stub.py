"""A stand-in for Knative's autoscaler stat server (``pkg/autoscaler/statserver/server.go``).

Any path. A websocket upgrade is accepted (unless :attr:`StubState.refuse` is set, then it gets
503) and every binary frame is decoded as ``WireStatMessages``; anything else (a kubelet probe)
gets 200. Unlike the real server it keeps ``timestamp`` as received and does not skip messages
with no ``stat``, so tests can compare batches with what was sent.

Tests run it in their own event loop (:func:`start`) and steer it through :class:`StubState`:
``refuse`` upgrades, stop answering pings (``answer_pings``), or close every connection
(:meth:`RunningStub.drop_connections`, code 1012 "Restarting" as on autoscaler shutdown).
``python -m tests.apps.autoscaler_stub --port N`` runs it stand-alone and prints each decoded
message as a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, WSMsgType, web

from dataplane.statpb import DecodeError, WireStatMessage, decode_wire_stat_messages

__all__ = ["Connection", "RunningStub", "StubState", "make_app", "start"]

log = logging.getLogger("tests.apps.autoscaler_stub")

SERVICE_RESTART = WSCloseCode.SERVICE_RESTART  # 1012, what the autoscaler sends on shutdown
CLOSE_TIMEOUT = 2.0  # bound on waiting for the client's close reply


@dataclass
class Connection:
    """One accepted websocket connection (times are ``loop.time()``)."""

    index: int
    ws: web.WebSocketResponse
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    pings: int = 0
    pongs: int = 0
    frames: int = 0

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass
class StubState:
    """What the stub received, and the switches that steer it."""

    refuse: bool = False  # answer websocket upgrades with 503
    answer_pings: bool = True  # False: pings are read (and counted) but never answered
    connections: list[Connection] = field(default_factory=list)
    batches: list[list[WireStatMessage]] = field(default_factory=list)  # one per binary frame
    messages: list[WireStatMessage] = field(default_factory=list)  # all batches, flattened
    frames: asyncio.Queue[list[WireStatMessage]] = field(default_factory=asyncio.Queue)
    refused: int = 0
    probes: int = 0
    non_binary_frames: int = 0
    decode_errors: int = 0

    def active(self) -> list[Connection]:
        return [c for c in self.connections if c.open]

    async def next_batch(self, timeout: float = 5.0) -> list[WireStatMessage]:
        """The next decoded frame (waits at most ``timeout`` seconds)."""
        return await asyncio.wait_for(self.frames.get(), timeout)


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


STATE_KEY = web.AppKey("state", StubState)


async def _handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if not _is_upgrade(request):
        state.probes += 1
        return web.Response(text="ok")
    if state.refuse:
        state.refused += 1
        return web.Response(status=503, text="refusing")
    ws = web.WebSocketResponse(autoping=False, autoclose=True, timeout=CLOSE_TIMEOUT)
    await ws.prepare(request)
    loop = asyncio.get_running_loop()
    conn = Connection(index=len(state.connections), ws=ws, opened_at=loop.time())
    state.connections.append(conn)
    try:
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.PING:
                conn.pings += 1
                if state.answer_pings:
                    await ws.pong(msg.data)
            elif msg.type is WSMsgType.BINARY:
                conn.frames += 1
                try:
                    batch = decode_wire_stat_messages(msg.data)
                except DecodeError:
                    state.decode_errors += 1
                    log.exception("undecodable frame")
                    continue
                state.batches.append(batch)
                state.messages.extend(batch)
                state.frames.put_nowait(batch)
            elif msg.type is WSMsgType.TEXT:
                state.non_binary_frames += 1  # dropped, as the real server does
            elif msg.type is WSMsgType.PONG:
                conn.pongs += 1
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                break
    finally:
        conn.closed_at = loop.time()
        conn.close_code = ws.close_code
    return ws


def make_app(state: StubState | None = None) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state if state is not None else StubState()
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


@dataclass
class RunningStub:
    runner: web.AppRunner
    port: int
    state: StubState
    closed: bool = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def drop_connections(
        self, code: int = SERVICE_RESTART, message: bytes = b"Restarting"
    ) -> None:
        """Close every open connection from the server side."""
        for c in self.state.active():
            with contextlib.suppress(Exception):
                await c.ws.close(code=code, message=message)

    async def close(self) -> None:
        """Shut down like the autoscaler: 1012 to every client, then stop listening."""
        if self.closed:
            return
        self.closed = True
        await self.drop_connections()
        await self.runner.cleanup()


async def start(
    host: str = "127.0.0.1", port: int = 0, state: StubState | None = None
) -> RunningStub:
    """Start the stub in the running event loop; ``port=0`` picks a free port."""
    app = make_app(state)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return RunningStub(runner, bound, app[STATE_KEY])


async def _serve_forever(host: str, port: int) -> None:
    stub = await start(host, port)
    print(f"# autoscaler stub listening on {stub.url}", flush=True)
    try:
        while True:
            batch = await stub.state.frames.get()
            for m in batch:
                print(json.dumps(dataclasses.asdict(m)), flush=True)
    finally:
        await stub.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()

"""A test upstream ("user container") for the queue-proxy integration tests.

An aiohttp web app meant to run inside the test's own event loop (:func:`start`), so tests can
observe its state directly (requests in flight, the most seen at once, disconnects) and steer it
(gates, SSE steps, the readiness flag). ``python -m tests.apps.upstream --port N`` runs it
stand-alone for manual experiments.

Endpoints (every handler is bounded in time: nothing waits longer than ``MAX_WAIT``):

- ``/hello``: ``hello``.
- ``/echo``: the request body back (chunked), request Content-Type kept.
- ``/sha256``: reads the body as a stream; JSON with its sha256, length and framing headers.
- ``/sleep?ms=``: ``slept`` after ``ms`` milliseconds.
- ``/gate``: waits until the test opens :attr:`AppState.gate`, then ``released``.
- ``/hang``: never answers (until the client or proxy gives up, or ``MAX_WAIT``).
- ``/headers``: JSON with method, path, version and the raw header list (duplicates kept).
- ``/hop``: a response carrying hop-by-hop headers the proxy must remove.
- ``/sse?n=&interval_ms=&gated=1``: ``n`` server-sent events; with ``gated=1`` each event after
  the first waits for :meth:`AppState.sse_step` instead of ``interval_ms``.
- ``/ws``: websocket echo (text and binary).
- ``/status?code=``: an empty response with that status (``body=`` adds a body).
- ``/large?bytes=&cl=1``: a deterministic body of ``bytes`` bytes (see :func:`pattern`), chunked
  unless ``cl=1``; :attr:`AppState.large_sent` counts the bytes handed to the transport.
- ``/crash?mode=cl|chunked``: starts a response, sends part of it, then aborts the connection.
- ``/slowstart?ms=``: headers only after ``ms``, then ``started``.
- ``/drip?chunks=&gap_ms=``: ``chunks`` chunks ``chunk<i>\\n`` with a gap before each after the
  first.
- ``/ready``: 200 while :attr:`AppState.ready`, else 503 (a readiness probe target).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

__all__ = ["AppState", "RunningApp", "pattern", "pattern_sha256", "start"]

MAX_WAIT = 60.0
_BLOCK = random.Random(20240601).randbytes(65521)  # prime length: offsets shift per block
_UNTRACKED = frozenset({"/ready"})


def pattern(n: int) -> bytes:
    """The first ``n`` bytes of the deterministic body served by ``/large``."""
    reps, rest = divmod(n, len(_BLOCK))
    return _BLOCK * reps + _BLOCK[:rest]


def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    reps, rest = divmod(n, len(_BLOCK))
    for _ in range(reps):
        h.update(_BLOCK)
    h.update(_BLOCK[:rest])
    return h.hexdigest()


@dataclass
class AppState:
    """What the app has seen, and the knobs tests turn."""

    in_flight: int = 0
    max_in_flight: int = 0
    total: int = 0
    completed: int = 0
    disconnects: int = 0
    paths: list[str] = field(default_factory=list)
    per_path: dict[str, int] = field(default_factory=dict)
    ready_hits: int = 0
    ready: bool = True
    large_sent: int = 0
    bodies_read: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    sse_steps: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def reset_counters(self) -> None:
        self.max_in_flight = self.in_flight
        self.total = 0
        self.completed = 0
        self.disconnects = 0
        self.paths.clear()
        self.per_path.clear()

    def sse_step(self) -> None:
        """Let a gated SSE stream send its next event."""
        self.sse_steps.put_nowait(None)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        """Wait (bounded) until ``predicate(state)`` holds; re-checked on every state change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"app state condition not met within {timeout}s: {self}")
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass


def _state(request: web.Request) -> AppState:
    return request.app[STATE]


STATE: web.AppKey[AppState] = web.AppKey("state", AppState)


@web.middleware
async def _track(request: web.Request, handler):  # type: ignore[no-untyped-def]
    st = _state(request)
    if request.path in _UNTRACKED:
        return await handler(request)
    st.in_flight += 1
    st.total += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    st.paths.append(request.path)
    st.per_path[request.path] = st.per_path.get(request.path, 0) + 1
    st._notify()
    try:
        resp = await handler(request)
        st.completed += 1
        return resp
    except asyncio.CancelledError:
        st.disconnects += 1
        raise
    finally:
        st.in_flight -= 1
        st._notify()


def _int(request: web.Request, name: str, default: int) -> int:
    return int(request.query.get(name, default))


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    resp = web.StreamResponse()
    resp.content_type = request.content_type or "application/octet-stream"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(body)
    await resp.write_eof()
    return resp


async def sha256(request: web.Request) -> web.Response:
    h = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_any():
        h.update(chunk)
        n += len(chunk)
    _state(request).bodies_read += 1
    return web.json_response(
        {
            "sha256": h.hexdigest(),
            "length": n,
            "content_length": request.headers.get("Content-Length"),
            "transfer_encoding": request.headers.get("Transfer-Encoding"),
        }
    )


async def sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(_int(request, "ms", 100) / 1000)
    return web.Response(text="slept")


async def gate(request: web.Request) -> web.Response:
    await asyncio.wait_for(_state(request).gate.wait(), MAX_WAIT)
    return web.Response(text="released")


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(MAX_WAIT)
    return web.Response(text="woke up")


async def headers(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "method": request.method,
            "path_qs": request.path_qs,
            "raw_path": request.raw_path,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        }
    )


async def hop(request: web.Request) -> web.Response:
    return web.Response(
        text="hop",
        headers={
            "Connection": "X-Resp-Hop",
            "X-Resp-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "Proxy-Connection": "keep-alive",
            "Upgrade": "foo/1",
            "Trailer": "X-Trailer",
            "X-Resp-End2End": "kept",
        },
    )


async def sse(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    n = _int(request, "n", 3)
    interval = _int(request, "interval_ms", 100) / 1000
    gated = request.query.get("gated") == "1"
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    for i in range(n):
        if i:
            if gated:
                await asyncio.wait_for(st.sse_steps.get(), MAX_WAIT)
            else:
                await asyncio.sleep(interval)
        await resp.write(f"id: {i}\ndata: event {i}\n\n".encode())
    await resp.write_eof()
    return resp


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            if msg.data == "close":
                await sock.close()
                break
            await sock.send_str("echo: " + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


async def status(request: web.Request) -> web.Response:
    code = _int(request, "code", 200)
    body = request.query.get("body")
    return web.Response(status=code, text=body) if body is not None else web.Response(status=code)


async def large(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    total = _int(request, "bytes", 1 << 20)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("cl") == "1":
        resp.content_length = total
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    if request.method == "HEAD":  # aiohttp would send the written body even for HEAD
        await resp.write_eof()
        return resp
    sent = 0
    block = _BLOCK
    while sent < total:
        off = sent % len(block)
        piece = block[off : off + min(len(block) - off, total - sent)]
        await resp.write(piece)
        sent += len(piece)
        st.large_sent += len(piece)
    await resp.write_eof()
    return resp


async def crash(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    if request.query.get("mode", "cl") == "cl":
        resp.content_length = 100_000
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"x" * 1000)
    # Close (FIN) with the body incomplete, as a dying process's socket would: the bytes
    # written so far are delivered first, then the end of the stream.
    transport = request.transport
    assert transport is not None
    transport.close()
    return resp


async def slowstart(request: web.Request) -> web.Response:
    await asyncio.sleep(_int(request, "ms", 1000) / 1000)
    return web.Response(text="started")


async def drip(request: web.Request) -> web.StreamResponse:
    chunks = _int(request, "chunks", 3)
    gap = _int(request, "gap_ms", 100) / 1000
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    if request.method == "HEAD":
        await resp.write_eof()
        return resp
    for i in range(chunks):
        if i:
            await asyncio.sleep(gap)
        await resp.write(f"chunk{i}\n".encode())
    await resp.write_eof()
    return resp


async def ready(request: web.Request) -> web.Response:
    st = _state(request)
    st.ready_hits += 1
    st._notify()
    return web.Response(status=200 if st.ready else 503, text="ready" if st.ready else "not ready")


def make_app(state: AppState | None = None) -> web.Application:
    app = web.Application(middlewares=[_track], client_max_size=1 << 30)
    app[STATE] = state or AppState()
    r = app.router
    r.add_route("*", "/hello", hello)
    r.add_route("*", "/echo", echo)
    r.add_route("*", "/sha256", sha256)
    r.add_route("*", "/sleep", sleep)
    r.add_route("*", "/gate", gate)
    r.add_route("*", "/hang", hang)
    r.add_route("*", "/headers", headers)
    r.add_route("*", "/hop", hop)
    r.add_get("/sse", sse)
    r.add_get("/ws", ws)
    r.add_route("*", "/status", status)
    r.add_route("*", "/large", large)
    r.add_route("*", "/crash", crash)
    r.add_route("*", "/slowstart", slowstart)
    r.add_route("*", "/drip", drip)
    r.add_route("*", "/ready", ready)
    return app


@dataclass
class RunningApp:
    runner: web.AppRunner
    port: int
    state: AppState

    async def close(self) -> None:
        self.state.gate.set()
        await self.runner.cleanup()


async def start(host: str = "127.0.0.1", port: int = 0) -> RunningApp:
    """Start the app in the running event loop; ``port=0`` picks a free port."""
    state = AppState()
    runner = web.AppRunner(
        make_app(state),
        handler_cancellation=True,
        access_log=None,
        # Large limits: header-size tests probe the queue-proxy's limits, not the app's.
        max_line_size=1 << 20,
        max_field_size=1 << 20,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return RunningApp(runner, bound, state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    runner_app = make_app()
    web.run_app(runner_app, host=args.host, port=args.port, handler_cancellation=True)


if __name__ == "__main__":
    main()

"""A sample user app: listens on $PORT like any Knative container.

Endpoints: ``/`` says hello; ``/sleep?ms=N`` answers after N milliseconds (the 100 ms handler of
Knative's benchmarks); ``/stream?n=N`` sends N server-sent events, one per 100 ms.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    target = os.environ.get("TARGET", "World")
    return web.Response(text=f"Hello {target}!\n")


async def sleep(request: web.Request) -> web.Response:
    ms = int(request.query.get("ms", request.query.get("sleep", "100")))
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"slept {ms} ms\n")


async def stream(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "5"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(n):
        await resp.write(f"data: event {i}\n\n".encode())
        await asyncio.sleep(0.1)
    await resp.write_eof()
    return resp


def main() -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/sleep", sleep)
    app.router.add_get("/stream", stream)
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), print=None)


if __name__ == "__main__":
    main()

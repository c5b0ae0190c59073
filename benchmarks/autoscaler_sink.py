"""A do-nothing autoscaler for benchmarks: accepts the activator's stats websocket and discards it.

Any path; a websocket upgrade is accepted, pings are answered (so the activator keeps its
connection and its health turns 200) and every frame is dropped; anything else gets ``200 ok``.
``python -m benchmarks.autoscaler_sink --port N`` runs it until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def _handle(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(text="ok")
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    async for _msg in ws:  # stats frames: dropped
        pass
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handle)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

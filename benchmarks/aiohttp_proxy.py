"""The "naive Python" baseline: an aiohttp server forwarding through an aiohttp ClientSession.

Streams both ways (request body as a stream, response copied chunk by chunk), keeps a keep-alive
pool to the upstream, runs on uvloop, no access log: what a careful Python developer would write
with aiohttp before writing a proxy engine. Run: ``python -m benchmarks.aiohttp_proxy --port P
--upstream-port U``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
CHUNK = 64 * 1024


def make_app(upstream: str) -> web.Application:
    """An application proxying every method and path to ``upstream`` (``http://host:port``)."""
    app = web.Application()

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = TCPConnector(limit=0, keepalive_timeout=300, force_close=False)
        async with ClientSession(
            base_url=upstream,
            connector=connector,
            auto_decompress=False,
            timeout=ClientTimeout(total=300),
        ) as session:
            app["session"] = session
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        session: ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        data = request.content if request.body_exists else None
        async with session.request(
            request.method,
            request.rel_url,
            headers=headers,
            data=data,
            allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as upstream_resp:
            response = web.StreamResponse(
                status=upstream_resp.status,
                reason=upstream_resp.reason,
                headers={
                    k: v for k, v in upstream_resp.headers.items() if k.lower() not in HOP_BY_HOP
                },
            )
            try:
                await response.prepare(request)
                async for chunk in upstream_resp.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client went away (wrk closes busy connections when it stops)
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(port: int, upstream: str) -> None:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    runner = web.AppRunner(make_app(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Parse ports and run the proxy."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aiohttp_proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="listen port on 127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True, help="upstream on 127.0.0.1")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, f"http://127.0.0.1:{args.upstream_port}"))


if __name__ == "__main__":
    main()

"""A gRPC test app (grpcio's asyncio server, raw-bytes methods, no generated code).

Service ``test.Echo``: ``Unary`` (echo; ``sleep:<s>`` sleeps first; ``hold`` waits for
``release``), ``Stream`` (server streaming: ``<n>`` -> n messages), ``Collect`` (client
streaming: the messages joined with ``,``) and ``Chat`` (bidirectional echo). Plus
``grpc.health.v1.Health`` whose status the test sets. The app counts calls in flight, their
maximum, and calls that ended cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "test.Echo"


@dataclass
class GrpcApp:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    active: int = 0
    max_active: int = 0
    calls: int = 0
    cancelled: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    remaining: list[float | None] = field(default_factory=list)  # deadline left at entry
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def set_serving(self, serving: bool, service: str = "") -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(service, status)

    async def close(self) -> None:
        await self.server.stop(0)

    async def _enter(self, ctx: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.metadata.append({k: v for k, v in ctx.invocation_metadata() or ()})
        self.remaining.append(ctx.time_remaining())
        async with self.changed:
            self.changed.notify_all()

    async def _leave(self, cancelled: bool) -> None:
        self.active -= 1
        if cancelled:
            self.cancelled += 1
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, pred: object, timeout: float = 5.0) -> None:
        async def waiter() -> None:
            async with self.changed:
                await self.changed.wait_for(pred)  # type: ignore[arg-type]

        await asyncio.wait_for(waiter(), timeout)

    # -- methods ---------------------------------------------------------------------------
    async def unary(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        await self._enter(ctx)
        cancelled = False
        try:
            if req.startswith(b"sleep:"):
                await asyncio.sleep(float(req[6:]))
            elif req == b"hold":
                await self.release.wait()
            elif req == b"fail":
                await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
            ctx.set_trailing_metadata((("x-echo-trailer", "yes"),))
            return b"echo:" + req
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._leave(cancelled)

    async def stream(self, req: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await self._enter(ctx)
        cancelled = False
        try:
            n, _, size = req.partition(b"x")
            pad = b"." * int(size or b"0")
            for i in range(int(n)):
                yield b"%d" % i + pad
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._leave(cancelled)

    async def collect(self, reqs: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> bytes:
        await self._enter(ctx)
        cancelled = False
        try:
            got = [r async for r in reqs]
            return b",".join(got)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._leave(cancelled)

    async def chat(
        self, reqs: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        await self._enter(ctx)
        cancelled = False
        try:
            async for r in reqs:
                if r == b"hold":
                    await self.release.wait()
                yield b"re:" + r
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._leave(cancelled)


async def start(port: int = 0) -> GrpcApp:
    server = grpc.aio.server()
    hs = health.aio.HealthServicer()
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    app = GrpcApp(server=server, port=bound, health=hs)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(app.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(app.stream),
        "Collect": grpc.stream_unary_rpc_method_handler(app.collect),
        "Chat": grpc.stream_stream_rpc_method_handler(app.chat),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    await app.set_serving(True)
    await server.start()
    return app


async def serve_forever(port: int) -> None:
    app = await start(port)
    await app.server.wait_for_termination()


if __name__ == "__main__":  # python -m tests.apps.grpc_app [PORT]  (default: $PORT)
    import os
    import sys

    asyncio.run(serve_forever(int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"])))

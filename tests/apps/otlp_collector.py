"""A tiny OTLP/HTTP trace collector for tests: ``POST /v1/traces`` (protobuf), spans kept in memory.

Runs in the test's event loop on loopback; :meth:`RunningCollector.wait_for` polls the received
spans (no sleeping for a fixed time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str  # "" for a root span
    kind: int
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, object]
    service: str
    scope: str


@dataclass
class RunningCollector:
    runner: web.AppRunner
    port: int
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout: float = 10.0
    ) -> list[Span]:
        """Wait until ``predicate(spans)`` holds; fails with the spans seen so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.spans):
            left = deadline - loop.time()
            if left <= 0:
                names = [(s.name, s.trace_id[:8]) for s in self.spans]
                raise AssertionError(f"collector: condition not met in {timeout}s; spans {names}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass
        return self.spans

    async def close(self) -> None:
        await self.runner.cleanup()


def _value(v: object) -> object:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(v, kind) if kind else None


async def start() -> RunningCollector:
    holder: list[RunningCollector] = []

    async def traces(request: web.Request) -> web.Response:
        col = holder[0]
        col.requests += 1
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        for rs in req.resource_spans:
            service = ""
            for a in rs.resource.attributes:
                if a.key == "service.name":
                    service = str(_value(a.value))
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    col.spans.append(
                        Span(
                            name=sp.name,
                            trace_id=sp.trace_id.hex(),
                            span_id=sp.span_id.hex(),
                            parent_id=sp.parent_span_id.hex(),
                            kind=sp.kind,
                            status_code=sp.status.code,
                            attributes={a.key: _value(a.value) for a in sp.attributes},
                            service=service,
                            scope=ss.scope.name,
                        )
                    )
        col.changed.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    col = RunningCollector(runner, port)
    holder.append(col)
    return col

"""Metrics pushed over OTLP, as Knative's OpenTelemetry instruments: the queue-proxy's request
metrics (requestMetrics.protocol http/protobuf and grpc: ``kn.serving.invocation.duration`` in s
by ``http.response.status_code``, ``kn.serving.queue.depth``) and the activator's own
(metrics.protocol: ``kn.revision.request.*``, ``kn.activator.stats.conn.*``). Real processes;
the collectors are in the test (aiohttp for OTLP/HTTP, grpc.aio for OTLP/gRPC) and decode what
they receive."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from tests.apps.autoscaler_stub import RunningStub
from tests.apps.upstream import RunningApp

from .activator_helpers import PlatformFile, StartActivator, rev_headers
from .conftest import StartQP, make_client
from .helpers import eventually, free_ports


class Received:
    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []

    def metrics(self) -> dict[str, Any]:
        """The newest data of each metric name, with its scope and resource."""
        out: dict[str, Any] = {}
        for req in self.requests:
            for rm in req.resource_metrics:
                res = {a.key: a.value.string_value for a in rm.resource.attributes}
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        out[m.name] = (m, sm.scope.name, res)
        return out


@pytest.fixture
async def http_collector() -> AsyncIterator[tuple[str, Received]]:
    got = Received()

    async def metrics(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        req = ExportMetricsServiceRequest()
        req.ParseFromString(await request.read())
        got.requests.append(req)
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}/v1/metrics", got
    await runner.cleanup()


@pytest.fixture
async def grpc_collector() -> AsyncIterator[tuple[str, Received]]:
    import grpc

    got = Received()

    async def export(req: ExportMetricsServiceRequest, _ctx: Any) -> ExportMetricsServiceResponse:
        got.requests.append(req)
        return ExportMetricsServiceResponse()

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                export,
                request_deserializer=ExportMetricsServiceRequest.FromString,
                response_serializer=ExportMetricsServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"http://127.0.0.1:{port}", got
    await server.stop(None)


async def _check(
    start_qp: StartQP, app: RunningApp, protocol: str, endpoint: str, got: Received
) -> None:
    obs = {"requestMetrics": {"protocol": protocol, "endpoint": endpoint}}
    qp = await start_qp(
        {
            "OBSERVABILITY_CONFIG": json.dumps(obs),
            "OTEL_METRIC_EXPORT_INTERVAL": "100",
            "CONTAINER_CONCURRENCY": "4",
        },
        user_port=app.port,
    )
    async with make_client(qp.url()) as c:
        for path in ("/hello", "/hello", "/status?code=503"):
            await c.get(path)
        await c.get("/hello", headers={"K-Network-Probe": "queue"})  # not a revision request

    def counts() -> dict[int, int]:
        m = got.metrics().get("kn.serving.invocation.duration")
        if m is None:
            return {}
        return {
            next(a.value.int_value for a in dp.attributes): dp.count
            for dp in m[0].histogram.data_points
        }

    async def all_counted() -> bool:
        return counts() == {200: 2, 503: 1}

    await eventually(all_counted, timeout=10, what="three requests exported")
    metric, scope, resource = got.metrics()["kn.serving.invocation.duration"]
    assert (metric.unit, scope) == ("s", "knative.dev/serving/pkg/queue")
    assert resource["kn.revision.name"] == "hello-00001"
    assert resource["service.name"] == "hello"
    dp = metric.histogram.data_points[0]
    assert metric.histogram.aggregation_temporality == 2  # cumulative
    assert sum(dp.bucket_counts) == dp.count
    assert len(dp.bucket_counts) == len(dp.explicit_bounds) + 1
    depth, _, _ = got.metrics()["kn.serving.queue.depth"]
    assert depth.unit == "{request}"
    assert depth.gauge.data_points[0].as_int == 0
    # no Prometheus port for the OTLP protocols
    with pytest.raises(OSError):
        _, w = await asyncio.open_connection("127.0.0.1", qp.user_metrics_port)
        w.close()


async def test_http_protobuf_export(
    start_qp: StartQP, app: RunningApp, http_collector: tuple[str, Received]
) -> None:
    await _check(start_qp, app, "http/protobuf", *http_collector)


async def test_grpc_export(
    start_qp: StartQP, app: RunningApp, grpc_collector: tuple[str, Received]
) -> None:
    await _check(start_qp, app, "grpc", *grpc_collector)


async def test_unreachable_collector_does_not_disturb_requests(
    start_qp: StartQP, app: RunningApp
) -> None:
    (port,) = free_ports(1)
    obs = {"requestMetrics": {"protocol": "http/protobuf", "endpoint": f"http://127.0.0.1:{port}"}}
    qp = await start_qp(
        {"OBSERVABILITY_CONFIG": json.dumps(obs), "OTEL_METRIC_EXPORT_INTERVAL": "50"},
        user_port=app.port,
    )
    async with make_client(qp.url()) as c:
        for _ in range(5):
            assert (await c.get("/hello")).status_code == 200

    async def logged() -> bool:
        return "failed to export metrics" in qp.stderr()

    await eventually(logged, timeout=5, what="the failed push logged")


async def test_last_values_pushed_at_shutdown(
    start_qp: StartQP, app: RunningApp, http_collector: tuple[str, Received]
) -> None:
    endpoint, got = http_collector
    obs = {"requestMetrics": {"protocol": "http/protobuf", "endpoint": endpoint}}
    qp = await start_qp(
        {
            "OBSERVABILITY_CONFIG": json.dumps(obs),
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # no periodic push during the test
            "DRAIN_QUIET_PERIOD_SECONDS": "0",
        },
        user_port=app.port,
    )
    async with make_client(qp.url()) as c:
        for _ in range(2):
            assert (await c.get("/hello")).status_code == 200
    assert got.requests == []
    qp.signal(signal.SIGTERM)
    assert await qp.wait_exit() == 0
    m, _, _ = got.metrics()["kn.serving.invocation.duration"]
    assert [dp.count for dp in m.histogram.data_points] == [2]


async def test_activator_metrics_export(
    tmp_path: Path,
    stub: RunningStub,
    start_activator: StartActivator,
    http_collector: tuple[str, Received],
) -> None:
    endpoint, got = http_collector
    platform = PlatformFile(tmp_path / "platform.json")
    platform.revision("hello-00001")  # no pod: a request waits in the throttler
    platform.write()
    act = await start_activator(
        platform,
        stub.url,
        OBSERVABILITY_CONFIG=json.dumps(
            {"metrics": {"protocol": "http/protobuf", "endpoint": endpoint}}
        ),
        OTEL_METRIC_EXPORT_INTERVAL="100",
    )
    async with make_client(act.url(), timeout=30) as c:
        waiting = asyncio.create_task(c.get("/", headers=rev_headers("hello-00001")))
        try:

            async def queued_exported() -> bool:
                m = got.metrics().get("kn.revision.request.queued")
                return m is not None and any(dp.as_int == 1 for dp in m[0].gauge.data_points)

            await eventually(queued_exported, timeout=10, what="the queued request exported")
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    metrics = got.metrics()
    queued, scope, resource = metrics["kn.revision.request.queued"]
    assert scope == "knative.dev/serving/pkg/activator"
    assert resource["service.name"] == "activator"
    attrs = {a.key: a.value.string_value for a in queued.gauge.data_points[0].attributes}
    assert attrs == {"k8s.namespace.name": "default", "kn.revision.name": "hello-00001"}
    reachable, _, _ = metrics["kn.activator.stats.conn.reachable"]
    assert reachable.unit == "{reachable}"
    assert [dp.as_int for dp in reachable.gauge.data_points] == [1]

"""OTLP export of request metrics: ``requestMetrics.protocol`` ``http/protobuf`` or ``grpc``.

Knative records its request metrics through an OpenTelemetry MeterProvider with a periodic
OTLP reader. Here the numbers are the ones the Prometheus registry keeps anyway (plain floats
on the hot path, :mod:`dataplane.promtext`); every interval they are encoded as one
``ExportMetricsServiceRequest`` (cumulative temporality, as the OpenTelemetry SDK's default)
under Knative's OpenTelemetry names, and pushed: by a small HTTP/1.1 POST, or over gRPC
(grpcio, imported only then). A final push happens at shutdown, as the SDK's does. Nothing
touches the request path, and the protobuf classes (``opentelemetry-proto``, the ``tracing``
extra) are imported only when export is configured.

Settings: the endpoint from the config, else ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` (+ ``/v1/metrics`` for HTTP), else the OTLP default; the period
from ``requestMetrics.exportInterval``, else ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds,
default 60000, the SDK's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .envconfig import ConfigError
from .promtext import Counter, Gauge, Histogram, Registry

__all__ = ["MetricsExporter", "OTelName", "exporter_settings"]

log = logging.getLogger("dataplane.otlpmetrics")


@dataclass(frozen=True, slots=True)
class OTelName:
    """How a Prometheus metric of ours is named in OpenTelemetry (Knative's instrument)."""

    name: str
    unit: str
    attrs: tuple[str, ...] = ()  # attribute name per label, in label order
    int_attrs: frozenset[str] = frozenset()  # attributes whose values are integers


def exporter_settings(
    protocol: str, endpoint: str, environ: Mapping[str, str], interval: float = 0.0
) -> tuple[str, float]:
    """(endpoint URL, interval in seconds); ConfigError naming the bad setting."""
    ep = endpoint or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "")
    if not ep:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if base:
            ep = base.rstrip("/") + ("/v1/metrics" if protocol == "http/protobuf" else "")
        else:
            ep = (
                "http://localhost:4318/v1/metrics"
                if protocol == "http/protobuf"
                else "http://localhost:4317"
            )
    if "://" not in ep:
        ep = "http://" + ep
    u = urlsplit(ep)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"OBSERVABILITY_CONFIG: requestMetrics.endpoint {ep!r} is not a URL")
    if interval > 0:  # requestMetrics.exportInterval, as Knative's intervalFor
        return ep, interval
    raw = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    try:
        interval = float(raw) / 1000 if raw else 60.0
    except ValueError:
        interval = -1.0
    if interval <= 0:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: {raw!r} is not a positive number of ms")
    return ep, interval


class MetricsExporter:
    """Pushes ``registry``'s metrics named in ``names`` every ``interval`` seconds."""

    def __init__(
        self,
        registry: Registry,
        names: Mapping[str, OTelName],
        *,
        protocol: str,
        endpoint: str,
        interval: float,
        scope: str,
        resource: Mapping[str, str],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2  # noqa: F401

        self.registry = registry
        self.names = dict(names)
        self.protocol = protocol
        self.endpoint = endpoint
        self.interval = interval
        self.scope = scope
        self.resource = {k: v for k, v in resource.items() if v}
        self.loop = loop
        self.start_ns = time.time_ns()
        self.exports = 0
        self.failures = 0
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel: Any = None

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, now_ns: int | None = None) -> bytes:
        """One ``ExportMetricsServiceRequest`` with the current (cumulative) values."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )
        from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

        now = now_ns if now_ns is not None else time.time_ns()
        req = ExportMetricsServiceRequest()
        rm = req.resource_metrics.add()
        for key, text in sorted(self.resource.items()):
            kv = rm.resource.attributes.add()
            kv.key = key
            kv.value.string_value = text
        sm = rm.scope_metrics.add()
        sm.scope.name = self.scope
        cumulative = pb.AGGREGATION_TEMPORALITY_CUMULATIVE
        for m in self.registry.metrics:
            name = self.names.get(m.name)
            if name is None:
                continue
            out = sm.metrics.add()
            out.name, out.unit, out.description = name.name, name.unit, m.help
            if isinstance(m, Histogram):
                out.histogram.aggregation_temporality = cumulative
                for labels, c in sorted(m.children.items()):
                    dp = out.histogram.data_points.add()
                    self._point(dp, name, labels, now)
                    counts = [int(x) for x in c[:-1]]
                    dp.count = sum(counts)
                    dp.sum = c[-1]
                    dp.bucket_counts.extend(counts)
                    dp.explicit_bounds.extend(m.bounds)
            elif isinstance(m, Gauge):
                items = list(m.fn()) if m.fn is not None else sorted(m.values.items())
                for labels, v in items:
                    gp = out.gauge.data_points.add()
                    self._point(gp, name, labels, now, start=False)
                    if float(v).is_integer():
                        gp.as_int = int(v)
                    else:
                        gp.as_double = v
            elif isinstance(m, Counter):
                out.sum.aggregation_temporality = cumulative
                out.sum.is_monotonic = True
                for labels, v in sorted(m.values.items()):
                    sp = out.sum.data_points.add()
                    self._point(sp, name, labels, now)
                    sp.as_double = v
        return bytes(req.SerializeToString())

    def _point(
        self, dp: Any, name: OTelName, labels: tuple[str, ...], now: int, *, start: bool = True
    ) -> None:
        if start:
            dp.start_time_unix_nano = self.start_ns
        dp.time_unix_nano = now
        for attr, value in zip(name.attrs, labels, strict=False):
            kv = dp.attributes.add()
            kv.key = attr
            if attr in name.int_attrs and value.lstrip("-").isdigit():
                kv.value.int_value = int(value)
            else:
                kv.value.string_value = value

    # -- pushing -----------------------------------------------------------------------------
    def start(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self.export())
        self._handle = self.loop.call_later(self.interval, self._tick)

    async def export(self) -> None:
        """One push; a failure is logged (Knative's reader logs and carries on)."""
        body = self.encode()
        try:
            if self.protocol == "grpc":
                await self._grpc(body)
            else:
                await self._http(body)
            self.exports += 1
        except Exception as e:  # any transport failure: logged, the next period retries
            self.failures += 1
            log.warning("failed to export metrics to %s: %s", self.endpoint, e)

    async def _http(self, body: bytes) -> None:
        u = urlsplit(self.endpoint)
        host = u.hostname or "localhost"
        port = u.port or (443 if u.scheme == "https" else 80)
        ssl_ctx: Any = None
        if u.scheme == "https":
            import ssl

            ssl_ctx = ssl.create_default_context()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_ctx), 10
        )
        try:
            head = (
                f"POST {u.path or '/v1/metrics'}{'?' + u.query if u.query else ''} HTTP/1.1\r\n"
                f"Host: {u.netloc}\r\nContent-Type: application/x-protobuf\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            line = await asyncio.wait_for(reader.readline(), 10)
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit() or not 200 <= int(parts[1]) < 300:
                raise OSError(f"collector answered {line.decode(errors='replace').strip()!r}")
        finally:
            writer.close()

    async def _grpc(self, body: bytes) -> None:
        import grpc  # type: ignore[import-untyped]

        if self._channel is None:
            u = urlsplit(self.endpoint)
            target = f"{u.hostname}:{u.port or 4317}"
            if u.scheme == "https":
                self._channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
            else:
                self._channel = grpc.aio.insecure_channel(target)
        call = self._channel.unary_unary(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            request_serializer=None,
            response_deserializer=None,
        )
        await call(body, timeout=10)

    async def stop(self) -> None:
        """Stop the period and push once more (the values at shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)
        await self.export()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

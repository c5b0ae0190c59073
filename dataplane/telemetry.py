"""Telemetry bootstrap of every binary: who reports, whether tracing is on, the OTLP metrics
push, and the flush at exit.

The queue-proxy, the activator, ``knd-autoscaler`` and ``knd run`` read ``OBSERVABILITY_CONFIG``
(one parser: :mod:`dataplane.observability`) and the ``OTEL_*`` variables through here. No
OpenTelemetry package, and not even :mod:`dataplane.tracing` or :mod:`dataplane.otlpmetrics`, is
imported unless tracing or an OTLP push is configured: the sidecar's idle footprint depends on it
(tests/unit/test_nodeps.py, test_tracing.py), so those imports stay inside the functions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .envconfig import ConfigError
from .observability import ObservabilityConfig, parse_observability

if TYPE_CHECKING:
    from .otlpmetrics import MetricsExporter, OTelName
    from .promtext import Registry
    from .tracing import Tracer, TracingConfig

__all__ = [
    "Identity",
    "flush_traces",
    "metrics_exporter",
    "observability",
    "start_tracer",
    "tracing_settings",
]

log = logging.getLogger("dataplane.telemetry")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who reports: the default ``service.name`` (``OTEL_SERVICE_NAME`` wins) and the other
    OpenTelemetry resource attributes of the process (Knative's: container, namespace, pod...)."""

    service_name: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def resource(self, environ: Mapping[str, str]) -> dict[str, str]:
        name = environ.get("OTEL_SERVICE_NAME", "") or self.service_name
        return {"service.name": name, **self.attributes}


def observability(environ: Mapping[str, str]) -> ObservabilityConfig:
    """``OBSERVABILITY_CONFIG``, parsed once per process (unset: the defaults, all off)."""
    return parse_observability(environ.get("OBSERVABILITY_CONFIG", ""))


def tracing_settings(
    obs: ObservabilityConfig, environ: Mapping[str, str], who: Identity
) -> TracingConfig | None:
    """Knative's tracing settings, else ``OTEL_*``; None when neither asks for tracing (then
    :mod:`dataplane.tracing` is not imported). A bad setting is a ConfigError naming it."""
    if obs.tracing_protocol in ("", "none") and not environ.get("OTEL_TRACES_EXPORTER"):
        return None
    from .tracing import tracing_config

    return tracing_config(
        environ,
        protocol=obs.tracing_protocol,
        endpoint=obs.tracing_endpoint,
        rate=obs.tracing_sampling_rate,
        service_name=who.service_name,
        resource=who.attributes,
    )


def start_tracer(
    cfg: TracingConfig | None,
    scope: str,
    *,
    aiohttp_client: bool = False,
    aiohttp_server: bool = False,
) -> Tracer | None:
    """The tracer for ``scope`` (the OpenTelemetry SDK is imported here), or None when tracing
    is off. The aiohttp instrumentations (off the hot path: the activator's stats websocket,
    ``knd-autoscaler``'s servers) must patch aiohttp before its sessions and apps exist."""
    if cfg is None or not cfg.enabled:
        return None
    from .tracing import instrument_aiohttp, start_tracing

    tracer = start_tracing(cfg, scope)
    if tracer is not None and (aiohttp_client or aiohttp_server):
        missing = instrument_aiohttp(tracer, client=aiohttp_client, server=aiohttp_server)
        if missing:
            log.info("not instrumented (packages missing): %s", ", ".join(missing))
    return tracer


async def flush_traces(tracer: Tracer | None, loop: asyncio.AbstractEventLoop) -> None:
    """Flush the spans still batched: Knative gives telemetry up to 10 s before exiting."""
    if tracer is None:
        return
    try:
        await asyncio.wait_for(loop.run_in_executor(None, tracer.shutdown), 10)
    except Exception:
        log.warning("could not flush traces within 10s")


def metrics_exporter(
    registry: Registry,
    names: Mapping[str, OTelName],
    obs: ObservabilityConfig,
    *,
    section: str,
    scope: str,
    who: Identity,
    environ: Mapping[str, str],
    loop: asyncio.AbstractEventLoop,
) -> MetricsExporter:
    """OTLP push of ``registry``'s metrics named in ``names``, as ``obs``'s ``section`` says
    (``requestMetrics``: the sidecar's request metrics; ``metrics``: a component's own)."""
    if section == "requestMetrics":
        protocol, endpoint = obs.request_metrics_protocol, obs.request_metrics_endpoint
        interval = obs.request_metrics_export_interval
    else:
        protocol, endpoint = obs.metrics_protocol, obs.metrics_endpoint
        interval = obs.metrics_export_interval
    try:
        from .otlpmetrics import MetricsExporter, exporter_settings

        url, period = exporter_settings(protocol, endpoint, environ, interval)
        return MetricsExporter(
            registry,
            names,
            protocol=protocol,
            endpoint=url,
            interval=period,
            scope=scope,
            resource=who.resource(environ),
            loop=loop,
        )
    except ImportError as e:  # the tracing extra brings opentelemetry-proto
        raise ConfigError(
            f"OBSERVABILITY_CONFIG: {section}.protocol {protocol} needs opentelemetry-proto "
            f"(pip install 'knative-dataplane[tracing]'): {e}"
        ) from None

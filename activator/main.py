"""``activator`` entry point: platform, stat sink, data port, metrics port, drain on SIGTERM.

Ports: the data path on ``ACTIVATOR_PORT`` (8012; kubelet probes are answered there too) and
Prometheus metrics on ``ACTIVATOR_METRICS_PORT`` (9090). Revisions and endpoints come from the
platform (``KND_PLATFORM``): ``knative`` (the default) watches Knative Revisions and their
private-service endpoints through the Kubernetes API (``platforms/kubernetes``; in-cluster, or
``KUBECONFIG``), ``static`` reads a JSON file (``ACTIVATOR_PLATFORM_FILE``; see
``platforms/static.py``). Stats go to the autoscaler over a websocket (``AUTOSCALER_URL``,
Knative's address by default). Readiness waits for the platform's caches to be synced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from dataplane.envconfig import ConfigError
from dataplane.h2c import H2Hub
from dataplane.logs import setup_logging
from dataplane.metrics import REVISION_LABELS, revision_labels
from dataplane.promtext import CONTENT_TYPE, Counter, Gauge, Histogram, Registry
from dataplane.proxy import HTTPServer, ServerConfig
from dataplane.request import Request
from platforms.base import Platform
from platforms.static import StaticPlatform

from .env import ActivatorEnv, parse_env
from .handler import Activator, server_config
from .statsink import StatSink

if TYPE_CHECKING:
    from dataplane.observability import ObservabilityConfig
    from dataplane.otlpmetrics import MetricsExporter
    from dataplane.tls import CertWatcher, ClientTLS
    from dataplane.tracing import Tracer, TracingConfig

__all__ = ["main", "run"]

log = logging.getLogger("activator")

_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_REV_LABELS = ("k8s_namespace_name", "kn_revision_name")


class ActivatorProcess:
    """The running activator: servers, platform, stat sink and the shutdown sequence."""

    def __init__(
        self,
        env: ActivatorEnv,
        loop: asyncio.AbstractEventLoop,
        tracing: TracingConfig | None = None,
        metrics: ObservabilityConfig | None = None,
    ) -> None:
        self.env = env
        self.loop = loop
        self.tracer: Tracer | None = None
        if tracing is not None and tracing.enabled:
            from dataplane.tracing import instrument_aiohttp, start_tracing

            self.tracer = start_tracing(tracing, "knative.dev/serving/pkg/activator")
            if self.tracer is not None:
                # The stats websocket to the autoscaler is the activator's aiohttp client.
                missing = instrument_aiohttp(self.tracer, client=True)
                if missing:
                    log.info("not instrumented (packages missing): %s", ", ".join(missing))
        self.stopped: asyncio.Future[None] = loop.create_future()
        self._shutdown_task: asyncio.Task[None] | None = None
        self.registry = Registry()
        self.reachable = Gauge(
            "kn_activator_stats_conn_reachable",
            "Whether the autoscaler is reachable over the stats websocket (1) or not (0)",
            ("peer",),
        )
        self.reachable.set(0, ("autoscaler",))
        self.conn_errors = Counter(
            "kn_activator_stats_conn_errors",
            "Disconnections of the stats websocket to the autoscaler",
            ("peer",),
        )
        self.sink = StatSink(
            env.autoscaler_url, on_connect=self._on_connect, on_disconnect=self._on_disconnect
        )
        self.waits = Histogram(
            "knd_activator_request_wait_seconds",
            "Time requests waited at the activator for capacity (cold starts included)",
            _WAIT_BUCKETS,
            _REV_LABELS,
        )
        self.activator = Activator(
            loop=loop,
            pod_name=env.pod_name,
            send_stats=self.sink.send,
            connected=self._ready,
            cluster_domain=env.cluster_domain,
            queue_depth=env.queue_depth,
            queue_wait=env.queue_wait,
            probe_frequency=env.probe_frequency,
            probe_timeout=env.probe_timeout,
            max_idle_per_host=env.max_idle_proxy_conns_per_host,
            wait_histogram=self.waits,
            tracer=self.tracer,
        )
        self.activator.unready_reason = self._unready_reason
        act = self.activator
        self.registry.add(
            Gauge(
                "kn_revision_request_queued",
                "Requests waiting in the activator's throttler",
                _REV_LABELS,
                fn=lambda: [(labels, float(q)) for labels, q, _ in act.gauges()],
            )
        )
        self.registry.add(
            Gauge(
                "kn_revision_request_active",
                "Requests the activator is proxying",
                _REV_LABELS,
                fn=lambda: [(labels, float(a)) for labels, _, a in act.gauges()],
            )
        )
        self.registry.add(
            Gauge(
                "kn_revision_request_concurrency",
                "Average concurrency per revision through this activator, as last reported",
                REVISION_LABELS,
                fn=self._concurrency,
            )
        )
        self.registry.add(self.reachable)
        self.registry.add(self.conn_errors)
        self.registry.add(self.waits)
        self.platform: Platform | None = None
        base = ServerConfig(max_header_bytes=env.max_header_bytes)
        self.server = HTTPServer(
            act,
            server_config(max_header_bytes=env.max_header_bytes),
            loop=loop,
        )
        self.metrics_server = HTTPServer(self._metrics, base, loop=loop)
        # h2c (gRPC): prior knowledge on the data port, and on ACTIVATOR_H2C_PORT (Knative: 8013)
        self.h2c = H2Hub(loop)
        self.h2c.enable(self.server)
        self.h2c_server: HTTPServer | None = None
        if env.h2c_port:
            self.h2c_server = HTTPServer(act, self.server.config, loop=loop)
            self.h2c.enable(self.h2c_server)
        self.tls_server: HTTPServer | None = None
        self._stop_checks: list[Callable[[], None]] = []
        self.metrics_exporter: MetricsExporter | None = None
        if metrics is not None and metrics.metrics_protocol in ("grpc", "http/protobuf"):
            self.metrics_exporter = _metrics_exporter(env, metrics, self.registry, loop)

    def _unready_reason(self) -> str:
        if not self.sink.connected:
            return "connection has not yet been established"  # Knative's text
        if self.platform is None:
            return "platform not started"
        return "platform caches not synced"

    def _ready(self) -> bool:
        """Kubelet probes pass once the autoscaler websocket is up and the platform's caches
        are synced (a platform without a ``synced`` notion is ready once started)."""
        p = self.platform
        return self.sink.connected and p is not None and bool(getattr(p, "synced", True))

    async def _make_platform(self) -> Platform:
        env = self.env
        if env.platform == "static":
            return StaticPlatform(env.platform_file)
        try:
            from platforms.kubernetes import KnativePlatform, connect
        except ImportError as e:
            raise ConfigError(
                f"KND_PLATFORM={env.platform} needs kubernetes-asyncio (pip install "
                f"'knative-dataplane[kubernetes]'): {e}"
            ) from None
        api = await connect(env.kubeconfig or None)
        if env.platform == "standalone":
            from platforms.kubernetes.standalone import StandalonePlatform

            return StandalonePlatform(
                api,
                namespace=env.watch_namespace or None,
                cluster_domain=env.cluster_domain,
                owns_api=True,
                api_wait=env.api_wait,
                pod_ip=env.pod_ip,
                activator_service=(env.system_namespace, env.activator_service),
            )
        if not env.pod_ip:
            log.warning("POD_IP is empty: subsetting across activators is off")
        return KnativePlatform(
            api,
            pod_ip=env.pod_ip,
            namespace=env.watch_namespace or None,
            owns_api=True,
            api_wait=env.api_wait,
        )

    def _concurrency(self) -> list[tuple[tuple[str, ...], float]]:
        # SPEC §2.9: service, configuration, revision and namespace; a revision the activator
        # no longer knows is skipped, as Knative skips the gauge when the lookup fails.
        act = self.activator
        out = []
        for key, v in sorted(act.reporter.concurrency().items()):
            rs = act.revisions.get(key)
            if rs is not None:
                out.append((revision_labels(key, rs.rev.annotations), v))
        return out

    def _on_connect(self) -> None:
        self.reachable.set(1, ("autoscaler",))

    def _on_disconnect(self) -> None:
        self.reachable.set(0, ("autoscaler",))
        self.conn_errors.inc(("autoscaler",))

    def _metrics(self, ex: Request) -> None:
        if ex.path == b"/metrics":
            ex.respond(200, self.registry.render(), b"Content-Type: " + CONTENT_TYPE + b"\r\n")
        else:
            ex.error(404, "404 page not found")

    async def start(self) -> None:
        env = self.env
        tls = self._load_tls() if env.internal_tls else None  # bad certificates: exit first
        if self.platform is None:  # (an embedding may have set one)
            self.platform = await self._make_platform()
        await self.platform.start(self.activator)
        await self.sink.start()
        self.activator.start()
        host = env.bind_host or None
        for server, port, name in (
            (self.server, env.port, "ACTIVATOR_PORT"),
            (self.metrics_server, env.metrics_port, "ACTIVATOR_METRICS_PORT"),
            *([(self.h2c_server, env.h2c_port, "ACTIVATOR_H2C_PORT")] if self.h2c_server else []),
        ):
            try:
                await server.start(host, port)
            except OSError as e:
                raise ConfigError(
                    f"{name}: cannot listen on {host or ''}:{port}: {e.strerror}"
                ) from None
        if tls is not None:
            await self._start_tls(host, *tls)
        if self.metrics_exporter is not None:
            self.metrics_exporter.start()

    def _load_tls(self) -> tuple[ClientTLS, CertWatcher]:
        from dataplane.tls import CertWatcher, ClientTLS, settings_from_env

        env = self.env
        d = env.cert_dir
        settings = settings_from_env(env.tls_env, "ACTIVATOR_")
        try:
            return (
                ClientTLS(f"{d}/ca.crt", env.queue_tls_port),
                CertWatcher(settings, f"{d}/tls.crt", f"{d}/tls.key"),
            )
        except ConfigError:
            raise
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"ACTIVATOR_CERT_DIR: KND_SYSTEM_INTERNAL_TLS is enabled but the "
                f"certificates in {d} (tls.crt, tls.key, ca.crt) cannot be loaded: {e}"
            ) from None

    async def _start_tls(self, host: str | None, client: ClientTLS, watcher: CertWatcher) -> None:
        """system-internal-tls: dial queue-proxies over TLS (verified against ca.crt, SAN
        kn-user-<namespace>) and serve TLS on ACTIVATOR_TLS_PORT beside plain HTTP, as
        Knative's activator does. Probes stay plain HTTP (Knative probes pods on 8012)."""
        from dataplane.tls import periodic

        env = self.env
        self.activator.upstream_tls = client
        server = HTTPServer(self.activator, self.server.config, loop=self.loop)
        self.h2c.enable(server)
        try:
            await server.start(host, env.tls_port, ssl=watcher.context)
        except OSError as e:
            raise ConfigError(
                f"ACTIVATOR_TLS_PORT: cannot listen on {host or ''}:{env.tls_port}: {e.strerror}"
            ) from None
        self.tls_server = server
        self._stop_checks = [
            periodic(self.loop, env.cert_reload, watcher.check),
            periodic(self.loop, env.cert_reload, client.check),
        ]
        log.info("system-internal-tls enabled", extra={"tls_port": env.tls_port})

    def on_signal(self, sig: int) -> None:
        if self._shutdown_task is None:
            self._shutdown_task = self.loop.create_task(self.shutdown(quick=sig == signal.SIGINT))

    async def shutdown(self, *, quick: bool = False) -> None:
        """Knative's sequence: fail health at once, keep serving through the drain period,
        then stop accepting and let in-flight requests finish."""
        act = self.activator
        act.sigterm = True
        if not quick:
            log.info(
                "received TERM signal: health checks fail now; serving for %.0fs more",
                self.env.drain_quiet_period,
            )
            await asyncio.sleep(self.env.drain_quiet_period)
        extra = [self.h2c_server.shutdown()] if self.h2c_server is not None else []
        if self.tls_server is not None:
            extra.append(self.tls_server.shutdown())
        for stop in self._stop_checks:
            stop()
        await asyncio.gather(
            self.h2c.shutdown(), self.server.shutdown(), self.metrics_server.shutdown(), *extra
        )
        act.stop()
        if self.metrics_exporter is not None:
            await self.metrics_exporter.stop()  # the last values, as the OTel SDK flushes
        if self.platform is not None:
            await self.platform.close()
        await self.sink.close()
        if self.tracer is not None:
            try:
                await asyncio.wait_for(self.loop.run_in_executor(None, self.tracer.shutdown), 10)
            except Exception:
                log.warning("could not flush traces within 10s")
        log.info("shutdown complete")
        if not self.stopped.done():
            self.stopped.set_result(None)


# Knative's OpenTelemetry instruments (pkg/activator) for our Prometheus metrics; the wait
# histogram is ours (Knative has no such metric) and keeps a knd name.
_REV_ATTRS = ("k8s.namespace.name", "kn.revision.name")
_OTEL_NAMES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "kn_revision_request_queued": ("kn.revision.request.queued", "{request}", _REV_ATTRS),
    "kn_revision_request_active": ("kn.revision.request.active", "{request}", _REV_ATTRS),
    "kn_revision_request_concurrency": (
        "kn.revision.request.concurrency",
        "{request}",
        ("k8s.namespace.name", "kn.service.name", "kn.configuration.name", "kn.revision.name"),
    ),
    "kn_activator_stats_conn_reachable": (
        "kn.activator.stats.conn.reachable",
        "{reachable}",
        ("peer",),
    ),
    "kn_activator_stats_conn_errors": ("kn.activator.stats.conn.errors", "{error}", ("peer",)),
    "knd_activator_request_wait_seconds": ("knd.activator.request.wait", "s", _REV_ATTRS),
}


def _metrics_exporter(
    env: ActivatorEnv,
    obs: ObservabilityConfig,
    registry: Registry,
    loop: asyncio.AbstractEventLoop,
) -> MetricsExporter:
    """OTLP push of the activator's metrics (``metrics.protocol`` grpc or http/protobuf);
    the Prometheus port stays."""
    try:
        from dataplane.otlpmetrics import MetricsExporter, OTelName, exporter_settings

        endpoint, interval = exporter_settings(
            obs.metrics_protocol, obs.metrics_endpoint, os.environ, obs.metrics_export_interval
        )
        return MetricsExporter(
            registry,
            {k: OTelName(n, unit, attrs) for k, (n, unit, attrs) in _OTEL_NAMES.items()},
            protocol=obs.metrics_protocol,
            endpoint=endpoint,
            interval=interval,
            scope="knative.dev/serving/pkg/activator",
            resource={
                "service.name": os.environ.get("OTEL_SERVICE_NAME", "") or "activator",
                "k8s.container.name": "activator",
                "k8s.namespace.name": env.system_namespace,
                "k8s.pod.name": env.pod_name,
                "service.instance.id": env.pod_name,
            },
            loop=loop,
        )
    except ImportError as e:
        raise ConfigError(
            f"OBSERVABILITY_CONFIG: metrics.protocol {obs.metrics_protocol} needs "
            f"opentelemetry-proto (pip install 'knative-dataplane[tracing]'): {e}"
        ) from None


def _tracing_config(
    env: ActivatorEnv, environ: Mapping[str, str], obs: ObservabilityConfig | None
) -> TracingConfig | None:
    """Tracing settings from ``OBSERVABILITY_CONFIG`` (parsed once, ``obs``) / ``OTEL_*``;
    None when none is set."""
    if obs is None and not environ.get("OTEL_TRACES_EXPORTER"):
        return None
    from dataplane.tracing import tracing_config

    return tracing_config(
        environ,
        protocol=obs.tracing_protocol if obs is not None else "",
        endpoint=obs.tracing_endpoint if obs is not None else "",
        rate=obs.tracing_sampling_rate if obs is not None else None,
        service_name="activator",
        resource={
            "k8s.container.name": "activator",
            "k8s.namespace.name": env.system_namespace,
            "k8s.pod.name": env.pod_name,
            "service.instance.id": env.pod_name,
        },
    )


async def _serve(
    env: ActivatorEnv,
    tracing: TracingConfig | None = None,
    obs: ObservabilityConfig | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    try:
        proc = ActivatorProcess(env, loop, tracing, obs)
    except ConfigError as e:
        print(f"activator: {e}", file=sys.stderr)
        return 1
    try:
        await proc.start()
    except ConfigError as e:
        print(f"activator: {e}", file=sys.stderr)
        await proc.sink.close()
        if proc.platform is not None:
            await proc.platform.close()
        return 1
    if proc.tracer is not None:
        proc.tracer.settle()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proc.on_signal, sig)
    log.info(
        "activator serving",
        extra={
            "port": env.port,
            "autoscaler": env.autoscaler_url,
            "pod": env.pod_name,
            "platform": env.platform,
        },
    )
    await proc.stopped
    return 0


def run(environ: Mapping[str, str]) -> int:
    try:
        env = parse_env(environ)
        raw = environ.get("OBSERVABILITY_CONFIG", "")
        obs = None
        if raw.strip():  # parsed once, here: tracing and metrics read the same config
            from dataplane.observability import parse_observability

            obs = parse_observability(raw)
        tracing = _tracing_config(env, environ, obs)
    except ConfigError as e:
        print(f"activator: {e}", file=sys.stderr)
        return 1
    setup_logging(
        env.logging_level,
        {"knative.dev/controller": "activator", "knative.dev/pod": env.pod_name},
        environ.get("SERVING_LOGGING_CONFIG", ""),
    )
    import uvloop

    return int(uvloop.run(_serve(env, tracing, obs)))


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()

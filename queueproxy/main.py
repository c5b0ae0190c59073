"""``queue-proxy`` entry point: read Knative's env contract, serve the four ports, drain on SIGTERM.

Ports (Knative SPEC §1.1): main ``QUEUE_SERVING_PORT`` (the data path), admin 8022
(``/wait-for-drain``), 9090 (``/metrics``: the autoscaling ``Stat`` protobuf) and, when
``OBSERVABILITY_CONFIG`` asks for Prometheus request metrics, 9091 (``/metrics`` text). The
admin and metrics ports can be moved with ``QUEUE_ADMIN_PORT``, ``QUEUE_METRICS_PORT`` and
``QUEUE_USER_METRICS_PORT`` so that several pods can share one host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dataplane.breaker import Breaker
from dataplane.envconfig import ConfigError
from dataplane.h2c import H2Hub
from dataplane.listen import handle_stop_signals, hold_stop_signals, listen
from dataplane.logs import setup_logging
from dataplane.probespec import ProbeConfigError, parse_readiness_probe
from dataplane.proxy import HTTPServer, ServerConfig
from dataplane.request import Request
from dataplane.statpb import Stat, encode_stat
from dataplane.stats import RequestStats
from dataplane.telemetry import (
    Identity,
    flush_traces,
    metrics_exporter,
    start_tracer,
    tracing_settings,
)
from dataplane.timeouts import TimeoutPolicy
from dataplane.upstream import UpstreamPool

from .drain import Drainer
from .env import Env, parse_env
from .handler import QueueProxyHandler, server_config
from .probes import auto_detect_attempt
from .readiness import ReadinessProber

if TYPE_CHECKING:
    from dataplane.otlpmetrics import MetricsExporter
    from dataplane.promtext import Histogram, Registry
    from dataplane.reqlog import RequestLogTemplate
    from dataplane.tls import CertWatcher
    from dataplane.tracing import Tracer, TracingConfig

__all__ = ["QueueProxy", "compose", "main"]

log = logging.getLogger("queueproxy")

#: The OpenTelemetry scope of the sidecar's spans and request metrics (Knative's package).
SCOPE = "knative.dev/serving/pkg/queue"
_PROTOBUF = b"Content-Type: application/protobuf\r\n"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def _not_found(ex: Request) -> None:
    ex.error(404, "404 page not found")


class QueueProxy:
    """The running sidecar: servers, stats reporter and shutdown sequence."""

    def __init__(
        self,
        env: Env,
        loop: asyncio.AbstractEventLoop,
        handler: QueueProxyHandler,
        *,
        stats: RequestStats,
        drainer: Drainer,
        pool: UpstreamPool,
        metrics: RequestMetrics | None = None,
        tracer: Tracer | None = None,
        main_sock: object | None = None,
    ) -> None:
        self.env = env
        self.main_sock = main_sock
        self.loop = loop
        self.started = time.monotonic()
        self.sigterm = False
        self.stopped = loop.create_future()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.handler = handler
        self.stats = stats
        self.stat_bytes = encode_stat(Stat(pod_name=env.pod))
        self.drainer = drainer
        self.pool = pool
        self.registry = None if metrics is None else metrics.registry
        self.metrics_exporter = None if metrics is None else metrics.exporter
        self.tracer = tracer
        base = {"max_header_bytes": env.max_header_bytes, "header_timeout": env.header_timeout}
        self.main_server = HTTPServer(
            self.handler,
            server_config(
                timeout_body=b"request timeout",
                forwarded_shim=True,
                tunnel_drain_timeout=env.hijack_drain_timeout,
                **base,
            ),
            loop=loop,
        )
        # HTTP/2 with prior knowledge on the same listener (Knative's h2c handler, SPEC §1.1);
        # the h2 library is imported by the first h2c connection only.
        self.h2c = H2Hub(loop)
        self.h2c.enable(self.main_server)
        self.admin_server = HTTPServer(self._admin, ServerConfig(**base), loop=loop)  # type: ignore[arg-type]
        self.metrics_server = HTTPServer(self._metrics, ServerConfig(**base), loop=loop)  # type: ignore[arg-type]
        self.user_metrics_server: HTTPServer | None = None
        if self.registry is not None and self.metrics_exporter is None:
            self.user_metrics_server = HTTPServer(
                self._user_metrics,
                ServerConfig(**base),  # type: ignore[arg-type]
                loop=loop,
            )
        self._report_handle: asyncio.TimerHandle | None = None
        # Internal TLS (Knative's system-internal-tls): the main handler on
        # QUEUE_SERVING_TLS_PORT when the certificate pair exists at start-up.
        self.tls_server: HTTPServer | None = None
        self.cert_watcher: CertWatcher | None = None
        self._stop_cert_checks: Callable[[], None] | None = None

    # -- servers ---------------------------------------------------------------------------
    async def start(self) -> None:
        env = self.env
        host = env.bind_host or None
        listeners: list[tuple[HTTPServer, int, str]] = [
            (self.main_server, env.serving_port, "QUEUE_SERVING_PORT"),
            (self.admin_server, env.admin_port, "QUEUE_ADMIN_PORT"),
            (self.metrics_server, env.metrics_port, "QUEUE_METRICS_PORT"),
        ]
        if self.user_metrics_server is not None:
            port = env.user_metrics_port
            ep = env.observability.request_metrics_endpoint
            if ep and "QUEUE_USER_METRICS_PORT" not in os.environ:
                try:
                    port = int(ep.rsplit(":", 1)[-1])
                except ValueError:
                    raise ConfigError(
                        f"OBSERVABILITY_CONFIG: requestMetrics.endpoint {ep!r} has no port"
                    ) from None
            listeners.append((self.user_metrics_server, port, "QUEUE_USER_METRICS_PORT"))
        for server, port, name in listeners:
            sock = self.main_sock if server is self.main_server else None
            await listen(server, host, port, name, sock=sock)
        await self._start_tls(host)
        if self.metrics_exporter is not None:
            self.metrics_exporter.start()
        self._report_handle = self.loop.call_later(1.0, self._report)

    async def _start_tls(self, host: str | None) -> None:
        """Serve TLS on QUEUE_SERVING_TLS_PORT if tls.crt and tls.key exist (Knative checks
        once, at start-up); plain HTTP stays on the main and admin ports."""
        env = self.env
        cert, key = f"{env.cert_dir}/tls.crt", f"{env.cert_dir}/tls.key"
        if not (os.path.exists(cert) and os.path.exists(key)):
            return
        from dataplane.tls import CertWatcher, periodic, settings_from_env

        settings = settings_from_env(env.tls_env, "QUEUE_PROXY_")
        try:
            self.cert_watcher = watcher = CertWatcher(settings, cert, key)
        except ConfigError:
            raise
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"QUEUE_CERT_DIR: cannot load the certificate pair in {env.cert_dir}: {e}"
            ) from None
        server = HTTPServer(self.handler, self.main_server.config, loop=self.loop)
        self.h2c.enable(server)  # h2 by ALPN, as Go's TLS server offers it
        await listen(server, host, env.tls_port, "QUEUE_SERVING_TLS_PORT", ssl=watcher.context)
        self.tls_server = server
        self._stop_cert_checks = periodic(self.loop, env.cert_reload, watcher.check)
        log.info("serving TLS", extra={"port": env.tls_port, "cert_dir": env.cert_dir})

    def _report(self) -> None:
        now = self.loop.time()
        r = self.stats.report(now)
        self.stat_bytes = encode_stat(
            Stat(
                pod_name=self.env.pod,
                average_concurrent_requests=r.average_concurrency,
                average_proxied_concurrent_requests=r.average_proxied_concurrency,
                request_count=r.request_count,
                proxied_request_count=r.proxied_request_count,
                process_uptime=time.monotonic() - self.started,
            )
        )
        self._report_handle = self.loop.call_later(1.0, self._report)

    # -- small servers ---------------------------------------------------------------------
    def _metrics(self, ex: Request) -> None:
        if ex.path == b"/metrics":
            ex.respond(200, self.stat_bytes, _PROTOBUF)
        else:
            _not_found(ex)

    def _user_metrics(self, ex: Request) -> None:
        if ex.path == b"/metrics" and self.registry is not None:
            from dataplane.promtext import CONTENT_TYPE

            ex.respond(200, self.registry.render(), b"Content-Type: " + CONTENT_TYPE + b"\r\n")
        else:
            _not_found(ex)

    def _admin(self, ex: Request) -> None:
        if ex.path != b"/wait-for-drain":
            _not_found(ex)
            return
        t = self.loop.create_task(self._wait_for_drain(ex))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _wait_for_drain(self, ex: Request) -> None:
        # The user container's preStop hook. If no SIGTERM reaches us within a second, the
        # preStop came from a liveness-probe restart of the user container: undo the drain.
        def check() -> None:
            if not self.sigterm:
                log.info("no SIGTERM within 1s of /wait-for-drain: resetting the drain")
                self.drainer.reset()

        handle = self.loop.call_later(1.0, check)
        try:
            await self.drainer.drain()
        finally:
            handle.cancel()
        ex.respond(200)

    # -- shutdown --------------------------------------------------------------------------
    def on_signal(self, sig: int) -> None:
        if self._shutdown_task is None:
            quick = sig == signal.SIGINT
            self._shutdown_task = self.loop.create_task(self.shutdown(quick=quick))

    async def shutdown(self, *, quick: bool = False) -> None:
        self.sigterm = True
        if quick:
            log.info("interrupted: shutting down without the drain quiet period")
            self.drainer.draining = True
        else:
            log.info(
                "received TERM signal, draining: probes now fail; waiting for %.0fs without "
                "requests before shutting down",
                self.env.drain_quiet_period,
            )
            await self.drainer.drain()
        servers = [self.main_server, self.admin_server, self.metrics_server]
        if self.user_metrics_server is not None:
            servers.append(self.user_metrics_server)
        if self.tls_server is not None:
            servers.append(self.tls_server)
        if self._stop_cert_checks is not None:
            self._stop_cert_checks()
        await asyncio.gather(self.h2c.shutdown(), *(s.shutdown() for s in servers))
        if self._report_handle is not None:
            self._report_handle.cancel()
        self.pool.close()
        if self.metrics_exporter is not None:
            await self.metrics_exporter.stop()  # the last values, as the OTel SDK flushes
        await flush_traces(self.tracer, self.loop)
        log.info("shutdown complete")
        if not self.stopped.done():
            self.stopped.set_result(None)


def compose(
    env: Env,
    loop: asyncio.AbstractEventLoop,
    main_sock: object | None = None,
    tracing: TracingConfig | None = None,
    who: Identity | None = None,
) -> QueueProxy:
    """The queue-proxy's composition root: the parts, handed to one another."""
    cc = env.container_concurrency
    breaker = Breaker(10 * cc, cc, cc) if cc >= 1 else None
    stats = RequestStats(loop.time())
    drainer = Drainer(env.drain_quiet_period, loop=loop)
    prober = _prober(env)
    pool = UpstreamPool(env.user_host, env.user_port, max_idle=cc if cc >= 1 else 1000, loop=loop)
    metrics = request_metrics(env, breaker, who or identity(env, os.environ), loop)
    tracer = start_tracer(tracing, SCOPE)
    handler = QueueProxyHandler(
        loop=loop,
        pool=pool,
        breaker=breaker,
        stats=stats,
        prober=prober,
        drainer=drainer,
        timeouts=TimeoutPolicy(env.revision_timeout, env.response_start_timeout, env.idle_timeout),
        duration=None if metrics is None else metrics.duration,
        request_log=_request_log(env),
        log_probes=env.observability.enable_probe_request_log,
        log_fields={
            "revision": env.revision,
            "namespace": env.namespace,
            "service": env.service,
            "configuration": env.configuration,
            "pod": env.pod,
            "pod_ip": env.pod_ip,
        },
        tracer=tracer,
    )
    return QueueProxy(
        env,
        loop,
        handler,
        stats=stats,
        drainer=drainer,
        pool=pool,
        metrics=metrics,
        tracer=tracer,
        main_sock=main_sock,
    )


def _prober(env: Env) -> ReadinessProber:
    """The user container's readiness probe (Knative's ``SERVING_READINESS_PROBE``)."""
    probes = parse_readiness_probe(
        env.readiness_probe,
        multi_container=env.multi_container_probes,
        user_port=env.user_port,
    )
    return ReadinessProber(
        probes,
        log=lambda m: log.warning(m),
        attempt=auto_detect_attempt if env.http2_auto_detection else None,
    )


def _request_log(env: Env) -> RequestLogTemplate | None:
    obs = env.observability
    if not obs.enable_request_log:
        return None
    from dataplane.reqlog import RequestLogTemplate, TemplateError

    try:
        return RequestLogTemplate(obs.request_log_template)
    except TemplateError as e:
        log.error("request log disabled: invalid requestLogTemplate: %s", e)
        return None


@dataclass(slots=True)
class RequestMetrics:
    """The request metrics, when ``requestMetrics.protocol`` asks for them: scraped on
    ``QUEUE_USER_METRICS_PORT`` (prometheus) or pushed by ``exporter`` (OTLP)."""

    registry: Registry
    duration: Histogram
    exporter: MetricsExporter | None


def request_metrics(
    env: Env, breaker: Breaker | None, who: Identity, loop: asyncio.AbstractEventLoop
) -> RequestMetrics | None:
    """Knative's request metrics (pkg/queue/request_metric.go); None when off (then
    :mod:`dataplane.promtext` is not imported)."""
    protocol = env.observability.request_metrics_protocol
    if protocol not in ("prometheus", "grpc", "http/protobuf"):
        return None
    from dataplane.promtext import Gauge, Histogram, Registry

    registry = Registry()
    duration = Histogram(
        "kn_serving_invocation_duration_seconds",
        "The duration of the invocation of the user container, as seen by the queue-proxy",
        _DURATION_BUCKETS,
        ("http_response_status_code",),
    )
    registry.add(duration)
    if breaker is not None:
        b = breaker
        registry.add(
            Gauge(
                "kn_serving_queue_depth",
                "Requests admitted by the breaker: executing plus waiting",
                fn=lambda: [((), float(b.in_flight))],
            )
        )
    exporter = None
    if protocol != "prometheus":
        exporter = _metrics_exporter(env, registry, who, loop)
    return RequestMetrics(registry, duration, exporter)


# Knative's OpenTelemetry instruments (pkg/queue/request_metric.go) for our Prometheus metrics.
_OTEL_NAMES = {
    "kn_serving_invocation_duration_seconds": (
        "kn.serving.invocation.duration",
        "s",
        ("http.response.status_code",),
    ),
    "kn_serving_queue_depth": ("kn.serving.queue.depth", "{request}", ()),
}


def identity(env: Env, environ: Mapping[str, str]) -> Identity:
    """The sidecar's OpenTelemetry resource, for its traces and its request metrics."""
    pod = environ.get("POD_NAME") or environ.get("HOSTNAME") or env.pod
    return Identity(
        env.service or env.configuration or env.revision or pod,
        {
            "k8s.container.name": "queue-proxy",
            "k8s.namespace.name": env.namespace,
            "k8s.pod.name": pod,
            "service.instance.id": pod,
            "kn.service.name": env.service,
            "kn.configuration.name": env.configuration,
            "kn.revision.name": env.revision,
        },
    )


def _metrics_exporter(
    env: Env, registry: Registry, who: Identity, loop: asyncio.AbstractEventLoop
) -> MetricsExporter:
    """OTLP push of the request metrics (requestMetrics.protocol grpc or http/protobuf)."""
    from dataplane.otlpmetrics import OTelName

    names = {
        k: OTelName(n, unit, attrs, frozenset(("http.response.status_code",)))
        for k, (n, unit, attrs) in _OTEL_NAMES.items()
    }
    return metrics_exporter(
        registry,
        names,
        env.observability,
        section="requestMetrics",
        scope=SCOPE,
        who=who,
        environ=os.environ,
        loop=loop,
    )


async def _serve(
    env: Env,
    main_sock: object | None,
    tracing: TracingConfig | None = None,
    who: Identity | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    early = hold_stop_signals(loop)  # (handled once the servers have started)
    try:
        qp = compose(env, loop, main_sock, tracing, who)
        await qp.start()
    except (ConfigError, ProbeConfigError) as e:
        print(f"queue-proxy: {e}", file=sys.stderr)
        return 1
    if qp.tracer is not None:
        qp.tracer.settle()
    handle_stop_signals(loop, qp.on_signal, early)
    log.info(
        "queue-proxy serving",
        extra={
            "port": env.serving_port,
            "user_port": env.user_port,
            "container_concurrency": env.container_concurrency,
        },
    )
    await qp.stopped
    return 0


def run(environ: Mapping[str, str], main_sock: object | None = None) -> int:
    try:
        env = parse_env(environ)
        who = identity(env, environ)
        tracing = tracing_settings(env.observability, environ, who)
    except ConfigError as e:
        print(f"queue-proxy: {e}", file=sys.stderr)
        return 1
    setup_logging(
        env.logging_level,
        {"knative.dev/key": f"{env.namespace}/{env.revision}", "knative.dev/pod": env.pod},
        env.logging_config,
    )
    try:
        import uvloop

        return int(uvloop.run(_serve(env, main_sock, tracing, who)))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_serve(env, main_sock, tracing, who))


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()

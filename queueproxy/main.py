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
from typing import TYPE_CHECKING

from dataplane.breaker import Breaker
from dataplane.envconfig import ConfigError
from dataplane.h2c import H2Hub
from dataplane.logs import setup_logging
from dataplane.probespec import ProbeConfigError, parse_readiness_probe
from dataplane.proxy import HTTPServer, ServerConfig
from dataplane.request import Request
from dataplane.statpb import Stat, encode_stat
from dataplane.stats import RequestStats
from dataplane.timeouts import TimeoutPolicy
from dataplane.upstream import UpstreamPool

from .drain import Drainer
from .env import Env, parse_env
from .handler import QueueProxyHandler, server_config
from .probes import auto_detect_attempt
from .readiness import ReadinessProber

if TYPE_CHECKING:
    from dataplane.otlpmetrics import MetricsExporter
    from dataplane.promtext import Registry
    from dataplane.tls import CertWatcher
    from dataplane.tracing import Tracer, TracingConfig

__all__ = ["QueueProxy", "main"]

log = logging.getLogger("queueproxy")

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
        main_sock: object | None = None,
        tracing: TracingConfig | None = None,
    ) -> None:
        self.env = env
        self.main_sock = main_sock
        self.loop = loop
        self.started = time.monotonic()
        self.sigterm = False
        self.stopped = loop.create_future()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        cc = env.container_concurrency
        self.breaker = Breaker(10 * cc, cc, cc) if cc >= 1 else None
        self.stats = RequestStats(loop.time())
        self.stat_bytes = encode_stat(Stat(pod_name=env.pod))
        self.drainer = Drainer(env.drain_quiet_period, loop=loop)
        probes = parse_readiness_probe(
            env.readiness_probe,
            multi_container=env.multi_container_probes,
            user_port=env.user_port,
        )
        self.prober = ReadinessProber(
            probes,
            log=lambda m: log.warning(m),
            attempt=auto_detect_attempt if env.http2_auto_detection else None,
        )
        self.pool = UpstreamPool(
            env.user_host, env.user_port, max_idle=cc if cc >= 1 else 1000, loop=loop
        )
        obs = env.observability
        self.registry = None
        duration = None
        self.metrics_exporter: MetricsExporter | None = None
        if obs.request_metrics_protocol in ("prometheus", "grpc", "http/protobuf"):
            from dataplane.promtext import Gauge, Histogram, Registry

            self.registry = Registry()
            duration = Histogram(
                "kn_serving_invocation_duration_seconds",
                "The duration of the invocation of the user container, as seen by the queue-proxy",
                _DURATION_BUCKETS,
                ("http_response_status_code",),
            )
            self.registry.add(duration)
            b = self.breaker
            if b is not None:
                self.registry.add(
                    Gauge(
                        "kn_serving_queue_depth",
                        "Requests admitted by the breaker: executing plus waiting",
                        fn=lambda: [((), float(b.in_flight))],
                    )
                )
            if obs.request_metrics_protocol != "prometheus":
                self.metrics_exporter = _metrics_exporter(env, self.registry, loop)
        self.tracer: Tracer | None = None
        if tracing is not None and tracing.enabled:
            from dataplane.tracing import start_tracing

            self.tracer = start_tracing(tracing, "knative.dev/serving/pkg/queue")
        request_log = None
        if obs.enable_request_log:
            from dataplane.reqlog import RequestLogTemplate, TemplateError

            try:
                request_log = RequestLogTemplate(obs.request_log_template)
            except TemplateError as e:
                log.error("request log disabled: invalid requestLogTemplate: %s", e)
        self.handler = QueueProxyHandler(
            loop=loop,
            pool=self.pool,
            breaker=self.breaker,
            stats=self.stats,
            prober=self.prober,
            drainer=self.drainer,
            timeouts=TimeoutPolicy(
                env.revision_timeout, env.response_start_timeout, env.idle_timeout
            ),
            duration=duration,
            request_log=request_log,
            log_probes=obs.enable_probe_request_log,
            log_fields={
                "revision": env.revision,
                "namespace": env.namespace,
                "service": env.service,
                "configuration": env.configuration,
                "pod": env.pod,
                "pod_ip": env.pod_ip,
            },
            tracer=self.tracer,
        )
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
            try:
                if server is self.main_server and self.main_sock is not None:
                    await server.start(None, port, sock=self.main_sock)
                    continue
                await server.start(host, port)
            except OSError as e:
                raise ConfigError(
                    f"{name}: cannot listen on {host or ''}:{port}: {e.strerror or e}"
                ) from None
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
        try:
            await server.start(host, env.tls_port, ssl=watcher.context)
        except OSError as e:
            raise ConfigError(
                f"QUEUE_SERVING_TLS_PORT: cannot listen on {host or ''}:{env.tls_port}: "
                f"{e.strerror or e}"
            ) from None
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
        if self.tracer is not None:
            # Knative flushes telemetry for up to 10 s before exiting.
            try:
                await asyncio.wait_for(self.loop.run_in_executor(None, self.tracer.shutdown), 10)
            except Exception:
                log.warning("could not flush traces within 10s")
        log.info("shutdown complete")
        if not self.stopped.done():
            self.stopped.set_result(None)


# Knative's OpenTelemetry instruments (pkg/queue/request_metric.go) for our Prometheus metrics.
_OTEL_NAMES = {
    "kn_serving_invocation_duration_seconds": (
        "kn.serving.invocation.duration",
        "s",
        ("http.response.status_code",),
    ),
    "kn_serving_queue_depth": ("kn.serving.queue.depth", "{request}", ()),
}


def _resource(env: Env, environ: Mapping[str, str]) -> dict[str, str]:
    pod = environ.get("POD_NAME") or environ.get("HOSTNAME") or env.pod
    return {
        "service.name": environ.get("OTEL_SERVICE_NAME", "")
        or env.service
        or env.configuration
        or env.revision
        or pod,
        "k8s.container.name": "queue-proxy",
        "k8s.namespace.name": env.namespace,
        "k8s.pod.name": pod,
        "service.instance.id": pod,
        "kn.service.name": env.service,
        "kn.configuration.name": env.configuration,
        "kn.revision.name": env.revision,
    }


def _metrics_exporter(
    env: Env, registry: Registry, loop: asyncio.AbstractEventLoop
) -> MetricsExporter:
    """OTLP push of the request metrics (requestMetrics.protocol grpc or http/protobuf)."""
    try:
        from dataplane.otlpmetrics import MetricsExporter, OTelName, exporter_settings
    except ImportError as e:  # pragma: no cover - the tracing extra brings opentelemetry-proto
        raise ConfigError(
            "OBSERVABILITY_CONFIG: requestMetrics.protocol "
            f"{env.observability.request_metrics_protocol} needs opentelemetry-proto "
            f"(pip install 'knative-dataplane[tracing]'): {e}"
        ) from None
    obs = env.observability
    endpoint, interval = exporter_settings(
        obs.request_metrics_protocol,
        obs.request_metrics_endpoint,
        os.environ,
        obs.request_metrics_export_interval,
    )
    names = {
        k: OTelName(n, unit, attrs, frozenset(("http.response.status_code",)))
        for k, (n, unit, attrs) in _OTEL_NAMES.items()
    }
    try:
        return MetricsExporter(
            registry,
            names,
            protocol=obs.request_metrics_protocol,
            endpoint=endpoint,
            interval=interval,
            scope="knative.dev/serving/pkg/queue",
            resource=_resource(env, os.environ),
            loop=loop,
        )
    except ImportError as e:
        raise ConfigError(
            f"OBSERVABILITY_CONFIG: requestMetrics.protocol {obs.request_metrics_protocol} "
            f"needs opentelemetry-proto (pip install 'knative-dataplane[tracing]'): {e}"
        ) from None


def _tracing_config(env: Env, environ: Mapping[str, str]) -> TracingConfig | None:
    """Tracing settings, or None when nothing asks for tracing (the module is not imported)."""
    obs = env.observability
    if obs.tracing_protocol in ("", "none") and not environ.get("OTEL_TRACES_EXPORTER"):
        return None
    from dataplane.tracing import tracing_config

    pod = environ.get("POD_NAME") or environ.get("HOSTNAME") or env.pod
    return tracing_config(
        environ,
        protocol=obs.tracing_protocol,
        endpoint=obs.tracing_endpoint,
        rate=obs.tracing_sampling_rate,
        service_name=env.service or env.configuration or env.revision or pod,
        resource={
            "k8s.container.name": "queue-proxy",
            "k8s.namespace.name": env.namespace,
            "k8s.pod.name": pod,
            "service.instance.id": pod,
            "kn.service.name": env.service,
            "kn.configuration.name": env.configuration,
            "kn.revision.name": env.revision,
        },
    )


async def _serve(env: Env, main_sock: object | None, tracing: TracingConfig | None = None) -> int:
    loop = asyncio.get_running_loop()
    try:
        qp = QueueProxy(env, loop, main_sock, tracing)
        await qp.start()
    except (ConfigError, ProbeConfigError) as e:
        print(f"queue-proxy: {e}", file=sys.stderr)
        return 1
    if qp.tracer is not None:
        qp.tracer.settle()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qp.on_signal, sig)
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
        tracing = _tracing_config(env, environ)
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

        return int(uvloop.run(_serve(env, main_sock, tracing)))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_serve(env, main_sock, tracing))


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()

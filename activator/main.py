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
from dataplane.listen import handle_stop_signals, hold_stop_signals, listen
from dataplane.logs import setup_logging
from dataplane.metrics import (
    ACTIVATOR_OTEL_NAMES,
    stats_connection_metrics,
)
from dataplane.promtext import CONTENT_TYPE, Registry
from dataplane.proxy import HTTPServer, ServerConfig
from dataplane.request import Request
from dataplane.telemetry import (
    Identity,
    flush_traces,
    metrics_exporter,
    observability,
    start_tracer,
    tracing_settings,
)
from platforms.base import Platform
from platforms.static import StaticPlatform

from .compose import SCOPE, data_server, new_activator
from .env import ActivatorEnv, parse_env
from .handler import Activator
from .statsink import StatSink

if TYPE_CHECKING:
    from dataplane.observability import ObservabilityConfig
    from dataplane.otlpmetrics import MetricsExporter
    from dataplane.tls import CertWatcher, ClientTLS
    from dataplane.tracing import Tracer, TracingConfig

__all__ = ["main", "run"]

log = logging.getLogger("activator")


class Readiness:
    """Kubelet probes pass once the autoscaler websocket is up and the platform's caches are
    synced (a platform without a ``synced`` notion is ready once started)."""

    __slots__ = ("platform", "sink")

    def __init__(self, sink: StatSink) -> None:
        self.sink = sink
        self.platform: Platform | None = None

    def ready(self) -> bool:
        p = self.platform
        return self.sink.connected and p is not None and bool(getattr(p, "synced", True))

    def reason(self) -> str:
        if not self.sink.connected:
            return "connection has not yet been established"  # Knative's text
        if self.platform is None:
            return "platform not started"
        return "platform caches not synced"


class ActivatorProcess:
    """The running activator: servers, platform, stat sink and the shutdown sequence."""

    def __init__(
        self,
        env: ActivatorEnv,
        loop: asyncio.AbstractEventLoop,
        activator: Activator,
        *,
        readiness: Readiness,
        registry: Registry,
        tracer: Tracer | None = None,
        metrics_exporter: MetricsExporter | None = None,
    ) -> None:
        self.env = env
        self.loop = loop
        self.activator = act = activator
        self.readiness = readiness
        self.sink = readiness.sink
        self.registry = registry
        self.tracer = tracer
        self.metrics_exporter = metrics_exporter
        self.stopped: asyncio.Future[None] = loop.create_future()
        self._shutdown_task: asyncio.Task[None] | None = None
        # h2c (gRPC): prior knowledge on the data port, and on ACTIVATOR_H2C_PORT (Knative: 8013)
        self.h2c = H2Hub(loop)
        self.server = data_server(act, env, loop, self.h2c)
        base = ServerConfig(max_header_bytes=env.max_header_bytes)
        self.metrics_server = HTTPServer(self._metrics, base, loop=loop)
        self.h2c_server: HTTPServer | None = None
        if env.h2c_port:
            self.h2c_server = HTTPServer(act, self.server.config, loop=loop)
            self.h2c.enable(self.h2c_server)
        self.tls_server: HTTPServer | None = None
        self._stop_checks: list[Callable[[], None]] = []

    @property
    def platform(self) -> Platform | None:
        return self.readiness.platform

    @platform.setter
    def platform(self, platform: Platform | None) -> None:
        self.readiness.platform = platform

    def _metrics(self, ex: Request) -> None:
        if ex.path == b"/metrics":
            ex.respond(200, self.registry.render(), b"Content-Type: " + CONTENT_TYPE + b"\r\n")
        else:
            ex.error(404, "404 page not found")

    async def start(self) -> None:
        env = self.env
        tls = self._load_tls() if env.internal_tls else None  # bad certificates: exit first
        if self.platform is None:  # (an embedding may have set one)
            self.platform = await make_platform(env)
        await self.platform.start(self.activator.registry)
        await self.sink.start()
        self.activator.start()
        host = env.bind_host or None
        for server, port, name in (
            (self.server, env.port, "ACTIVATOR_PORT"),
            (self.metrics_server, env.metrics_port, "ACTIVATOR_METRICS_PORT"),
            *([(self.h2c_server, env.h2c_port, "ACTIVATOR_H2C_PORT")] if self.h2c_server else []),
        ):
            await listen(server, host, port, name)
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
        await listen(server, host, env.tls_port, "ACTIVATOR_TLS_PORT", ssl=watcher.context)
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
        await flush_traces(self.tracer, self.loop)
        log.info("shutdown complete")
        if not self.stopped.done():
            self.stopped.set_result(None)


def compose(
    env: ActivatorEnv,
    loop: asyncio.AbstractEventLoop,
    tracing: TracingConfig | None = None,
    obs: ObservabilityConfig | None = None,
) -> ActivatorProcess:
    """The activator binary's composition root: the parts, handed to one another."""
    # The stats websocket to the autoscaler is the activator's aiohttp client: instrumented
    # before the sink exists.
    tracer = start_tracer(tracing, SCOPE, aiohttp_client=True)
    registry = Registry()
    readiness = Readiness(_stat_sink(env, registry))
    act = new_activator(
        env,
        loop,
        send_stats=readiness.sink.send,
        connected=readiness.ready,
        tracer=tracer,
        registry=registry,
    )
    act.unready_reason = readiness.reason
    exporter = None
    if obs is not None and obs.metrics_protocol in ("grpc", "http/protobuf"):
        exporter = _metrics_exporter(env, obs, registry, loop)
    return ActivatorProcess(
        env,
        loop,
        act,
        readiness=readiness,
        registry=registry,
        tracer=tracer,
        metrics_exporter=exporter,
    )


def _stat_sink(env: ActivatorEnv, registry: Registry) -> StatSink:
    """The stats websocket to the autoscaler; whether it is up, and its disconnections, are
    metrics in ``registry``."""
    reachable, errors = stats_connection_metrics()
    registry.add(reachable)
    registry.add(errors)
    peer = ("autoscaler",)

    def down() -> None:
        reachable.set(0, peer)
        errors.inc(peer)

    return StatSink(
        env.autoscaler_url, on_connect=lambda: reachable.set(1, peer), on_disconnect=down
    )


async def make_platform(env: ActivatorEnv) -> Platform:
    """The platform ``KND_PLATFORM`` names (kubernetes-asyncio is imported only for the
    Kubernetes ones)."""
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


def identity(env: ActivatorEnv) -> Identity:
    """The activator's OpenTelemetry resource, for its traces and its metrics."""
    return Identity(
        "activator",
        {
            "k8s.container.name": "activator",
            "k8s.namespace.name": env.system_namespace,
            "k8s.pod.name": env.pod_name,
            "service.instance.id": env.pod_name,
        },
    )


def _metrics_exporter(
    env: ActivatorEnv,
    obs: ObservabilityConfig,
    registry: Registry,
    loop: asyncio.AbstractEventLoop,
) -> MetricsExporter:
    """OTLP push of the activator's metrics (``metrics.protocol`` grpc or http/protobuf);
    the Prometheus port stays."""
    return metrics_exporter(
        registry,
        ACTIVATOR_OTEL_NAMES,
        obs,
        section="metrics",
        scope=SCOPE,
        who=identity(env),
        environ=os.environ,
        loop=loop,
    )


async def _serve(
    env: ActivatorEnv,
    tracing: TracingConfig | None = None,
    obs: ObservabilityConfig | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    early = hold_stop_signals(loop)  # (handled once the servers have started)
    try:
        proc = compose(env, loop, tracing, obs)
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
    handle_stop_signals(loop, proc.on_signal, early)
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
        obs = observability(environ)  # parsed once, here: tracing and metrics read it
        tracing = tracing_settings(obs, environ, identity(env))
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

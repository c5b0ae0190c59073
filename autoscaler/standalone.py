"""``knd-autoscaler``: the KPA for plain Kubernetes (standalone mode), one active replica.

It watches Deployments opted in with ``knd.dev/enabled: "true"`` and their Services'
EndpointSlices (:mod:`platforms.kubernetes.standalone`), takes the activators' stats over a
websocket (``:8080``, Knative's protocol), scrapes the pods' queue-proxies every second, decides
every 2 s (at once on demand at zero) and patches ``deployments/scale``. Replicas elect one
leader through a Lease; only the leader scrapes, accepts stat websockets and scales, the others
wait warm (informers synced) and take over when the Lease expires or is released.

Environment (every bad value ends the process with one message naming the variable):

- ``KND_NAMESPACE`` (or the activator's ``KND_WATCH_NAMESPACE``): watch one namespace (empty:
  all namespaces);
- ``POD_NAME``: the Lease holder identity (default: the host name);
- ``POD_NAMESPACE``: where the Lease lives (default: the service account's namespace, else
  ``knd-system``); ``KND_LEASE_NAME`` (``knd-autoscaler``), ``KND_LEASE_DURATION`` (15s),
  ``KND_LEASE_RENEW_DEADLINE`` (10s), ``KND_LEASE_RETRY_PERIOD`` (2s);
- ``KND_STAT_PORT`` (8080), ``KND_METRICS_PORT`` (9090: ``/metrics``, ``/healthz``,
  ``/readyz``), ``KND_BIND_ADDRESS`` (all interfaces);
- ``CLUSTER_DOMAIN`` (``cluster.local``), ``KUBECONFIG`` (default: in-cluster),
  ``KND_KUBE_API_WAIT_SECONDS`` (how long to wait for the API server at start, 60),
  ``KND_LOG_LEVEL``;
- Knative's ``config-autoscaler`` keys: files in ``KND_CONFIG_DIR`` (a mounted ConfigMap, one
  file per key), overridden by ``KND_AUTOSCALER_<KEY>`` variables
  (``KND_AUTOSCALER_STABLE_WINDOW=30s`` sets ``stable-window``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

from dataplane.envconfig import ConfigError, env_duration, env_float, env_int
from dataplane.promtext import CONTENT_TYPE, Counter, Gauge, Registry
from platforms.base import Revision, RevisionKey

from .compose import AutoscalerFeed, new_autoscaler
from .config import AutoscalerConfig
from .multiscaler import RevisionScaler, ScaleEvent
from .scaler import apply_bounds
from .scraper import Scraper
from .statserver import StatServer

if TYPE_CHECKING:  # kubernetes-asyncio is imported when the process starts
    from dataplane.tracing import Tracer
    from platforms.kubernetes.api import KubeAPI
    from platforms.kubernetes.lease import LeaderElector
    from platforms.kubernetes.standalone import App

__all__ = ["AutoscalerEnv", "AutoscalerProcess", "main", "parse_env", "read_config", "run"]

log = logging.getLogger("autoscaler")

CONFIG_PREFIX = "KND_AUTOSCALER_"
_PORT = {"minimum": 0, "maximum": 65535}


@dataclass(slots=True)
class AutoscalerEnv:
    namespace: str = ""
    pod_name: str = ""
    lease_namespace: str = "knd-system"
    lease_name: str = "knd-autoscaler"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    stat_port: int = 8080
    metrics_port: int = 9090
    bind_host: str = ""
    cluster_domain: str = "cluster.local"
    kubeconfig: str = ""
    api_wait: float = 60.0
    log_level: str = ""
    config: AutoscalerConfig = field(default_factory=AutoscalerConfig)


def _dns_label(env: Mapping[str, str], name: str, value: str) -> str:
    ok = len(value) <= 63 and all(c.isalnum() or c in "-." for c in value)
    if not ok or value != value.lower() or value.startswith("-") or value.endswith("-"):
        raise ConfigError(f"{name}: {value!r} is not a valid Kubernetes name")
    return value


def read_config(env: Mapping[str, str]) -> AutoscalerConfig:
    """``config-autoscaler`` from ``KND_CONFIG_DIR`` files and ``KND_AUTOSCALER_*`` variables;
    a bad value raises ConfigError naming the variable (or file) and the key."""
    known = {f.name.replace("_", "-") for f in fields(AutoscalerConfig)}
    data: dict[str, str] = {}
    source: dict[str, str] = {}
    directory = env.get("KND_CONFIG_DIR", "").strip()
    if directory:
        if not os.path.isdir(directory):
            raise ConfigError(f"KND_CONFIG_DIR: {directory}: not a directory")
        for entry in sorted(os.listdir(directory)):
            path = os.path.join(directory, entry)
            # ConfigMap volumes hold ..data and ..<timestamp> links; _example is Knative's doc
            if entry.startswith((".", "_")) or not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    data[entry] = f.read().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"KND_CONFIG_DIR: cannot read {path}: {e}") from None
            source[entry] = f"KND_CONFIG_DIR ({path})"
    for name, value in env.items():
        if not name.startswith(CONFIG_PREFIX):
            continue
        key = name[len(CONFIG_PREFIX) :].lower().replace("_", "-")
        if key not in known:
            raise ConfigError(
                f"{name}: {key!r} is not a config-autoscaler key "
                f"(known: {', '.join(sorted(known))})"
            )
        data[key] = value
        source[key] = name
    try:
        return AutoscalerConfig.from_map(data)
    except ConfigError as e:
        msg = str(e)
        where = source.get(msg.split(":", 1)[0].strip())
        raise ConfigError(f"{where}: {msg}" if where else msg) from None


def _sa_namespace(env: Mapping[str, str]) -> str:
    """The pod's namespace from its service account (``KND_SERVICE_ACCOUNT_DIR``, as the
    in-cluster client reads its token and CA), or ""."""
    from platforms.kubernetes.config import SERVICE_ACCOUNT_DIR

    sa_dir = env.get("KND_SERVICE_ACCOUNT_DIR", "").strip() or SERVICE_ACCOUNT_DIR
    try:
        with open(os.path.join(sa_dir, "namespace"), encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def parse_env(env: Mapping[str, str]) -> AutoscalerEnv:
    """Read the environment; raises ConfigError naming the first bad variable."""
    namespace = (env.get("KND_NAMESPACE") or env.get("KND_WATCH_NAMESPACE") or "").strip()
    if namespace:
        _dns_label(env, "KND_NAMESPACE", namespace)
    pod_name = env.get("POD_NAME")
    if pod_name is not None and not pod_name.strip():
        raise ConfigError("POD_NAME: must not be empty (it is this replica's Lease identity)")
    lease_ns = env.get("POD_NAMESPACE", "").strip() or _sa_namespace(env) or "knd-system"
    e = AutoscalerEnv(
        namespace=namespace,
        pod_name=(pod_name or socket.gethostname()).strip(),
        lease_namespace=_dns_label(env, "POD_NAMESPACE", lease_ns),
        lease_name=_dns_label(
            env, "KND_LEASE_NAME", env.get("KND_LEASE_NAME", "").strip() or "knd-autoscaler"
        ),
        lease_duration=env_duration(env, "KND_LEASE_DURATION", 15.0),
        renew_deadline=env_duration(env, "KND_LEASE_RENEW_DEADLINE", 10.0),
        retry_period=env_duration(env, "KND_LEASE_RETRY_PERIOD", 2.0),
        stat_port=env_int(env, "KND_STAT_PORT", 8080, **_PORT),
        metrics_port=env_int(env, "KND_METRICS_PORT", 9090, **_PORT),
        bind_host=env.get("KND_BIND_ADDRESS", "").strip(),
        cluster_domain=env.get("CLUSTER_DOMAIN", "").strip() or "cluster.local",
        kubeconfig=env.get("KUBECONFIG", "").strip(),
        api_wait=env_float(env, "KND_KUBE_API_WAIT_SECONDS", 60.0, minimum=0),
        log_level=env.get("KND_LOG_LEVEL", ""),
    )
    if e.retry_period <= 0:
        raise ConfigError(f"KND_LEASE_RETRY_PERIOD: {e.retry_period:g}s must be positive")
    if e.renew_deadline <= e.retry_period:
        raise ConfigError(
            f"KND_LEASE_RENEW_DEADLINE: {e.renew_deadline:g}s must be longer than "
            f"KND_LEASE_RETRY_PERIOD ({e.retry_period:g}s)"
        )
    if e.lease_duration <= e.renew_deadline:
        raise ConfigError(
            f"KND_LEASE_DURATION: {e.lease_duration:g}s must be longer than "
            f"KND_LEASE_RENEW_DEADLINE ({e.renew_deadline:g}s)"
        )
    e.config = read_config(env)
    return e


class LeaderStatServer(StatServer):
    """The stat websocket, open only on the leader: the standby answers 503 to upgrades (the
    activators' sinks redial, and land on the leader), and drops its sockets when it stops
    leading."""

    def __init__(self, on_stats: Any, accepting: Callable[[], bool]) -> None:
        super().__init__(on_stats)
        self.accepting = accepting

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket" and not self.accepting():
            return web.Response(status=503, text="not the leading autoscaler\n")
        return await super()._handle(request)

    async def drop_connections(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"Restarting")


class AutoscalerProcess:
    """Platform, autoscaler, scraper, lease, stat and metrics servers, wired together."""

    def __init__(
        self,
        env: AutoscalerEnv,
        api: KubeAPI,
        loop: asyncio.AbstractEventLoop,
        *,
        informer_options: Mapping[str, Any] | None = None,
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        from platforms.kubernetes.scale import DeploymentScaler, EventRecorder
        from platforms.kubernetes.standalone import StandalonePlatform

        self.env = env
        self.api = api
        self.loop = loop
        self.platform = StandalonePlatform(
            api,
            namespace=env.namespace or None,
            cluster_domain=env.cluster_domain,
            api_wait=env.api_wait,
            informer_options=informer_options,
            on_app=self._on_app,
        )
        self.registry = Registry()
        self.autoscaler = new_autoscaler(
            loop,
            env.config,
            self.platform,
            scale=self._scale,
            on_scale=self._on_scale,
            on_error=self._on_error,
            registry=self.registry,
        )
        self.scraper = Scraper(self.autoscaler, self.platform.scrape_targets)
        self.scaler = DeploymentScaler(api)
        self.events = EventRecorder(api, instance=env.pod_name)
        self.elector = _elector(env, api, self._started_leading, self._stopped_leading, lease_clock)
        self.stats = LeaderStatServer(self.autoscaler.record_wire, self._leading)
        self.scale_errors, self.scale_changes = _deployment_metrics(
            self.registry, self.autoscaler.revisions, self.platform.ready_count, self._leading
        )
        self.stat_port = 0
        self.metrics_port = 0
        self._metrics_runner: web.AppRunner | None = None
        self._elector_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- leadership ------------------------------------------------------------------------
    def _leading(self) -> bool:
        return self.elector.is_leader

    def _started_leading(self) -> None:
        for key in list(self.autoscaler.revisions):
            self.sync_replicas(key)
            self.loop.call_soon(self.autoscaler.tick, key)  # act now, not a tick from now
        self.autoscaler.start()
        # a fresh scraper each term: the previous one may still be stopping
        self.scraper = Scraper(self.autoscaler, self.platform.scrape_targets)
        self.scraper.start()

    def _stopped_leading(self) -> None:
        self.autoscaler.stop()
        self._spawn(self.scraper.stop())
        self._spawn(self.stats.drop_connections())

    def _spawn(self, coro: Any) -> None:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- replicas --------------------------------------------------------------------------
    def sync_replicas(self, key: RevisionKey) -> None:
        """The scaler's idea of the current replicas := the Deployment's ``spec.replicas``
        (so a takeover, or a ``kubectl scale``, starts from what is there)."""
        rs = self.autoscaler.revisions.get(key)
        actual = self.platform.replicas(key)
        if rs is not None and actual is not None:
            rs.replicas = actual

    def _invalid(self, rev: Revision, e: ConfigError) -> None:
        log.error("deployment %s/%s: %s (not autoscaled)", rev.namespace, rev.name, e)
        self.autoscaler.revision_deleted(rev.key)

    def _on_app(self, key: RevisionKey, app: App | None) -> None:
        if app is not None:
            self.sync_replicas(key)

    def _on_scale(self, ev: ScaleEvent) -> None:
        log.debug("%s/%s: wants %d (was %d)", ev.key[0], ev.key[1], ev.new, ev.old)

    def _on_error(self, key: RevisionKey, e: BaseException) -> None:
        self.scale_errors.inc(key)
        log.error("scaling deployment %s/%s failed: %s", key[0], key[1], e)
        self.sync_replicas(key)
        self._spawn(
            self.events.deployment_event(key[0], key[1], "ScaleFailed", str(e), warning=True)
        )

    async def _scale(self, key: RevisionKey, n: int) -> None:
        rs = self.autoscaler.revisions.get(key)
        actual = self.platform.replicas(key)
        if rs is None or actual is None:
            return
        if not self.elector.is_leader:
            rs.replicas = actual  # the leader decides; a standby only keeps its windows warm
            return
        if rs.last.desired < 0:
            # No metrics yet (a new Deployment, or we just took over): leave the replicas as
            # they are, except to bring them within min-scale/max-scale.
            bounded = apply_bounds(rs.scaling.min_scale, rs.scaling.max_scale, actual)
            if n != bounded or bounded == actual:
                rs.replicas = actual
                return
        if n == actual:
            return
        stored = await self.scaler.scale(key[0], key[1], n)
        self.scale_changes.inc(key)
        d = rs.last
        why = (
            f"stable concurrency {d.stable_value:.2f}, panic {d.panic_value:.2f}"
            f"{', panicking' if d.panicking else ''}"
            if d.desired >= 0
            else "min/max scale"
        )
        log.info("deployment %s/%s: scaled %d -> %d (%s)", key[0], key[1], actual, stored, why)
        self._spawn(
            self.events.deployment_event(
                key[0],
                key[1],
                "ScaledUp" if stored > actual else "ScaledDown",
                f"Scaled from {actual} to {stored} replicas ({why})",
            )
        )

    # -- servers ---------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        path = request.path
        if path == "/metrics":
            return web.Response(
                body=self.registry.render(), headers={"Content-Type": CONTENT_TYPE.decode()}
            )
        if path == "/healthz":
            return web.Response(text="ok\n")
        if path == "/readyz":
            if self.platform.synced:
                role = "leader" if self.elector.is_leader else "standby"
                return web.Response(text=f"ok ({role})\n")
            errs = "; ".join(str(e) for e in self.platform.errors) or "informers not synced"
            return web.Response(status=503, text=f"not ready: {errs}\n")
        return web.Response(status=404, text="404 page not found\n")

    async def start(self) -> None:
        env = self.env
        host = env.bind_host or None
        try:
            self.stat_port = await self.stats.start(host, env.stat_port)
        except OSError as e:
            raise ConfigError(f"KND_STAT_PORT: cannot listen on {env.stat_port}: {e}") from None
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._metrics)
        self._metrics_runner = web.AppRunner(app, access_log=None)
        await self._metrics_runner.setup()
        site = web.TCPSite(self._metrics_runner, host, env.metrics_port)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(
                f"KND_METRICS_PORT: cannot listen on {env.metrics_port}: {e}"
            ) from None
        socks = getattr(site._server, "sockets", None) or []
        self.metrics_port = int(socks[0].getsockname()[1]) if socks else env.metrics_port
        # The activators route; this process only scales.
        await self.platform.start(
            AutoscalerFeed(self.autoscaler, self._invalid, added=self.sync_replicas)
        )
        self._elector_task = self.loop.create_task(self.elector.run())

    async def stop(self) -> None:
        """Release the Lease (a standby takes over at once), then close everything."""
        if self._elector_task is not None:
            self._elector_task.cancel()
            try:
                await self._elector_task
            except asyncio.CancelledError:
                pass
            self._elector_task = None
        self.autoscaler.stop()
        await self.scraper.stop()
        await self.stats.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        await self.platform.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _elector(
    env: AutoscalerEnv,
    api: KubeAPI,
    on_started: Callable[[], None],
    on_stopped: Callable[[], None],
    clock: Callable[[], float] | None,
) -> LeaderElector:
    """The Lease election: only the leader scrapes, accepts stat websockets and scales."""
    from platforms.kubernetes.lease import LeaderElector

    kw: dict[str, Any] = {} if clock is None else {"clock": clock}
    return LeaderElector(
        api,
        env.lease_namespace,
        env.lease_name,
        env.pod_name,
        lease_duration=env.lease_duration,
        renew_deadline=env.renew_deadline,
        retry_period=env.retry_period,
        on_started=on_started,
        on_stopped=on_stopped,
        **kw,
    )


def _deployment_metrics(
    registry: Registry,
    revs: Mapping[RevisionKey, RevisionScaler],
    ready: Callable[[RevisionKey], int],
    leading: Callable[[], bool],
) -> tuple[Counter, Counter]:
    """knd-autoscaler's own metrics, by namespace and Deployment (beside Knative's names, which
    :func:`autoscaler.compose.new_autoscaler` adds): leadership, per-revision state, and the
    scale errors and changes counters it returns."""
    errors = Counter(
        "knd_autoscaler_scale_errors",
        "Failed patches of deployments/scale",
        ("namespace", "deployment"),
    )
    changes = Counter(
        "knd_autoscaler_scale_changes",
        "Patches of deployments/scale that changed the replica count",
        ("namespace", "deployment"),
    )
    registry.add(
        Gauge(
            "knd_autoscaler_leader",
            "Whether this replica holds the Lease and scales (1) or stands by (0)",
            fn=lambda: [((), 1.0 if leading() else 0.0)],
        )
    )
    per_revision: list[tuple[str, str, Callable[[RevisionScaler], float]]] = [
        ("knd_autoscaler_desired_pods", "Replicas asked for", lambda rs: rs.replicas),
        (
            "knd_autoscaler_ready_pods",
            "Ready pods (EndpointSlices)",
            lambda rs: ready(rs.rev.key),
        ),
        (
            "knd_autoscaler_stable_request_concurrency",
            "Average concurrency over the stable window",
            lambda rs: rs.last.stable_value,
        ),
        (
            "knd_autoscaler_panic_request_concurrency",
            "Average concurrency over the panic window",
            lambda rs: rs.last.panic_value,
        ),
        ("knd_autoscaler_panic_mode", "1 while panicking", lambda rs: float(rs.last.panicking)),
    ]

    def values(
        get: Callable[[RevisionScaler], float],
    ) -> Callable[[], list[tuple[tuple[str, ...], float]]]:
        return lambda: [(k, float(get(rs))) for k, rs in sorted(revs.items())]

    for name, help_text, get in per_revision:
        registry.add(Gauge(name, help_text, ("namespace", "deployment"), fn=values(get)))
    registry.add(errors)
    registry.add(changes)
    return errors, changes


async def _serve(env: AutoscalerEnv, tracer: Tracer | None = None) -> int:
    from dataplane.telemetry import flush_traces
    from platforms.kubernetes.config import connect

    loop = asyncio.get_running_loop()
    try:
        api = await connect(env.kubeconfig or None)
    except ConfigError as e:
        print(f"knd-autoscaler: {e}", file=sys.stderr)
        return 1
    proc = AutoscalerProcess(env, api, loop)
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await proc.start()
    except ConfigError as e:
        print(f"knd-autoscaler: {e}", file=sys.stderr)
        await proc.stop()
        await api.close()
        return 1
    log.info(
        "knd-autoscaler running",
        extra={
            "identity": env.pod_name,
            "lease": f"{env.lease_namespace}/{env.lease_name}",
            "namespace": env.namespace or "(all)",
        },
    )
    await stop
    await proc.stop()
    await api.close()
    await flush_traces(tracer, loop)  # the spans still batched (up to 10 s, as Knative)
    log.info("shutdown complete")
    return 0


def _start_tracing(environ: Mapping[str, str], pod: str) -> Tracer | None:
    """With tracing configured (``OBSERVABILITY_CONFIG`` or ``OTEL_*``, as the activator), the
    aiohttp servers (stat websocket, metrics) are traced by the OpenTelemetry aiohttp-server
    instrumentation; it must patch aiohttp before the applications are created."""
    from dataplane.telemetry import Identity, observability, start_tracer, tracing_settings

    who = Identity("autoscaler", {"k8s.pod.name": pod, "service.instance.id": pod})
    cfg = tracing_settings(observability(environ), environ, who)
    return start_tracer(cfg, "knative.dev/serving/pkg/autoscaler", aiohttp_server=True)


def run(environ: Mapping[str, str]) -> int:
    try:
        env = parse_env(environ)
    except ConfigError as e:
        print(f"knd-autoscaler: {e}", file=sys.stderr)
        return 1
    try:
        import kubernetes_asyncio  # noqa: F401
    except ImportError:
        print(
            "knd-autoscaler: kubernetes-asyncio is not installed "
            "(pip install 'knative-dataplane[kubernetes]')",
            file=sys.stderr,
        )
        return 1
    from dataplane.logs import setup_logging

    setup_logging(env.log_level, {"knd.dev/pod": env.pod_name})
    try:
        tracer = _start_tracing(environ, env.pod_name)
    except ConfigError as e:
        print(f"knd-autoscaler: {e}", file=sys.stderr)
        return 1
    import uvloop

    return int(uvloop.run(_serve(env, tracer)))


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()

"""``knd run``: the activator, the KPA and pods as local processes, in one event loop.

The activator listens on the user's port and routes by Host (``NAME.localhost``, Knative's
headers, or anything when there is one service). It sends its stats to the autoscaler by
function call; the autoscaler also scrapes the pods' queue-proxies, decides every 2 s (at once
when a request arrives at zero) and scales through the local platform, which starts and stops
pods (the app plus a real queue-proxy). The terminal gets one line per scale event and per pod
event, and a status line when something changed; ``knd status`` asks the admin port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from activator.compose import SCOPE, data_server, new_activator
from activator.env import ActivatorEnv
from activator.handler import server_config as activator_server_config
from autoscaler.compose import AutoscalerFeed, new_autoscaler
from autoscaler.config import AutoscalerConfig
from autoscaler.multiscaler import ScaleEvent
from autoscaler.scraper import Scraper
from dataplane.envconfig import ConfigError
from dataplane.h2c import H2Hub
from dataplane.promtext import CONTENT_TYPE, Registry
from dataplane.proxy import HTTPServer, ServerConfig
from dataplane.request import Request
from dataplane.telemetry import (
    Identity,
    flush_traces,
    observability,
    start_tracer,
    tracing_settings,
)
from platforms.base import Revision, RevisionKey
from platforms.local import LocalPlatform, PlatformError, ServiceSpec, app_env, expand_vars

if TYPE_CHECKING:
    from dataplane.tracing import Tracer

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "run"]

#: How long a graceful stop lets requests in flight finish (a second Ctrl-C: at once).
DRAIN_LIMIT = 30.0


@dataclass(slots=True)
class RunOptions:
    services: list[ServiceSpec]
    config: dict[str, str] = field(default_factory=dict)
    port: int = 8080
    address: str = "127.0.0.1"
    admin_port: int = 9080
    progress_deadline: float = 120.0
    drain_quiet_period: float = 1.0
    quiet: bool = False
    out: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


def _tracer(environ: Mapping[str, str]) -> Tracer | None:
    """The embedded activator's tracer, or None when no tracing is configured (the OpenTelemetry
    SDK is imported only then); a bad setting is a ConfigError naming it."""
    cfg = tracing_settings(observability(environ), environ, Identity("knd-activator"))
    return start_tracer(cfg, SCOPE)


class Runner:
    def __init__(self, opts: RunOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.opts = opts
        self.loop = loop
        self.fatal: asyncio.Future[str] = loop.create_future()
        self.cold_start: dict[RevisionKey, float] = {}  # start-to-ready of a pod, ms
        self.last_wait: dict[RevisionKey, float] = {}  # time a request was held, ms
        self._last_status = ""
        self._names = {(("default", f"{s.name}-00001")): s.name for s in opts.services}
        config = AutoscalerConfig.from_map({"allow-zero-initial-scale": "true", **opts.config})
        self.platform = LocalPlatform(
            opts.services,
            drain_quiet_period=opts.drain_quiet_period,
            on_event=self._pod_event,
        )
        # /metrics on the admin port: the autoscaler's and the activator's view, per revision.
        self.registry = Registry()
        self.autoscaler = new_autoscaler(
            loop,
            config,
            self.platform,
            scale=self.platform.scale,
            on_scale=self._scale_event,
            on_error=self._scale_error,
            registry=self.registry,
            labels=self._labels,
        )
        self.scraper = Scraper(self.autoscaler, self.platform.scrape_targets)
        # Tracing as a Knative activator: OBSERVABILITY_CONFIG / OTEL_* from knd's environment
        # (the pods' queue-proxies get the same variables).
        self.tracer = _tracer(os.environ)
        # The activator binary's parts, with its default settings; the stats go to the
        # autoscaler by function call, which is always "connected".
        act_env = ActivatorEnv(pod_name="knd-activator", pod_ip="")
        self.activator = new_activator(
            act_env,
            loop,
            send_stats=self.autoscaler.record_wire,
            connected=lambda: True,
            tracer=self.tracer,
            registry=self.registry,
            labels=self._labels,
        )
        self.activator.on_wait = self._waited
        self.activator.on_held = self.autoscaler.held  # from zero to the demand in one step
        self.h2c = H2Hub(loop)  # gRPC clients: h2c with prior knowledge on the same port
        self.server = data_server(self.activator, act_env, loop, self.h2c)
        self.admin = HTTPServer(self._admin, ServerConfig(), loop=loop)
        # Services with a port of their own: any request there goes to that service.
        self.service_servers: list[tuple[ServiceSpec, HTTPServer]] = []
        for spec in opts.services:
            if spec.port:
                server = HTTPServer(
                    self.activator.handler_for(spec.key),
                    activator_server_config(),
                    loop=loop,
                )
                self.h2c.enable(server)
                self.service_servers.append((spec, server))
        self._status_handle: asyncio.TimerHandle | None = None
        self._ports = {s.key: s.port for s in opts.services if s.port}
        self.stopping = False

    # -- output ----------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        if not self.opts.quiet:
            self.opts.out(time.strftime("%H:%M:%S ") + text)

    def _name(self, key: RevisionKey) -> str:
        return self._names.get(key, key[1])

    def _labels(self, key: RevisionKey, _: object) -> tuple[str, ...]:
        """A revision's metric labels: a knd service is its own configuration, as with a
        Knative Service."""
        return (key[0], self._name(key), self._name(key), key[1])

    def _scale_event(self, ev: ScaleEvent) -> None:
        d = ev.decision
        why = (
            f"stable {d.stable_value:.1f}, panic {d.panic_value:.1f}"
            f"{', panicking' if d.panicking else ''}"
            if d.desired >= 0
            else "initial scale"
        )
        self._line(f"{self._name(ev.key)}: scale {ev.old} -> {ev.new} ({why})")
        self._status_soon()

    def _pod_event(self, text: str) -> None:
        self._line(text)
        self._status_soon()

    def _waited(self, key: RevisionKey, ms: float, dest: str) -> None:
        """A request waited ``ms`` for capacity and goes to ``dest``: when that pod got ready
        during the wait, the request met a cold start; its figure is the pod's start-to-ready
        time (the wait itself may include queueing behind other requests)."""
        self.last_wait[key] = ms
        now = time.monotonic()
        arrived = now - ms / 1000
        for pod in self.platform.pods(key):
            if pod.address != dest:
                continue
            # The activator probes pods itself and may use one before the platform's own
            # probe has marked it ready: then it got ready just now.
            ready_at = pod.ready_at if pod.ready_at is not None else now
            if ready_at >= arrived:
                self.cold_start[key] = (ready_at - pod.started) * 1000
        self._status_soon()

    def _scale_error(self, key: RevisionKey, e: BaseException) -> None:
        if isinstance(e, PlatformError):
            if not self.fatal.done():
                self.fatal.set_result(str(e))
        else:
            log.error("scaling %s/%s failed: %r", key[0], key[1], e)

    def status(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        gauges = {labels: (q, a) for labels, q, a in self.activator.gauges()}
        for key, rs in self.autoscaler.revisions.items():
            q, a = gauges.get(key, (0, 0))
            cs = self.cold_start.get(key)
            wait = self.last_wait.get(key)
            port = self._ports.get(key)
            out.append(
                {
                    "service": self._name(key),
                    "revision": key[1],
                    "desired": rs.replicas,
                    "ready": self.platform.ready_count(key),
                    "in_flight": a,
                    "queued": q,
                    "last_cold_start_ms": None if cs is None else round(cs),
                    "last_wait_ms": None if wait is None else round(wait),
                    "failure": self.platform.failure(key) or None,
                    "host": f"{self._name(key)}.localhost:{self.opts.port}",
                    "url": f"http://localhost:{port}/"
                    if port
                    else f"http://{self._name(key)}.localhost:{self.opts.port}/",
                }
            )
        return out

    def status_text(self) -> str:
        parts = []
        for s in self.status():
            cs = s["last_cold_start_ms"]
            parts.append(
                f"{s['service']}: {s['ready']}/{s['desired']} pods ready, "
                f"{s['in_flight']} in flight, {s['queued']} queued"
                + (f", last cold start {cs} ms" if cs is not None else "")
                + (", cannot start" if s["failure"] else "")
            )
        return "; ".join(parts)

    def _status_soon(self) -> None:
        if self._status_handle is None:
            self._status_handle = self.loop.call_later(0.5, self._print_status)

    def _print_status(self) -> None:
        self._status_handle = None
        text = self.status_text()
        if text != self._last_status:
            self._last_status = text
            self._line(text)

    def _admin(self, ex: Request) -> None:
        if ex.path == b"/status":
            body = json.dumps({"services": self.status()}, indent=1).encode() + b"\n"
            ex.respond(200, body, b"Content-Type: application/json\r\n")
        elif ex.path == b"/healthz":
            ex.respond(200, b"ok\n", b"Content-Type: text/plain\r\n")
        elif ex.path == b"/metrics":
            ex.respond(200, self.registry.render(), b"Content-Type: " + CONTENT_TYPE + b"\r\n")
        else:
            ex.error(404, "404 page not found")

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        o = self.opts
        for spec in o.services:
            check_command(spec)  # "command not found" before anything listens or starts
        listeners = [(self.server, o.port, "--port"), (self.admin, o.admin_port, "--admin-port")]
        listeners += [
            (srv, spec.port, f"service {spec.name} port") for spec, srv in self.service_servers
        ]
        for server, port, flag in listeners:
            try:
                await server.start(o.address, port)
            except OSError as e:
                hint = f"pick another with {flag}" if flag.startswith("--") else "pick another"
                raise ConfigError(
                    f"{flag} {port}: cannot listen on {o.address}:{port}: {e.strerror} "
                    f"(another knd run? {hint})"
                ) from None
        if len(o.services) == 1:
            self.activator.default_key = ("default", f"{o.services[0].name}-00001")
        await self.platform.start(
            AutoscalerFeed(self.autoscaler, self._invalid, router=self.activator.registry)
        )
        self.activator.start()
        self.autoscaler.start()
        self.scraper.start()
        self._progress = self.loop.create_task(self._watch_progress())
        for s in o.services:
            urls = [f"http://{s.name}.localhost:{o.port}/"]
            if len(o.services) == 1:
                urls = [f"http://localhost:{o.port}/"]
            if s.port:
                urls.insert(0, f"http://localhost:{s.port}/")
            self._line(f"{s.name}: serving {', '.join(urls)}  (command: {' '.join(s.command)})")
        self._line(f"status: knd status --admin-port {o.admin_port}   (Ctrl-C stops everything)")

    def _invalid(self, rev: Revision, e: ConfigError) -> None:
        if not self.fatal.done():
            self.fatal.set_result(f"service {rev.name}: {e}")

    async def _watch_progress(self) -> None:
        """The progress deadline: a service that has wanted pods for that long without one
        ready cannot start. Its requests are answered with 503 and why (the platform's
        failure); with a single service, knd run ends with that line."""
        deadline = self.opts.progress_deadline
        while True:
            await asyncio.sleep(min(1.0, max(deadline / 4, 0.05)))
            now = time.monotonic()
            for key in list(self.autoscaler.revisions):
                since = self.platform.unready_since(key)
                if since is None or now - since < deadline:
                    continue
                text = self.platform.failure(key) or self._not_ready_text(key)
                if len(self.opts.services) == 1:
                    if not self.fatal.done():
                        self.fatal.set_result(f"{text} (no ready pod after {deadline:g}s)")
                    return
                if not self.platform.failure(key):
                    self._line(f"{self._name(key)}: {text}")
                    self.platform.set_failure(key, text)

    def _not_ready_text(self, key: RevisionKey) -> str:
        pods = [p for p in self.platform.pods(key) if p.state != "terminating"]
        port = f" ({pods[0].app_port})" if pods else ""
        name = f"pod {pods[0].name}" if pods else "no pod"
        return (
            f"service {self._name(key)}: {name} not ready after "
            f"{self.opts.progress_deadline:.0f}s: is the app listening on the port in "
            f"$PORT{port}?"
        )

    # -- stopping ----------------------------------------------------------------------------
    def draining(self) -> str:
        """What a graceful stop still waits for, in words ("" when nothing)."""
        parts: list[str] = []
        for key, rs in self.activator.revisions.items():
            by_dest = rs.throttler.in_flight_by_pod()
            names = {p.address: p.name for p in self.platform.pods(key)}
            for dest, n in sorted(by_dest.items()):
                parts.append(f"{n} request{'s' if n != 1 else ''} on {names.get(dest, dest)}")
            if rs.queued:
                parts.append(f"{rs.queued} held for {self._name(key)}")
        return ", ".join(parts)

    async def stop(self) -> None:
        """Graceful: stop accepting, let requests in flight finish, drain and stop the pods."""
        self.stopping = True
        servers = [self.server] + [srv for _, srv in self.service_servers]
        for srv in servers:
            srv.stop_accepting()
        self.autoscaler.stop()
        await self.scraper.stop()
        await asyncio.gather(
            self.h2c.shutdown(timeout=DRAIN_LIMIT),
            *(srv.shutdown(timeout=DRAIN_LIMIT) for srv in servers),
            self.admin.shutdown(timeout=5),
        )
        self.activator.stop()
        await self.platform.close()
        await self._flush_traces()

    def stop_now(self) -> int:
        """Ctrl-C again: answer what is left with 503 and kill every pod at once; returns how
        many requests were cut short."""
        self.stopping = True
        body = b"knd run stopped before this request was served\n"
        n = 0
        for key in list(self.activator.revisions):
            n += self.activator.fail_waiting(key, body)
        for srv in [self.server] + [srv for _, srv in self.service_servers]:
            n += srv.interrupt_all(503, body)
        self.autoscaler.stop()
        self.activator.stop()
        self.platform.kill()
        return n

    async def _flush_traces(self) -> None:
        await flush_traces(self.tracer, self.loop)


def check_command(spec: ServiceSpec) -> None:
    """ConfigError when a service's program cannot be found or run (checked before anything
    starts; the same words as when a pod fails to start)."""
    env = app_env(spec, port=0, environ=os.environ)
    argv0 = expand_vars(spec.command[0], env)
    where = f"service {spec.name}"
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise ConfigError(f"{where}: working directory not found: {spec.cwd}")
    if "/" in argv0:
        path = os.path.join(spec.cwd or "", argv0)
        if not os.path.exists(path):
            raise ConfigError(f"{where}: command not found: {argv0}")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise ConfigError(f"{where}: permission denied: {argv0}")
    elif shutil.which(argv0, path=env.get("PATH", os.defpath)) is None:
        raise ConfigError(f"{where}: command not found: {argv0}")


async def _main(opts: RunOptions) -> int:
    loop = asyncio.get_running_loop()
    runner = Runner(opts, loop)
    stop: asyncio.Future[None] = loop.create_future()
    now: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        # The first Ctrl-C (or SIGTERM) drains; the next one stops at once.
        target = stop if not stop.done() else now
        if not target.done():
            target.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await runner.start()
    except ConfigError as e:
        print(f"knd: {e}", file=sys.stderr)
        await runner.platform.close()
        return 1
    waits: set[asyncio.Future[object]] = {stop, runner.fatal}  # type: ignore[arg-type]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if runner.fatal.done():
        text = runner.fatal.result()
        print(f"knd: {text}", file=sys.stderr)
        code = 1
        # Requests held for a pod that will never come: answer them now, not at shutdown.
        for key in list(runner.activator.revisions):
            runner.activator.fail_waiting(key, f"knd: {text}\n".encode())
        if not stop.done():
            stop.set_result(None)  # a Ctrl-C from here on stops at once
    await _stop(runner, now, announce=code == 0)
    return code


async def _stop(runner: Runner, now: asyncio.Future[None], *, announce: bool) -> None:
    """Drain (saying what is waited for, and again when that changes) until done or until
    ``now`` (the second Ctrl-C): then answer what is left with 503 and kill the pods."""
    graceful = asyncio.ensure_future(runner.stop())
    said = runner.draining()
    if announce:
        what = f"draining {said}" if said else "draining pods"
        runner._line(f"stopping: {what} (Ctrl-C again to stop now)")
    while not graceful.done():
        await asyncio.wait({graceful, now}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        if now.done() and not graceful.done():
            n = runner.stop_now()
            graceful.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await graceful
            runner._line(
                f"stopped now: {n} request{'s' if n != 1 else ''} answered 503, pods killed"
            )
            await runner._flush_traces()
            return
        text = runner.draining()
        if announce and text and text != said:
            runner._line(f"still draining {text} (Ctrl-C again to stop now)")
        said = text
    graceful.result()


def run(opts: RunOptions) -> int:
    import uvloop

    return int(uvloop.run(_main(opts)))

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
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from activator.handler import Activator
from autoscaler.config import AutoscalerConfig
from autoscaler.multiscaler import Autoscaler, ScaleEvent
from autoscaler.scraper import Scraper
from dataplane.envconfig import ConfigError
from dataplane.h2c import H2Hub
from dataplane.metrics import add_activator_metrics, add_autoscaler_metrics, wait_histogram
from dataplane.promtext import CONTENT_TYPE, Registry
from dataplane.proxy import Exchange, HTTPServer, ServerConfig
from platforms.base import Endpoints, Revision, RevisionKey
from platforms.local import LocalPlatform, PlatformError, ServiceSpec

if TYPE_CHECKING:
    from dataplane.tracing import Tracer

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "run"]


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


class _Fanout:
    """Platform events to the activator and the autoscaler."""

    def __init__(self, act: Activator, scaler: Autoscaler, errors: Callable[[str], None]) -> None:
        self.act = act
        self.scaler = scaler
        self.errors = errors

    def revision_updated(self, rev: Revision) -> None:
        try:
            self.scaler.revision_updated(rev)
        except ConfigError as e:
            self.errors(f"service {rev.name}: {e}")
            return
        self.act.revision_updated(rev)

    def revision_deleted(self, key: RevisionKey) -> None:
        self.scaler.revision_deleted(key)
        self.act.revision_deleted(key)

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None:
        self.act.endpoints_updated(key, eps)

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None:
        self.act.activators_updated(key, index, count)


def _tracer(environ: Mapping[str, str]) -> Tracer | None:
    """The embedded activator's tracer, or None when no tracing is configured (the OpenTelemetry
    SDK is imported only then); a bad setting is a ConfigError naming it."""
    raw = environ.get("OBSERVABILITY_CONFIG", "")
    if not raw.strip() and not environ.get("OTEL_TRACES_EXPORTER"):
        return None
    from dataplane.tracing import observability_tracing, start_tracing, tracing_config

    protocol, endpoint, rate = observability_tracing(raw)
    cfg = tracing_config(
        environ, protocol=protocol, endpoint=endpoint, rate=rate, service_name="knd-activator"
    )
    return start_tracing(cfg, "knative.dev/serving/pkg/activator")


class Runner:
    def __init__(self, opts: RunOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.opts = opts
        self.loop = loop
        self.fatal: asyncio.Future[str] = loop.create_future()
        self.cold_start: dict[RevisionKey, float] = {}
        self._last_status = ""
        config = AutoscalerConfig.from_map({"allow-zero-initial-scale": "true", **opts.config})
        self.platform = LocalPlatform(
            opts.services,
            drain_quiet_period=opts.drain_quiet_period,
            on_event=self._pod_event,
        )
        self.autoscaler = Autoscaler(
            loop=loop,
            config=config,
            scale=self.platform.scale,
            ready=self.platform.ready_count,
            on_scale=self._scale_event,
            on_error=self._scale_error,
        )
        waits = wait_histogram()
        # Tracing as a Knative activator: OBSERVABILITY_CONFIG / OTEL_* from knd's environment
        # (the pods' queue-proxies get the same variables).
        self.tracer = _tracer(os.environ)
        self.activator = Activator(
            loop=loop,
            pod_name="knd-activator",
            send_stats=self.autoscaler.record_wire,
            connected=lambda: True,
            wait_histogram=waits,
            tracer=self.tracer,
        )
        self.activator.on_wait = self._waited
        # /metrics on the admin port: the autoscaler's and the activator's view, per revision.
        self.registry = Registry()
        add_autoscaler_metrics(
            self.registry,
            self.autoscaler.status,
            self.platform.ready_count,
            # a knd service is its own configuration, as with a Knative Service
            labels=lambda key, rs: (key[0], self._name(key), self._name(key), key[1]),
        )
        add_activator_metrics(
            self.registry, self.activator.gauges, self.activator.reporter.concurrency
        )
        self.registry.add(waits)
        self.scraper = Scraper(self.autoscaler, self.platform.scrape_targets)
        self.server = HTTPServer(
            self.activator, ServerConfig(timeout_body=b"activator request timeout"), loop=loop
        )
        self.h2c = H2Hub(loop)  # gRPC clients: h2c with prior knowledge on the same port
        self.h2c.enable(self.server)
        self.admin = HTTPServer(self._admin, ServerConfig(), loop=loop)
        self._status_handle: asyncio.TimerHandle | None = None
        self._names = {(("default", f"{s.name}-00001")): s.name for s in opts.services}

    # -- output ----------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        if not self.opts.quiet:
            self.opts.out(time.strftime("%H:%M:%S ") + text)

    def _name(self, key: RevisionKey) -> str:
        return self._names.get(key, key[1])

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

    def _waited(self, key: RevisionKey, ms: float) -> None:
        rs = self.autoscaler.revisions.get(key)
        if rs is not None and self.platform.ready_count(key) <= 1:
            self.cold_start[key] = ms
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
            out.append(
                {
                    "service": self._name(key),
                    "revision": key[1],
                    "desired": rs.replicas,
                    "ready": self.platform.ready_count(key),
                    "in_flight": a,
                    "queued": q,
                    "last_cold_start_ms": None if cs is None else round(cs),
                    "host": f"{self._name(key)}.localhost:{self.opts.port}",
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

    def _admin(self, ex: Exchange) -> None:
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
        listeners = ((self.server, o.port, "--port"), (self.admin, o.admin_port, "--admin-port"))
        for server, port, flag in listeners:
            try:
                await server.start(o.address, port)
            except OSError as e:
                raise ConfigError(
                    f"{flag} {port}: cannot listen on {o.address}:{port}: {e.strerror} "
                    "(another knd run? pick another with " + flag + ")"
                ) from None
        if len(o.services) == 1:
            self.activator.default_key = ("default", f"{o.services[0].name}-00001")
        await self.platform.start(_Fanout(self.activator, self.autoscaler, self._config_error))
        self.activator.start()
        self.autoscaler.start()
        self.scraper.start()
        self.loop.create_task(self._watch_progress())
        for s in o.services:
            host = f"{s.name}.localhost:{o.port}" if len(o.services) > 1 else f"localhost:{o.port}"
            self._line(f"{s.name}: serving http://{host}/  (command: {' '.join(s.command)})")
        self._line(f"status: knd status --admin-port {o.admin_port}   (Ctrl-C stops everything)")

    def _config_error(self, text: str) -> None:
        if not self.fatal.done():
            self.fatal.set_result(text)

    async def _watch_progress(self) -> None:
        """A pod that never gets ready is a failed deployment: say so and stop."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for key in list(self.autoscaler.revisions):
                for pod in self.platform.pods(key):
                    if pod.state == "starting" and now - pod.started > self.opts.progress_deadline:
                        if not self.fatal.done():
                            self.fatal.set_result(
                                f"service {self._name(key)}: pod {pod.name} not ready after "
                                f"{self.opts.progress_deadline:.0f}s: is the app listening on "
                                f"the port in $PORT ({pod.app_port})?"
                            )
                        return

    async def stop(self) -> None:
        self.server.stop_accepting()
        self.autoscaler.stop()
        await self.scraper.stop()
        await asyncio.gather(
            self.h2c.shutdown(timeout=30),
            self.server.shutdown(timeout=30),
            self.admin.shutdown(timeout=5),
        )
        self.activator.stop()
        await self.platform.close()
        if self.tracer is not None:  # flush the spans still batched
            await asyncio.wait_for(self.loop.run_in_executor(None, self.tracer.shutdown), 10)


async def _main(opts: RunOptions) -> int:
    loop = asyncio.get_running_loop()
    runner = Runner(opts, loop)
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

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
    else:
        runner._line("stopping: draining pods ...")
    await runner.stop()
    return code


def run(opts: RunOptions) -> int:
    import uvloop

    return int(uvloop.run(_main(opts)))

"""Helpers for the activator integration tests: the activator subprocess, its platform file,
pods (a test app plus a real queue-proxy), metrics scraping and stat filtering.

Everything runs on loopback: the activator and the queue-proxies as subprocesses, the apps and
the autoscaler stub inside the test's event loop (so their clocks are the test's clock).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from dataplane.statpb import WireStatMessage
from tests.apps import upstream
from tests.apps.autoscaler_stub import RunningStub

from .conftest import make_client
from .helpers import ChildProcess, QueueProxy, eventually, free_ports

ACTIVATOR_BIN = str(Path(sys.executable).with_name("activator"))
START_TIMEOUT = 10.0
NS = "default"
KUBELET = {"User-Agent": "kube-probe/1.30"}
SYNC_PREFIX = "zz-sync-"


def rev_headers(name: str, ns: str = NS) -> dict[str, str]:
    """The routing headers Knative's ingress adds for the activator."""
    return {"Knative-Serving-Namespace": ns, "Knative-Serving-Revision": name}


# --------------------------------------------------------------------------- platform file


class PlatformFile:
    """The activator's JSON platform file; every :meth:`write` replaces it atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.revisions: dict[tuple[str, str], dict[str, Any]] = {}
        self._last_stamp: tuple[int, int] | None = None
        self.generation = 0

    def revision(
        self,
        name: str,
        *,
        ns: str = NS,
        cc: int = 0,
        ready: list[str] | None = None,
        not_ready: list[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add or replace a revision (``extra``: other fields of the file, e.g. ``hosts``)."""
        rev: dict[str, Any] = {
            "namespace": ns,
            "name": name,
            "containerConcurrency": cc,
            "timeoutSeconds": 60,
            "endpoints": {"ready": list(ready or []), "notReady": list(not_ready or [])},
            **extra,
        }
        self.revisions[(ns, name)] = rev
        return rev

    def endpoints(
        self,
        name: str,
        *,
        ns: str = NS,
        ready: list[str] | None = None,
        not_ready: list[str] | None = None,
    ) -> None:
        self.revisions[(ns, name)]["endpoints"] = {
            "ready": list(ready or []),
            "notReady": list(not_ready or []),
        }

    def remove(self, name: str, *, ns: str = NS) -> None:
        del self.revisions[(ns, name)]

    def write(self) -> None:
        """Replace the file (the activator notices within its 100 ms poll)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"revisions": list(self.revisions.values())}, indent=1))
        os.replace(tmp, self.path)
        # The reader notices a change by (mtime, size): make sure each write is a change even
        # on a file system with coarse timestamps.
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if self._last_stamp is not None and stamp == self._last_stamp:
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        self._last_stamp = stamp


async def apply(platform: PlatformFile, act: ActivatorProc, *, timeout: float = 5.0) -> None:
    """Write the platform file and wait until the activator has applied this very version.

    The write carries a fresh marker revision (no pods, 1 ms queue-wait limit); once a request
    for it gets its 503 instead of a 404, the activator has read the file, and the file is
    applied in one go, so every other change in it has been applied too.
    """
    old = [k for k in platform.revisions if k[1].startswith(SYNC_PREFIX)]
    for k in old:
        del platform.revisions[k]
    platform.generation += 1
    marker = f"{SYNC_PREFIX}{platform.generation}"
    platform.revision(marker, queueWaitSeconds=0.001)
    platform.write()
    async with make_client(act.url(), timeout=5.0) as c:

        async def seen() -> bool:
            r = await c.get("/", headers=rev_headers(marker))
            return r.status_code == 503

        await eventually(seen, timeout=timeout, interval=0.01, what=f"platform {marker} applied")


# --------------------------------------------------------------------------- activator


class ActivatorProc(ChildProcess):
    """A running ``activator`` subprocess."""

    what = "activator"

    def __init__(
        self, proc: subprocess.Popen[bytes], env: dict[str, str], out: Path, err: Path
    ) -> None:
        super().__init__(proc, env, out, err)
        self.port = int(env["ACTIVATOR_PORT"])
        self.metrics_port = int(env["ACTIVATOR_METRICS_PORT"])

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def health(self) -> httpx.Response:
        """A kubelet probe of the data port."""
        async with make_client(self.url(), timeout=5.0) as c:
            return await c.get("/", headers=KUBELET)

    async def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """The metrics port's samples by sample name, parsed with prometheus_client."""
        async with make_client(f"http://127.0.0.1:{self.metrics_port}", timeout=5.0) as c:
            r = await c.get("/metrics")
        assert r.status_code == 200, r.text
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
        return out

    async def metric(self, name: str, **labels: str) -> float | None:
        """The value of the one sample of ``name`` whose labels include ``labels``."""
        for lab, value in (await self.metrics()).get(name, []):
            if all(lab.get(k) == v for k, v in labels.items()):
                return value
        return None

    async def queued(self, rev: str, ns: str = NS) -> float:
        """``kn_revision_request_queued`` of a revision (0 before it has a sample)."""
        v = await self.metric(
            "kn_revision_request_queued", k8s_namespace_name=ns, kn_revision_name=rev
        )
        return v or 0.0


async def _wait_listening(proc: ActivatorProc, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    pending = list(ports)
    while pending:
        if proc.proc.poll() is not None:
            raise AssertionError(
                f"activator exited with {proc.proc.returncode} during start-up:\n{proc.stderr()}"
            )
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", pending[0]), 1.0)
        except (OSError, TimeoutError):
            if loop.time() >= deadline:
                raise AssertionError(
                    f"activator port {pending[0]} not accepting after {START_TIMEOUT}s:\n"
                    + proc.stderr()
                ) from None
            await asyncio.sleep(0.01)
            continue
        w.close()
        await w.wait_closed()
        pending.pop(0)


StartActivator = Callable[..., Awaitable[ActivatorProc]]


async def activator_factory(tmp_path: Path) -> AsyncIterator[StartActivator]:
    """Body of the ``start_activator`` fixture: ``await start(platform, stub_url, **env)``."""
    started: list[ActivatorProc] = []

    async def start(
        platform: PlatformFile,
        autoscaler_url: str,
        *,
        wait_connected: bool = True,
        **overrides: str,
    ) -> ActivatorProc:
        port, metrics_port = free_ports(2)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "POD_NAME": "activator-test-0",
            "POD_IP": "127.0.0.1",
            "SYSTEM_NAMESPACE": "knative-serving",
            "AUTOSCALER_URL": autoscaler_url,
            "ACTIVATOR_PORT": str(port),
            "ACTIVATOR_METRICS_PORT": str(metrics_port),
            "ACTIVATOR_BIND_ADDRESS": "127.0.0.1",
            "ACTIVATOR_PLATFORM_FILE": str(platform.path),
            "ACTIVATOR_H2C_PORT": "0",  # 8013 by default: tests run several activators
            "DRAIN_QUIET_PERIOD_SECONDS": "30",
            "SERVING_LOGGING_LEVEL": "info",
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            **overrides,
        }
        n = len(started)
        out, err = tmp_path / f"activator{n}.stdout", tmp_path / f"activator{n}.stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                [ACTIVATOR_BIN], env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL
            )
        act = ActivatorProc(proc, env, out, err)
        started.append(act)
        await _wait_listening(act, [act.port, act.metrics_port])
        if wait_connected:

            async def healthy() -> bool:
                return (await act.health()).status_code == 200

            await eventually(healthy, timeout=5, what="activator connected to the autoscaler")
        return act

    yield start
    for act in started:
        act.kill()
        # Shown by pytest only when the test fails.
        print(f"--- activator {act.pid} rc={act.proc.returncode} stderr (tail) ---")
        print("\n".join(act.stderr().splitlines()[-40:]))


# --------------------------------------------------------------------------- pods


@dataclass
class TimedApp:
    """The test upstream app, plus when it started listening and when requests reached it."""

    running: upstream.RunningApp
    listening_at: float
    arrivals: list[float] = field(default_factory=list)

    @property
    def state(self) -> upstream.AppState:
        return self.running.state

    @property
    def port(self) -> int:
        return self.running.port

    async def close(self) -> None:
        await self.running.close()


async def start_app(port: int = 0) -> TimedApp:
    """:func:`tests.apps.upstream.start`, on ``port``, recording each request's arrival time."""
    state = upstream.AppState()
    app = upstream.make_app(state)
    arrivals: list[float] = []

    @web.middleware
    async def arrival(request: web.Request, handler: Any) -> Any:
        if request.path != "/ready":
            arrivals.append(asyncio.get_running_loop().time())
        return await handler(request)

    app.middlewares.append(arrival)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    listening_at = asyncio.get_running_loop().time()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return TimedApp(upstream.RunningApp(runner, bound, state), listening_at, arrivals)


@dataclass
class Pod:
    """One revision pod: the app (possibly not started yet) behind a real queue-proxy."""

    qp: QueueProxy
    app_port: int
    app: TimedApp | None = None

    @property
    def dest(self) -> str:
        return f"127.0.0.1:{self.qp.port}"

    async def start_app(self) -> TimedApp:
        assert self.app is None
        self.app = await start_app(self.app_port)
        return self.app


def tcp_readiness_probe(port: int) -> str:
    """SERVING_READINESS_PROBE for a TCP check of the app (periodSeconds 0: aggressive)."""
    return json.dumps({"tcpSocket": {"port": port, "host": "127.0.0.1"}, "successThreshold": 1})


def stats_for(
    messages: list[WireStatMessage], name: str, ns: str = NS
) -> list[tuple[float, float]]:
    """(AverageConcurrentRequests, RequestCount) of each message for one revision, in order."""
    return [
        (m.stat.average_concurrent_requests, m.stat.request_count)
        for m in messages
        if m.namespace == ns and m.name == name and m.stat is not None
    ]


def stub_stats(stub: RunningStub, name: str, ns: str = NS) -> list[tuple[float, float]]:
    return stats_for(stub.state.messages, name, ns)


def qp_env(**extra: str | None) -> dict[str, str | None]:
    """Queue-proxy overrides for a pod of a revision behind the activator."""
    return {
        "CONTAINER_CONCURRENCY": "0",
        "REVISION_TIMEOUT_SECONDS": "120",
        "DRAIN_QUIET_PERIOD_SECONDS": "1",
        **extra,
    }


def established_to(port: int) -> int:
    """Open IPv4 TCP connections to ``127.0.0.1:port`` (the client ends, from /proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            rem, state = parts[2], parts[3]
            if state == "01" and int(rem.rpartition(":")[2], 16) == port:
                n += 1
    return n


class Pods:
    """Starts pods (app + queue-proxy) and closes their apps at teardown; the queue-proxies
    belong to the ``start_qp`` fixture, which kills them."""

    def __init__(self, start_qp: Callable[..., Awaitable[QueueProxy]]) -> None:
        self._start_qp = start_qp
        self.pods: list[Pod] = []

    async def start(
        self,
        *,
        app: bool = True,
        readiness: bool = False,
        user_port: int | None = None,
        **qp_extra: str | None,
    ) -> Pod:
        """A pod whose app is running (``app=True``) or not started yet; ``readiness`` gives
        the queue-proxy an aggressive TCP readiness probe of the app port. The queue-proxy has
        no concurrency limit of its own unless ``CONTAINER_CONCURRENCY`` is passed, so the app
        sees exactly the concurrency the activator sends."""
        running = await start_app() if app else None
        if running is not None:
            port = running.port
        else:
            port = user_port if user_port is not None else free_ports(1)[0]
        extra = dict(qp_extra)
        if readiness:
            extra.setdefault("SERVING_READINESS_PROBE", tcp_readiness_probe(port))
        qp = await self._start_qp(qp_env(**extra), user_port=port)  # type: ignore[arg-type]
        pod = Pod(qp, port, running)
        self.pods.append(pod)
        return pod

    async def close(self) -> None:
        for pod in self.pods:
            if pod.app is not None:
                await pod.app.close()


class RawPod:
    """A stand-in queue-proxy in the test's loop: passes the activator's probe and answers any
    other request with 200 and the raw request head it received (to see the wire as is)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.probes = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def dest(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> RawPod:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.add(w)
        try:
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if b"\r\nK-Network-Probe: queue\r\n" in head:
                    self.probes += 1
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue")
                else:
                    self.heads.append(head)
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(head), head))
                await w.drain()
        finally:
            self._writers.discard(w)
            w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.close()
            await self.server.wait_closed()


def head_lines(head: bytes) -> list[tuple[str, str]]:
    """(name, value) of each header line of a raw request head; the request line is skipped."""
    out = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            k, _, v = line.partition(":")
            out.append((k, v.strip()))
    return out

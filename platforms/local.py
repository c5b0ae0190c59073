"""Local processes as pods: serverless on one machine (``knd run``).

A *pod* is two processes on free loopback ports: the user's app (it gets ``PORT``, on top of
knd's own environment) and a real queue-proxy in front of it (Knative's environment contract,
SPEC §1.2, plus our port extras). The autoscaler decides how many pods run (:meth:`scale`);
this module starts them, reports their queue-proxies as endpoints (not ready at once, ready when
a kubelet-style probe of the queue-proxy passes), stops them the way the kubelet does (endpoints
first, then the user container's preStop ``/wait-for-drain`` alongside SIGTERM to the
queue-proxy, SIGTERM to the app once the queue-proxy has drained and exited, SIGKILL at the end
of the grace period), and restarts crashed ones with CrashLoopBackOff's delays.

Process hygiene: every child runs in its own session (a Ctrl-C in knd's terminal reaches knd
only, which then drains) with ``PR_SET_PDEATHSIG=SIGKILL``, so a crash of knd kills it too. The
app is signalled as a process group, and when it exits whatever is left of its group is killed
(a container's processes end with it). Children are reaped through a pidfd, never by pid after
the fact, so a signal cannot reach a recycled pid. Limits: PDEATHSIG follows the *thread* that
started the child (run the event loop in a thread that lives as long as the platform), and
processes the app starts itself only die with knd's crash if they die with the app.

Output: the app's stdout and stderr are passed through to knd's, each line prefixed with the pod
name (``app_output="inherit"`` hands them the terminal unchanged instead; piped output is
block-buffered by many runtimes, e.g. Python without ``PYTHONUNBUFFERED=1``). The queue-proxy's
JSON logs go to one file per pod under :attr:`LocalPlatform.log_dir`; its path is printed when a
queue-proxy fails, and the directory is removed on close unless that happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from dataplane import httpget
from dataplane.probespec import ProbeConfigError, parse_readiness_probe

from .base import DEFAULT_TIMEOUT_SECONDS, Endpoints, PlatformEvents, Revision, RevisionKey

__all__ = [
    "CrashBackoff",
    "LocalPlatform",
    "PlatformError",
    "PodInfo",
    "PodPorts",
    "PodState",
    "ServiceSpec",
    "app_env",
    "choose_victims",
    "default_readiness_probe",
    "describe_exit",
    "expand_vars",
    "port_hint",
    "queue_proxy_env",
    "revision_for",
]

log = logging.getLogger("platforms.local")

NAMESPACE = "default"
LOOPBACK = "127.0.0.1"


def _fixed_port_range() -> tuple[int, int]:
    """Ports to hand out: [10000, start of the ephemeral range), or empty when there is none."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return (0, 0)
    return (10000, first) if first > 11000 else (0, 0)


_FIXED_RANGE = _fixed_port_range()
PodState = Literal["starting", "ready", "terminating", "failed"]

#: What the kubelet sends when it probes the queue-proxy's readiness (Knative sets the header).
PROBE_HEADERS = "User-Agent: kube-probe/1.30\r\nK-Network-Probe: queue\r\nAccept: */*\r\n"
#: The kubelet's User-Agent for HTTP lifecycle hooks (the user container's preStop).
PRESTOP_HEADERS = "User-Agent: kube-lifecycle/1.30\r\n"
#: Set so the queue-proxy does not re-execute itself to get them (queueproxy/cli.py).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "2097152"}
#: knd's variables the queue-proxy keeps (it gets a clean environment, as in a pod).
# knd's variables a queue-proxy inherits: the process basics and the tracing settings
# (Knative's OBSERVABILITY_CONFIG, OpenTelemetry's OTEL_*), so pods trace like knd's activator.
QP_INHERITED = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "OBSERVABILITY_CONFIG")
QP_INHERITED_PREFIX = "OTEL_"

_PR_SET_PDEATHSIG = 1
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' utilrand alphabet
_LINE_LIMIT = 64 * 1024
_TAIL_LINES = 5  # of an app's stderr, quoted when it exits before it is ready


class PlatformError(Exception):
    """A service cannot run (its command cannot be started); the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of ``knd run``: the user's command and its revision settings."""

    name: str
    command: tuple[str, ...]
    container_concurrency: int = 0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    env: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    readiness_probe: str = ""
    cwd: str | None = None
    port: int = 0  # knd run: a port of its own for this service (0: none)

    @property
    def revision(self) -> str:
        return f"{self.name}-00001"

    @property
    def key(self) -> RevisionKey:
        return (NAMESPACE, self.revision)


@dataclass(slots=True)
class PodInfo:
    """A pod as reported by :meth:`LocalPlatform.pods` (a snapshot)."""

    name: str
    revision: RevisionKey
    address: str  # 127.0.0.1:<queue-proxy serving port>
    metrics_address: str  # 127.0.0.1:<queue-proxy metrics port>
    app_port: int
    state: PodState
    started: float  # time.monotonic() of the latest (re)start
    ready_at: float | None
    restarts: int
    created: float = 0.0  # time.monotonic() of the first start
    app_pid: int = 0
    queue_proxy_pid: int = 0
    queue_proxy_log: str = ""


@dataclass(frozen=True, slots=True)
class PodPorts:
    """The loopback ports of one pod incarnation."""

    app: int
    serving: int
    tls: int
    admin: int
    metrics: int
    user_metrics: int

    def all(self) -> tuple[int, ...]:
        return (self.app, self.serving, self.tls, self.admin, self.metrics, self.user_metrics)


@dataclass(slots=True)
class CrashBackoff:
    """CrashLoopBackOff: 1 s, doubling up to 30 s, back to 1 s after 60 s of being ready."""

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 60.0
    _next: float | None = None

    def next_delay(self, healthy_for: float) -> float:
        """The delay before restarting a pod that crashed after ``healthy_for`` seconds ready."""
        if self._next is None or healthy_for >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay


# --------------------------------------------------------------------------- pure helpers


def revision_for(spec: ServiceSpec) -> Revision:
    """The revision ``knd run`` reports for a service."""
    return Revision(
        namespace=NAMESPACE,
        name=spec.revision,
        container_concurrency=spec.container_concurrency,
        timeout_seconds=spec.timeout_seconds,
        hosts=(f"{spec.name}.localhost",),
        annotations=dict(spec.annotations),
    )


def default_readiness_probe(app_port: int) -> str:
    """Knative's default: a TCP connect to the app, in aggressive mode (periodSeconds 0)."""
    return json.dumps({"tcpSocket": {"port": app_port, "host": LOOPBACK}}, separators=(",", ":"))


def queue_proxy_env(
    spec: ServiceSpec,
    *,
    pod: str,
    ports: PodPorts,
    drain_quiet_period: float,
    environ: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The queue-proxy's environment: Knative's contract, our port extras, a few of knd's."""
    env = {
        k: v for k, v in environ.items() if k in QP_INHERITED or k.startswith(QP_INHERITED_PREFIX)
    }
    env.update(
        {
            "CONTAINER_CONCURRENCY": str(spec.container_concurrency),
            "QUEUE_SERVING_PORT": str(ports.serving),
            "QUEUE_SERVING_TLS_PORT": str(ports.tls),
            "USER_PORT": str(ports.app),
            "REVISION_TIMEOUT_SECONDS": str(math.ceil(spec.timeout_seconds)),
            "SERVING_LOGGING_CONFIG": "",
            "SERVING_LOGGING_LEVEL": "info",
            "SERVING_NAMESPACE": NAMESPACE,
            "SERVING_SERVICE": spec.name,
            "SERVING_CONFIGURATION": spec.name,
            "SERVING_REVISION": spec.revision,
            "SERVING_POD": pod,
            "SERVING_POD_IP": LOOPBACK,
            "SERVING_READINESS_PROBE": spec.readiness_probe or default_readiness_probe(ports.app),
            "QUEUE_ADMIN_PORT": str(ports.admin),
            "QUEUE_METRICS_PORT": str(ports.metrics),
            "QUEUE_USER_METRICS_PORT": str(ports.user_metrics),
            "DRAIN_QUIET_PERIOD_SECONDS": repr(float(drain_quiet_period)),
            "QUEUE_BIND_ADDRESS": LOOPBACK,
            **MALLOC_ENV,
        }
    )
    if extra:
        env.update(extra)
    return env


def app_env(spec: ServiceSpec, *, port: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The app's environment: knd's, Knative's ``K_*`` identity, the service's, then ``PORT``."""
    env = dict(environ)
    env.update({"K_SERVICE": spec.name, "K_CONFIGURATION": spec.name, "K_REVISION": spec.revision})
    env.update(spec.env)
    env["PORT"] = str(port)
    return env


def choose_victims(pods: Sequence[PodInfo], n: int) -> list[PodInfo]:
    """The ``n`` pods to stop on a scale-down: not-ready ones first, then the newest."""
    rank = {"failed": 0, "starting": 1, "ready": 2}
    live = [p for p in pods if p.state != "terminating"]
    live.sort(key=lambda p: (rank[p.state], -p.started))
    return live[: max(n, 0)]


def describe_exit(returncode: int) -> str:
    """``exited with status 3`` / ``was killed by SIGSEGV``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of a command argument: ``$(NAME)`` becomes the value
    of ``NAME`` in ``env``, an undefined or unterminated reference stays as written, and
    ``$$`` is a literal ``$`` (so ``$$(PORT)`` gives ``$(PORT)``)."""
    if "$" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 == n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:  # unterminated: the rest as written
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            value = env.get(name)
            out.append(value if value is not None and name else text[i : end + 1])
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


_PORT_FLAGS = ("--port", "-p", "--bind", "-b", "--listen")


def port_hint(argv: Sequence[str]) -> str:
    """A hint for a command whose port flag has no value, as when a shell expanded ``$PORT``
    (unset in the user's shell) to nothing; empty when nothing looks wrong."""
    for i, a in enumerate(argv):
        if a in _PORT_FLAGS and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            return (
                f"; {a} has no value: if you wrote $PORT, your shell expanded it to nothing, "
                "write '$(PORT)' (in single quotes) and knd puts the pod's port there"
            )
    return ""


def _pod_name(revision: str, taken: Iterable[str]) -> str:
    used = set(taken)
    while True:
        suffix = "".join(random.choices(_NAME_CHARS, k=5))
        name = f"{revision}-deployment-{suffix}"
        if name not in used:
            return name


# --------------------------------------------------------------------------- processes


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()


def _child_setup(parent: int) -> Callable[[], None]:
    """preexec_fn: die with knd (SIGKILL), even if knd died between fork and prctl."""

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def _popen(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    stdout: Any,
    stderr: Any,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_child_setup(os.getpid()),  # PDEATHSIG needs code in the child
    )


def _spawn_error(what: str, argv0: str, cwd: str | None, e: OSError) -> PlatformError:
    if isinstance(e, FileNotFoundError):
        if cwd is not None and e.filename == cwd and argv0 != cwd:
            return PlatformError(f"{what}: working directory not found: {cwd}")
        return PlatformError(f"{what}: command not found: {argv0}")
    if isinstance(e, PermissionError):
        return PlatformError(f"{what}: permission denied: {argv0}")
    return PlatformError(f"{what}: cannot start {argv0}: {e.strerror or e}")


class _Child:
    """A started process: its exit as a future (pidfd, else polling), reaped exactly once.

    ``group``: signal the whole process group (the app), and SIGKILL what is left of it when the
    leader exits, while the unreaped leader still pins the group id.
    """

    def __init__(self, popen: subprocess.Popen[bytes], *, group: bool) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.group = group
        self.loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self.loop.create_future()
        self._pidfd = -1
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
            self.loop.add_reader(self._pidfd, self._check)
        except (AttributeError, OSError, NotImplementedError):
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
            self._poller = self.loop.create_task(self._poll())

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def _zombie(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    async def _poll(self) -> None:
        while not self.exited.done():
            if self._zombie():
                self._check()
                return
            await asyncio.sleep(0.05)

    def _check(self) -> None:
        if self.popen.returncode is None:
            if self.group:
                with contextlib.suppress(OSError):
                    os.killpg(self.pid, signal.SIGKILL)
            if self.popen.poll() is None:
                return
        self._finish()

    def _finish(self) -> None:
        # Also runs from kill(), possibly after the loop closed: nothing here may raise.
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        poller, self._poller = self._poller, None
        if poller is not None and not poller.done():
            with contextlib.suppress(RuntimeError):
                if poller is not asyncio.current_task(self.loop):
                    poller.cancel()
        rc = self.popen.returncode
        if not self.exited.done() and rc is not None:
            with contextlib.suppress(RuntimeError):
                self.exited.set_result(rc)

    def signal(self, sig: int) -> None:
        """Send ``sig`` unless the process has been reaped (its pid may be someone else's)."""
        if self.popen.returncode is not None:
            return
        try:
            if self.group:
                try:
                    os.killpg(self.pid, sig)
                    return
                except ProcessLookupError:  # the app left its group; signal the process
                    pass
            os.kill(self.pid, sig)
        except OSError:
            pass

    def kill_now(self) -> None:
        """SIGKILL and reap, blocking (bounded); for cancellation and :meth:`LocalPlatform.kill`."""
        self.signal(signal.SIGKILL)
        if self.popen.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5.0)
        if self.popen.returncode is not None:
            self._finish()


class _OutputPump:
    """Copies a child's stdout or stderr to knd's, one line at a time, each with a prefix."""

    def __init__(
        self,
        pipe: Any,
        prefix: str,
        stream: Literal["stdout", "stderr"],
        on_close: Callable[[_OutputPump], None],
        tail: deque[str] | None = None,
    ) -> None:
        self.pipe = pipe
        self.fd: int = pipe.fileno()
        self.prefix = prefix
        self.stream = stream
        self.on_close = on_close
        self.tail = tail  # the last non-blank lines, when given
        self.buf = b""
        self.loop = asyncio.get_running_loop()
        os.set_blocking(self.fd, False)
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._feed(data)
        else:
            self.close()

    def _feed(self, data: bytes) -> None:
        self.buf += data
        *lines, rest = self.buf.split(b"\n")
        if len(rest) > _LINE_LIMIT:
            lines.append(rest)
            rest = b""
        self.buf = rest
        if lines:
            self._write(lines)

    def close(self) -> None:
        """Copy what is still in the pipe, then stop (idempotent)."""
        if self.pipe is None:
            return
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                break
            if not data:
                break
            self._feed(data)
        if self.buf:
            self._write([self.buf])
            self.buf = b""
        self.pipe.close()
        self.pipe = None
        self.on_close(self)

    def _write(self, lines: list[bytes]) -> None:
        out = sys.stdout if self.stream == "stdout" else sys.stderr
        decoded = [line.rstrip(b"\r").decode("utf-8", "replace") for line in lines]
        if self.tail is not None:
            self.tail.extend(d[:500] for d in decoded if d.strip())
        text = "".join(self.prefix + d + "\n" for d in decoded)
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # knd's output is gone (closed pipe): drop
            pass


async def _http_get(port: int, path: str, headers: str, timeout: float) -> int:
    """The status of ``GET http://127.0.0.1:<port><path>``; 0 on any failure or timeout."""
    try:
        r = await httpget.get(
            LOOPBACK, port, path, timeout, headers=headers.encode("latin-1"), max_body=0
        )
    except httpget.GetError:
        return 0
    return r.status


async def _wait_all(futs: Iterable[asyncio.Future[Any]], deadline: float) -> bool:
    """Wait until every future is done or ``deadline`` (loop time) passes; True if all done."""
    pending = {f for f in futs if not f.done()}
    if pending:
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        _, pending = await asyncio.wait(pending, timeout=timeout)
    return not pending


# --------------------------------------------------------------------------- pods


class _Pod:
    """One pod: its identity, current processes and lifecycle task."""

    def __init__(self, svc: _Service, name: str) -> None:
        self.svc = svc
        self.info = PodInfo(
            name=name,
            revision=svc.spec.key,
            address="",
            metrics_address="",
            app_port=0,
            state="starting",
            started=time.monotonic(),
            ready_at=None,
            restarts=0,
            created=time.monotonic(),
        )
        self.ports: PodPorts | None = None
        self.app: _Child | None = None
        self.qp: _Child | None = None
        self.log_offset = 0
        self.ever_ready = False  # in this incarnation
        self.pipes: list[_OutputPump] = []
        self.output_tail: deque[str] = deque(maxlen=_TAIL_LINES)  # app's last stderr lines
        self.stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.probe_task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def is_stopping(self) -> bool:
        return self.stop.done()

    def children(self) -> list[_Child]:
        return [c for c in (self.qp, self.app) if c is not None]


class _Service:
    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.key = spec.key
        self.revision = revision_for(spec)
        self.desired = 0
        self.pods: list[_Pod] = []
        self.error: PlatformError | None = None
        self.published: Endpoints | None = None
        self.failure = ""  # why it cannot start (Revision.failure), "" while it can
        self.unready_since: float | None = None  # wants pods, none ready, since (monotonic)


class LocalPlatform:
    """Runs each service's pods as local processes; implements :class:`platforms.base.Platform`.

    Timing knobs (class attributes, overridable per instance, e.g. by tests): the kubelet's
    readiness ``probe_period`` and ``failure_threshold``, the start-up probe's long-poll
    ``startup_probe_timeout``, the crash back-off, ``crash_grace`` (how long the surviving
    process of a crashed pod may take to stop) and ``slow_start_warning`` (when to say that a
    pod is still not ready).
    """

    probe_period: float = 1.0
    failure_threshold: int = 3
    startup_probe_timeout: float = 12.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    backoff_reset: float = 60.0
    crash_grace: float = 10.0
    port_retries: int = 5
    slow_start_warning: float = 10.0

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        *,
        queue_proxy: Sequence[str] | None = None,
        drain_quiet_period: float = 1.0,
        on_event: Callable[[str], None] | None = None,
        ready_poll: float = 0.05,
        app_output: Literal["prefix", "inherit"] = "prefix",
        queue_proxy_env: Mapping[str, str] | None = None,
    ) -> None:
        self._services: dict[RevisionKey, _Service] = {}
        for spec in services:
            _validate(spec)
            if spec.key in self._services:
                raise ValueError(f"service {spec.name}: defined twice")
            self._services[spec.key] = _Service(spec)
        self.queue_proxy = (
            list(queue_proxy) if queue_proxy else [sys.executable, "-P", "-m", "queueproxy"]
        )
        self.drain_quiet_period = drain_quiet_period
        self.on_event = on_event
        self.ready_poll = ready_poll
        self.app_output = app_output
        self.queue_proxy_extra_env = dict(queue_proxy_env or {})
        self._log_dir: str | None = None
        self._keep_logs = False
        self._events: PlatformEvents | None = None
        self._closing = False
        self._reserved: set[int] = set()
        self._rng = random.Random()

    # -- Platform --------------------------------------------------------------------------
    async def start(self, events: PlatformEvents) -> None:
        """Report every revision and its (current) endpoints; pods come from :meth:`scale`."""
        self._events = events
        for svc in self._services.values():
            events.revision_updated(svc.revision)
            svc.published = self._endpoints(svc)
            events.endpoints_updated(svc.key, svc.published)

    async def scale(self, key: RevisionKey, replicas: int) -> None:
        """Start or stop pods to reach ``replicas``; returns once that is under way.

        Raises PlatformError when the app (or the queue-proxy) cannot be started at all; the
        service then stays failed and later scale-ups raise the same error.
        """
        svc = self._service(key)
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if self._closing:
            return
        live = [p for p in svc.pods if not p.is_stopping()]
        if replicas > len(live) and svc.error is not None:
            raise svc.error
        svc.desired = replicas
        if replicas > len(live):
            for _ in range(replicas - len(live)):
                pod = _Pod(svc, _pod_name(svc.spec.revision, (p.name for p in svc.pods)))
                try:
                    self._spawn(pod)
                except PlatformError as e:
                    svc.error = e
                    self._publish(svc)
                    raise
                svc.pods.append(pod)
                pod.task = asyncio.get_running_loop().create_task(
                    self._lifecycle(pod), name=f"pod {pod.name}"
                )
                pod.task.add_done_callback(self._task_done)
        elif replicas < len(live):
            victims = {p.name for p in choose_victims([p.info for p in live], len(live) - replicas)}
            for pod in live:
                if pod.name in victims:
                    self._request_stop(pod)
        self._publish(svc)

    def desired(self, key: RevisionKey) -> int:
        return self._service(key).desired

    def ready_count(self, key: RevisionKey) -> int:
        return sum(1 for p in self._service(key).pods if p.info.state == "ready")

    def pods(self, key: RevisionKey) -> list[PodInfo]:
        return [replace(p.info) for p in self._service(key).pods]

    def scrape_targets(self, key: RevisionKey) -> list[str]:
        """Metrics addresses (``ip:port``) of the ready pods: ``http://<addr>/metrics``."""
        return [p.info.metrics_address for p in self._service(key).pods if p.info.state == "ready"]

    async def close(self) -> None:
        """Stop every pod (endpoints first, drain, then kill) and wait until all are gone."""
        self._closing = True
        for svc in self._services.values():
            svc.desired = 0
            for pod in svc.pods:
                if not pod.is_stopping():
                    self._request_stop(pod)
            self._publish(svc)
        tasks = [p.task for svc in self._services.values() for p in svc.pods if p.task is not None]
        try:
            await asyncio.gather(*tasks, return_exceptions=True)  # failures: see _task_done
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            self.kill()
            raise
        finally:
            self._cleanup_logs()

    def kill(self) -> None:
        """SIGKILL every process at once and reap them (synchronous: atexit, last resort)."""
        self._closing = True
        for svc in self._services.values():
            for pod in list(svc.pods):
                for child in pod.children():
                    child.kill_now()
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    if pod.task is not None:
                        pod.task.cancel()
                    if not pod.stop.done():
                        pod.stop.set_result(None)
                pod.info.state = "terminating"
            self._publish(svc)

    @property
    def log_dir(self) -> str:
        """The directory of the queue-proxies' logs (created on first use)."""
        if self._log_dir is None:
            self._log_dir = tempfile.mkdtemp(prefix="knd-")
        return self._log_dir

    # -- internals -------------------------------------------------------------------------
    def _service(self, key: RevisionKey) -> _Service:
        svc = self._services.get(key)
        if svc is None:
            raise KeyError(f"unknown revision {key[0]}/{key[1]}")
        return svc

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)
            self._emit(f"{task.get_name()}: internal error: {exc!r}")

    def _emit(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)
        else:
            log.info("%s", line)

    def _endpoints(self, svc: _Service) -> Endpoints:
        return Endpoints(
            ready=tuple(p.info.address for p in svc.pods if p.info.state == "ready"),
            not_ready=tuple(p.info.address for p in svc.pods if p.info.state == "starting"),
        )

    def _publish(self, svc: _Service) -> None:
        ready = any(p.info.state == "ready" for p in svc.pods)
        if ready or svc.desired == 0:
            svc.unready_since = None
        elif svc.unready_since is None:
            svc.unready_since = time.monotonic()
        if ready and svc.failure:
            svc.failure = ""
            if self._events is not None:
                self._events.revision_updated(svc.revision)
        eps = self._endpoints(svc)
        if eps != svc.published:
            svc.published = eps
            if self._events is not None:
                self._events.endpoints_updated(svc.key, eps)

    def _request_stop(self, pod: _Pod) -> None:
        pod.info.state = "terminating"
        if not pod.stop.done():
            pod.stop.set_result(None)
        self._emit(f"{pod.name}: stopping")

    def _pick_ports(self) -> PodPorts:
        """Six distinct free loopback ports, none handed to a live pod.

        Ports come from below the kernel's ephemeral range when there is room: a port from
        ``bind(0)`` is released before the pod binds it, and in that gap the kernel may hand it
        to any outgoing connection or ``bind(0)`` on the machine (seen under load as the app's
        "address already in use"); ports outside that range are only taken by explicit binds.
        """
        socks: list[socket.socket] = []
        ports: list[int] = []
        low, high = _FIXED_RANGE
        rng = self._rng
        try:
            attempts = 0
            while len(ports) < 6:
                attempts += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                want = rng.randrange(low, high) if high - low >= 1000 and attempts < 200 else 0
                try:
                    s.bind((LOOPBACK, want))
                except OSError:
                    continue  # taken: try another
                port = int(s.getsockname()[1])
                if port not in self._reserved and port not in ports:
                    ports.append(port)
        finally:
            for s in socks:
                s.close()
        return PodPorts(*ports)

    def _spawn(self, pod: _Pod) -> None:
        """Start the app and the queue-proxy of a new pod incarnation (raises PlatformError)."""
        spec = pod.svc.spec
        ports = self._pick_ports()
        environ = os.environ
        stdout: Any = None
        stderr: Any = None
        if self.app_output == "prefix":
            stdout = stderr = subprocess.PIPE
        env = app_env(spec, port=ports.app, environ=environ)
        argv = [expand_vars(a, env) for a in spec.command]  # $(PORT), as Kubernetes does
        pod.output_tail.clear()
        try:
            app = _popen(
                argv,
                env=env,
                cwd=spec.cwd,
                stdout=stdout,
                stderr=stderr,
            )
        except OSError as e:
            raise _spawn_error(f"service {spec.name}", argv[0], spec.cwd, e) from None
        app_child = _Child(app, group=True)
        if self.app_output == "prefix":
            self._attach_output(pod, app)
        log_path = os.path.join(self.log_dir, f"{pod.name}.queue-proxy.log")
        try:
            with open(log_path, "ab") as logf:
                pod.log_offset = logf.tell()
                qp = _popen(
                    self.queue_proxy,
                    env=queue_proxy_env(
                        spec,
                        pod=pod.name,
                        ports=ports,
                        drain_quiet_period=self.drain_quiet_period,
                        environ=environ,
                        extra=self.queue_proxy_extra_env,
                    ),
                    cwd=None,
                    stdout=logf,
                    stderr=logf,
                )
        except OSError as e:
            app_child.kill_now()
            self._close_pipes(pod)
            raise _spawn_error(
                f"service {spec.name}: queue-proxy", self.queue_proxy[0], None, e
            ) from None
        pod.ports = ports
        self._reserved.update(ports.all())
        pod.app = app_child
        pod.qp = _Child(qp, group=False)
        pod.ever_ready = False
        info = pod.info
        info.address = f"{LOOPBACK}:{ports.serving}"
        info.metrics_address = f"{LOOPBACK}:{ports.metrics}"
        info.app_port = ports.app
        info.state = "starting"
        info.started = time.monotonic()
        info.ready_at = None
        info.app_pid = app.pid
        info.queue_proxy_pid = qp.pid
        info.queue_proxy_log = log_path
        what = "started" if info.restarts == 0 else f"restarted (restart {info.restarts})"
        self._emit(
            f"{pod.name}: {what}: app pid {app.pid} on port {ports.app}, "
            f"queue-proxy pid {qp.pid} on {info.address}"
        )

    def _attach_output(self, pod: _Pod, popen: subprocess.Popen[bytes]) -> None:
        prefix = f"{pod.name} | "

        def closed(pump: _OutputPump) -> None:
            if pump in pod.pipes:
                pod.pipes.remove(pump)

        if popen.stdout is not None:
            pod.pipes.append(_OutputPump(popen.stdout, prefix, "stdout", closed))
        if popen.stderr is not None:
            pod.pipes.append(_OutputPump(popen.stderr, prefix, "stderr", closed, pod.output_tail))

    def _close_pipes(self, pod: _Pod) -> None:
        for pump in list(pod.pipes):
            pump.close()

    def _release(self, pod: _Pod) -> None:
        if pod.ports is not None:
            self._reserved.difference_update(pod.ports.all())
            pod.ports = None

    def _qp_log_tail(self, pod: _Pod) -> str:
        """The last line the queue-proxy of this incarnation wrote (a start-up error, say)."""
        try:
            with open(pod.info.queue_proxy_log, "rb") as f:
                f.seek(pod.log_offset)
                data = f.read()[-4096:]
        except OSError:
            return ""
        lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    async def _lifecycle(self, pod: _Pod) -> None:
        """Own a pod from its first start to its end: probing, crash restarts, the stop."""
        svc = pod.svc
        loop = asyncio.get_running_loop()
        backoff = CrashBackoff(self.backoff_initial, self.backoff_max, self.backoff_reset)
        collisions = 0
        emit_stopped = True
        try:
            while True:
                app, qp = pod.app, pod.qp
                assert app is not None and qp is not None
                pod.probe_task = loop.create_task(self._probe_loop(pod))
                events: set[asyncio.Future[Any]] = {app.exited, qp.exited, pod.stop}
                await asyncio.wait(events, return_when=asyncio.FIRST_COMPLETED)
                if pod.is_stopping():
                    await self._graceful_stop(pod)
                    return
                # A crash: one of the two processes exited on its own.
                pod.probe_task.cancel()
                qp_crashed = qp.exited.done() and (not app.exited.done() or qp.returncode != 0)
                healthy_for = (
                    time.monotonic() - pod.info.ready_at if pod.info.ready_at is not None else 0.0
                )
                pod.info.state = "failed"
                pod.info.ready_at = None
                self._publish(svc)
                await self._stop_survivor(pod)
                tail = self._qp_log_tail(pod) if qp_crashed else ""
                self._release(pod)
                if (
                    qp_crashed
                    and not pod.ever_ready
                    and "cannot listen on" in tail
                    and collisions < self.port_retries
                ):
                    collisions += 1  # a port was taken after we picked it: new ports, at once
                    if not self._respawn(pod):
                        emit_stopped = False
                        return
                    continue
                collisions = 0
                if qp_crashed:
                    self._keep_logs = True
                    why = f"queue-proxy {describe_exit(qp.returncode or 0)}"
                    if tail:
                        why += f" ({tail[:300]})"
                    why += f"; log: {pod.info.queue_proxy_log}"
                else:
                    why = f"app {describe_exit(app.returncode or 0)}"
                    if not pod.ever_ready:
                        self._close_pipes(pod)  # what it wrote before it died, all of it
                        self._app_failed(pod, app.returncode or 0)
                delay = backoff.next_delay(healthy_for)
                self._emit(f"{pod.name}: crashed: {why}; replacing it in {delay:g}s")
                await asyncio.wait({pod.stop}, timeout=delay)
                if pod.is_stopping():
                    return
                pod.info.restarts += 1
                if not self._respawn(pod):
                    emit_stopped = False
                    return
        finally:
            if pod.probe_task is not None:
                pod.probe_task.cancel()
            for child in pod.children():
                if child.returncode is None:
                    child.kill_now()
            self._close_pipes(pod)
            self._release(pod)
            if pod in svc.pods:
                svc.pods.remove(pod)
            self._publish(svc)
            if emit_stopped:
                self._emit(f"{pod.name}: stopped")

    def _app_failed(self, pod: _Pod, returncode: int) -> None:
        """The app exited before it was ready: the service cannot start (unless another of its
        pods is ready), in words that name the exit and the app's last lines."""
        svc = pod.svc
        text = f"service {svc.spec.name} cannot start: its app {describe_exit(returncode)}"
        text += " before it was ready"
        tail = list(pod.output_tail)
        if tail:
            text += "; its last output: " + " | ".join(tail)
        text += port_hint(svc.spec.command)
        self.set_failure(svc.key, text)

    def set_failure(self, key: RevisionKey, text: str) -> None:
        """Mark a revision as unable to start (``text`` says why) while none of its pods is
        ready; reported as :attr:`Revision.failure`. Cleared when a pod becomes ready."""
        svc = self._service(key)
        if any(p.info.state == "ready" for p in svc.pods) or text == svc.failure:
            return
        svc.failure = text
        if self._events is not None:
            self._events.revision_updated(replace(svc.revision, failure=text))

    def failure(self, key: RevisionKey) -> str:
        """Why the revision cannot start, or "" (see :meth:`set_failure`)."""
        return self._service(key).failure

    def unready_since(self, key: RevisionKey) -> float | None:
        """Since when (``time.monotonic()``) the revision wants pods and has none ready; None
        while a pod is ready or none is wanted (the progress deadline counts from here)."""
        return self._service(key).unready_since

    def _respawn(self, pod: _Pod) -> bool:
        """Start a pod's processes again; on PlatformError the service stops trying."""
        try:
            self._spawn(pod)
        except PlatformError as e:
            pod.svc.error = e
            self._emit(str(e))
            return False
        self._publish(pod.svc)
        return True

    async def _graceful_stop(self, pod: _Pod) -> None:
        """The kubelet's pod termination, bounded by the revision timeout (grace period)."""
        app, qp = pod.app, pod.qp
        if pod.probe_task is not None:
            pod.probe_task.cancel()
        if app is None or qp is None or (app.exited.done() and qp.exited.done()):
            return
        loop = asyncio.get_running_loop()
        grace = pod.svc.spec.timeout_seconds
        deadline = loop.time() + grace
        prestop: asyncio.Task[int] | None = None
        if not qp.exited.done() and pod.ports is not None:
            # The user container's preStop hook, concurrently with SIGTERM to the queue-proxy.
            prestop = loop.create_task(
                _http_get(pod.ports.admin, "/wait-for-drain", PRESTOP_HEADERS, grace)
            )
        qp.signal(signal.SIGTERM)
        try:
            # The app gets SIGTERM once its preStop returned and the queue-proxy finished the
            # requests in flight and exited: nothing in flight is cut short.
            waits: list[asyncio.Future[Any]] = [qp.exited]
            if prestop is not None:
                waits.append(prestop)
            await _wait_all(waits, deadline)
            app.signal(signal.SIGTERM)
            if not await _wait_all([app.exited, qp.exited], deadline):
                self._emit(f"{pod.name}: still running after {grace:g}s; killing it")
                for child in (qp, app):
                    child.signal(signal.SIGKILL)
                await _wait_all([app.exited, qp.exited], loop.time() + 5.0)
        finally:
            if prestop is not None:
                prestop.cancel()

    async def _stop_survivor(self, pod: _Pod) -> None:
        """After a crash: stop the other process (the queue-proxy without its quiet period)."""
        app, qp = pod.app, pod.qp
        assert app is not None and qp is not None
        if not qp.exited.done():
            qp.signal(signal.SIGINT)  # quick shutdown: its app is gone anyway
        if not app.exited.done():
            app.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        grace = min(self.crash_grace, pod.svc.spec.timeout_seconds)
        if not await _wait_all([app.exited, qp.exited], loop.time() + grace):
            for child in (qp, app):
                child.signal(signal.SIGKILL)
            await _wait_all([app.exited, qp.exited], loop.time() + 5.0)

    async def _probe_loop(self, pod: _Pod) -> None:
        """The kubelet's readiness probe of the queue-proxy: fast while starting, then 1/s."""
        ports = pod.ports
        assert ports is not None
        fails = 0
        warned = False
        while not pod.is_stopping():
            if pod.info.state == "ready":
                await asyncio.sleep(self.probe_period)
                ok = await self._probe(ports.serving, self.probe_period)
                if pod.is_stopping() or pod.info.state != "ready":
                    return
                if ok:
                    fails = 0
                    continue
                fails += 1
                if fails >= self.failure_threshold:
                    pod.info.state = "starting"
                    pod.info.ready_at = None
                    self._publish(pod.svc)
                    self._emit(f"{pod.name}: not ready ({fails} failed readiness probes)")
                continue
            # Not ready: a first probe long-polls (the queue-proxy answers as soon as the app is
            # ready); after a failure, retry every ready_poll, or every period once it was ready.
            timeout = self.probe_period if pod.ever_ready else self.startup_probe_timeout
            ok = await self._probe(ports.serving, timeout)
            if pod.is_stopping() or pod.info.state != "starting":
                return
            if ok:
                fails = 0
                pod.info.state = "ready"
                pod.info.ready_at = time.monotonic()
                self._publish(pod.svc)
                if pod.ever_ready:
                    self._emit(f"{pod.name}: ready again")
                else:
                    took = pod.info.ready_at - pod.info.started
                    self._emit(f"{pod.name}: ready after {took:.2f}s")
                pod.ever_ready = True
                continue
            waited = time.monotonic() - pod.info.started
            if not pod.ever_ready and not warned and waited >= self.slow_start_warning:
                warned = True
                self._emit(
                    f"{pod.name}: not ready after {waited:.0f}s; is the app listening on "
                    f"127.0.0.1:{ports.app} (its PORT)?"
                )
            await asyncio.sleep(self.probe_period if pod.ever_ready else self.ready_poll)

    async def _probe(self, port: int, timeout: float) -> bool:
        status = await _http_get(port, "/", PROBE_HEADERS, timeout)
        return 200 <= status < 400

    def _cleanup_logs(self) -> None:
        if not self._keep_logs and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


def _validate(spec: ServiceSpec) -> None:
    """Reject what can never run, before anything starts (ValueError naming the service)."""
    where = f"service {spec.name!r}"
    if not spec.name:
        raise ValueError("a service needs a name")
    if not spec.command or not spec.command[0]:
        raise ValueError(f"{where}: empty command")
    if spec.container_concurrency < 0:
        raise ValueError(f"{where}: container_concurrency must be >= 0")
    if not spec.timeout_seconds > 0:
        raise ValueError(f"{where}: timeout_seconds must be > 0")
    if spec.readiness_probe:
        try:
            parse_readiness_probe(spec.readiness_probe, multi_container=False, user_port=1)
        except ProbeConfigError as e:
            raise ValueError(f"{where}: readiness probe: {e}") from None

"""Requests held by the activator: memory per held request, draining them, release latency.

(a) memory and drain: one revision with no endpoints; --held keep-alive connections (10,000; 2,000
with --quick), each with one GET in flight, are held by the activator. Its VmRSS is read with 0,
half and all of them held (after /metrics shows them queued). Then a pod (a queue-proxy in front
of a small app) is listed as ready: every request must complete with 200; the drain time runs
from the platform-file write to the last response.

(b) release latency: a pod is listed as not ready, its queue-proxy is up but its app is not;
requests are held (1, then 100: --release-held); then the app starts. Measured: from the app's
``listen()`` to the first held request arriving at the app (both CLOCK_MONOTONIC), --repeat
times per size, each time with a fresh pod and revision.

The activator runs alone on the proxy CPU (0); the harness, the pods and the stand-in autoscaler
on the load CPU (1). Results: a table on the terminal and JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import _activator, _procs, _tools
from benchmarks._procs import BenchError, ProcessSet, StartError
from benchmarks.proxy import (
    RESULTS_DIR,
    _queue_proxy_path,
    background_load,
    machine,
    queue_proxy_env,
)

START_TIMEOUT = 10.0
HELD_HOST = "held.example.com"
RSS_GOAL_MIB = 64.0  # DESIGN.md: 10,000 held requests cost <= 64 MiB of activator RSS
RSS_GOAL_HELD = 10_000
RELEASE_GOAL_MS = 25.0  # DESIGN.md / the issue: first held request at the app <= 25 ms after listen


# --- options --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``held`` scenario."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 held requests and 3 release repetitions (well under a minute)",
    )
    parser.add_argument("--held", type=int, help="requests held for the memory figure (10000)")
    parser.add_argument("--repeat", type=int, help="release-latency repetitions (5)")
    parser.add_argument(
        "--release-held",
        default="1,100",
        metavar="N[,N...]",
        help="requests held during the release measurements, one series per number (1,100)",
    )
    parser.add_argument(
        "--cc", type=int, default=0, help="containerConcurrency of the revisions and pods (0)"
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=256,
        help="connections the client opens at a time (the activator's backlog is 2048)",
    )
    parser.add_argument(
        "--activator",
        help="activator executable (default: the one next to this Python, else on PATH)",
    )
    parser.add_argument(
        "--queue-proxy",
        help="queue-proxy executable (default: the one next to this Python, else on PATH)",
    )
    parser.add_argument(
        "--pythonpath",
        metavar="DIR",
        help="PYTHONPATH for the activator and queue-proxies, e.g. build/compiled",
    )
    parser.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the activator")
    parser.add_argument(
        "--load-cpu", type=int, default=1, help="CPU for the harness, pods and autoscaler"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where JSON goes")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the logs and platform file in DIR (default: a temporary directory, removed)",
    )


def _resolve(args: argparse.Namespace) -> None:
    if args.held is None:
        args.held = 2000 if args.quick else RSS_GOAL_HELD
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    try:
        args.release_sizes = [int(v) for v in str(args.release_held).split(",") if v.strip()]
    except ValueError:
        raise BenchError("--release-held: expected numbers separated by commas") from None
    if not args.release_sizes or min(args.release_sizes) < 1:
        raise BenchError("--release-held: each number must be >= 1")
    if args.held < 2 or args.repeat < 1 or args.cc < 0:
        raise BenchError("--held must be >= 2, --repeat >= 1, --cc >= 0")
    if args.connect_concurrency < 1:
        raise BenchError("--connect-concurrency must be >= 1")
    cpus = os.sched_getaffinity(0)
    for opt in ("proxy_cpu", "load_cpu"):
        if getattr(args, opt) not in cpus:
            raise BenchError(f"--{opt.replace('_', '-')} {getattr(args, opt)}: not an allowed CPU")
    if args.pythonpath:
        if not Path(args.pythonpath).is_dir():
            raise BenchError(f"--pythonpath {args.pythonpath}: not a directory")
        args.pythonpath = str(Path(args.pythonpath).resolve())
    # Bounds on each phase, so a stuck activator ends the run instead of hanging it.
    args.open_timeout = 20.0 if args.quick else 60.0
    args.drain_timeout = 30.0 if args.quick else 300.0
    args.release_timeout = 15.0 if args.quick else 30.0


@contextlib.contextmanager
def _open_files(want: int, need: int) -> Iterator[tuple[int, int]]:
    """Raise RLIMIT_NOFILE to ``want`` for this process and so for every child it starts (the
    activator, queue-proxies and app inherit it); restored afterwards. Without the privilege to
    raise the hard limit (CAP_SYS_RESOURCE) the soft limit goes up to the hard one, with a
    warning; below ``need`` (what the harness itself opens) the run stops."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    if soft < want:
        unlimited = hard == resource.RLIM_INFINITY
        try:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (want, hard if unlimited else max(hard, want))
            )
        except (ValueError, OSError):
            if hard < need:
                raise BenchError(
                    f"needs {need} open files but the hard limit is {hard}: raise it "
                    f"(ulimit -Hn {want}, as root) or use a smaller --held"
                ) from None
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            print(
                f"warning: open files limited to {hard} (hard limit; raising it needs "
                f"CAP_SYS_RESOURCE); the activator and queue-proxy want {want} to drain at "
                "containerConcurrency 0 (one downstream and one upstream connection each)"
            )
    try:
        yield resource.getrlimit(resource.RLIMIT_NOFILE)
    finally:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, before)


# --- the client -----------------------------------------------------------------------------


class _Held(asyncio.Protocol):
    """One connection with one GET in flight: writes it on connect, reads one response."""

    def __init__(self, request: bytes, on_done: Callable[[_Held], None]) -> None:
        self.request = request
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.head_seen = False
        self.length: int | None = None
        self.chunked = False
        self.status = 0  # 0: no response (yet); -1: connection lost without a full response
        self.done_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # the harness runs plain asyncio
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.done_at is not None:
            return
        self.buf += data
        if not self.head_seen:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            self.head_seen = True
            try:
                self.status = int(head[9:12])
            except ValueError:
                self.status = -1
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
        if (self.chunked and self.buf.endswith(b"0\r\n\r\n")) or (
            self.length is not None and len(self.buf) >= self.length
        ):
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done_at is None:
            if not self.head_seen:
                self.status = -1
            self._finish()

    def _finish(self) -> None:
        self.done_at = time.monotonic()
        if self.transport is not None:
            self.transport.close()
        self.on_done(self)


class Batch:
    """Requests to one host of the activator, one connection each; statuses and times."""

    def __init__(self, port: int, host: str, path: str = "/held") -> None:
        self.port = port
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: knd-bench-held\r\n\r\n".encode()
        )
        self.conns: list[_Held] = []
        self.opened = 0
        self.connect_errors: collections.Counter[str] = collections.Counter()
        self.finished = 0
        self.first_done: float | None = None
        self.last_done: float | None = None
        self._want = 0
        self._all_done: asyncio.Future[None] | None = None

    def _done(self, _req: _Held) -> None:
        now = time.monotonic()
        self.finished += 1
        if self.first_done is None:
            self.first_done = now
        self.last_done = now
        self._check()

    def _check(self) -> None:
        fut = self._all_done
        if fut is not None and not fut.done() and self.finished + self.failed >= self._want:
            fut.set_result(None)

    @property
    def failed(self) -> int:
        return sum(self.connect_errors.values())

    async def open(self, count: int, concurrency: int, timeout: float) -> None:
        """Open ``count`` more connections (at most ``concurrency`` connecting at a time), each
        writing its request at once; returns when all are connected or failed."""
        loop = asyncio.get_running_loop()
        self._want += count
        if self._all_done is None or self._all_done.done():
            self._all_done = loop.create_future()
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                try:
                    _, proto = await loop.create_connection(
                        lambda: _Held(self.request, self._done), "127.0.0.1", self.port
                    )
                except OSError as exc:
                    self.connect_errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                    self._check()
                    return
                self.conns.append(proto)
                self.opened += 1

        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        except TimeoutError:
            raise StartError(
                f"opened only {self.opened} of {self._want} connections in {timeout:g} s"
            ) from None

    async def wait(self, timeout: float) -> bool:
        """Wait until every request has an answer (or failed); False on timeout."""
        if self._all_done is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._all_done), timeout)
        except TimeoutError:
            return False
        return True

    def statuses(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for c in self.conns:
            counts[{0: "pending", -1: "no response"}.get(c.status, str(c.status))] += 1
        if self.failed:
            counts["connect error"] += self.failed
        return dict(sorted(counts.items()))

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()


# --- the scenario ---------------------------------------------------------------------------


def _mib(kib: float) -> float:
    return kib / 1024


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Pod:
    """A queue-proxy and (once started) its app, both on the load CPU."""

    addr: str  # the queue-proxy's ip:port, as the platform file lists it
    app_port: int
    app_log: Path
    qp: subprocess.Popen[bytes]
    app: subprocess.Popen[bytes] | None = None


class HeldBench:
    """Owns the processes, the platform file and the figures of one ``held`` run."""

    def __init__(
        self, args: argparse.Namespace, procs: ProcessSet, tmp: Path, tools: dict[str, str]
    ) -> None:
        self.args = args
        self.procs = procs
        self.tmp = tmp
        self.tools = tools
        self.platform = tmp / "platform.json"
        self.act_port = 0
        self.metrics_port = 0
        self.act: subprocess.Popen[bytes] | None = None
        self.act_log = tmp / "activator.log"
        self.memory: dict[str, Any] = {}
        self.drain: dict[str, Any] = {}
        self.releases: list[dict[str, Any]] = []
        self.errors: list[str] = []

    # -- processes ---------------------------------------------------------------------------

    def pinned(self, cpu: int, argv: list[str]) -> list[str]:
        return [self.tools["taskset"], "-c", str(cpu), *argv]

    def _env_pythonpath(self, env: dict[str, str]) -> dict[str, str]:
        if self.args.pythonpath:
            env["PYTHONPATH"] = self.args.pythonpath
        return env

    def start_activator(self) -> None:
        sink_port, _ = _activator.start_autoscaler_sink(
            self.procs, self.tmp / "autoscaler.log", self.pinned(self.args.load_cpu, [])
        )
        _activator.write_platform(self.platform, [self._held_revision()])
        argv = [_activator.activator_path(self.args.activator)]
        for attempt in range(3):  # a free port may be taken by someone else before it binds
            self.act_port = _procs.free_port()
            self.metrics_port = _procs.free_port()
            env = _activator.activator_env(
                self.act_port, self.metrics_port, sink_port, self.platform
            )
            self.act = self.procs.start(
                self.pinned(self.args.proxy_cpu, argv),
                env=self._env_pythonpath(env),
                log_path=self.act_log,
            )
            try:
                for port in (self.act_port, self.metrics_port):
                    _procs.wait_listening(port, self.act, START_TIMEOUT, 0.01, self.act_log)
                return
            except StartError as exc:
                self.procs.stop(self.act, graceful=False)
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise

    def start_pod(self, name: str, *, app: bool, readiness: bool = False) -> Pod:
        """A queue-proxy on the load CPU in front of an app port (the app started now when
        ``app``, else later by the caller with ``start_app``)."""
        app_port, qp_port = _procs.free_port(), _procs.free_port()
        app_log = self.tmp / f"{name}-app.log"
        app_proc = None
        if app:
            app_proc = self.start_app(app_port, app_log, record=1)
            _procs.wait_listening(app_port, app_proc, START_TIMEOUT, 0.005)
        env = queue_proxy_env(self.args.cc, qp_port, app_port)
        if readiness:  # Knative's default TCP probe of the user port, aggressive (period 0)
            probe = {"tcpSocket": {"port": app_port, "host": "127.0.0.1"}, "successThreshold": 1}
            env["SERVING_READINESS_PROBE"] = json.dumps(probe)
        qp_log = self.tmp / f"{name}-queue-proxy.log"
        argv = [_queue_proxy_path(self.args.queue_proxy)]
        qp = self.procs.start(
            self.pinned(self.args.load_cpu, argv), env=self._env_pythonpath(env), log_path=qp_log
        )
        _procs.wait_listening(qp_port, qp, START_TIMEOUT, 0.005, qp_log)
        return Pod(f"127.0.0.1:{qp_port}", app_port, app_log, qp, app_proc)

    def stop_pod(self, pod: Pod) -> None:
        for proc in (pod.app, pod.qp):
            if proc is not None:
                self.procs.stop(proc, graceful=False)

    def start_app(self, port: int, log: Path, record: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "benchmarks.held_app", "--port", str(port)]
        argv += ["--log", str(log), "--record", str(record)]
        env = dict(os.environ, PYTHONPATH=str(_activator.ROOT))
        return self.procs.start(
            self.pinned(self.args.load_cpu, argv),
            env=env,
            log_path=log.with_suffix(".err"),
            cwd=_activator.ROOT,
        )

    def _held_revision(self, ready: list[str] | None = None) -> dict[str, Any]:
        return _activator.revision("held-00001", HELD_HOST, self.args.cc, ready=ready or [])

    def _rss_kib(self) -> int:
        assert self.act is not None
        return _status_kib(self.act.pid, "VmRSS")

    def _check_alive(self) -> None:
        if self.act is not None and self.act.poll() is not None:
            raise StartError(
                f"the activator exited with status {self.act.returncode}"
                f"{_procs.log_tail(self.act_log)}"
            )

    async def wait_queued(self, name: str, want: int, batch: Batch, timeout: float) -> int:
        """Poll /metrics until ``want`` requests of revision ``name`` are queued."""
        end = time.monotonic() + timeout
        last = 0
        while time.monotonic() < end:
            self._check_alive()
            last = (await _activator.queued(self.metrics_port)).get(name, 0)
            if last + batch.finished + batch.failed >= want:
                return last
            await asyncio.sleep(0.02)
        return last

    # -- (a) memory and drain ----------------------------------------------------------------

    async def memory_and_drain(self) -> None:
        args = self.args
        assert self.act is not None
        pid = self.act.pid
        n, half = args.held, args.held // 2
        await asyncio.sleep(1.0)  # start-up settled: stats websocket up, first platform read
        rss0 = self._rss_kib()
        batch = Batch(self.act_port, HELD_HOST)
        cpu0 = _procs.tree_cpu_seconds(pid)
        points: list[tuple[int, int, int]] = []  # (held requested, queued seen, VmRSS kiB)
        pod: Pod | None = None
        try:
            for target in (half, n):
                t0 = time.monotonic()
                await batch.open(target - batch.opened, args.connect_concurrency, args.open_timeout)
                seen = await self.wait_queued("held-00001", target, batch, args.open_timeout)
                print(
                    f"  {batch.opened:,} connections open, {seen:,} queued at the activator "
                    f"({time.monotonic() - t0:.1f} s)",
                    flush=True,
                )
                await asyncio.sleep(0.5)
                points.append((target, seen, self._rss_kib()))
            cpu_hold = _procs.tree_cpu_seconds(pid) - cpu0
            hwm = _status_kib(pid, "VmHWM")
            early = batch.statuses()
            full_rss = points[-1][2]
            self.memory = {
                "held": n,
                "queued_seen": points[-1][1],
                "connections_opened": batch.opened,
                "connect_errors": dict(batch.connect_errors),
                "answered_while_held": {k: v for k, v in early.items() if k != "pending"},
                "rss_idle_mib": _mib(rss0),
                "rss_half_mib": _mib(points[0][2]),
                "rss_held_mib": _mib(full_rss),
                "hwm_held_mib": _mib(hwm),
                "delta_mib": _mib(full_rss - rss0),
                "bytes_per_held": 1024 * (full_rss - rss0) / n,
                "marginal_bytes_per_held": 1024 * (full_rss - points[0][2]) / (n - half),
                "cpu_us_per_held": 1e6 * cpu_hold / n,
            }
            self.memory["delta_mib_at_10k"] = self.memory["bytes_per_held"] * RSS_GOAL_HELD / 2**20
            # Drain: list a pod (queue-proxy + app, app already listening) as ready.
            pod = self.start_pod("drain", app=True)
            cpu1 = _procs.tree_cpu_seconds(pid)
            added = time.monotonic()
            _activator.write_platform(self.platform, [self._held_revision(ready=[pod.addr])])
            complete = await batch.wait(args.drain_timeout)
            cpu_drain = _procs.tree_cpu_seconds(pid) - cpu1
            statuses = batch.statuses()
            ok = statuses.get("200", 0)
            self.drain = {
                "completed": complete,
                "timeout_s": args.drain_timeout,
                "statuses": statuses,
                "ok": ok,
                "all_ok": ok == n,
                "first_response_ms": 1000 * (batch.first_done - added)
                if batch.first_done
                else None,
                "drain_s": (batch.last_done - added) if batch.last_done else None,
                "activator_cpu_us_per_request": 1e6 * cpu_drain / max(1, batch.finished),
            }
            await asyncio.sleep(1.0)
            self.drain["rss_after_mib"] = _mib(self._rss_kib())
            self.drain["hwm_mib"] = _mib(_status_kib(pid, "VmHWM"))
        finally:
            batch.close()
            if pod is not None:
                self.stop_pod(pod)
        print(
            f"  drained: {self.drain['statuses']} in {_fmt(self.drain['drain_s'], '.2f')} s",
            flush=True,
        )

    # -- (b) release latency -----------------------------------------------------------------

    async def release(self, rep: int, held: int) -> dict[str, Any]:
        args = self.args
        name, host = f"release-{held}-{rep}", f"release-{held}-{rep}.example.com"
        pod = self.start_pod(name, app=False, readiness=True)
        rev = _activator.revision(name, host, args.cc, not_ready=[pod.addr])
        _activator.write_platform(self.platform, [rev])
        await asyncio.sleep(0.3)  # the activator has read it (polled every 100 ms)
        batch = Batch(self.act_port, host)
        out: dict[str, Any] = {"rep": rep + 1, "held": held}
        try:
            await batch.open(held, args.connect_concurrency, args.open_timeout)
            seen = await self.wait_queued(name, held, batch, args.open_timeout)
            out["queued_seen"] = seen
            # The activator's long-poll probe replaces its slow-pace one (that may still be in
            # flight for up to PROBE_TIMEOUT, 300 ms) once requests wait.
            await asyncio.sleep(0.5)
            started = time.monotonic()
            pod.app = self.start_app(pod.app_port, pod.app_log, record=held)
            complete = await batch.wait(args.release_timeout)
            out["completed"] = complete
            out["statuses"] = batch.statuses()
            listen, arrivals = _read_app_log(pod.app_log)
            out["app_exec_to_listen_ms"] = 1000 * (listen - started) if listen else None
            if listen and arrivals:
                out["listen_to_first_arrival_ms"] = 1000 * (arrivals[0] - listen)
                out["listen_to_last_arrival_ms"] = 1000 * (arrivals[-1] - listen)
                out["arrivals"] = len(arrivals)
            if listen and batch.first_done and batch.last_done:
                out["listen_to_first_response_ms"] = 1000 * (batch.first_done - listen)
                out["listen_to_last_response_ms"] = 1000 * (batch.last_done - listen)
        finally:
            batch.close()
            self.stop_pod(pod)
        return out


def _read_app_log(path: Path) -> tuple[float | None, list[float]]:
    listen: float | None = None
    arrivals: list[float] = []
    try:
        text = path.read_text()
    except OSError:
        return None, []
    for line in text.splitlines():
        kind, _, value = line.partition(" ")
        if kind == "listen":
            listen = float(value)
        elif kind == "request":
            arrivals.append(float(value))
    return listen, arrivals


# --- report ---------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _release_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [r["listen_to_first_arrival_ms"] for r in runs if "listen_to_first_arrival_ms" in r]
    lasts = [r["listen_to_last_response_ms"] for r in runs if "listen_to_last_response_ms" in r]
    return {
        "held": runs[0]["held"] if runs else None,
        "reps": len(runs),
        "measured": len(firsts),
        "first_arrival_ms_median": statistics.median(firsts) if firsts else None,
        "first_arrival_ms_max": max(firsts) if firsts else None,
        "last_response_ms_median": statistics.median(lasts) if lasts else None,
        "all_ok": bool(runs)
        and all(r.get("statuses", {}).get("200", 0) == r["held"] for r in runs),
    }


def summarize(bench: HeldBench) -> dict[str, Any]:
    """Medians and maxima of the release figures per number held, and the DESIGN.md checks."""
    release = {
        str(n): _release_summary([r for r in bench.releases if r["held"] == n])
        for n in bench.args.release_sizes
    }
    mem = bench.memory
    goals = []
    if mem:
        value = mem["delta_mib"] if mem["held"] == RSS_GOAL_HELD else mem["delta_mib_at_10k"]
        text = "10,000 held requests cost <= 64 MiB RSS"
        if mem["held"] != RSS_GOAL_HELD:
            text += f" (scaled from {mem['held']:,})"
        goals.append(
            {"goal": text, "value": value, "limit": RSS_GOAL_MIB, "ok": value <= RSS_GOAL_MIB}
        )
    if bench.drain:
        goals.append(
            {
                "goal": "every held request completes with 200",
                "value": bench.drain["ok"],
                "limit": mem.get("held"),
                "ok": bench.drain["all_ok"],
            }
        )
    for n, rel in release.items():
        med = rel["first_arrival_ms_median"]
        if med is not None:
            goals.append(
                {
                    "goal": f"listen -> first of {int(n):,} held at the app <= 25 ms (median)",
                    "value": med,
                    "limit": RELEASE_GOAL_MS,
                    "ok": med <= RELEASE_GOAL_MS,
                }
            )
    return {"release": release, "goals": goals}


def render(bench: HeldBench, summary: dict[str, Any]) -> str:
    lines: list[str] = []
    mem, drain = bench.memory, bench.drain
    if mem:
        lines += [
            "",
            f"(a) activator memory, {mem['held']:,} held requests (one keep-alive connection "
            f"each, revision without endpoints, containerConcurrency {bench.args.cc})",
            f"  VmRSS idle                 {mem['rss_idle_mib']:8.1f} MiB",
            f"  VmRSS, {mem['held'] // 2:>6,} held         {mem['rss_half_mib']:8.1f} MiB",
            f"  VmRSS, {mem['held']:>6,} held         {mem['rss_held_mib']:8.1f} MiB"
            f"   (VmHWM {mem['hwm_held_mib']:.1f})",
            f"  cost of the held requests  {mem['delta_mib']:8.1f} MiB = "
            f"{mem['bytes_per_held']:,.0f} bytes each (second half alone: "
            f"{mem['marginal_bytes_per_held']:,.0f}); at 10,000: {mem['delta_mib_at_10k']:.1f} MiB",
            f"  activator CPU to accept and hold: {mem['cpu_us_per_held']:.0f} us per request",
        ]
        if mem["connect_errors"] or mem["answered_while_held"] or mem["queued_seen"] < mem["held"]:
            lines.append(
                f"  PROBLEM: queued {mem['queued_seen']:,} of {mem['held']:,}; connect errors "
                f"{mem['connect_errors'] or 0}; answered before a pod existed "
                f"{mem['answered_while_held'] or 0}"
            )
    if drain:
        lines += [
            "",
            "    drain after a ready pod is listed (queue-proxy + app on the load CPU)",
            f"  responses                  {drain['statuses']}"
            + ("" if drain["completed"] else f"  (timed out after {drain['timeout_s']:g} s)"),
            f"  platform write -> first    {_fmt(drain['first_response_ms'], '8.1f')} ms",
            f"  platform write -> last     {_fmt(drain['drain_s'], '8.2f')} s",
            f"  activator CPU              {drain['activator_cpu_us_per_request']:8.0f} us per "
            "released request",
            f"  VmRSS 1 s after the drain  {drain['rss_after_mib']:8.1f} MiB   (VmHWM "
            f"{drain['hwm_mib']:.1f})",
        ]
    if bench.releases:
        lines += [
            "",
            "(b) release latency: requests held, pod listed not ready, its app starts "
            "(ms from the app's listen())",
            f"  {'held':>5} {'rep':<4}{'first at app':>13}{'last at app':>12}{'1st response':>13}"
            f"{'last response':>14}{'exec->listen':>13}  responses",
        ]
        for r in bench.releases:
            lines.append(
                f"  {r['held']:>5} {r['rep']:<4}"
                f"{_fmt(r.get('listen_to_first_arrival_ms'), '.1f'):>13}"
                f"{_fmt(r.get('listen_to_last_arrival_ms'), '.1f'):>12}"
                f"{_fmt(r.get('listen_to_first_response_ms'), '.1f'):>13}"
                f"{_fmt(r.get('listen_to_last_response_ms'), '.1f'):>14}"
                f"{_fmt(r.get('app_exec_to_listen_ms'), '.0f'):>13}  {r.get('statuses', '-')}"
            )
        for n, rel in summary["release"].items():
            lines.append(
                f"  {int(n):,} held: first at the app median "
                f"{_fmt(rel['first_arrival_ms_median'], '.1f')} ms, max "
                f"{_fmt(rel['first_arrival_ms_max'], '.1f')} ms; last response median "
                f"{_fmt(rel['last_response_ms_median'], '.1f')} ms"
            )
    if bench.errors:
        lines += ["", *(f"error: {e}" for e in bench.errors)]
    if summary["goals"]:
        lines += ["", "DESIGN.md targets"]
        for g in summary["goals"]:
            mark = {True: "ok", False: "MISS", None: "n/a"}[g["ok"]]
            spec = ",d" if isinstance(g["value"], int) else ".1f"
            lines.append(f"  {mark:<5}{g['goal']:<62}{_fmt(g['value'], spec):>8}")
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[str]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="knd-bench-held-") as tmp:
            yield tmp
    else:
        keep.mkdir(parents=True, exist_ok=True)
        yield str(keep.resolve())


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` in a fresh event loop. Unlike asyncio.run, Ctrl-C (and SIGTERM, via
    ``signals_raise_system_exit``) raises at once wherever the harness is, instead of a task
    cancellation that an ``await`` may absorb; the ``with`` blocks then stop every process."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(main)
    try:
        loop.run_until_complete(task)
    finally:
        # Interrupted: cancel what is left, quietly (no "exception never retrieved" noise).
        loop.set_exception_handler(lambda _loop, _context: None)
        tasks = asyncio.all_tasks(loop)
        for t in tasks:
            t.cancel()
        if tasks:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        loop.close()


async def _scenario(bench: HeldBench) -> None:
    bench.start_activator()
    assert bench.act is not None
    print(
        f"  activator (pid {bench.act.pid}) listening on {bench.act_port} "
        f"(metrics {bench.metrics_port})",
        flush=True,
    )
    try:
        await bench.memory_and_drain()
    except StartError as exc:
        bench.errors.append(f"memory/drain: {exc}")
        print(f"  memory/drain failed: {exc}", flush=True)
    for rep in range(bench.args.repeat):
        for held in bench.args.release_sizes:
            bench._check_alive()
            try:
                result = await bench.release(rep, held)
            except StartError as exc:
                bench.errors.append(f"release {rep + 1} ({held} held): {exc}")
                print(f"  release {rep + 1} ({held} held) failed: {exc}", flush=True)
                continue
            bench.releases.append(result)
            print(
                f"  [{rep + 1}/{bench.args.repeat}] release of {held} held: first at the app "
                f"{_fmt(result.get('listen_to_first_arrival_ms'), '.1f')} ms after listen, "
                f"{result.get('statuses')}",
                flush=True,
            )


def run(args: argparse.Namespace) -> int:
    """Run the scenario; every process stops on the way out."""
    _resolve(args)
    tools = _tools.ensure_tools(["taskset"])
    started = dt.datetime.now().astimezone()
    # Harness: held + release connections; activator and queue-proxy: twice the held requests
    # while draining at containerConcurrency 0 (one downstream and one upstream each).
    biggest = max(args.held, *args.release_sizes)
    want, need = 2 * biggest + 1024, biggest + 256
    sizes = " and ".join(f"{n:,}" for n in args.release_sizes)
    print(
        f"held: {args.held:,} held requests, {args.repeat} release measurements each of "
        f"{sizes} held; activator on CPU {args.proxy_cpu}, harness, pods and "
        f"autoscaler on CPU {args.load_cpu}",
        flush=True,
    )
    affinity = os.sched_getaffinity(0)
    with (
        _open_files(want, need) as nofile,
        _workdir(args.keep) as tmp,
        ProcessSet() as procs,
    ):
        background = background_load([args.proxy_cpu, args.load_cpu])
        os.sched_setaffinity(0, {args.load_cpu})  # children started without taskset too
        bench = HeldBench(args, procs, Path(tmp), tools)
        try:
            _run_loop(_scenario(bench))
        except StartError as exc:
            bench.errors.append(str(exc))
        finally:
            os.sched_setaffinity(0, affinity)
    summary = summarize(bench)
    print(render(bench, summary))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"held-{started.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "scenario": "held",
        "started": started.isoformat(timespec="seconds"),
        "options": {
            "held": args.held,
            "repeat": args.repeat,
            "release_held": args.release_sizes,
            "container_concurrency": args.cc,
            "connect_concurrency": args.connect_concurrency,
            "pythonpath": args.pythonpath,
            "proxy_cpu": args.proxy_cpu,
            "load_cpu": args.load_cpu,
            "rlimit_nofile": list(nofile),
        },
        "machine": machine() | {"busy_pct_before_run": background},
        "memory": bench.memory,
        "drain": bench.drain,
        "release": {"runs": bench.releases, "by_held": summary["release"]},
        "goals": summary["goals"],
        "errors": bench.errors,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults: {out}")
    return 0 if bench.memory and bench.releases and not bench.errors else 1

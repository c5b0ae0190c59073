"""knd run end to end: cold start from zero, and the scale-out timeline under a stepped load.

(1) cold start: --repeat times (10; --quick 3), a fresh ``knd run --initial-scale 0`` of the hello
app (examples/hello.py) on free ports; once its admin port accepts connections (and --settle
seconds more) one GET is timed: connect, first response byte, last byte, and the activator's
``Knd-Activator-Wait-Ms`` header. knd's event lines (read from its stdout as they come) split it:
request -> scale decision -> pod processes started -> pod ready -> response. Interleaved with it,
the app alone (``python -m examples.hello`` with PORT, no knd): exec to the first accepted TCP
connect, so the table separates the app's own start from knd's overhead. Goal: cold start
<= 500 ms (median).

(1b) release: --repeat times (--quick 3), a fresh ``knd run --initial-scale 0`` of a tiny app that
waits --app-start-ms (300) before it listens, as a real app's imports do, then logs the
CLOCK_MONOTONIC time of its ``listen()`` and of the first request's arrival; one GET from zero.
The figure is listen -> arrival: how long a held request waits once the app is up (DESIGN.md:
<= 10 ms).

(1c) burst: a fresh ``knd run`` of examples/autoscale.py at containerConcurrency 1 from zero with
--max-scale --burst, and --burst parallel ``/?sleep=--burst-ms`` requests (5 x 2000 ms). The
figure is the time to the last response against one cold start plus one request (the pod's
start-to-ready plus --burst-ms), and the scale events: how many came before the first pod was
ready (one step: every scale-up before it).

(2) scale-out: ``knd run`` of examples/autoscale.py (``/?sleep=100``) at containerConcurrency 10
from zero pods; closed-loop clients (each: keep-alive connection, one request at a time) in steps
(--steps CLIENTS:SECONDS,...; 5 -> 20 -> 50 -> 0); every --sample seconds knd's admin
``/status`` is read (desired and ready pods, requests queued and in flight at the activator).
Every request's latency and status is kept; errors must be zero. A final 0-client step ends early
once no pod is left (scale to zero observed). Writes the timeline, the requests and knd's event
lines as CSV, a PNG plot when matplotlib is importable, and JSON, under benchmarks/results/.

Nothing is pinned: knd, its pods and the load generator share the machine's CPUs (the per-step
table shows how busy they were). Every process started stops on exit, on errors and on Ctrl-C
(knd gets SIGTERM and drains its pods; its pods die with it in any case, PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import math
import os
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _procs
from benchmarks._procs import BenchError, ProcessSet, StartError
from benchmarks.proxy import RESULTS_DIR, background_load, machine

ROOT = Path(__file__).resolve().parent.parent
COLD_GOAL_MS = 500.0  # the issue: first request at zero -> response <= 500 ms on this machine
START_TIMEOUT = 20.0  # knd's admin port listening / the app alone listening
STOP_GRACE = 15.0  # knd drains its pods on SIGTERM (1 s quiet period each); then SIGKILL
HELLO = ("-m", "examples.hello")
AUTOSCALE = ("-m", "examples.autoscale")

_LINE_RE = re.compile(r"^\d\d:\d\d:\d\d (.*)$")
_SCALE_RE = re.compile(r"^(\S+): scale (\d+) -> (\d+) \((.*)\)$")
_STARTED_RE = re.compile(r"^(\S+): (?:re)?started.*: app pid (\d+) ")
_READY_RE = re.compile(r"^(\S+): ready after ([0-9.]+)s$")


# --- options --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``knd`` scenario."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 cold starts; steps of 8 s, stable window 6 s, grace period 2 s (about a minute)",
    )
    parser.add_argument(
        "--parts",
        default="cold,scale",
        metavar="PART[,PART]",
        help="what to run: cold, release, burst, scale, comma-separated (cold,scale)",
    )
    parser.add_argument("--repeat", type=int, help="cold starts (10; --quick 3)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds between knd's admin port listening and the timed request (0.5)",
    )
    parser.add_argument(
        "--steps",
        metavar="CLIENTS:SECONDS,...",
        help="load steps (5:20,20:20,50:20,0:120; --quick 5:8,20:8,50:8,0:30); a last step of "
        "0 clients ends early once knd has scaled to zero",
    )
    parser.add_argument(
        "--app-start-ms",
        type=int,
        default=300,
        help="release: the app's own start before it listens (300)",
    )
    parser.add_argument("--burst", type=int, default=5, help="burst: parallel requests (5)")
    parser.add_argument(
        "--burst-ms", type=int, default=2000, help="burst: each request's ?sleep= (2000)"
    )
    parser.add_argument(
        "--sleep-ms", type=int, default=100, help="the autoscale app's ?sleep= per request (100)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=10, help="containerConcurrency of the service (10)"
    )
    parser.add_argument(
        "--stable-window",
        help="config-autoscaler stable-window (Knative's 60s; --quick 6s)",
    )
    parser.add_argument(
        "--scale-to-zero-grace-period",
        help="config-autoscaler scale-to-zero-grace-period (Knative's 30s; --quick 2s)",
    )
    parser.add_argument(
        "--sample", type=float, default=0.5, help="seconds between /status samples (0.5)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="a load request without a full response after this many seconds is an error (30)",
    )
    parser.add_argument(
        "--knd-args",
        default="",
        metavar="'ARGS'",
        help="more `knd run` flags for both parts, e.g. '--drain-quiet-period 0'",
    )
    parser.add_argument(
        "--no-plot", action="store_true", help="no PNG even when matplotlib is importable"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="output directory")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep knd's stderr logs in DIR (default: a temporary directory, removed)",
    )


@dataclass(frozen=True, slots=True)
class Step:
    clients: int
    seconds: float


def parse_steps(spec: str) -> list[Step]:
    """``5:20,20:20,0:30`` -> steps (clients >= 0, seconds > 0)."""
    steps = []
    for part in spec.split(","):
        if not part.strip():
            continue
        clients, sep, seconds = part.partition(":")
        try:
            step = Step(int(clients), float(seconds))
        except ValueError:
            raise BenchError(f"--steps {part!r}: expected CLIENTS:SECONDS") from None
        if not sep or step.clients < 0 or not step.seconds > 0:
            raise BenchError(f"--steps {part!r}: expected CLIENTS >= 0 and SECONDS > 0")
        steps.append(step)
    if not steps:
        raise BenchError("--steps: no step given")
    return steps


def _resolve(args: argparse.Namespace) -> None:
    args.part_set = {p.strip() for p in str(args.parts).split(",") if p.strip()}
    if not args.part_set or not args.part_set <= {"cold", "release", "burst", "scale"}:
        raise BenchError("--parts: expected some of cold, release, burst, scale")
    if args.app_start_ms < 0 or args.burst < 1 or args.burst_ms < 0:
        raise BenchError("--app-start-ms and --burst-ms must be >= 0, --burst >= 1")
    if args.repeat is None:
        args.repeat = 3 if args.quick else 10
    if args.steps is None:
        args.steps = "5:8,20:8,50:8,0:30" if args.quick else "5:20,20:20,50:20,0:120"
    args.step_list = parse_steps(args.steps)
    if args.stable_window is None and args.quick:
        args.stable_window = "6s"
    if args.scale_to_zero_grace_period is None and args.quick:
        args.scale_to_zero_grace_period = "2s"
    if args.repeat < 1 or args.settle < 0 or args.sample <= 0 or args.request_timeout <= 0:
        raise BenchError("--repeat must be >= 1, --settle >= 0, --sample and timeouts > 0")
    if args.sleep_ms < 0 or args.concurrency < 0:
        raise BenchError("--sleep-ms and --concurrency must be >= 0")
    try:
        args.extra_knd = shlex.split(args.knd_args)
    except ValueError as exc:
        raise BenchError(f"--knd-args: {exc}") from None


# --- small helpers --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def compile_bytecode() -> None:
    """Fresh .pyc files for our packages and the examples (PYTHONDONTWRITEBYTECODE may be set in
    this shell: a missing .pyc would be compiled at every start and inflate the cold start)."""
    dirs = ["dataplane", "queueproxy", "activator", "autoscaler", "platforms", "knd", "examples"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(ROOT / d) for d in dirs)],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
    )


def _proc_cpu_ticks(pid: int) -> int:
    """utime + stime of one process (not its children), in clock ticks; 0 when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2 :].split()[0] != "Z"


# --- knd as a child process -----------------------------------------------------------------


class LineLog:
    """knd's stdout, read by a thread: each line with the time.monotonic() it arrived."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[tuple[float, str]] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, name="knd-stdout", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip()))
        except (OSError, ValueError):  # the pipe was closed under us (the process stopped)
            pass

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)

    def events(self, since: float = 0.0) -> list[tuple[float, str]]:
        """knd's event lines (timestamp prefix removed) that arrived at or after ``since``."""
        out = []
        for t, line in list(self.lines):
            m = _LINE_RE.match(line)
            if m and t >= since:
                out.append((t, m.group(1)))
        return out


@dataclass
class Knd:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    out: LineLog
    log: Path
    started: float  # time.monotonic() before Popen
    listening: float  # admin port accepted a connection

    def app_pids(self) -> list[int]:
        """Pids of every app knd reported starting."""
        pids = []
        for _, text in self.out.events():
            m = _STARTED_RE.match(text)
            if m:
                pids.append(int(m.group(2)))
        return pids

    def problems(self) -> list[str]:
        """Lines of knd's output that point at a problem (crashes, probe failures, errors)."""
        bad = ("crashed", "not ready", "internal error", "Traceback", "Error", "killing it")
        found = [text for _, text in self.out.lines if any(word in text for word in bad)]
        with contextlib.suppress(OSError):
            found += [
                f"stderr: {line}"
                for line in self.log.read_text(errors="replace").splitlines()
                if line.strip()
            ]
        return found


def start_knd(
    procs: ProcessSet, name: str, app: tuple[str, ...], flags: list[str], log: Path
) -> Knd:
    """``knd run`` on free ports; returns once its admin port accepts connections."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for attempt in range(3):  # a free port may be taken by someone else before knd binds it
        port, admin = _procs.free_port(), _procs.free_port()
        argv = [sys.executable, "-m", "knd", "run", "--name", name, "--port", str(port)]
        argv += ["--admin-port", str(admin), *flags, "--", sys.executable, *app]
        started = time.monotonic()
        proc = procs.start(argv, env=env, log_path=log, stdout_pipe=True, cwd=ROOT)
        out = LineLog(proc.stdout)
        try:
            _procs.wait_listening(admin, proc, START_TIMEOUT, 0.002, log)
        except StartError as exc:
            procs.stop(proc, graceful=False)
            if "cannot listen" not in str(exc) or attempt == 2:
                raise StartError(f"knd run: {exc}") from None
            continue
        return Knd(proc, port, admin, out, log, started, time.monotonic())
    raise AssertionError("unreachable")


def stop_knd(procs: ProcessSet, knd: Knd) -> dict[str, Any]:
    """SIGTERM knd (it drains and stops its pods); how long that took and what outlived it."""
    pids = knd.app_pids()
    t0 = time.monotonic()
    code = procs.stop(knd.proc)
    took = time.monotonic() - t0
    knd.out.join()
    leftover = [pid for pid in pids if _alive(pid)]
    return {"stop_s": took, "exit": code, "apps_alive_after_stop": leftover}


# --- (1) cold start -------------------------------------------------------------------------


@dataclass
class Timed:
    status: int = 0
    connect_s: float | None = None
    ttfb_s: float | None = None
    total_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


def timed_get(port: int, path: str, timeout: float) -> Timed:
    """One GET on a fresh connection (``Connection: close``), timed with time.monotonic() from
    just before connect: connected, first response byte, response complete."""
    out = Timed()
    t0 = time.monotonic()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: knd-bench-cold\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            out.connect_s = time.monotonic() - t0
            sock.sendall(request)
            buf = b""
            length: int | None = None
            head_end = -1
            while True:
                chunk = sock.recv(65536)
                if out.ttfb_s is None and chunk:
                    out.ttfb_s = time.monotonic() - t0
                if not chunk:
                    break
                buf += chunk
                if head_end < 0:
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end >= 0:
                        head = buf[:head_end].decode("latin-1").split("\r\n")
                        out.status = int(head[0].split()[1])
                        for line in head[1:]:
                            k, _, v = line.partition(":")
                            out.headers[k.strip().lower()] = v.strip()
                        if "content-length" in out.headers:
                            length = int(out.headers["content-length"])
                if head_end >= 0 and length is not None and len(buf) >= head_end + 4 + length:
                    break
            out.total_s = time.monotonic() - t0
            out.body = buf[head_end + 4 :] if head_end >= 0 else b""
    except (OSError, ValueError, IndexError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def app_alone(procs: ProcessSet, tmp: Path) -> float:
    """The hello app without knd: Popen to the first accepted connect on its PORT (1 ms polls)."""
    port = _procs.free_port()
    env = dict(os.environ, PORT=str(port))
    log = tmp / "app-alone.log"
    t0 = time.monotonic()
    proc = procs.start([sys.executable, *HELLO], env=env, log_path=log, cwd=ROOT)
    try:
        _procs.wait_listening(port, proc, START_TIMEOUT, 0.001, log)
        return time.monotonic() - t0
    finally:
        procs.stop(proc, graceful=False)


def cold_start(procs: ProcessSet, args: argparse.Namespace, tmp: Path, rep: int) -> dict[str, Any]:
    """One fresh knd run at zero, one timed GET, knd stopped."""
    flags = ["--initial-scale", "0", *args.extra_knd]
    knd = start_knd(procs, "hello", HELLO, flags, tmp / f"cold-{rep}.knd.log")
    out: dict[str, Any] = {"rep": rep + 1, "knd_exec_to_admin_ms": _ms(knd.listening - knd.started)}
    try:
        time.sleep(args.settle)
        before = knd.out.events()
        if any(_SCALE_RE.match(text) for _, text in before):
            out["note"] = "knd scaled before the request (not at zero)"
        sent = time.monotonic()
        r = timed_get(knd.port, "/", START_TIMEOUT)
        out |= {
            "status": r.status,
            "error": r.error,
            "body_ok": r.body.startswith(b"Hello"),
            "connect_ms": _ms(r.connect_s),
            "ttfb_ms": _ms(r.ttfb_s),
            "total_ms": _ms(r.total_s),
            "wait_header_ms": float(r.headers["knd-activator-wait-ms"])
            if "knd-activator-wait-ms" in r.headers
            else None,
        }
        time.sleep(0.1)  # the event lines printed before the response have been read
        for t, text in knd.out.events(sent):
            if "decision_ms" not in out and _SCALE_RE.match(text):
                out["decision_ms"] = _ms(t - sent)
            elif "pod_started_ms" not in out and _STARTED_RE.match(text):
                out["pod_started_ms"] = _ms(t - sent)
            elif "pod_ready_ms" not in out and (m := _READY_RE.match(text)):
                out["pod_ready_ms"] = _ms(t - sent)
                out["pod_start_to_ready_ms"] = 1000 * float(m.group(2))
        out["knd_status"] = _admin_status_sync(knd.admin_port)
    finally:
        out |= stop_knd(procs, knd)
        out["problems"] = knd.problems()
    return out


def _admin_status_sync(port: int) -> dict[str, Any] | None:
    r = timed_get(port, "/status", 3.0)
    if r.status != 200:
        return None
    with contextlib.suppress(ValueError, IndexError):
        return dict(json.loads(r.body)["services"][0])
    return None


def run_cold(procs: ProcessSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    reps: list[dict[str, Any]] = []
    alone: list[float] = []
    errors: list[str] = []
    print(f"(1) cold start: {args.repeat} fresh `knd run --initial-scale 0` of examples/hello.py")
    for rep in range(args.repeat):
        try:
            alone.append(1000 * app_alone(procs, tmp))
        except StartError as exc:
            errors.append(f"app alone {rep + 1}: {exc}")
        try:
            r = cold_start(procs, args, tmp, rep)
        except StartError as exc:
            errors.append(f"cold start {rep + 1}: {exc}")
            print(f"  [{rep + 1}/{args.repeat}] failed: {exc}", flush=True)
            continue
        reps.append(r)
        print(
            f"  [{rep + 1}/{args.repeat}] {r['status'] or r['error']}: total "
            f"{_fmt(r['total_ms'])} ms, first byte {_fmt(r['ttfb_ms'])} ms, activator wait "
            f"{_fmt(r['wait_header_ms'])} ms; app alone {_fmt(alone[-1] if alone else None)} ms; "
            f"knd stopped in {r['stop_s']:.1f} s",
            flush=True,
        )
    return {"reps": reps, "app_alone_ms": alone, "errors": errors}


RELEASE_GOAL_MS = 10.0  # DESIGN.md: a held request reaches the app within 10 ms of it listening

RELEASE_APP = """
import os, socket, sys, time
time.sleep(int(sys.argv[2]) / 1000)  # the app's own start (imports, configuration)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(128)
listen = time.monotonic()
first = None
while True:
    c, _ = s.accept()
    data = c.recv(65536)
    if first is None and data.startswith(b"GET /release"):
        first = time.monotonic()
        with open(sys.argv[1], "w") as f:
            f.write(f"{listen} {first}")
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nok\\n")
    c.close()
"""


def release_once(
    procs: ProcessSet, args: argparse.Namespace, tmp: Path, rep: int
) -> dict[str, Any]:
    """One fresh knd run at zero of the release app, one GET: listen -> first arrival."""
    app = tmp / "release_app.py"
    app.write_text(RELEASE_APP)
    record = tmp / f"release-{rep}.times"
    record.unlink(missing_ok=True)
    flags = ["--initial-scale", "0", *args.extra_knd]
    knd = start_knd(
        procs, "release", (str(app), str(record), str(args.app_start_ms)), flags,
        tmp / f"release-{rep}.knd.log",
    )  # fmt: skip
    out: dict[str, Any] = {"rep": rep + 1}
    try:
        time.sleep(args.settle)
        r = timed_get(knd.port, "/release", START_TIMEOUT)
        out |= {"status": r.status, "error": r.error, "total_ms": _ms(r.total_s)}
        with contextlib.suppress(OSError, ValueError):
            listen, first = (float(v) for v in record.read_text().split())
            out["listen_to_arrival_ms"] = 1000 * (first - listen)
    finally:
        out |= stop_knd(procs, knd)
        out["problems"] = knd.problems()
    return out


def run_release(procs: ProcessSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    reps: list[dict[str, Any]] = []
    errors: list[str] = []
    print(
        f"(1b) release: {args.repeat} fresh `knd run --initial-scale 0` of an app that listens "
        f"after {args.app_start_ms} ms; listen -> held request at the app"
    )
    for rep in range(args.repeat):
        try:
            r = release_once(procs, args, tmp, rep)
        except StartError as exc:
            errors.append(f"release {rep + 1}: {exc}")
            continue
        reps.append(r)
        print(
            f"  [{rep + 1}/{args.repeat}] {r['status'] or r['error']}: listen -> arrival "
            f"{_fmt(r.get('listen_to_arrival_ms'), '.1f')} ms",
            flush=True,
        )
    good = [r["listen_to_arrival_ms"] for r in reps if r.get("status") == 200 and
            r.get("listen_to_arrival_ms") is not None]  # fmt: skip
    summary = {
        "n": len(good),
        "median_ms": statistics.median(good) if good else None,
        "max_ms": max(good) if good else None,
        "goal": f"listen -> held request at the app <= {RELEASE_GOAL_MS:.0f} ms (median)",
        "failed": len(reps) - len(good) + len(errors),
    }
    summary["ok"] = bool(good) and summary["median_ms"] <= RELEASE_GOAL_MS
    print(
        f"  release: median {_fmt(summary['median_ms'], '.1f')} ms, max "
        f"{_fmt(summary['max_ms'], '.1f')} ms over {len(good)} ({summary['goal']}: "
        f"{'met' if summary['ok'] else 'MISSED'})",
        flush=True,
    )
    return {"reps": reps, "errors": errors, "summary": summary}


def run_burst(procs: ProcessSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """--burst parallel requests at CC 1 from zero: time to the last response, scale steps."""
    n, ms = args.burst, args.burst_ms
    print(f"(1c) burst: {n} parallel /?sleep={ms} at containerConcurrency 1 from zero")
    flags = ["--concurrency", "1", "--initial-scale", "0", "--max-scale", str(n)]
    knd = start_knd(procs, "burst", AUTOSCALE, [*flags, *args.extra_knd], tmp / "burst.knd.log")
    out: dict[str, Any] = {"requests": n, "sleep_ms": ms}
    try:
        time.sleep(args.settle)
        results: list[Timed] = [Timed() for _ in range(n)]

        def one(i: int) -> None:
            results[i] = timed_get(knd.port, f"/?sleep={ms}", START_TIMEOUT + ms / 1000)

        sent = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["statuses"] = [r.status or r.error for r in results]
        out["last_response_ms"] = _ms(max((r.total_s or 0.0) for r in results))
        time.sleep(0.1)
        scales: list[tuple[float, int, int]] = []
        ready: list[tuple[float, float]] = []
        for t, text in knd.out.events(sent):
            if m := _SCALE_RE.match(text):
                scales.append((t, int(m.group(2)), int(m.group(3))))
            elif m := _READY_RE.match(text):
                ready.append((t, 1000 * float(m.group(2))))
        first_ready = ready[0][0] if ready else math.inf
        ups = [(t, a, b) for t, a, b in scales if b > a]
        out["scale_ups"] = [f"{a} -> {b} at {_ms(t - sent):.0f} ms" for t, a, b in ups]
        out["scale_ups_before_first_ready"] = sum(1 for t, _, _ in ups if t < first_ready)
        out["pods_ready"] = len(ready)
        out["start_to_ready_ms_median"] = statistics.median(r for _, r in ready) if ready else None
        if out["start_to_ready_ms_median"] is not None:
            out["one_cold_start_plus_one_request_ms"] = out["start_to_ready_ms_median"] + ms
    finally:
        out |= stop_knd(procs, knd)
        out["problems"] = knd.problems()
    base = out.get("one_cold_start_plus_one_request_ms")
    print(
        f"  burst: last response after {_fmt(out.get('last_response_ms'))} ms (one cold start + "
        f"one request: {_fmt(base)} ms); scale-ups {out.get('scale_ups')}, "
        f"{out.get('scale_ups_before_first_ready')} before the first pod was ready; statuses "
        f"{out.get('statuses')}",
        flush=True,
    )
    return out


def _stats(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else None,
        "p90": pct(values, 90),
        "max": max(values) if values else None,
        "min": min(values) if values else None,
    }


def summarize_cold(cold: dict[str, Any]) -> dict[str, Any]:
    reps = [r for r in cold["reps"] if r.get("status") == 200]
    rows: dict[str, list[float]] = {}
    for key in (
        "total_ms",
        "ttfb_ms",
        "wait_header_ms",
        "decision_ms",
        "pod_started_ms",
        "pod_start_to_ready_ms",
        "pod_ready_ms",
        "knd_exec_to_admin_ms",
    ):
        rows[key] = [r[key] for r in reps if r.get(key) is not None]
    rows["app_alone_ms"] = list(cold["app_alone_ms"])
    rows["ready_to_response_ms"] = [
        r["total_ms"] - r["pod_ready_ms"] for r in reps if r.get("pod_ready_ms") is not None
    ]
    med_app = statistics.median(rows["app_alone_ms"]) if rows["app_alone_ms"] else None
    rows["overhead_ms"] = [r["total_ms"] - med_app for r in reps] if med_app is not None else []
    summary = {key: _stats(values) for key, values in rows.items()}
    med = summary["total_ms"]["median"]
    summary["goal"] = {
        "goal": f"cold start <= {COLD_GOAL_MS:.0f} ms (median)",
        "value": med,
        "ok": None if med is None else med <= COLD_GOAL_MS,
    }
    summary["failed"] = len(cold["reps"]) - len(reps) + len(cold["errors"])
    return summary


COLD_ROWS = [
    ("total_ms", "request -> full response (the cold start)"),
    ("ttfb_ms", "request -> first response byte"),
    ("wait_header_ms", "Knd-Activator-Wait-Ms header"),
    ("decision_ms", "request -> 'scale 0 -> 1' line"),
    ("pod_started_ms", "request -> pod processes started"),
    ("pod_start_to_ready_ms", "pod started -> ready (knd's 'ready after')"),
    ("pod_ready_ms", "request -> 'ready' line"),
    ("ready_to_response_ms", "'ready' line -> full response"),
    ("app_alone_ms", "the app alone: exec -> listening"),
    ("overhead_ms", "knd's overhead: cold start - app alone (median)"),
    ("knd_exec_to_admin_ms", "(knd run itself: exec -> admin port)"),
]


def render_cold(cold: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = [
        "",
        f"(1) cold start of examples/hello.py, {summary['total_ms']['n']} good repetitions "
        "(ms; p90 is nearest-rank)",
        f"  {'':<50}{'median':>8}{'p90':>8}{'max':>8}{'min':>8}",
    ]
    for key, label in COLD_ROWS:
        s = summary[key]
        lines.append(
            f"  {label:<50}{_fmt(s['median']):>8}{_fmt(s['p90']):>8}{_fmt(s['max']):>8}"
            f"{_fmt(s['min']):>8}"
        )
    stops = [r["stop_s"] for r in cold["reps"]]
    if stops:
        lines.append(
            f"  knd stop (SIGTERM -> exit, pods drained): median {statistics.median(stops):.2f} s"
        )
    g = summary["goal"]
    mark = {True: "ok", False: "MISS", None: "n/a"}[g["ok"]]
    lines.append(f"  {mark:<5}{g['goal']}: {_fmt(g['value'])} ms")
    for r in cold["reps"]:
        if r.get("status") != 200 or not r.get("body_ok"):
            lines.append(f"  PROBLEM rep {r['rep']}: status {r.get('status')} {r.get('error')}")
        if r.get("apps_alive_after_stop"):
            lines.append(
                f"  PROBLEM rep {r['rep']}: app pids alive after knd stopped: "
                f"{r['apps_alive_after_stop']}"
            )
        if r.get("note"):
            lines.append(f"  note rep {r['rep']}: {r['note']}")
        for p in r.get("problems", []):
            lines.append(f"  knd said (rep {r['rep']}): {p}")
    lines += [f"  error: {e}" for e in cold["errors"]]
    return "\n".join(lines)


# --- (2) scale-out under a stepped load -----------------------------------------------------


@dataclass(slots=True)
class Req:
    start: float  # time.monotonic()
    end: float
    status: int  # 0: no response
    step: int
    error: str  # "" when the response was a 200


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, connection reusable)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == "content-length":
            length = int(value)
        elif key == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif key == "connection" and "close" in value:
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # data and its CRLF (no trailers expected)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, not close


class Load:
    """Closed-loop clients: client i sends one request at a time on its keep-alive connection
    while i < level; lowering the level lets the extra clients finish their current request."""

    def __init__(self, port: int, path: str, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: knd-bench-load\r\n\r\n"
        ).encode()
        self.level = 0
        self.step = -1
        self.in_flight = 0
        self.done: list[Req] = []
        self.errors = 0
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def set_level(self, step: int, clients: int) -> None:
        self.step, self.level = step, clients
        for i in range(clients):
            task = self.tasks.get(i)
            if task is None or task.done():
                self.tasks[i] = asyncio.get_running_loop().create_task(self._client(i))

    async def finish(self, timeout: float) -> None:
        """Level 0, then wait for the requests in flight (cancelled after ``timeout``)."""
        self.level = 0
        tasks = [t for t in self.tasks.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def _client(self, i: int) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while i < self.level:
                step, reused = self.step, writer is not None
                status, keep, error = 0, False, ""
                start = time.monotonic()
                self.in_flight += 1
                try:
                    async with asyncio.timeout(self.timeout):
                        if writer is None:
                            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                        assert reader is not None
                        writer.write(self.request)
                        status, keep = await _read_response(reader)
                except TimeoutError:
                    error = f"timeout ({self.timeout:g} s)"
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    error = type(exc).__name__ + (" on a reused connection" if reused else "")
                except (ValueError, IndexError):
                    error = "malformed response"
                finally:
                    self.in_flight -= 1
                end = time.monotonic()
                if not error and status != 200:
                    error = f"status {status}"
                if error:
                    self.errors += 1
                self.done.append(Req(start, end, status, step, error))
                if not keep and writer is not None:
                    writer.close()
                    reader = writer = None
                if error and not status:
                    await asyncio.sleep(0.05)  # no tight loop against a refusing port
        finally:
            if writer is not None:
                writer.close()


async def _admin_status(port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """knd's ``/status`` (the first service), or None when it does not answer in time."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                data = await reader.read()
            finally:
                writer.close()
        body = data.split(b"\r\n\r\n", 1)[1]
        return dict(json.loads(body)["services"][0])
    except (OSError, TimeoutError, ValueError, IndexError, KeyError):
        return None


class Sampler:
    """Every ``period`` s: knd's status, the offered load, and CPU counters."""

    def __init__(self, knd: Knd, load: Load, period: float, t0: float) -> None:
        self.knd, self.load, self.period, self.t0 = knd, load, period, t0
        self.samples: list[dict[str, Any]] = []
        self.missed = 0

    def last(self) -> dict[str, Any] | None:
        return self.samples[-1] if self.samples else None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        pid = self.knd.proc.pid
        while True:
            st = await _admin_status(self.knd.admin_port)
            now = time.monotonic()
            if st is None:
                self.missed += 1
            own = _proc_cpu_ticks(pid) / _procs.CLK_TCK
            tree = _procs.tree_cpu_seconds(pid)
            ru = resource.getrusage(resource.RUSAGE_SELF)
            ticks = _procs.cpu_busy_ticks()
            self.samples.append(
                {
                    "t": now - self.t0,
                    "step": self.load.step,
                    "clients": self.load.level,
                    "offered": self.load.in_flight,
                    "desired": None if st is None else st["desired"],
                    "ready": None if st is None else st["ready"],
                    "act_in_flight": None if st is None else st["in_flight"],
                    "queued": None if st is None else st["queued"],
                    "completed": len(self.load.done),
                    "errors": self.load.errors,
                    "knd_cpu_s": own,
                    "pods_cpu_s": max(0.0, tree - own),
                    "harness_cpu_s": ru.ru_utime + ru.ru_stime,
                    "busy_ticks": sum(b for b, _ in ticks.values()),
                    "total_ticks": sum(t for _, t in ticks.values()),
                }
            )
            nxt += self.period
            await asyncio.sleep(max(0.0, nxt - loop.time()))


def _scale_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--concurrency", str(args.concurrency), "--initial-scale", "0"]
    if args.stable_window:
        flags += ["--stable-window", str(args.stable_window)]
    if args.scale_to_zero_grace_period:
        flags += ["--scale-to-zero-grace-period", str(args.scale_to_zero_grace_period)]
    return flags + args.extra_knd


async def drive(knd: Knd, args: argparse.Namespace) -> dict[str, Any]:
    """Run the steps against knd, sampling all along; the raw timeline."""
    load = Load(knd.port, f"/?sleep={args.sleep_ms}", args.request_timeout)
    t0 = time.monotonic()
    sampler = Sampler(knd, load, args.sample, t0)
    sampling = asyncio.get_running_loop().create_task(sampler.run())
    steps: list[dict[str, Any]] = []
    try:
        for idx, step in enumerate(args.step_list):
            start = time.monotonic()
            load.set_level(idx, step.clients)
            last_idle = idx == len(args.step_list) - 1 and step.clients == 0
            print(
                f"  t={start - t0:5.1f} s  step {idx + 1}: {step.clients} clients for "
                f"{'up to ' if last_idle else ''}{step.seconds:g} s",
                flush=True,
            )
            end = start + step.seconds
            zero_seen = 0
            while time.monotonic() < end:
                await asyncio.sleep(min(0.25, max(0.0, end - time.monotonic())))
                s = sampler.last()
                if last_idle and s and s["t"] + t0 > start and s["ready"] == 0:
                    zero_seen = zero_seen + 1 if s["desired"] == 0 else 0
                    if zero_seen >= 2 and load.in_flight == 0:
                        break
            steps.append(
                {"clients": step.clients, "start": start - t0, "end": time.monotonic() - t0}
            )
            if sampling.done():
                break  # the sampler died: its exception is raised below
        await load.finish(args.request_timeout)
        await asyncio.sleep(args.sample)  # one more sample after the load
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        await load.finish(1.0)
    return {
        "t0": t0,
        "steps": steps,
        "samples": sampler.samples,
        "missed_samples": sampler.missed,
        "requests": load.done,
    }


def summarize_scale(
    raw: dict[str, Any], events: list[tuple[float, str]], args: argparse.Namespace
) -> dict[str, Any]:
    """Per step: throughput, latency percentiles, errors, pods, time to scale, CPU."""
    t0 = raw["t0"]
    samples = raw["samples"]
    out: list[dict[str, Any]] = []
    ideal_per_client = 1000 / args.sleep_ms if args.sleep_ms else None
    for idx, st in enumerate(raw["steps"]):
        reqs = [r for r in raw["requests"] if r.step == idx]
        ok = [1000 * (r.end - r.start) for r in reqs if not r.error]
        errors: dict[str, int] = {}
        for r in reqs:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
        span = st["end"] - st["start"]
        inside = [s for s in samples if st["start"] <= s["t"] <= st["end"]]
        seen = [s for s in inside if s["desired"] is not None]
        max_desired = max((s["desired"] for s in seen), default=None)
        max_ready = max((s["ready"] for s in seen), default=None)
        row: dict[str, Any] = {
            "step": idx + 1,
            "clients": st["clients"],
            "seconds": span,
            "requests": len(reqs),
            "req_per_s": len([r for r in reqs if not r.error]) / span if span > 0 else None,
            "ideal_req_per_s": st["clients"] * ideal_per_client if ideal_per_client else None,
            "p50_ms": pct(ok, 50),
            "p95_ms": pct(ok, 95),
            "p99_ms": pct(ok, 99),
            "max_ms": max(ok) if ok else None,
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "max_desired": max_desired,
            "max_ready": max_ready,
            "max_queued": max((s["queued"] for s in seen), default=None),
            "max_act_in_flight": max((s["act_in_flight"] for s in seen), default=None),
            "desired_at_max_s": next(
                (s["t"] - st["start"] for s in seen if s["desired"] == max_desired), None
            ),
            "ready_at_max_desired_s": next(
                (s["t"] - st["start"] for s in seen if s["ready"] >= (max_desired or 0)), None
            )
            if max_desired
            else None,
            "zero_after_s": next(
                (s["t"] - st["start"] for s in seen if s["desired"] == 0 and s["ready"] == 0),
                None,
            )
            if st["clients"] == 0
            else None,
        }
        if len(inside) >= 2:
            a, b = inside[0], inside[-1]
            dt_s = b["t"] - a["t"]
            dticks = b["total_ticks"] - a["total_ticks"]
            ncpu = os.cpu_count() or 1
            if dt_s > 0:
                row["knd_cpu_pct"] = 100 * (b["knd_cpu_s"] - a["knd_cpu_s"]) / dt_s
                row["pods_cpu_pct"] = 100 * (b["pods_cpu_s"] - a["pods_cpu_s"]) / dt_s
                row["harness_cpu_pct"] = 100 * (b["harness_cpu_s"] - a["harness_cpu_s"]) / dt_s
            if dticks > 0:
                row["machine_busy_pct"] = 100 * ncpu * (b["busy_ticks"] - a["busy_ticks"]) / dticks
        ready_after = []
        for t, text in events:
            m = _READY_RE.match(text)
            if m and st["start"] <= t - t0 <= st["end"]:
                ready_after.append(1000 * float(m.group(2)))
        row["pods_ready"] = len(ready_after)
        row["pod_ready_after_ms_median"] = statistics.median(ready_after) if ready_after else None
        row["pod_ready_after_ms_max"] = max(ready_after) if ready_after else None
        out.append(row)
    total_errors = sum(r["errors"] for r in out)
    scale_events = []
    for t, text in events:
        m = _SCALE_RE.match(text)
        if m:
            scale_events.append(
                {"t": t - t0, "from": int(m.group(2)), "to": int(m.group(3)), "why": m.group(4)}
            )
    return {
        "steps": out,
        "requests": len(raw["requests"]),
        "errors": total_errors,
        "missed_samples": raw["missed_samples"],
        "scale_events": scale_events,
        "goal": {
            "goal": "no request fails under the stepped load",
            "value": total_errors,
            "ok": total_errors == 0,
        },
    }


def render_scale(summary: dict[str, Any], args: argparse.Namespace, problems: list[str]) -> str:
    sw = args.stable_window or "60s (default)"
    grace = args.scale_to_zero_grace_period or "30s (default)"
    lines = [
        "",
        f"(2) scale-out: examples/autoscale.py ?sleep={args.sleep_ms}, containerConcurrency "
        f"{args.concurrency}, stable window {sw}, scale-to-zero grace {grace}; closed-loop clients",
        f"  {'step':<5}{'clients':>7}{'secs':>6}{'requests':>9}{'req/s':>8}{'x ideal':>8}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}{'max':>7}{'errors':>7}  (latency in ms)",
    ]
    for r in summary["steps"]:
        ideal = (
            r["req_per_s"] / r["ideal_req_per_s"]
            if r["ideal_req_per_s"] and r["req_per_s"] is not None
            else None
        )
        lines.append(
            f"  {r['step']:<5}{r['clients']:>7}{r['seconds']:>6.1f}{r['requests']:>9}"
            f"{_fmt(r['req_per_s'], '.1f'):>8}{_fmt(ideal, '.2f'):>8}{_fmt(r['p50_ms']):>7}"
            f"{_fmt(r['p95_ms']):>7}{_fmt(r['p99_ms']):>7}{_fmt(r['max_ms']):>7}{r['errors']:>7}"
        )
    lines.append(
        f"  {'step':<5}{'desired':>8}{'ready':>6}{'queued':>7}{'act.inflt':>10}"
        f"{'t->desired':>11}{'t->ready':>9}{'t->zero':>8}{'pods up':>8}{'up->ready ms':>13}"
        f"{'busy%':>7}{'knd%':>6}{'pods%':>6}{'load%':>6}"
    )
    for r in summary["steps"]:
        lines.append(
            f"  {r['step']:<5}{_fmt(r['max_desired']):>8}{_fmt(r['max_ready']):>6}"
            f"{_fmt(r['max_queued']):>7}{_fmt(r['max_act_in_flight']):>10}"
            f"{_fmt(r['desired_at_max_s'], '.1f'):>11}{_fmt(r['ready_at_max_desired_s'], '.1f'):>9}"
            f"{_fmt(r['zero_after_s'], '.1f'):>8}{r['pods_ready']:>8}"
            f"{_fmt(r['pod_ready_after_ms_median']) + '/' + _fmt(r['pod_ready_after_ms_max']):>13}"
            f"{_fmt(r.get('machine_busy_pct')):>7}{_fmt(r.get('knd_cpu_pct')):>6}"
            f"{_fmt(r.get('pods_cpu_pct')):>6}{_fmt(r.get('harness_cpu_pct')):>6}"
        )
    lines.append(
        "  (max over the step's samples; t->: seconds from the step's start until desired reached "
        "its max, ready reached that, or no pod was left; up->ready: knd's 'ready after', "
        "median/max of the pods that got ready in the step; busy% of all CPUs x CPUs, "
        "knd% = knd's own process, pods% = app + queue-proxy processes, load% = this harness)"
    )
    for r in summary["steps"]:
        if r["error_kinds"]:
            lines.append(f"  PROBLEM step {r['step']}: errors {r['error_kinds']}")
    if summary["missed_samples"]:
        lines.append(f"  note: {summary['missed_samples']} /status samples got no answer in 2 s")
    lines += [f"  knd said: {p}" for p in problems]
    g = summary["goal"]
    mark = {True: "ok", False: "MISS", None: "n/a"}[g["ok"]]
    lines.append(f"  {mark:<5}{g['goal']}: {g['value']} errors of {summary['requests']} requests")
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_scale_files(
    raw: dict[str, Any], events: list[tuple[float, str]], stem: Path
) -> dict[str, str]:
    """Timeline, requests and knd's event lines as CSV; returns name -> path."""
    t0 = raw["t0"]
    cols = ["t", "step", "clients", "offered", "desired", "ready", "act_in_flight", "queued"]
    cols += ["completed", "errors", "knd_cpu_s", "pods_cpu_s", "harness_cpu_s"]
    timeline = Path(f"{stem}-timeline.csv")
    write_csv(
        timeline,
        [*cols[:1], *cols[1:]],
        [
            [round(s[c], 3) if isinstance(s[c], float) else s[c] for c in cols]
            for s in raw["samples"]
        ],
    )
    requests = Path(f"{stem}-requests.csv")
    write_csv(
        requests,
        ["start_s", "latency_ms", "status", "step", "error"],
        [
            [
                round(r.start - t0, 4),
                round(1000 * (r.end - r.start), 2),
                r.status,
                r.step + 1,
                r.error,
            ]
            for r in raw["requests"]
        ],
    )
    ev = Path(f"{stem}-events.csv")
    write_csv(ev, ["t_s", "line"], [[round(t - t0, 3), text] for t, text in events])
    return {"timeline_csv": str(timeline), "requests_csv": str(requests), "events_csv": str(ev)}


def plot_scale(
    raw: dict[str, Any], summary: dict[str, Any], args: argparse.Namespace, path: Path
) -> str | None:
    """A PNG of the timeline; None when matplotlib is not importable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    samples = [s for s in raw["samples"] if s["desired"] is not None]
    t = [s["t"] for s in samples]
    t0 = raw["t0"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ax1.step(t, [s["clients"] for s in samples], where="post", label="clients (offered level)")
    ax1.plot(t, [s["offered"] for s in samples], label="requests in flight (client side)")
    ax1.plot(t, [s["queued"] for s in samples], label="queued at the activator")
    ax1.plot(t, [s["act_in_flight"] for s in samples], ":", label="in flight at the activator")
    ax1.set_ylabel("requests")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.step(t, [s["desired"] for s in samples], where="post", label="desired pods")
    ax2.step(t, [s["ready"] for s in samples], where="post", label="ready pods")
    for ev in summary["scale_events"]:
        ax2.axvline(ev["t"], color="grey", alpha=0.25, linewidth=0.8)
    ax2.set_ylabel("pods")
    ax2.legend(loc="upper left", fontsize=8)
    reqs = raw["requests"]
    ax3.scatter(
        [r.start - t0 for r in reqs if not r.error],
        [1000 * (r.end - r.start) for r in reqs if not r.error],
        s=2,
        alpha=0.25,
        color="tab:blue",
        label="request latency",
    )
    bad = [r for r in reqs if r.error]
    if bad:
        ax3.scatter(
            [r.start - t0 for r in bad],
            [1000 * (r.end - r.start) for r in bad],
            s=12,
            marker="x",
            color="red",
            label="errors",
        )
    styles = (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red"))
    for st, row in zip(raw["steps"], summary["steps"], strict=True):
        for key, color in styles:
            if row[key] is not None:
                ax3.hlines(row[key], st["start"], st["end"], colors=color, linewidth=2)
    for key, color in styles:
        ax3.plot([], [], color=color, linewidth=2, label=f"{key[:3]} per step")
    ax3.set_yscale("log")
    ax3.set_ylabel("latency ms (by start time)")
    ax3.set_xlabel("seconds since the load started")
    ax3.legend(loc="upper right", fontsize=8)
    for ax in (ax1, ax2, ax3):
        for st in raw["steps"]:
            ax.axvline(st["start"], color="black", alpha=0.3, linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    sw = args.stable_window or "60s"
    grace = args.scale_to_zero_grace_period or "30s"
    fig.suptitle(
        f"knd run: examples/autoscale.py ?sleep={args.sleep_ms}, containerConcurrency "
        f"{args.concurrency}, stable window {sw}, grace {grace}, steps {args.steps}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def run_scale(procs: ProcessSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    print(
        f"(2) scale-out: knd run examples/autoscale.py, steps {args.steps} (clients:seconds)",
        flush=True,
    )
    knd = start_knd(procs, "autoscale", AUTOSCALE, _scale_flags(args), tmp / "scale.knd.log")
    try:
        time.sleep(args.settle)
        raw = _run_loop(drive(knd, args))
    finally:
        stopped = stop_knd(procs, knd)
    events = knd.out.events()
    return {"raw": raw, "events": events, "stop": stopped, "problems": knd.problems()}


# --- entry point ----------------------------------------------------------------------------


def _run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``main`` in a fresh event loop (uvloop when available: less harness CPU). Ctrl-C
    raises at once wherever the harness is; the ``with`` blocks then stop every process."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    task = loop.create_task(main)
    try:
        return loop.run_until_complete(task)
    finally:
        loop.set_exception_handler(lambda _loop, _context: None)
        tasks = asyncio.all_tasks(loop)
        for t in tasks:
            t.cancel()
        if tasks:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        loop.close()


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="knd-bench-knd-") as tmp:
            yield Path(tmp)
    else:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()


def run(args: argparse.Namespace) -> int:
    """Run the scenario; every process stops on the way out."""
    _resolve(args)
    compile_bytecode()
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    background = background_load(sorted(os.sched_getaffinity(0)))
    cold: dict[str, Any] | None = None
    cold_summary: dict[str, Any] | None = None
    scale: dict[str, Any] | None = None
    scale_summary: dict[str, Any] | None = None
    files: dict[str, str] = {}
    errors: list[str] = []
    release: dict[str, Any] | None = None
    burst: dict[str, Any] | None = None
    with _workdir(args.keep) as tmp, ProcessSet(grace_seconds=STOP_GRACE) as procs:
        if "cold" in args.part_set:
            cold = run_cold(procs, args, tmp)
            cold_summary = summarize_cold(cold)
            print(render_cold(cold, cold_summary), flush=True)
        if "release" in args.part_set:
            release = run_release(procs, args, tmp)
        if "burst" in args.part_set:
            try:
                burst = run_burst(procs, args, tmp)
            except StartError as exc:
                errors.append(f"burst: {exc}")
        if "scale" in args.part_set:
            try:
                scale = run_scale(procs, args, tmp)
            except StartError as exc:
                errors.append(f"scale: {exc}")
                print(f"  scale-out failed: {exc}", flush=True)
    if scale is not None:
        raw, events = scale["raw"], scale["events"]
        scale_summary = summarize_scale(raw, events, args)
        stem = args.results_dir / f"knd-scale-{stamp}"
        files = write_scale_files(raw, events, stem)
        if not args.no_plot:
            png = plot_scale(raw, scale_summary, args, Path(f"{stem}.png"))
            if png:
                files["png"] = png
            else:
                print("  (no PNG: matplotlib is not importable; pip install matplotlib)")
        leftover = scale["stop"]["apps_alive_after_stop"]
        if leftover:
            scale["problems"].append(f"app pids alive after knd stopped: {leftover}")
        print(render_scale(scale_summary, args, scale["problems"]), flush=True)
        print(f"  knd stop (SIGTERM -> exit): {scale['stop']['stop_s']:.2f} s")
    out = args.results_dir / f"knd-{stamp}.json"
    data = {
        "scenario": "knd",
        "started": started.isoformat(timespec="seconds"),
        "options": {
            "quick": args.quick,
            "parts": sorted(args.part_set),
            "repeat": args.repeat,
            "settle": args.settle,
            "steps": args.steps,
            "sleep_ms": args.sleep_ms,
            "container_concurrency": args.concurrency,
            "stable_window": args.stable_window,
            "scale_to_zero_grace_period": args.scale_to_zero_grace_period,
            "sample": args.sample,
            "knd_args": args.extra_knd,
        },
        "machine": {k: v for k, v in machine().items() if k not in ("nginx", "wrk")}
        | {"busy_pct_before_run": background},
        "cold": None if cold is None else {"runs": cold, "summary": cold_summary},
        "release": release,
        "burst": burst,
        "scale": None
        if scale is None or scale_summary is None
        else {
            "summary": scale_summary,
            "steps": scale["raw"]["steps"],
            "stop": scale["stop"],
            "problems": scale["problems"],
        },
        "files": files,
        "errors": errors,
    }
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    for name, path in {"json": str(out), **files}.items():
        print(f"{name}: {path}")
    ok = not errors
    if cold_summary is not None:
        ok = ok and not cold_summary["failed"] and bool(cold and cold["reps"])
    if scale_summary is not None:
        ok = ok and scale_summary["errors"] == 0
    if release is not None:
        ok = ok and not release["summary"]["failed"]
    if burst is not None:
        ok = ok and burst.get("statuses") == [200] * args.burst
    return 0 if ok else 1

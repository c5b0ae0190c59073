"""Locust shapes modelled on Knative's SLA benchmarks (its performance tests), on one machine.

Load comes from locust (``benchmarks/locustfile.py``, ``FastHttpUser``) run headless as a child
process; one locust process tops out near 6k req/s here, so ``--processes`` forks more when the
rate asks for it. The app is examples/autoscale.py (Knative's autoscale image: ``?sleep=100``)
under knd; the probe defaults to benchmarks/sleep_app.py, which costs next to nothing.
Every latency and percentile is computed from per-request lines the locustfile writes itself
(wall-clock start, exact latency, status): locust's own statistics round latencies above 100 ms
to 10 ms and its history CSV is smoothed.

probe (like ``dataplane-probe``): one app, one queue-proxy (CC 0) in front of it, one activator
in front of that (platform file, stand-in autoscaler), all on loopback. Locust offers a fixed
--rate with a 100 ms handler against each target in turn (direct, queue-proxy, activator +
queue-proxy), --rounds times interleaved; p50/p95/p99 per target and the latency ADDED per hop
(queue-proxy - direct; activator + queue-proxy - queue-proxy; and both against direct).

stepped (like ``load-test``, scaled down): ``knd run`` of the app at containerConcurrency
--concurrency from zero pods; locust holds each rate of --steps (RATE:SECONDS; users start at
once, each at --user-rate req/s). Zero errors required; max latency recorded (Knative: <= 10 s,
cold start included). When the last step is below the peak it is the scale-down-under-load
shape: knd runs with a short --stable-window, so pods are removed while that step's traffic
flows; zero errors required there too, and the pods removed are counted.

burst (like ``scale-from-zero``, one service): ``knd run`` at zero; --burst users each send one
request at the same wall-clock instant (the locustfile makes spawned users wait for it). Time to
the first success and to all successes, from the per-request lines.

Output: tables on the terminal; JSON, the stepped and burst requests as CSV, and PNG plots
(latency percentiles per hop; scale timelines) under benchmarks/results/. Loopback only; every
process started stops on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import _activator, _procs, knd_scaling
from benchmarks._procs import BenchError, ProcessSet, StartError
from benchmarks.proxy import RESULTS_DIR, background_load, machine, queue_proxy_env

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
APP = ("-m", "examples.autoscale")
PROBE_APPS = {"sleep": ("-m", "benchmarks.sleep_app"), "autoscale": APP}
PROBE_HOST = "probe.example.com"
HOP_GOAL_MS = 1.0  # DESIGN.md: added p95 <= 1 ms per hop at 1000 req/s, 100 ms handler
KNATIVE_HOP_MS = 10.0  # Knative's dataplane-probe SLA: p95 within 100-110 ms
MAX_LATENCY_S = 10.0  # Knative's load-test SLA 2: max latency <= 10 s, cold start included
PER_PROCESS_RATE = 2500  # req/s one locust process is asked for before another is forked
START_TIMEOUT = 20.0
SHAPES = ("probe", "stepped", "burst")


# --- options --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``locust`` scenario."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="probe 200 req/s x 3 s per target; steps 3 x 3 s + 12 s down; burst of 20 "
        "(under a minute)",
    )
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {','.join(SHAPES)}"
    )
    parser.add_argument("--rate", type=float, help="probe: req/s offered (500; --quick 200)")
    parser.add_argument("--seconds", type=float, help="probe: measured seconds (30; --quick 2.5)")
    parser.add_argument("--rounds", type=int, help="probe: interleaved rounds (2; --quick 1)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="probe: seconds dropped at the start of each run (3; quick 0.5)",
    )
    parser.add_argument(
        "--steps",
        metavar="RATE:SECONDS,...",
        help="stepped: req/s per step (100:30,200:30,300:30,100:40; --quick "
        "50:3,100:3,150:3,50:12); a last step below the peak is the scale-down step",
    )
    parser.add_argument(
        "--user-rate", type=float, default=2.0, help="stepped: req/s per locust user (2)"
    )
    parser.add_argument("--burst", type=int, help="burst: users at once (100; --quick 20)")
    parser.add_argument(
        "--concurrency", type=int, default=10, help="knd shapes: containerConcurrency (10)"
    )
    parser.add_argument(
        "--stable-window",
        help="knd shapes: config-autoscaler stable-window (10s; --quick 6s; min 6s)",
    )
    parser.add_argument("--sleep-ms", type=int, default=100, help="handler sleep in ms (100)")
    parser.add_argument(
        "--probe-mode",
        choices=("mixed", "sequential"),
        default="mixed",
        help="probe: 'mixed' (default): every locust user cycles through the three targets, so "
        "they share the rate and any noise; 'sequential': one target at a time at the full rate, "
        "as Knative's dataplane-probe",
    )
    parser.add_argument(
        "--probe-app",
        choices=sorted(PROBE_APPS),
        default="sleep",
        help="probe: the app behind the hops: benchmarks/sleep_app.py (cheap; default) or "
        "examples/autoscale.py (aiohttp)",
    )
    parser.add_argument(
        "--processes", type=int, help=f"locust processes (default: 1 per {PER_PROCESS_RATE} req/s)"
    )
    parser.add_argument("--no-plot", action="store_true", help="no PNG files")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="output directory")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep logs and raw files in DIR")


@dataclass(frozen=True, slots=True)
class Step:
    rate: float
    seconds: float


def _parse_steps(spec: str) -> list[Step]:
    steps = []
    for part in spec.split(","):
        if not part.strip():
            continue
        rate, sep, seconds = part.partition(":")
        try:
            step = Step(float(rate), float(seconds))
        except ValueError:
            raise BenchError(f"--steps {part!r}: expected RATE:SECONDS") from None
        if not sep or step.rate <= 0 or step.seconds <= 0:
            raise BenchError(f"--steps {part!r}: expected RATE > 0 and SECONDS > 0")
        steps.append(step)
    if not steps:
        raise BenchError("--steps: no step given")
    return steps


def _resolve(args: argparse.Namespace) -> None:
    q = args.quick
    args.shape_list = [s.strip() for s in str(args.shapes).split(",") if s.strip()]
    if not args.shape_list or set(args.shape_list) - set(SHAPES):
        raise BenchError(f"--shapes: choose from {','.join(SHAPES)}")
    args.rate = args.rate or (200.0 if q else 500.0)
    args.seconds = args.seconds or (2.5 if q else 30.0)
    args.rounds = args.rounds or (1 if q else 2)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 3.0)
    args.steps = args.steps or ("50:3,100:3,150:3,50:12" if q else "100:30,200:30,300:30,100:40")
    args.step_list = _parse_steps(args.steps)
    args.burst = args.burst or (20 if q else 100)
    args.stable_window = args.stable_window or ("6s" if q else "10s")
    if args.rate <= 0 or args.seconds <= 0 or args.rounds < 1 or args.warmup < 0:
        raise BenchError("--rate, --seconds and --rounds must be > 0, --warmup >= 0")
    if args.burst < 1 or args.user_rate <= 0 or args.concurrency < 0 or args.sleep_ms < 0:
        raise BenchError("--burst >= 1, --user-rate > 0, --concurrency and --sleep-ms >= 0")
    # find_spec, not import: importing locust would monkey-patch this process with gevent.
    if importlib.util.find_spec("locust") is None:
        raise BenchError(
            "locust is not installed: pip install -e '.[bench]' (or pip install locust)"
        )


# --- statistics -----------------------------------------------------------------------------


@dataclass(slots=True)
class Rec:
    start: float  # wall clock, time.time()
    latency_ms: float
    status: int
    error: str
    name: str = ""

    @property
    def end(self) -> float:
        return self.start + self.latency_ms / 1000


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None when empty."""
    return knd_scaling.pct(values, q)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def latency_stats(recs: list[Rec]) -> dict[str, Any]:
    ok = [r.latency_ms for r in recs if not r.error]
    errors: dict[str, int] = {}
    for r in recs:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        "requests": len(recs),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": pct(ok, 50),
        "p95_ms": pct(ok, 95),
        "p99_ms": pct(ok, 99),
        "max_ms": max(ok) if ok else None,
        "mean_ms": statistics.fmean(ok) if ok else None,
    }


# --- locust as a child process --------------------------------------------------------------


@dataclass
class LocustRun:
    recs: list[Rec]
    exit_code: int | None
    cpu_s: float  # the locust processes' CPU time (reaped children of this process)
    wall_s: float
    log: Path


def _read_records(prefix: Path) -> list[Rec]:
    recs: list[Rec] = []
    for path in sorted(prefix.parent.glob(prefix.name + ".*.csv")):
        with path.open(newline="") as f:
            for row in csv.reader(f):
                if len(row) >= 5:  # start, latency, status, name, error
                    with contextlib.suppress(ValueError):
                        recs.append(Rec(float(row[0]), float(row[1]), int(row[2]), row[4], row[3]))
    recs.sort(key=lambda r: r.start)
    return recs


def run_locust(
    procs: ProcessSet,
    tmp: Path,
    name: str,
    port: int,
    *,
    users: int,
    seconds: float,
    env: dict[str, str],
    processes: int = 1,
) -> LocustRun:
    """Run locust headless against 127.0.0.1:port until it stops by itself (bounded)."""
    prefix = tmp / f"{name}-requests"
    log = tmp / f"{name}-locust.log"
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    argv += ["-H", f"http://127.0.0.1:{port}", "-u", str(users), "-r", str(max(users, 1) * 100)]
    argv += ["-t", f"{max(1, math.ceil(seconds))}s", "--stop-timeout", "35", "--only-summary"]
    argv += ["--loglevel", "WARNING", "--exit-code-on-error", "0"]
    if processes > 1:
        master = _procs.free_port()
        argv += ["--processes", str(processes), "--master-bind-port", str(master)]
        argv += ["--master-port", str(master)]
    child_env = dict(os.environ, KND_LOCUST_RECORD=str(prefix), PYTHONPATH=str(ROOT), **env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = procs.start(argv, env=child_env, log_path=log, cwd=ROOT)
    try:
        code: int | None = proc.wait(timeout=seconds + 90)
    except subprocess.TimeoutExpired:
        code = None
        procs.stop(proc)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    procs.stop(proc, graceful=False)
    return LocustRun(_read_records(prefix), code, cpu, wall, log)


def _processes(args: argparse.Namespace, rate: float) -> int:
    if args.processes:
        return int(args.processes)
    return max(1, min(os.cpu_count() or 1, math.ceil(rate / PER_PROCESS_RATE)))


def wait_ok(port: int, path: str, timeout: float, host: str | None = None) -> None:
    """Poll one GET until it answers 200 (a proxy may first need to probe its upstream)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = _get(port, path, 2.0, host)
        if r.status == 200:
            return
        last = r.error or f"status {r.status}"
        time.sleep(0.05)
    raise StartError(f"GET {path} on port {port} never answered 200 ({last})")


def _get(port: int, path: str, timeout: float, host: str | None = None) -> knd_scaling.Timed:
    if host is None:
        return knd_scaling.timed_get(port, path, timeout)
    # timed_get sends Host: localhost; the activator routes by Host, so send our own.
    import http.client

    out = knd_scaling.Timed()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        out.status, out.body = resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return out


def _busy() -> dict[int, tuple[int, int]]:
    return _procs.cpu_busy_ticks()


def _busy_total(before: dict[int, tuple[int, int]]) -> float:
    """Percent of all CPUs busy since ``before`` (100 = every CPU busy)."""
    after = _procs.cpu_busy_ticks()
    busy = sum(a[0] - before.get(c, a)[0] for c, a in after.items())
    total = sum(a[1] - before.get(c, a)[1] for c, a in after.items())
    return 100 * busy / total if total > 0 else 0.0


# --- probe ----------------------------------------------------------------------------------

PROBE_TARGETS = ("direct", "queue-proxy", "activator+qp")


def run_probe(procs: ProcessSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start app, queue-proxy and activator; locust at --rate against each, --rounds times."""
    path = f"/?sleep={args.sleep_ms}"
    app_port = _procs.free_port()
    app_log = tmp / "probe-app.log"
    app = procs.start(
        [sys.executable, *PROBE_APPS[args.probe_app]],
        env=dict(os.environ, PORT=str(app_port)),
        log_path=app_log,
        cwd=ROOT,
    )
    _procs.wait_listening(app_port, app, START_TIMEOUT, 0.01, app_log)
    qp_port = _procs.free_port()
    qp_log = tmp / "probe-queue-proxy.log"
    qp_exe = str(Path(sys.executable).parent / "queue-proxy")
    qp = procs.start([qp_exe], env=queue_proxy_env(0, qp_port, app_port), log_path=qp_log)
    _procs.wait_listening(qp_port, qp, START_TIMEOUT, 0.01, qp_log)
    as_port, _ = _activator.start_autoscaler_sink(procs, tmp / "probe-autoscaler.log")
    platform = tmp / "probe-platform.json"
    rev = _activator.revision("probe-00001", PROBE_HOST, 0, ready=[f"127.0.0.1:{qp_port}"])
    _activator.write_platform(platform, [rev])
    act_port = _procs.free_port()
    act_log = tmp / "probe-activator.log"
    act_env = _activator.activator_env(act_port, _procs.free_port(), as_port, platform)
    act = procs.start([_activator.activator_path()], env=act_env, log_path=act_log)
    _procs.wait_listening(act_port, act, START_TIMEOUT, 0.01, act_log)
    targets = {
        "direct": (app_port, None, app),
        "queue-proxy": (qp_port, None, qp),
        "activator+qp": (act_port, PROBE_HOST, act),
    }
    for port, host, _ in targets.values():
        wait_ok(port, path, 10.0, host)
    users = max(1, math.ceil(args.rate * max(args.sleep_ms, 50) / 1000 * 2.5))
    per_user = args.rate / users
    processes = _processes(args, args.rate)
    print(
        f"probe: {args.rate:g} req/s ({users} users x {per_user:.2f} req/s, {processes} locust "
        f"process(es)), {args.warmup:g}+{args.seconds:g} s per target, {args.rounds} round(s)",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in PROBE_TARGETS}
    kept: dict[str, list[Rec]] = {t: [] for t in PROBE_TARGETS}
    mixed = args.probe_mode == "mixed"
    cpu_rounds: dict[str, list[float]] = {"app": [], "queue-proxy": [], "activator": []}
    # mixed: one locust run per round, every user cycling through the three targets (each gets
    # a third of the rate), for as long as the three sequential runs would take together.
    plan = (
        [("mixed", 0, None)]
        if mixed
        else [(name, port, host) for name, (port, host, _) in targets.items()]
    )
    span = args.seconds * (len(PROBE_TARGETS) if mixed else 1)
    for rnd in range(args.rounds):
        for name, port, host in plan:
            env = {"KND_LOCUST_PATH": path, "KND_LOCUST_RATE": f"{per_user:.6f}"}
            if host:
                env["KND_LOCUST_HOST_HEADER"] = host
            if mixed:
                env["KND_LOCUST_TARGETS"] = json.dumps(
                    [[n, f"http://127.0.0.1:{p}", h or ""] for n, (p, h, _) in targets.items()]
                )
                port = app_port
            busy0 = _busy()
            cpu0 = {n: _procs.tree_cpu_seconds(p.pid) for n, (_, _, p) in targets.items()}
            lr = run_locust(
                procs,
                tmp,
                f"probe-{name.replace('+', '-')}-{rnd + 1}",
                port,
                users=users,
                seconds=args.warmup + span,
                env=env,
                processes=processes,
            )
            busy = _busy_total(busy0)
            cpu = {n: _procs.tree_cpu_seconds(p.pid) - cpu0[n] for n, (_, _, p) in targets.items()}
            for n, (_, _, p) in targets.items():
                if p.poll() is not None:
                    raise StartError(f"{n} exited during the probe")
            first = lr.recs[0].start if lr.recs else 0.0
            cut, stop = first + args.warmup, first + args.warmup + span
            window = [r for r in lr.recs if cut <= r.start < stop]
            # CPU per request of each process over the requests that went through it.
            counts = {t: sum(1 for r in lr.recs if r.name == t) for t in PROBE_TARGETS}
            if not mixed:
                counts = {t: len(lr.recs) if t == name else 0 for t in PROBE_TARGETS}
            cpu_per_req = {
                proc_name: 1e6 * cpu[key] / n if (n := sum(counts[t] for t in via)) else None
                for proc_name, key, via in (
                    ("app", "direct", PROBE_TARGETS),
                    ("queue-proxy", "queue-proxy", PROBE_TARGETS[1:]),
                    ("activator", "activator+qp", PROBE_TARGETS[2:]),
                )
            }
            for proc_name, value in cpu_per_req.items():
                if value is not None:
                    cpu_rounds[proc_name].append(value)
            for target in PROBE_TARGETS if mixed else [name]:
                measured = [r for r in window if r.name == target] if mixed else window
                kept[target] += measured
                stats = latency_stats(measured)
                stats |= {
                    "round": rnd + 1,
                    "achieved_rps": len(measured) / span,
                    "locust_exit": lr.exit_code,
                    "locust_cpu_pct": 100 * lr.cpu_s / lr.wall_s if lr.wall_s else None,
                    "machine_busy_pct": busy,
                    "cpu_us_per_proxied_req": cpu_per_req,
                }
                runs[target].append(stats)
                print(
                    f"  [{rnd + 1}/{args.rounds}] {target:<13} {stats['achieved_rps']:7.1f} "
                    f"req/s  p50 {_fmt(stats['p50_ms'], '.2f')}  p95 "
                    f"{_fmt(stats['p95_ms'], '.2f')}  p99 {_fmt(stats['p99_ms'], '.2f')} ms  "
                    f"errors {stats['errors']}  machine {busy:.0f} % busy, locust "
                    f"{_fmt(stats['locust_cpu_pct'], '.0f')} %",
                    flush=True,
                )
    pooled = {name: latency_stats(recs) for name, recs in kept.items()}
    for name in PROBE_TARGETS:
        pooled[name]["achieved_rps"] = len(kept[name]) / (span * args.rounds)
    added: dict[str, dict[str, float | None]] = {}
    for hop, (a, b) in {
        "queue-proxy hop (qp - direct)": ("queue-proxy", "direct"),
        "activator hop (act+qp - qp)": ("activator+qp", "queue-proxy"),
        "activator + queue-proxy (act+qp - direct)": ("activator+qp", "direct"),
    }.items():
        added[hop] = {
            key: (pooled[a][key] - pooled[b][key])
            if pooled[a][key] is not None and pooled[b][key] is not None
            else None
            for key in ("p50_ms", "p95_ms", "p99_ms")
        }
    errors = sum(p["errors"] for p in pooled.values())
    return {
        "rate": args.rate,
        "users": users,
        "per_user_rate": per_user,
        "locust_processes": processes,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "path": path,
        "mode": args.probe_mode,
        "app": " ".join(PROBE_APPS[args.probe_app]),
        "runs": runs,
        "pooled": pooled,
        "added": added,
        "cpu_us_per_proxied_req": {
            k: statistics.median(v) if v else None for k, v in cpu_rounds.items()
        },
        "errors": errors,
        "goals": [
            {
                "goal": f"added p95 <= {HOP_GOAL_MS:g} ms per hop at {args.rate:g} req/s "
                "(DESIGN.md; Knative's budget 10 ms)",
                "hop": hop,
                "value": v["p95_ms"],
                "ok": None if v["p95_ms"] is None else v["p95_ms"] <= HOP_GOAL_MS,
            }
            for hop, v in added.items()
            if not hop.startswith("activator + ")
        ],
    }


def render_probe(p: dict[str, Any]) -> str:
    lines = [
        "",
        f"probe (dataplane-probe), {p['mode']}: {p['rate']:g} req/s offered"
        + (" (shared by the three targets)" if p["mode"] == "mixed" else " to each target in turn")
        + f", GET {p['path']} ({p['app']}), {p['seconds']:g} s x {p['rounds']} round(s) per "
        "target, percentiles over all rounds",
        f"  {'target':<44}{'req/s':>8}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'errors':>8}",
    ]
    for name in PROBE_TARGETS:
        s = p["pooled"][name]
        lines.append(
            f"  {name:<44}{s['achieved_rps']:>8.1f}{_fmt(s['p50_ms'], '.2f'):>9}"
            f"{_fmt(s['p95_ms'], '.2f'):>9}{_fmt(s['p99_ms'], '.2f'):>9}"
            f"{_fmt(s['max_ms'], '.1f'):>9}{s['errors']:>8}"
        )
    lines.append(f"  {'added latency (ms)':<44}{'':>8}{'p50':>9}{'p95':>9}{'p99':>9}")
    for hop, v in p["added"].items():
        lines.append(
            f"  {hop:<44}{'':>8}{_fmt(v['p50_ms'], '+.2f'):>9}{_fmt(v['p95_ms'], '+.2f'):>9}"
            f"{_fmt(v['p99_ms'], '+.2f'):>9}"
        )
    cpu = p["cpu_us_per_proxied_req"]
    lines.append(
        "  CPU per request through each process (median of the runs): "
        + ", ".join(f"{k} {_fmt(v, '.0f')} us" for k, v in cpu.items())
    )
    for g in p["goals"]:
        mark = {True: "ok", False: "MISS", None: "n/a"}[g["ok"]]
        lines.append(f"  {mark:<5}{g['hop']}: added p95 {_fmt(g['value'], '+.2f')} ms (goal <= 1)")
    return "\n".join(lines)


# --- knd shapes: stepped (+ scale-down) and burst -------------------------------------------


class StatusPoller:
    """A thread reading knd's /status every ``period`` s: wall time, desired, ready, queued."""

    def __init__(self, admin_port: int, period: float = 0.25) -> None:
        self.admin_port, self.period = admin_port, period
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="knd-status", daemon=True)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = knd_scaling._admin_status_sync(self.admin_port)
            if st is not None:
                self.samples.append(
                    {
                        "t": time.time(),
                        "desired": st.get("desired"),
                        "ready": st.get("ready"),
                        "in_flight": st.get("in_flight"),
                        "queued": st.get("queued"),
                    }
                )
            self._stop.wait(self.period)


def _knd_flags(args: argparse.Namespace, stable_window: bool = True) -> list[str]:
    flags = ["--concurrency", str(args.concurrency), "--initial-scale", "0"]
    return flags + (["--stable-window", str(args.stable_window)] if stable_window else [])


def run_stepped(procs: ProcessSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    steps: list[Step] = args.step_list
    users = [max(1, round(s.rate / args.user_rate)) for s in steps]
    spec = ",".join(f"{u}:{s.seconds:g}" for u, s in zip(users, steps, strict=True))
    total = sum(s.seconds for s in steps)
    print(
        f"stepped: knd run examples/autoscale.py (CC {args.concurrency}, stable window "
        f"{args.stable_window}) from zero; steps {args.steps} (req/s:seconds) = users {spec} "
        f"at {args.user_rate:g} req/s each",
        flush=True,
    )
    (tmp / "stepped-knd.log").unlink(missing_ok=True)
    knd = knd_scaling.start_knd(procs, "stepped", APP, _knd_flags(args), tmp / "stepped-knd.log")
    try:
        with StatusPoller(knd.admin_port) as poller:
            time.sleep(0.5)
            env = {
                "KND_LOCUST_PATH": f"/?sleep={args.sleep_ms}",
                "KND_LOCUST_RATE": f"{args.user_rate:g}",
                "KND_LOCUST_STEPS": spec,
            }
            rate = max(s.rate for s in steps)
            lr = run_locust(
                procs,
                tmp,
                "stepped",
                knd.port,
                users=max(users),
                seconds=total,
                env=env,
                processes=_processes(args, rate),
            )
            time.sleep(0.5)
    finally:
        stopped = knd_scaling.stop_knd(procs, knd)
    recs = lr.recs
    t0 = recs[0].start if recs else time.time()
    rows = stepped_rows(steps, users, recs, poller.samples, t0)
    up = [r for r in rows if not r["scale_down"]]
    up_recs = [r for r in recs if r.start < t0 + sum(x["seconds"] for x in up)]
    up_stats = latency_stats(up_recs)
    scale_down = scale_down_summary(rows)
    max_ms = up_stats["max_ms"]
    return {
        "steps_spec": args.steps,
        "user_rate": args.user_rate,
        "concurrency": args.concurrency,
        "stable_window": args.stable_window,
        "rows": rows,
        "up": up_stats,
        "scale_down": scale_down,
        "total_requests": len(recs),
        "total_errors": sum(1 for r in recs if r.error),
        "locust_exit": lr.exit_code,
        "locust_cpu_pct": 100 * lr.cpu_s / lr.wall_s if lr.wall_s else None,
        "knd_stop": stopped,
        "knd_problems": knd.problems(),
        "timeline": [s | {"t": s["t"] - t0} for s in poller.samples],
        "goals": [
            {
                "goal": "zero errors on the stepped load from zero",
                "value": up_stats["errors"],
                "ok": up_stats["errors"] == 0,
            },
            {
                "goal": f"max latency <= {MAX_LATENCY_S:g} s, cold start included (Knative)",
                "value": None if max_ms is None else max_ms / 1000,
                "ok": None if max_ms is None else max_ms / 1000 <= MAX_LATENCY_S,
            },
        ],
        "_recs": recs,
        "_t0": t0,
    }


def stepped_rows(
    steps: list[Step],
    users: list[int],
    recs: list[Rec],
    samples: list[dict[str, Any]],
    t0: float,
) -> list[dict[str, Any]]:
    """One row per step of the stepped shape: the requests started in it (the last step also
    takes the stragglers started after its end) and knd's /status samples taken in it.

    ``max_ready`` is the step's highest ready count and ``ready_after_peak`` the lowest one
    sampled after that highest sample: in the scale-down step pods asked for by the previous
    step may still turn ready after the step has begun, so the count at the step's start
    is not the peak the removals start from."""
    rows = []
    edge = t0
    peak = max(s.rate for s in steps)
    for idx, (step, u) in enumerate(zip(steps, users, strict=True)):
        lo, hi = edge, edge + step.seconds
        edge = hi
        last = idx == len(steps) - 1
        inside = [r for r in recs if lo <= r.start < hi or (last and r.start >= hi)]
        in_step = [s for s in samples if lo <= s["t"] < hi]
        ready = [s["ready"] for s in in_step if s["ready"] is not None]
        top = max(ready, default=None)
        after = ready[ready.index(top) :] if top is not None else []
        row = latency_stats(inside)
        row |= {
            "step": idx + 1,
            "rate": step.rate,
            "users": u,
            "start_s": lo - t0,
            "seconds": step.seconds,
            "achieved_rps": len(inside) / step.seconds,
            "expected_requests": step.rate * step.seconds,
            "max_desired": max(
                (s["desired"] for s in in_step if s["desired"] is not None), default=None
            ),
            "max_ready": top,
            "min_ready": min(ready, default=None),
            "ready_after_peak": min(after, default=None),
            "max_queued": max((s["queued"] or 0 for s in in_step), default=None),
            "scale_down": last and idx > 0 and step.rate < peak,
        }
        rows.append(row)
    return rows


def scale_down_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The scale-down-under-load figures, taken from the last row itself (the figures the
    table prints): ready pods at the step's peak, the lowest count after it, and the
    difference as the pods removed while that step's traffic flowed."""
    down = rows[-1] if rows and rows[-1]["scale_down"] else None
    if down is None:
        return None
    top, low = down["max_ready"], down["ready_after_peak"]
    removed = top - low if top is not None and low is not None else None
    return {
        "step": down["step"],
        "rate": down["rate"],
        "ready_peak": top,
        "ready_after_peak": low,
        "pods_removed": removed,
        "requests": down["requests"],
        "errors": down["errors"],
        "error_kinds": down["error_kinds"],
        "max_ms": down["max_ms"],
        "goal": {
            "goal": "zero errors while pods are removed under load",
            "value": down["errors"],
            "ok": down["errors"] == 0 and bool(removed),
        },
    }


def _ready_cell(row: dict[str, Any]) -> str:
    """The table's ready column: the step's peak; for the scale-down step, peak > lowest after."""
    if row["scale_down"] and row["max_ready"] is not None:
        return f"{row['max_ready']:.0f}>{row['ready_after_peak']:.0f}"
    return _fmt(row["max_ready"], ".0f")


def render_stepped(s: dict[str, Any]) -> str:
    lines = [
        "",
        f"stepped (load-test, scaled down): CC {s['concurrency']}, stable window "
        f"{s['stable_window']}, {s['user_rate']:g} req/s per user; latency in ms",
        f"  {'step':<5}{'req/s':>7}{'users':>6}{'secs':>6}{'achieved':>9}{'requests':>9}"
        f"{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'errors':>7}{'desired':>8}{'ready':>6}"
        f"{'queued':>7}",
    ]
    for r in s["rows"]:
        lines.append(
            f"  {str(r['step']) + ('v' if r['scale_down'] else ''):<5}{r['rate']:>7g}"
            f"{r['users']:>6}{r['seconds']:>6g}{r['achieved_rps']:>9.1f}{r['requests']:>9}"
            f"{_fmt(r['p50_ms']):>8}{_fmt(r['p95_ms']):>8}{_fmt(r['p99_ms']):>8}"
            f"{_fmt(r['max_ms'], '.0f'):>8}{r['errors']:>7}{_fmt(r['max_desired'], '.0f'):>8}"
            f"{_ready_cell(r):>6}{_fmt(r['max_queued'], '.0f'):>7}"
        )
    lines.append(
        "  (achieved: requests started in the step / its seconds; desired, ready, queued: max "
        "over knd's /status samples in the step; v: the scale-down step, whose ready column is "
        "its peak > the lowest count after it)"
    )
    for r in s["rows"]:
        if r["error_kinds"]:
            lines.append(f"  PROBLEM step {r['step']}: {r['error_kinds']}")
    for g in s["goals"]:
        mark = {True: "ok", False: "MISS", None: "n/a"}[g["ok"]]
        lines.append(f"  {mark:<5}{g['goal']}: {_fmt(g['value'], '.3g')}")
    d = s["scale_down"]
    if d is not None:
        g = d["goal"]
        mark = {True: "ok", False: "MISS", None: "n/a"}[g["ok"]]
        lines.append(
            f"  {mark:<5}scale-down under load (step {d['step']}, {d['rate']:g} req/s): ready "
            f"pods {_fmt(d['ready_peak'], '.0f')} -> {_fmt(d['ready_after_peak'], '.0f')}"
            f" ({_fmt(d['pods_removed'], '.0f')} removed while traffic flowed), "
            f"{d['errors']} errors in {d['requests']} requests"
        )
    lines += [f"  knd said: {p}" for p in s["knd_problems"][-10:]]
    return "\n".join(lines)


def run_burst(procs: ProcessSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n = args.burst
    print(
        f"burst (scale-from-zero): knd run examples/autoscale.py (CC {args.concurrency}) at zero, "
        f"{n} users each send one GET /?sleep={args.sleep_ms} at the same instant",
        flush=True,
    )
    (tmp / "burst-knd.log").unlink(missing_ok=True)
    knd = knd_scaling.start_knd(procs, "burst", APP, _knd_flags(args, False), tmp / "burst-knd.log")
    try:
        with StatusPoller(knd.admin_port, 0.1) as poller:
            time.sleep(0.5)
            zero = knd_scaling._admin_status_sync(knd.admin_port)
            start_at = time.time() + 4.0  # locust imports, spawns every user, then all send
            env = {
                "KND_LOCUST_PATH": f"/?sleep={args.sleep_ms}",
                "KND_LOCUST_START_AT": f"{start_at:.6f}",
                "KND_LOCUST_ONE_SHOT": "1",
                "KND_LOCUST_EXPECT": str(n),
            }
            lr = run_locust(
                procs, tmp, "burst", knd.port, users=n, seconds=60, env=env, processes=1
            )
            time.sleep(0.3)
    finally:
        stopped = knd_scaling.stop_knd(procs, knd)
    recs = lr.recs
    good = [r for r in recs if not r.error]
    starts = [r.start for r in recs]
    first = min((r.end for r in good), default=None)
    last = max((r.end for r in good), default=None)
    stats = latency_stats(recs)
    late = sum(1 for s in starts if s > start_at + 0.05)
    t0 = burst_origin(start_at, recs)
    return {
        "users": n,
        "concurrency": args.concurrency,
        "ready_before": None if zero is None else zero.get("ready"),
        "start_at": start_at,
        "send_spread_ms": 1000 * (max(starts) - min(starts)) if starts else None,
        "late_senders": late,
        "requests": len(recs),
        "successes": len(good),
        "errors": stats["errors"],
        "error_kinds": stats["error_kinds"],
        "first_success_s": None if first is None else first - t0,
        "all_successes_s": None if last is None or len(good) < n else last - t0,
        "last_success_s": None if last is None else last - t0,
        "latency": stats,
        "max_desired": max((s["desired"] or 0 for s in poller.samples), default=None),
        "max_ready": max((s["ready"] or 0 for s in poller.samples), default=None),
        "max_queued": max((s["queued"] or 0 for s in poller.samples), default=None),
        "locust_exit": lr.exit_code,
        "knd_stop": stopped,
        "knd_problems": knd.problems(),
        "timeline": [s | {"t": s["t"] - t0} for s in poller.samples],
        "_recs": recs,
        "_t0": t0,
    }


def burst_origin(start_at: float, recs: list[Rec]) -> float:
    """t = 0 of the burst's timeline and plot: the agreed instant, or the first request when
    one left earlier (a sleeping locust user may wake a little before the instant), so that no
    request and no queued sample of the burst lies before t = 0."""
    return min([start_at, *(r.start for r in recs)])


def queued_series(timeline: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """The plot's queued line: the samples from t = 0 on (before the first request nothing
    can be queued for this run), opened by a 0 at t = 0; drawn as steps, so a sample's
    value is not slanted back towards the previous sample's time."""
    ts: list[float] = [0.0]
    vals: list[float] = [0.0]
    for smp in timeline:
        if smp["t"] < 0:
            continue
        if smp["t"] == 0:
            ts, vals = [], []
        ts.append(smp["t"])
        vals.append(float(smp["queued"] or 0))
    return ts, vals


def render_burst(b: dict[str, Any]) -> str:
    lines = [
        "",
        f"burst (scale-from-zero): {b['users']} users at once on a service at zero "
        f"(ready pods before: {_fmt(b['ready_before'], '.0f')}), CC {b['concurrency']}",
        f"  sent: {b['requests']} requests within {_fmt(b['send_spread_ms'], '.0f')} ms "
        f"({b['late_senders']} more than 50 ms after the instant)",
        f"  first success after {_fmt(b['first_success_s'], '.3f')} s; all {b['users']} "
        f"successes after {_fmt(b['all_successes_s'], '.3f')} s "
        f"({b['successes']} of {b['users']} succeeded, {b['errors']} errors)",
        f"  latency ms: p50 {_fmt(b['latency']['p50_ms'], '.0f')}, p95 "
        f"{_fmt(b['latency']['p95_ms'], '.0f')}, max {_fmt(b['latency']['max_ms'], '.0f')}; "
        f"pods: max desired {_fmt(b['max_desired'], '.0f')}, max ready "
        f"{_fmt(b['max_ready'], '.0f')}; max queued at the activator "
        f"{_fmt(b['max_queued'], '.0f')}",
    ]
    if b["error_kinds"]:
        lines.append(f"  PROBLEM: {b['error_kinds']}")
    lines += [f"  knd said: {p}" for p in b["knd_problems"][-10:]]
    return "\n".join(lines)


# --- files ----------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_probe(p: dict[str, Any], path: Path) -> str | None:
    plt = _pyplot()
    if plt is None:
        return None
    keys = ("p50_ms", "p95_ms", "p99_ms")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.27
    for i, name in enumerate(PROBE_TARGETS):
        vals = [p["pooled"][name][k] or 0 for k in keys]
        xs = [j + (i - 1) * width for j in range(len(keys))]
        bars = ax1.bar(xs, vals, width, label=name)
        ax1.bar_label(bars, fmt="%.1f", fontsize=7)
    ax1.set_xticks(range(len(keys)), [k[:3] for k in keys])
    ax1.set_ylabel("latency ms (100 ms handler)")
    low = min((p["pooled"][n]["p50_ms"] or 0) for n in PROBE_TARGETS)
    ax1.set_ylim(max(0, low - 10), None)
    shared = " shared by the three" if p["mode"] == "mixed" else " each, in turn"
    ax1.set_title(f"latency per target, {p['rate']:g} req/s{shared}")
    ax1.legend(fontsize=8)
    for i, (hop, v) in enumerate(p["added"].items()):
        vals = [v[k] or 0 for k in keys]
        xs = [j + (i - 1) * width for j in range(len(keys))]
        bars = ax2.bar(xs, vals, width, label=hop)
        ax2.bar_label(bars, fmt="%+.2f", fontsize=7)
    ax2.axhline(HOP_GOAL_MS, color="green", linestyle="--", linewidth=1, label="DESIGN: 1 ms")
    ax2.axhline(0, color="black", linewidth=0.6)
    ax2.set_xticks(range(len(keys)), [k[:3] for k in keys])
    ax2.set_ylabel("added latency ms")
    ax2.set_title("added per hop (Knative's budget: 10 ms at p95)")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_timeline(
    recs: list[Rec],
    t0: float,
    timeline: list[dict[str, Any]],
    title: str,
    path: Path,
    edges: list[tuple[float, float, str]] | None = None,
    cumulative: bool = False,
) -> str | None:
    """Offered load (requests started per second), pods, queued and latency over time;
    ``cumulative``: the last panel counts successes over time instead (a burst)."""
    plt = _pyplot()
    if plt is None or not recs:
        return None
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    bucket = 0.5
    end = max(r.end for r in recs) - t0
    nb = max(1, math.ceil(end / bucket) + 1)
    started = [0] * nb
    done = [0] * nb
    for r in recs:
        started[min(nb - 1, max(0, int((r.start - t0) / bucket)))] += 1
        if not r.error:
            done[min(nb - 1, max(0, int((r.end - t0) / bucket)))] += 1
    xs = [i * bucket for i in range(nb)]
    ax1.step(xs, [c / bucket for c in started], where="post", label="requests started /s")
    ax1.step(xs, [c / bucket for c in done], where="post", label="successes /s", alpha=0.7)
    ax1.set_ylabel("req/s")
    ax1b = ax1.twinx()
    t = [s["t"] for s in timeline]
    qt, qv = queued_series(timeline)
    ax1b.step(qt, qv, where="post", color="tab:red", label="queued (activator)")
    ax1b.set_ylabel("queued", color="tab:red")
    ax1.legend(loc="upper left", fontsize=8)
    ax1b.legend(loc="upper right", fontsize=8)
    ax2.step(t, [s["desired"] for s in timeline], where="post", label="desired pods")
    ax2.step(t, [s["ready"] for s in timeline], where="post", label="ready pods")
    ax2.set_ylabel("pods")
    ax2.legend(loc="upper left", fontsize=8)
    ok = [r for r in recs if not r.error]
    bad = [r for r in recs if r.error]
    if cumulative:
        ends = sorted(r.end - t0 for r in ok)
        ax3.step([0.0, *ends], list(range(len(ends) + 1)), where="post", label="successes")
        if ends:
            ax3.axvline(ends[0], color="tab:green", linestyle=":", label="first success")
            ax3.axvline(ends[-1], color="tab:red", linestyle=":", label="last success")
        ax3.set_ylabel("successes (cumulative)")
    else:
        ax3.scatter(
            [r.start - t0 for r in ok], [r.latency_ms for r in ok], s=2, alpha=0.3, label="latency"
        )
        ax3.set_yscale("log")
        ax3.set_ylabel("latency ms (by start)")
    if bad:
        ax3.scatter(
            [r.start - t0 for r in bad],
            [r.latency_ms for r in bad],
            s=14,
            marker="x",
            color="red",
            label=f"errors ({len(bad)})",
        )
    ax3.set_xlabel("seconds from the first request" if not cumulative else "seconds from the burst")
    ax3.set_xlim(-0.5 if cumulative else -1.0, end + 0.5)
    ax3.legend(loc="upper right", fontsize=8)
    for ax in (ax1, ax2, ax3):
        for lo, _hi, _label in edges or []:
            ax.axvline(lo, color="black", alpha=0.3, linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_requests_csv(recs: list[Rec], t0: float, path: Path) -> str:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["start_s", "latency_ms", "status", "error"])
        for r in recs:
            w.writerow([round(r.start - t0, 4), round(r.latency_ms, 3), r.status, r.error])
    return str(path)


# --- entry point ----------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="knd-bench-locust-") as tmp:
            yield Path(tmp)
    else:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()


def run(args: argparse.Namespace) -> int:
    """Run the selected shapes; every process stops on the way out."""
    _resolve(args)
    knd_scaling.compile_bytecode()
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    background = background_load(sorted(os.sched_getaffinity(0)))
    results: dict[str, Any] = {}
    files: dict[str, str] = {}
    errors: list[str] = []
    ok = True
    for shape in args.shape_list:
        t_shape = time.monotonic()
        with _workdir(args.keep) as tmp, ProcessSet(grace_seconds=15.0) as procs:
            try:
                if shape == "probe":
                    res = run_probe(procs, args, tmp)
                elif shape == "stepped":
                    res = run_stepped(procs, args, tmp)
                else:
                    res = run_burst(procs, args, tmp)
            except StartError as exc:
                errors.append(f"{shape}: {exc}")
                print(f"  {shape} failed: {exc}", flush=True)
                ok = False
                continue
        res["wall_s"] = time.monotonic() - t_shape
        print(f"  ({shape}: {res['wall_s']:.0f} s in all)", flush=True)
        stem = args.results_dir / f"locust-{shape}-{stamp}"
        if shape == "probe":
            print(render_probe(res), flush=True)
            png = None if args.no_plot else plot_probe(res, Path(f"{stem}.png"))
        elif shape == "stepped":
            print(render_stepped(res), flush=True)
            recs, t0 = res.pop("_recs"), res.pop("_t0")
            files["stepped_csv"] = write_requests_csv(recs, t0, Path(f"{stem}-requests.csv"))
            edges = [
                (r["start_s"], r["start_s"] + r["seconds"], str(r["rate"])) for r in res["rows"]
            ]
            png = (
                None
                if args.no_plot
                else plot_timeline(
                    recs,
                    t0,
                    res["timeline"],
                    f"stepped load from zero, then scale-down under load: knd run, CC "
                    f"{args.concurrency}, stable window {args.stable_window}, steps "
                    f"{args.steps} (req/s:s)",
                    Path(f"{stem}.png"),
                    edges,
                )
            )
            ok = ok and res["total_errors"] == 0
        else:
            print(render_burst(res), flush=True)
            recs, t0 = res.pop("_recs"), res.pop("_t0")
            files["burst_csv"] = write_requests_csv(recs, t0, Path(f"{stem}-requests.csv"))
            png = (
                None
                if args.no_plot
                else plot_timeline(
                    recs,
                    t0,
                    res["timeline"],
                    f"burst from zero: {args.burst} users at once, knd run, CC {args.concurrency}",
                    Path(f"{stem}.png"),
                    cumulative=True,
                )
            )
        if png:
            files[f"{shape}_png"] = png
        elif not args.no_plot:
            print("  (no PNG: matplotlib is not importable; pip install -e '.[bench]')")
        results[shape] = res
    out = args.results_dir / f"locust-{stamp}.json"
    data = {
        "scenario": "locust",
        "started": started.isoformat(timespec="seconds"),
        "options": {
            k: getattr(args, k)
            for k in (
                "quick",
                "shape_list",
                "rate",
                "seconds",
                "rounds",
                "warmup",
                "steps",
                "user_rate",
                "burst",
                "concurrency",
                "stable_window",
                "sleep_ms",
                "probe_app",
                "probe_mode",
            )
        },
        "machine": {k: v for k, v in machine().items() if k not in ("nginx", "wrk")}
        | {"busy_pct_before_run": background, "locust": _locust_version()},
        "results": results,
        "files": files,
        "errors": errors,
    }
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    for name, path in {"json": str(out), **files}.items():
        print(f"{name}: {path}")
    return 0 if ok and not errors else 1


def _locust_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("locust")
    except Exception:
        return None

"""Soak: resident memory of the activator and the queue-proxy under a steady load over time.

wrk (keep-alive, ``--connections``) → our ``activator`` → our ``queue-proxy`` (containerConcurrency
``--cc``) → a tiny upstream (``benchmarks/held_app.py``: ``200 ok``), for ``--duration`` seconds
(300; ``--quick`` 30). Every ``--sample`` seconds the RSS of both processes is read from /proc.
After ``--warmup`` seconds (pools, caches and the allocator settle) the samples are fitted with a
least-squares line: the slope in MiB per minute is the leak signal (DESIGN.md: RSS flat over a
long soak). Also reported: RSS at the end of the warm-up, at the end, the maximum, and wrk's
requests, errors and non-2xx answers. Nothing is pinned; the numbers are for trends, not speed.

    python -m benchmarks soak [--duration S] [--connections N] [--cc N] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _activator, _procs, _tools
from benchmarks._procs import ProcessSet
from benchmarks.proxy import RESULTS_DIR, _queue_proxy_path, machine, queue_proxy_env

ROOT = Path(__file__).resolve().parent.parent
HOST = "soak.example.com"
FLAT_MIB_PER_MIN = 0.5  # a slope below this over the run counts as flat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (300)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds not fitted (20)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--cc", type=int, default=10, help="containerConcurrency (10)")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--quick", action="store_true", help="30 s of load, 5 s warm-up")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where JSON goes")


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) in MiB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / var * 60.0


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.duration, args.warmup = min(args.duration, 30.0), min(args.warmup, 5.0)
    tools = _tools.ensure_tools(["wrk"])
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now().astimezone()
    samples: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="knd-soak-") as tmpdir, ProcessSet() as procs:
        tmp = Path(tmpdir)
        app_port, qp_port = _procs.free_port(), _procs.free_port()
        app = procs.start(
            [sys.executable, "-m", "benchmarks.held_app", "--port", str(app_port),
             "--log", str(tmp / "app.events")],
            log_path=tmp / "app.log", cwd=ROOT,
        )  # fmt: skip
        _procs.wait_listening(app_port, app, 10.0, 0.01, tmp / "app.log")
        qp = procs.start(
            [_queue_proxy_path(None)],
            env=queue_proxy_env(args.cc, qp_port, app_port),
            log_path=tmp / "qp.log",
        )
        _procs.wait_listening(qp_port, qp, 10.0, 0.01, tmp / "qp.log")
        sink_port, _ = _activator.start_autoscaler_sink(procs, tmp / "sink.log")
        platform = tmp / "platform.json"
        _activator.write_platform(
            platform,
            [_activator.revision("soak-00001", HOST, args.cc, ready=[f"127.0.0.1:{qp_port}"])],
        )
        act_port, act_metrics = _procs.free_port(), _procs.free_port()
        act = procs.start(
            [_activator.activator_path()],
            env=_activator.activator_env(act_port, act_metrics, sink_port, platform),
            log_path=tmp / "activator.log",
        )
        _procs.wait_listening(act_port, act, 15.0, 0.01, tmp / "activator.log")
        _wait_routed(act_port, deadline=time.monotonic() + 15.0)

        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append(
                    {
                        "t": time.monotonic() - t0,
                        "activator": _procs.tree_rss_mib(act.pid),
                        "queue_proxy": _procs.tree_rss_mib(qp.pid),
                    }
                )
                stop.wait(args.sample)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(
            f"soak: wrk -c{args.connections} for {args.duration:.0f} s through activator "
            f"(pid {act.pid}) -> queue-proxy cc={args.cc} (pid {qp.pid}) -> app",
            flush=True,
        )
        wrk = subprocess.run(
            [tools["wrk"], "-t1", f"-c{args.connections}", f"-d{args.duration:.0f}s",
             "-H", f"Host: {HOST}", f"http://127.0.0.1:{act_port}/"],
            capture_output=True, text=True, timeout=args.duration + 60, check=False,
        )  # fmt: skip
        stop.set()
        sampler.join()
    out = wrk.stdout
    requests = _int(r"(\d+) requests in", out)
    socket_line = out.split("Socket errors:")[-1] if "Socket errors:" in out else ""
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", socket_line))
    non2xx = _int(r"Non-2xx or 3xx responses: (\d+)", out) or 0
    summary: dict[str, Any] = {"requests": requests, "socket_errors": errors, "non_2xx": non2xx}
    print(f"  wrk: {requests} requests, {errors} socket errors, {non2xx} non-2xx")
    print("  process        after warm-up   at the end   max    slope MiB/min (after warm-up)")
    ok = wrk.returncode == 0 and not errors and not non2xx and bool(requests)
    for name in ("activator", "queue_proxy"):
        after = [(s["t"], s[name]) for s in samples if s["t"] >= args.warmup and s[name] > 0]
        slope = _slope_per_min(after)
        first = after[0][1] if after else None
        last = after[-1][1] if after else None
        peak = max((v for _, v in after), default=None)
        summary[name] = {"after_warmup_mib": first, "end_mib": last, "max_mib": peak,
                         "slope_mib_per_min": slope}  # fmt: skip
        flat = slope is not None and slope < FLAT_MIB_PER_MIN
        print(
            f"  {name:<14} {_f(first):>13} {_f(last):>12} {_f(peak):>6}   {_f(slope, '.3f'):>8}"
            f"  {'flat' if flat else 'GROWING' if slope is not None else '-'}"
        )
    path = args.results_dir / f"soak-{started.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "scenario": "soak",
        "started": started.isoformat(timespec="seconds"),
        "options": {k: v for k, v in vars(args).items() if k in
                    ("duration", "warmup", "connections", "cc", "sample", "quick")},
        "machine": {k: v for k, v in machine().items() if k not in ("nginx", "wrk")},
        "summary": summary,
        "samples": samples,
    }  # fmt: skip
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"json: {path}")
    return 0 if ok else 1


def _wait_routed(port: int, deadline: float) -> None:
    """One request through the activator must come back 200 (it probed the pod)."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": HOST})
    while True:
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise _procs.BenchError("soak: the activator never routed a request to the pod")
        time.sleep(0.05)


def _int(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def _f(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)

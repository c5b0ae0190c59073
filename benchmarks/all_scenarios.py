"""Every scenario once, in turn, each as its own ``python -m benchmarks NAME`` child process.

``python -m benchmarks all --quick`` runs each scenario's ``--quick`` mode (each about a minute
or less); ``--smoke`` (what CI runs, via tests/bench_smoke) is ``--quick`` with the slowest
scenarios trimmed further (fewer proxy targets, one workload, no mypyc build; fewer knd
repetitions), so the whole run stays within a few minutes on a 2-core machine. A scenario that
runs longer than ``--timeout`` seconds is stopped (its whole process group) and counts as failed.
The table at the end gives each scenario's exit status, wall time and the JSON it wrote; the
summary goes to ``benchmarks/results/all-<stamp>.json``. Exit status 0 only when every scenario
exited 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _gobaseline
from benchmarks._procs import BenchError
from benchmarks.proxy import RESULTS_DIR

ROOT = Path(__file__).resolve().parent.parent

# Extra options per scenario under --smoke (on top of --quick): the CI budget is a few minutes.
SMOKE_ARGS: dict[str, list[str]] = {
    "proxy": [
        "--targets",
        "direct,nginx,queue-proxy-cc0,activator-qp-cc0",
        "--workloads",
        "1k",
        "--compiled",
        "off",
        "--cold-starts",
        "1",
        "--duration",
        "2",
    ],
    "knd": [
        "--repeat",
        "1",
        "--steps",
        "5:4,20:4,0:20",
        "--parts",
        "cold,release,burst,scale",
        "--burst",
        "3",
        "--burst-ms",
        "500",
    ],
    "held": ["--held", "1000", "--repeat", "1"],
    "telemetry": ["--repeat", "1", "--duration", "2"],
    "soak": ["--duration", "6", "--warmup", "2"],
    "locust": ["--burst", "10", "--seconds", "1.5", "--steps", "50:2,100:2,150:2,50:10"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``all`` pseudo-scenario."""
    parser.add_argument("--quick", action="store_true", help="each scenario's --quick mode")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="--quick trimmed to the CI budget (a few minutes in all)",
    )
    parser.add_argument("--skip", default="", help="comma-separated scenarios not to run")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (default all)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=240.0,
        help="seconds before a scenario is stopped and counted as failed (240)",
    )
    parser.add_argument(
        "--go",
        metavar="PATH",
        default=None,
        help="path of a Knative queue-proxy binary you built: passed as --go PATH to every "
        "scenario that takes it (proxy, h2load, grpc, tls)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where JSON goes")


def _options() -> dict[str, set[str]]:
    """Scenario name -> its option strings (every scenario but this one)."""
    from benchmarks.__main__ import _scenarios

    out: dict[str, set[str]] = {}
    for name, (_help, load) in _scenarios().items():
        if name == "all":
            continue
        probe = argparse.ArgumentParser(add_help=False)
        load().add_arguments(probe)
        out[name] = set(probe._option_string_actions)
    return out


def _run_one(argv: list[str], timeout: float) -> tuple[int | None, float]:
    """Run argv in its own session, output to ours; stop its process group on timeout."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        code = None
    except BaseException:  # Ctrl-C or SIGTERM (SystemExit): stop the scenario, then go
        _stop_group(proc)
        raise
    return code, time.monotonic() - t0


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the scenario's process group (it stops its own children), SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run(args: argparse.Namespace) -> int:
    """Run each selected scenario in turn; a summary table and JSON at the end."""
    quick = args.quick or args.smoke
    options = _options()
    capable = {name: "--quick" in opts for name, opts in options.items()}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = (only | skip) - set(capable)
    if unknown:
        raise BenchError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    names = [n for n in capable if (not only or n in only) and n not in skip]
    if args.go:
        _gobaseline.go_path(args.go)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now().astimezone()
    rows: list[dict[str, Any]] = []
    for name in names:
        argv = [sys.executable, "-m", "benchmarks", name]
        if quick and capable[name]:
            argv.append("--quick")
        if args.smoke:
            argv += SMOKE_ARGS.get(name, [])
        if args.go and "--go" in options[name]:
            argv += ["--go", args.go]
        if "--results-dir" in options[name]:
            argv += ["--results-dir", str(args.results_dir)]
        before = set(args.results_dir.glob("*.json"))
        print(f"\n=== {' '.join(argv[2:])}", flush=True)
        code, wall = _run_one(argv, args.timeout)
        written = sorted(str(p) for p in set(args.results_dir.glob("*.json")) - before)
        rows.append(
            {
                "scenario": name,
                "argv": argv[1:],
                "exit": code,
                "timed_out": code is None,
                "seconds": round(wall, 1),
                "quick": quick and capable[name],
                "json": written,
            }
        )
    print("\n=== all scenarios")
    print(f"  {'scenario':<12}{'exit':>6}{'seconds':>9}  json")
    for r in rows:
        shown = "timeout" if r["timed_out"] else str(r["exit"])
        note = "" if r["quick"] or not quick else "  (no --quick: full mode)"
        files = ", ".join(Path(p).name for p in r["json"]) or "-"
        print(f"  {r['scenario']:<12}{shown:>6}{r['seconds']:>9.1f}  {files}{note}")
    total = sum(r["seconds"] for r in rows)
    print(f"  total {total:.0f} s")
    out = args.results_dir / f"all-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "scenario": "all",
                "started": started.isoformat(timespec="seconds"),
                "quick": quick,
                "smoke": args.smoke,
                "runs": rows,
                "total_seconds": round(total, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"json: {out}")
    return 0 if rows and all(r["exit"] == 0 for r in rows) else 1

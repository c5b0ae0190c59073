"""gRPC unary throughput and latency per hop: direct, through the queue-proxy, and through the
activator plus the queue-proxy (all h2c, one HTTP/2 connection from the client).

A grpcio server (``python -m benchmarks.grpc --serve PORT``, echo of a small message) is the
app; the load generator is a grpcio asyncio client in this process running ``--concurrency``
calls at a time on one channel for ``--duration`` seconds per target after a short warm-up. The
Python gRPC client costs CPU too, so on a small machine the figures are a floor of what the
proxies can do, and the ratios to direct are the point. Prints calls/s and p50/p99 per target.

``--go PATH`` adds Knative's Go queue-proxy (a binary you built from Knative's source) in front
of the same app with the same env as ours, measured with the same client load as the target
``go queue-proxy``; the table then ends with ours over Go's calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import _activator, _gobaseline, _procs, _tools

METHOD = "/bench.Echo/Unary"
PAYLOAD = b"x" * 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``grpc`` scenario."""
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per target (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (1)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (32)")
    parser.add_argument("--queue-proxy", default="", help="queue-proxy executable")
    parser.add_argument("--activator", default="", help="activator executable")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every target; the median is shown (3)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the proxies on CPU 0, the grpcio client and app on CPU 1 (as the proxy and h2load "
        "scenarios run them): what the hops cost in calls/s when they do not take the client's "
        "and the app's CPU; unpinned (the default) all share the cores",
    )
    parser.add_argument("--quick", action="store_true", help="2 s per target, one round")
    parser.add_argument(
        "--compiled", action="store_true", help="run ours from the mypyc build (as the image ships)"
    )
    _gobaseline.add_go_argument(
        parser, "measured as 'go queue-proxy' in front of the same app, same client load"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="write grpc-<time>.json there too"
    )


async def _load(
    port: int,
    concurrency: int,
    warmup: float,
    duration: float,
    authority: str = "",
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    import grpc

    latencies: list[float] = []
    errors = 0
    # The activator routes by Host (the :authority): name the revision's host there.
    options = [("grpc.default_authority", authority)] if authority else []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        call = ch.unary_unary(METHOD)
        await call(PAYLOAD, timeout=10)
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup
        end = measure_from + duration
        cpu_from: dict[str, float] = {}
        cpu_to: dict[str, float] = {}
        procs_on_path = pids or {}

        async def cpu_mark() -> None:
            # CPU of each process on the path (and of this client) over the measured window.
            await asyncio.sleep(warmup)
            cpu_from.update(
                {name: _procs.tree_cpu_seconds(pid) for name, pid in procs_on_path.items()}
            )
            cpu_from["client"] = _own_cpu()

        mark = loop.create_task(cpu_mark()) if pids is not None else None

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = loop.time()
                if t0 >= end:
                    return
                try:
                    await call(PAYLOAD, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if t0 >= measure_from:
                    latencies.append(loop.time() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if mark is not None:
            await mark
            cpu_to.update(
                {name: _procs.tree_cpu_seconds(pid) for name, pid in procs_on_path.items()}
            )
            cpu_to["client"] = _own_cpu()
    latencies.sort()
    n = len(latencies)
    cpu_us = {name: (cpu_to[name] - start) / n * 1e6 for name, start in cpu_from.items() if n}

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {
        "calls_per_s": n / duration,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "errors": errors,
        "cpu_us_per_call": cpu_us,
    }


def _pin_this_process(cpu: int) -> None:
    """Every thread of this process (the grpcio client's included) on ``cpu``; threads started
    later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:  # a thread that has just ended
            pass


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _qp_env(port: int, user_port: int) -> dict[str, str]:
    env = dict(os.environ)
    admin, metrics, user_metrics = (_procs.free_port() for _ in range(3))
    env.update(
        CONTAINER_CONCURRENCY="0",
        QUEUE_SERVING_PORT=str(port),
        QUEUE_SERVING_TLS_PORT=str(_procs.free_port()),
        USER_PORT=str(user_port),
        REVISION_TIMEOUT_SECONDS="300",
        SERVING_LOGGING_CONFIG="",
        SERVING_LOGGING_LEVEL="warn",
        SERVING_NAMESPACE=_activator.NAMESPACE,
        SERVING_CONFIGURATION="bench",
        SERVING_REVISION="bench-00001",
        SERVING_POD="bench-00001-pod",
        SERVING_POD_IP="127.0.0.1",
        QUEUE_ADMIN_PORT=str(admin),
        QUEUE_METRICS_PORT=str(metrics),
        QUEUE_USER_METRICS_PORT=str(user_metrics),
        DRAIN_QUIET_PERIOD_SECONDS="0",
        **_activator.MALLOC_ENV,
    )
    return env


def run(args: argparse.Namespace) -> int:
    """Start app, queue-proxy and activator; measure each hop; print the table."""
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 0.5, 1
    qp_bin = args.queue_proxy or str(Path(sys.executable).with_name("queue-proxy"))
    act_bin = _activator.activator_path(args.activator or None)
    go_bin = _gobaseline.go_path(getattr(args, "go", None))
    ours_env: dict[str, str] = {}
    if args.compiled:
        sys.path.insert(0, str(_activator.ROOT))
        from tools.build_compiled import build

        ours_env["PYTHONPATH"] = str(build())
    print(
        f"grpc: unary echo of {len(PAYLOAD)} B, {args.concurrency} in flight on one h2c "
        f"connection, {args.duration:g} s per target, median of {args.rounds} round(s); grpcio "
        "client in this process "
        "(the client's CPU counts too: compare ratios, and expect noise on a shared machine)"
    )
    results: dict[str, dict[str, Any]] = {}
    go_error = None
    on_proxy_cpu: list[str] = []
    on_load_cpu: list[str] = []
    if args.pin:
        taskset = _tools.ensure_tools(["taskset"])["taskset"]
        on_proxy_cpu, on_load_cpu = [taskset, "-c", "0"], [taskset, "-c", "1"]
        print("pinned: queue-proxy, activator (and Go's) on CPU 0; the client and the app on CPU 1")
    with _procs.ProcessSet() as procs, tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        app_port, qp_port, act_port, act_metrics = (_procs.free_port() for _ in range(4))
        app = procs.start(
            [*on_load_cpu, sys.executable, "-m", "benchmarks.grpc", "--serve", str(app_port)],
            env=dict(os.environ, PYTHONPATH=str(_activator.ROOT)),
            log_path=logs / "app.log",
            cwd=_activator.ROOT,
        )
        _procs.wait_listening(app_port, app, 10.0, 0.01, logs / "app.log")
        qp = procs.start(
            [*on_proxy_cpu, qp_bin],
            env={**_qp_env(qp_port, app_port), **ours_env},
            log_path=logs / "qp.log",
        )
        _procs.wait_listening(qp_port, qp, 10.0, 0.01, logs / "qp.log")
        sink_port, _ = _activator.start_autoscaler_sink(procs, logs / "sink.log")
        platform = logs / "platform.json"
        _activator.write_platform(
            platform,
            [_activator.revision("bench-00001", "bench.example.com", 0, [f"127.0.0.1:{qp_port}"])],
        )
        act = procs.start(
            [*on_proxy_cpu, act_bin],
            env={
                **_activator.activator_env(act_port, act_metrics, sink_port, platform),
                **ours_env,
            },
            log_path=logs / "act.log",
        )
        _procs.wait_listening(act_port, act, 10.0, 0.01, logs / "act.log")
        targets: list[tuple[str, int, str, dict[str, int]]] = [
            ("direct", app_port, "", {"app": app.pid}),
            ("queue-proxy", qp_port, "", {"app": app.pid, "queue-proxy": qp.pid}),
            (
                "activator + queue-proxy",
                act_port,
                "bench.example.com",
                {"app": app.pid, "queue-proxy": qp.pid, "activator": act.pid},
            ),
        ]
        go = None
        if go_bin is not None:
            go_port = _procs.free_port()
            try:
                _gobaseline.check_fixed_ports()
                go = procs.start(
                    [*on_proxy_cpu, go_bin],
                    env=_qp_env(go_port, app_port),
                    log_path=logs / "go.log",
                )
                _procs.wait_listening(go_port, go, 10.0, 0.01, logs / "go.log")
            except _procs.StartError as exc:
                go_error = f"go queue-proxy: failed to start: {exc}"
            else:
                targets.append(
                    ("go queue-proxy", go_port, "", {"app": app.pid, "queue-proxy": go.pid})
                )
        # Rounds interleave the targets (every target, then again), so drift hits them alike.
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in targets}
        if args.pin:
            _pin_this_process(1)
        for _ in range(args.rounds):
            for name, port, authority, pids in targets:
                runs[name].append(
                    asyncio.run(
                        _load(port, args.concurrency, args.warmup, args.duration, authority, pids)
                    )
                )
        if go is not None:
            procs.stop(go, graceful=False)  # its SIGTERM drain waits a 30 s quiet period
        for name, got in runs.items():  # the median round by calls/s
            results[name] = sorted(got, key=lambda r: r["calls_per_s"])[len(got) // 2]
            results[name]["rounds_calls_per_s"] = [r["calls_per_s"] for r in got]
    base = results["direct"]["calls_per_s"] or float("nan")
    cols = ("client", "app", "queue-proxy", "activator")
    print(
        f"{'target':<26}{'calls/s':>10}{'x direct':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        "  CPU us/call: " + " ".join(f"{c:>11}" for c in cols)
    )
    for name, r in results.items():
        cpu = r.get("cpu_us_per_call", {})
        print(
            f"{name:<26}{r['calls_per_s']:>10.0f}{r['calls_per_s'] / base:>10.2f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}               "
            + " ".join(f"{cpu[c]:>11.1f}" if c in cpu else f"{'-':>11}" for c in cols)
        )
    if "go queue-proxy" in results:
        ratio = results["queue-proxy"]["calls_per_s"] / (
            results["go queue-proxy"]["calls_per_s"] or float("nan")
        )
        print(f"queue-proxy / go queue-proxy (same run, same client load): calls/s {ratio:.2f}")
    if go_error:
        print(go_error)
    if args.results_dir is not None:
        now = dt.datetime.now().astimezone()
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"grpc-{now:%Y%m%d-%H%M%S}.json"
        doc = {
            "scenario": "grpc",
            "started": now.isoformat(),
            "results": results,
            "go_error": go_error,
        }
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"results: {out}")
    return 1 if go_error else 0


async def _serve(port: int) -> None:
    import grpc

    async def unary(req: bytes, ctx: Any) -> bytes:
        return req

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        try:
            asyncio.run(_serve(int(sys.argv[2])))
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    sys.exit("usage: python -m benchmarks grpc [options]")

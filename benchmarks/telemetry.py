"""What telemetry costs the queue-proxy: tracing off, on at 1 % sampling, on at 100 %.

Four queue-proxies (CONTAINER_CONCURRENCY=0, one at a time on the proxy CPU, wrk and the nginx
upstream on the load CPU, as in the ``proxy`` scenario) under the same load, interleaved over
--repeat rounds:

- ``no-telemetry``: this tree with the tracing statements cut out of the queue-proxy handler's
  request entry (``QueueProxyHandler.__call__``: every statement naming ``tr`` or ``spans``,
  removed through ``ast``), so exactly the code before tracing on that path; or, with
  --baseline REV, the source of that commit;
- ``off``: this tree, tracing not configured (the hot path pays one ``is None`` test);
- ``1%`` / ``100%``: this tree with ``OBSERVABILITY_CONFIG`` tracing over OTLP/HTTP to a sink on
  the load CPU, parent-based ratio sampling at 0.01 / 1.0 (wrk sends no ``traceparent``, so the
  ratio decides); spans go through the SDK's batch processor in its own thread.

First, in memory (``--engine-requests``; the ``engine`` scenario's method: request and response
bytes through the real handler and engine, no sockets, each variant in a fresh interpreter):
CPU microseconds per request (best round of each child, median over interleaved children) for
the same four variants, spans ending in a null exporter
(so the export thread's encoding is not in that figure). Then the wrk run.

The request metrics (Prometheus on 9091) are on in all four, so only tracing differs. Printed:
req/s, p99 and CPU per request (medians), and each variant's ratios against ``no-telemetry``.
Targets (issue 8): off costs at most 2 %, 1 % sampling at most 10 %. On a shared machine a few
% is noise: use --repeat.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks import _procs, _tools
from benchmarks._procs import BenchError, ProcessSet, StartError
from benchmarks.proxy import (
    WORKLOADS,
    Bench,
    Target,
    _compile_bytecode,
    _queue_proxy_path,
    background_load,
)

REPO = Path(__file__).resolve().parent.parent
PROM = {"requestMetrics": {"protocol": "prometheus"}}

# An OTLP/HTTP trace sink: answers every POST with an empty ExportTraceServiceResponse.
SINK = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(n)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


# What wrk sends: no traceparent, so the sampling ratio decides.
ENGINE_REQUEST = (
    b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
)
ENGINE_VARIANTS = (("no-telemetry", None), ("off", None), ("1%", 0.01), ("100%", 1.0))


def engine_main() -> None:
    """Child process: ``python -c 'from benchmarks.telemetry import engine_main; engine_main()'
    REQUESTS ROUNDS [RATE]``; prints the CPU microseconds per request of its best round."""
    import asyncio
    import gc
    import sys
    import time

    from benchmarks.engine import RESPONSE, _Transport
    from dataplane.proxy import HTTPServer, ServerConnection
    from dataplane.stats import RequestStats
    from dataplane.timeouts import TimeoutPolicy
    from dataplane.upstream import UpstreamConnection, UpstreamPool
    from queueproxy.drain import Drainer
    from queueproxy.handler import QueueProxyHandler, server_config
    from queueproxy.readiness import ReadinessProber

    requests, rounds = int(sys.argv[1]), int(sys.argv[2])
    kw: dict[str, object] = {}
    if len(sys.argv) > 3:
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        from dataplane.tracing import TracingConfig, start_tracing

        class Null(SpanExporter):
            def export(self, spans: object) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        cfg = TracingConfig(protocol="http/protobuf", rate=float(sys.argv[3]))
        kw["tracer"] = start_tracing(cfg, "knative.dev/serving/pkg/queue", exporter=Null())
    loop = asyncio.new_event_loop()
    pool = UpstreamPool("127.0.0.1", 8080, loop=loop)
    handler = QueueProxyHandler(
        loop=loop,
        pool=pool,
        breaker=None,
        stats=RequestStats(loop.time()),
        prober=ReadinessProber([]),
        drainer=Drainer(30.0, loop=loop),
        timeouts=TimeoutPolicy(300.0),
        **kw,  # type: ignore[arg-type]
    )
    server = HTTPServer(handler, server_config(forwarded_shim=True), loop=loop)
    conn = ServerConnection(server)
    conn.connection_made(_Transport())
    up = UpstreamConnection(pool)
    up.connection_made(_Transport())
    pool.release(up)

    def one_round(n: int) -> float:
        # CPU time of this process: time spent descheduled on a busy machine is not counted
        t0 = time.process_time()
        for _ in range(n):
            conn.data_received(ENGINE_REQUEST)
            up.data_received(RESPONSE)
        return (time.process_time() - t0) / n * 1e6

    one_round(min(2000, requests))
    if "tracer" in kw:
        gc.freeze()  # as queue-proxy does once it runs with a tracer
    results = []
    for _ in range(rounds):
        gc.collect()
        results.append(one_round(requests))
    assert pool.idle_count == 1, "requests did not complete"
    print(f"{min(results):.3f}")  # the least disturbed round


def engine_figures(base: Path, requests: int, rounds: int, passes: int) -> dict[str, float]:
    """Each variant's CPU us/request: the best round of each child, median over ``passes``
    interleaved children."""
    got: dict[str, list[float]] = {name: [] for name, _ in ENGINE_VARIANTS}
    for _ in range(passes):
        for name, rate in ENGINE_VARIANTS:
            path = f"{base}:{REPO}" if name == "no-telemetry" else str(REPO)
            argv = [
                sys.executable,
                "-c",
                "from benchmarks.telemetry import engine_main; engine_main()",
            ]
            n = max(200, requests // 20) if rate == 1.0 else requests
            argv += [str(n), str(rounds)] + ([] if rate is None else [str(rate)])
            env = dict(os.environ, PYTHONPATH=path)
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode != 0:
                raise BenchError(f"in-memory {name} failed: {proc.stderr.strip()[-400:]}")
            got[name].append(float(proc.stdout.strip().splitlines()[-1]))
    return {name: statistics.median(v) for name, v in got.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="3 s per run, 2 rounds")
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up load before each (2)")
    parser.add_argument("--repeat", type=int, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--baseline",
        help="git revision whose source is the no-telemetry queue-proxy (default: this tree "
        "with the tracing statements stripped from the handler's request entry)",
    )
    parser.add_argument(
        "--workloads", default="1k", help=f"comma-separated subset of {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--queue-proxy", help="queue-proxy executable (default: beside Python)")
    parser.add_argument(
        "--engine-requests",
        type=int,
        help="requests per in-memory round (default 20000, --quick 5000; 0 skips that part)",
    )
    parser.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the proxy under test")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for wrk and the upstream")


def _git(*argv: str) -> str:
    proc = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"git {' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


class _StripTracing(ast.NodeTransformer):
    """Drops every statement of ``QueueProxyHandler.__call__`` that names ``tr`` or ``spans``."""

    NAMES = frozenset({"tr", "spans"})

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        if node.name == "QueueProxyHandler":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__call__":
                    fn.body = self._strip(fn.body)
        return node

    def _strip(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for st in body:
            # compound statements are judged by their header only, simple ones as a whole
            head: ast.AST | None = st
            if isinstance(st, ast.If | ast.While):
                head = st.test
            elif isinstance(st, ast.Try | ast.With | ast.For):
                head = None
            if head is not None and any(
                isinstance(n, ast.Name) and n.id in self.NAMES for n in ast.walk(head)
            ):
                continue
            for field in ("body", "orelse", "handlers", "finalbody"):
                sub = getattr(st, field, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                    setattr(st, field, self._strip(sub) or [ast.Pass()])
            for h in getattr(st, "handlers", []):
                h.body = self._strip(h.body) or [ast.Pass()]
            out.append(st)
        return out


def _baseline_tree(rev: str | None, dest: Path) -> str:
    """The no-telemetry packages into ``dest``; returns what they are (for the table)."""
    dest.mkdir(parents=True)
    if rev is None:
        for pkg in ("dataplane", "queueproxy"):
            shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        handler = dest / "queueproxy" / "handler.py"
        tree = ast.parse(handler.read_text())
        tree = ast.fix_missing_locations(_StripTracing().visit(tree))
        call = next(
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__call__"
        )
        if any(isinstance(n, ast.Name) and n.id in _StripTracing.NAMES for n in ast.walk(call)):
            raise BenchError("could not strip tracing from queueproxy/handler.py: use --baseline")
        handler.write_text(ast.unparse(tree) + "\n")
        return "stripped"
    sha = _git("rev-parse", "--verify", rev + "^{commit}")
    archive = subprocess.run(
        ["git", "archive", sha, "dataplane", "queueproxy"], cwd=REPO, capture_output=True
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {sha}: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return sha[:8]


def _tracing_env(endpoint: str, rate: float) -> list[str]:
    cfg = dict(
        PROM, tracing={"protocol": "http/protobuf", "endpoint": endpoint, "samplingRate": rate}
    )
    return [f"OBSERVABILITY_CONFIG={json.dumps(cfg)}"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run(args: argparse.Namespace) -> int:
    if args.duration is None:
        args.duration = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    if args.duration < 1 or args.repeat < 1 or args.warmup < 0:
        raise BenchError("--duration and --repeat must be >= 1, --warmup >= 0")
    args.cold_starts = 1
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not names or any(n not in WORKLOADS for n in names):
        raise BenchError(f"--workloads: choose from {', '.join(WORKLOADS)}")
    args.workloads = ",".join(names)
    workloads = [WORKLOADS[n] for n in names]
    qp = _queue_proxy_path(args.queue_proxy)
    _compile_bytecode()
    tools = _tools.ensure_tools(["nginx", "wrk", "taskset"])
    with tempfile.TemporaryDirectory(prefix="knd-bench-telemetry-") as tmp, ProcessSet() as procs:
        base = Path(tmp) / "baseline"
        sha = _baseline_tree(args.baseline, base)
        if args.engine_requests is None:
            args.engine_requests = 5000 if args.quick else 20_000
        if args.engine_requests > 0:
            passes = 2 if args.quick else 3
            print(
                f"in memory: {args.engine_requests} requests x 3 rounds, {passes} passes "
                "per variant ...",
                flush=True,
            )
            figs = engine_figures(base, args.engine_requests, 3, passes)
            ref = figs["no-telemetry"]
            print(f"  {'variant':<26}{'us/request':>12}{'cost':>9}")
            for name, v in figs.items():
                print(f"  {name:<26}{v:>12.2f}{(v / ref - 1) * 100:>+8.1f}%")
            print(flush=True)
        bench = Bench(args, procs, Path(tmp), tools)
        background = background_load([args.proxy_cpu, args.load_cpu])
        bench.start_upstream()
        sink_port = _procs.free_port()
        sink = procs.start(
            bench.pinned(args.load_cpu, ["python3", "-c", SINK, str(sink_port)]),
            log_path=Path(tmp) / "sink.log",
        )
        try:
            _procs.wait_listening(sink_port, sink, 10.0, 0.01, Path(tmp) / "sink.log")
        except StartError as exc:
            raise BenchError(f"OTLP sink did not start: {exc}") from exc
        endpoint = f"http://127.0.0.1:{sink_port}/v1/traces"
        prom = f"OBSERVABILITY_CONFIG={json.dumps(PROM)}"
        targets = [
            Target(
                "no-telemetry",
                f"no-telemetry ({sha})",
                "queue-proxy",
                ["env", f"PYTHONPATH={base}", prom, qp],
                cc=0,
            ),
            Target("off", "tracing off", "queue-proxy", ["env", prom, qp], cc=0),
            Target(
                "1%", "tracing 1 %", "queue-proxy", ["env", *_tracing_env(endpoint, 0.01), qp], cc=0
            ),
            Target(
                "100%",
                "tracing 100 %",
                "queue-proxy",
                ["env", *_tracing_env(endpoint, 1.0), qp],
                cc=0,
            ),
        ]
        print(
            f"telemetry: {len(targets)} queue-proxies x {len(workloads)} workloads x "
            f"{args.repeat} rounds of {args.warmup}+{args.duration} s; baseline {sha}",
            flush=True,
        )
        for t in targets:
            bench.start_target(t)
            print(f"  {t.label:<26}{t.error or f'listening on {t.port}'}", flush=True)
        for rnd in range(args.repeat):
            for w in workloads:
                for t in targets:
                    if t.error:
                        continue
                    bench.measure(t, w)
                    last = t.runs.get(w.name, [])
                    shown = t.error or f"{last[-1].rps:,.0f} req/s, p99 {last[-1].p99_ms:.2f} ms"
                    print(
                        f"  [{rnd + 1}/{args.repeat}] {w.name:<6}{t.label:<26}{shown}", flush=True
                    )
    base_t = targets[0]
    print()
    for w in workloads:
        print(f"{w.describe()}: medians of {args.repeat}, ratios against no-telemetry")
        print(
            f"  {'variant':<26}{'req/s':>10}{'p99 ms':>9}{'rps ratio':>11}{'cost':>8}"
            f"{'CPU us/req':>12}{'CPU cost':>10}"
        )
        for t in targets:
            if t.error or not t.runs.get(w.name):
                print(f"  {t.label:<26}{t.error or 'no runs'}")
                continue
            rps, p99, cpu = (t.median(w.name, m) for m in ("rps", "p99_ms", "cpu_us_per_req"))
            r = _ratio(rps, base_t.median(w.name, "rps"))
            c = _ratio(cpu, base_t.median(w.name, "cpu_us_per_req"))
            cost = f"{(1 - r) * 100:+.1f}%" if r is not None else "-"
            cpu_cost = f"{(c - 1) * 100:+.1f}%" if c is not None else "-"
            print(
                f"  {t.label:<26}{rps or 0:>10,.0f}{p99 or 0:>9.2f}{(r or 0):>11.3f}{cost:>8}"
                f"{cpu or 0:>12.1f}{cpu_cost:>10}"
            )
        spread = [
            (max(v) - min(v)) / statistics.median(v) * 100
            for t in targets
            if len(v := [x.rps for x in t.runs.get(w.name, [])]) > 1
        ]
        if spread:
            print(f"  run-to-run spread of req/s within a variant: up to {max(spread):.1f}%")
    print(
        "targets: off costs <= 2 %, 1 % sampling <= 10 % (cost: 1 - rps ratio; CPU cost: "
        "CPU per request against no-telemetry's, the steadier figure on a busy machine)"
    )
    if any(pct > 10 for pct in background.values()):
        print(f"warning: the machine was busy before the run ({background}); figures are noisy")
    return 0 if any(t.runs for t in targets) else 1

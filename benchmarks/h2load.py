"""HTTP/2 cleartext through the queue-proxy: CPU per request and requests/s under h2load.

h2load (Debian's nghttp2-client) opens ``--connections`` h2c connections with prior knowledge
and keeps ``--streams`` requests in flight on each (``GET /1k``: 1 KiB answers); the upstream
is one nginx worker speaking h2c. The proxy under test runs alone on ``--proxy-cpu``; nginx and
h2load share ``--load-cpu``. The figure that matters is the proxy's CPU per request (utime +
stime of its process tree over the measured requests, from /proc): it is what a pod pays, and it
varies less than requests/s when other work shares the machine. Targets run in turn for
``--rounds`` rounds (medians reported), so a slow minute hits them all.

``--codec`` measures the HTTP/2 codec alone instead, in memory (no sockets, no proxy): a client
connection and a server connection of the same codec exchange ``--requests`` request/response
pairs in batches of ``--streams`` (request HEADERS as h2load sends them; response HEADERS and a
1 KiB DATA; WINDOW_UPDATEs), once with the ``h2`` library configured as the proxy used it and
once with :mod:`dataplane.h2frames`. It prints CPU microseconds per exchange (both sides) and
the ratio; run it under ``valgrind --tool=callgrind`` for instruction counts.

Targets: ``nginx`` (h2load straight at the upstream: the floor), ``queue-proxy`` (this
checkout's; ``--compiled`` runs the mypyc build, as the image ships), and any ``--extra
NAME=COMMAND``: a queue-proxy started by COMMAND with Knative's environment contract (e.g. an
older build of ours), compared with ours. ``--go PATH`` adds Knative's Go queue-proxy (a binary
you built from Knative's source) as the target ``go``, with the same env: h2load speaks h2c
with prior knowledge to its serving port, as to ours, and it forwards h2c to nginx. The table
ends with same-run ratios: our CPU per request and req/s over each other queue-proxy's. Only
2xx responses count (req/s and CPU per request); any other answer is an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _gobaseline, _procs, _tools, upstream
from benchmarks.grpc import _qp_env

ROOT = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``h2load`` scenario."""
    parser.add_argument("--connections", type=int, default=16, help="h2c connections (16)")
    parser.add_argument("--streams", type=int, default=10, help="streams per connection (10)")
    parser.add_argument("--requests", type=int, default=60000, help="requests per run (60000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the targets (3)")
    parser.add_argument("--proxy-cpu", type=int, default=0, help="CPU of the proxy (0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU of nginx and h2load (1)")
    parser.add_argument("--compiled", action="store_true", help="run ours from the mypyc build")
    parser.add_argument("--queue-proxy", default="", help="queue-proxy executable")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another queue-proxy to compare (repeatable)",
    )
    _gobaseline.add_go_argument(
        parser, "measured as the target 'go' beside ours, with the ratio of CPU per request"
    )
    parser.add_argument(
        "--codec",
        action="store_true",
        help="the HTTP/2 codec alone in memory: h2 library vs dataplane.h2frames",
    )
    parser.add_argument(
        "--codec-only",
        choices=("h2", "ours"),
        default=None,
        help="with --codec: run one codec only (for callgrind)",
    )
    parser.add_argument("--quick", action="store_true", help="one round of 4000 requests")
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="write h2load-<time>.json there too"
    )


@dataclass
class Target:
    name: str
    argv: list[str] | None  # None: h2load straight at nginx
    env: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, float]] = field(default_factory=list)
    go: bool = False  # Knative's Go queue-proxy: its fixed ports are checked before each start


_FINISHED = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded")
_STATUS = re.compile(r"status codes: (\d+) 2xx")


def _h2load(h2load: str, cpu: int, port: int, n: int, c: int, m: int) -> dict[str, float]:
    argv = ["taskset", "-c", str(cpu), h2load, "-c", str(c), "-m", str(m), "-n", str(n)]
    argv.append(f"http://127.0.0.1:{port}/1k")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False).stdout
    return parse_h2load(out)


def parse_h2load(out: str) -> dict[str, float]:
    """req/s of 2xx responses, their count, and errors (every request without a 2xx answer)."""
    rps, req, ok = _FINISHED.search(out), _REQUESTS.search(out), _STATUS.search(out)
    if rps is None or req is None or ok is None:
        raise _procs.BenchError(f"h2load output not understood:\n{out[-800:]}")
    total, succeeded, ok_2xx = int(req.group(1)), int(req.group(2)), int(ok.group(1))
    valid = min(succeeded, ok_2xx)
    return {
        "rps": float(rps.group(1)) * valid / total if total else 0.0,
        "valid": float(valid),
        "errors": float(total - valid),
    }


def run(args: argparse.Namespace) -> int:
    """Start nginx (h2c), then each proxy in turn; measure; print the table."""
    if args.quick:
        args.rounds, args.requests = 1, 4000
    if args.codec:
        return _codec(args)
    _gobaseline.go_path(args.go)  # a bad --go fails before anything is installed or started
    _tools.PACKAGES.setdefault("h2load", "nghttp2-client")
    tools = _tools.ensure_tools(["nginx", "h2load", "taskset"])
    qp_bin = args.queue_proxy or str(Path(sys.executable).with_name("queue-proxy"))
    env_extra: dict[str, str] = {}
    if args.compiled:
        sys.path.insert(0, str(ROOT))
        from tools.build_compiled import build

        env_extra["PYTHONPATH"] = str(build())
    targets = build_targets(args, qp_bin, env_extra)
    n, c, m = args.requests, args.connections, args.streams
    started = dt.datetime.now().astimezone()
    print(
        f"h2load: GET /1k, {c} h2c connections x {m} streams, {n} requests per run, "
        f"{args.rounds} round(s); proxy on CPU {args.proxy_cpu}, nginx and h2load on CPU "
        f"{args.load_cpu} (CPU/request is the proxy's own; the machine may be shared)"
    )
    with _procs.ProcessSet() as procs, tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "nginx"
        up_port = _procs.free_port()
        www = prefix / "www"
        www.mkdir(parents=True)
        www.chmod(0o755)
        conf = upstream._UPSTREAM_SERVER.format(port=up_port, prefix=prefix, body_1k="x" * 1024)
        upstream.write_nginx_conf(prefix, conf.replace(" backlog=4096;", " http2 backlog=4096;"))
        upstream.start_nginx(procs, tools["nginx"], prefix, up_port, args.load_cpu)
        start_errors: list[str] = []
        for rnd in range(args.rounds):
            for t in targets:
                port = up_port
                proc = None
                if t.argv is not None:
                    port = _procs.free_port()
                    log = Path(tmp) / f"{t.name}-{rnd}.log"
                    argv = ["taskset", "-c", str(args.proxy_cpu), *t.argv]
                    env = {**_qp_env(port, up_port), **t.env}
                    try:
                        if t.go:
                            _gobaseline.check_fixed_ports()
                        proc = procs.start(argv, env=env, log_path=log)
                        _procs.wait_listening(port, proc, 15.0, 0.01, log)
                    except _procs.StartError as exc:
                        if not t.go:
                            raise _procs.BenchError(f"{t.name}: {exc}") from exc
                        # The baseline only: the round goes on without it, the exit status is 1.
                        start_errors.append(f"round {rnd + 1} {t.name}: failed to start: {exc}")
                        print(f"  {start_errors[-1]}", flush=True)
                        if proc is not None:
                            procs.stop(proc, graceful=False)
                        continue
                _h2load(tools["h2load"], args.load_cpu, port, min(n, 2000), c, m)  # warm-up
                cpu0 = _procs.tree_cpu_seconds(proc.pid) if proc is not None else 0.0
                got = _h2load(tools["h2load"], args.load_cpu, port, n, c, m)
                if proc is not None:
                    cpu = _procs.tree_cpu_seconds(proc.pid) - cpu0
                    got["cpu_us_per_req"] = cpu / max(1.0, got["valid"]) * 1e6
                    # Nothing is measured after the run: no drain (Knative's Go queue-proxy
                    # would wait out its 30 s quiet period on SIGTERM).
                    procs.stop(proc, graceful=False)
                t.runs.append(got)
                print(f"  round {rnd + 1} {t.name:<14} {_line(got)}", flush=True)
    results = {t.name: _summary(t.runs) for t in targets if t.runs}
    ours = results["queue-proxy"].get("cpu_us_per_req", float("nan"))
    print(f"{'target':<16}{'req/s':>10}{'CPU us/req':>12}{'CPU x ours':>12}{'errors':>8}")
    for name, r in results.items():
        cpu = r.get("cpu_us_per_req")
        cpu_s = f"{cpu:>12.1f}{cpu / ours:>12.2f}" if cpu is not None else f"{'-':>12}{'-':>12}"
        print(f"{name:<16}{r['rps']:>10.0f}{cpu_s}{r['errors']:>8.0f}")
    ratios = same_run_ratios(results)
    for name, ratio in ratios.items():
        print(
            f"queue-proxy / {name} (same run): CPU per request {_fmt(ratio['cpu_per_req'])} "
            f"(< 1: ours cheaper), req/s {_fmt(ratio['rps'])}"
        )
    if args.results_dir is not None:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"h2load-{started:%Y%m%d-%H%M%S}.json"
        doc: dict[str, Any] = {
            "scenario": "h2load",
            "started": started.isoformat(),
            "options": {"connections": c, "streams": m, "requests": n, "rounds": args.rounds},
            "results": results,
            "ratios_queue_proxy_vs": ratios,
            "start_errors": start_errors,
            "runs": {t.name: t.runs for t in targets},
        }
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"results: {out}")
    failed = sum(r["errors"] for r in results.values())
    return 1 if failed or start_errors else 0


def build_targets(args: argparse.Namespace, qp_bin: str, env: dict[str, str]) -> list[Target]:
    """nginx, ours, then --go (as ``go``) and each --extra, in table order."""
    targets = [Target("nginx", None), Target("queue-proxy", [qp_bin], env)]
    go = _gobaseline.go_path(getattr(args, "go", None))
    if go is not None:
        targets.append(Target("go", [go], go=True))
    for spec in args.extra:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            raise _procs.BenchError(f"--extra {spec!r}: expected NAME=COMMAND")
        if any(t.name == name for t in targets):
            raise _procs.BenchError(f"--extra {name}: name already used by another target")
        targets.append(Target(name, shlex.split(command)))
    return targets


def same_run_ratios(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Ours over each other queue-proxy (not nginx): CPU per request and req/s."""
    ours = results.get("queue-proxy", {})
    out: dict[str, dict[str, float | None]] = {}
    for name, r in results.items():
        if name in ("nginx", "queue-proxy"):
            continue
        out[name] = {
            key: (ours[key] / r[key] if ours.get(key) is not None and r.get(key) else None)
            for key in ("cpu_us_per_req", "rps")
        }
        out[name]["cpu_per_req"] = out[name].pop("cpu_us_per_req")
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8012"),
    (b":path", b"/1k"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
    (b"accept-encoding", b"gzip, deflate"),
]
_RESPONSE = [
    (b":status", b"200"),
    (b"server", b"nginx"),
    (b"date", b"Mon, 07 Dec 2026 10:00:00 GMT"),
    (b"content-type", b"application/octet-stream"),
    (b"content-length", b"1024"),
]
_BODY = b"x" * 1024


def _codec_pair(kind: str) -> tuple[Any, Any, Any]:
    """(client, server, event classes) of one codec, configured as the proxy uses it."""
    if kind == "h2":
        from h2 import events
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        def conn(client: bool) -> Any:
            return H2Connection(
                H2Configuration(
                    client_side=client,
                    header_encoding=None,
                    validate_outbound_headers=False,
                    normalize_outbound_headers=False,
                    validate_inbound_headers=not client,
                )
            )

        return conn(True), conn(False), events
    from dataplane import h2frames

    return h2frames.H2Conn(True, False), h2frames.H2Conn(False, True), h2frames


def _codec_exchanges(kind: str, n: int, batch: int) -> float:
    """CPU seconds for ``n`` request/response exchanges through one client/server pair."""
    import time

    client, server, ev = _codec_pair(kind)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    request_received, data_received = ev.RequestReceived, ev.DataReceived
    start = time.process_time()
    done = 0
    while done < n:
        for _ in range(batch):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, _REQUEST, end_stream=True)
        for e in server.receive_data(client.data_to_send()):
            if isinstance(e, request_received):
                server.send_headers(e.stream_id, _RESPONSE)
                server.send_data(e.stream_id, _BODY, end_stream=True)
        for e in client.receive_data(server.data_to_send()):
            if isinstance(e, data_received):
                client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        server.receive_data(client.data_to_send())
        done += batch
    return time.process_time() - start


def _codec(args: argparse.Namespace) -> int:
    kinds = [args.codec_only] if args.codec_only else ["h2", "ours"]
    n, batch = args.requests, args.streams
    print(f"HTTP/2 codec in memory: {n} exchanges in batches of {batch}, {args.rounds} round(s)")
    per: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            per[k].append(_codec_exchanges(k, n, batch) / n * 1e6)
    med = {k: statistics.median(v) for k, v in per.items()}
    for k in kinds:
        ratio = f"  ({med[k] / med['h2']:.3f} x h2)" if "h2" in med else ""
        print(f"  {k:<5} {med[k]:8.2f} us CPU per exchange (client + server){ratio}")
    return 0


def _line(got: dict[str, float]) -> str:
    cpu = got.get("cpu_us_per_req")
    text = f"{got['rps']:>9.0f} req/s"
    if cpu is not None:
        text += f"  {cpu:>7.1f} us CPU/req"
    return text + (f"  {got['errors']:.0f} errors" if got["errors"] else "")


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = runs[0].keys()
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["errors"] = sum(r["errors"] for r in runs)
    return out


if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks", "h2load", *sys.argv[1:]])

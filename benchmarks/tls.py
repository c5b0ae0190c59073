"""Internal TLS throughput: the queue-proxy's TLS port beside its plain port and nginx with TLS.

    python -m benchmarks tls [--quick] [--duration 10] [--repeat 3] [--go PATH]

One nginx worker upstream (``GET /1k``) and wrk share the load CPU (1); each target runs alone
on the proxy CPU (0): the queue-proxy's plain main port, its TLS port (certificates made here
with the openssl CLI, Knative's default TLS 1.3), and nginx terminating TLS and proxying to the
same upstream over keep-alive. wrk keeps its 64 connections open, so this measures the record
layer, not handshakes. For each target: req/s and the target's CPU per request (from /proc),
medians over ``--repeat`` runs, and ratios against nginx TLS from the same run.

``--go PATH`` adds Knative's Go queue-proxy (a binary you built from Knative's source) with the
same certificates, plain and TLS, beside ours. Knative reads them only from the fixed directory
/var/lib/knative/certs (no variable moves it), so the scenario writes tls.crt and tls.key there
for the Go process's start (root only; it refuses when files are already there), and removes
them, and the directories it created, as soon as Go's TLS port listens: Go keeps the pair it
loaded. The table then ends with ours over Go's, TLS and plain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _gobaseline, _procs, _tools, upstream
from benchmarks.proxy import _WRK_DONE, queue_proxy_env

NGINX_TLS = """\
    upstream app {{
        server 127.0.0.1:{up};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
"""


def _certs(d: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise _procs.BenchError("the openssl CLI is needed to make the certificates")
    cert, key = d / "tls.crt", d / "tls.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=data-plane.knative.dev",
         "-addext", "subjectAltName=DNS:data-plane.knative.dev,DNS:kn-user-default",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    cert.chmod(0o644)
    key.chmod(0o644)  # nginx workers run as "nobody" under root
    return cert, key


def _wrk(wrk: str, cpu: int, url: str, seconds: int, conns: int, script: Path) -> dict[str, float]:
    import json

    argv = ["taskset", "-c", str(cpu), wrk, "-t1", f"-c{conns}", f"-d{seconds}s"]
    argv += ["--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            parsed: dict[str, float] = json.loads(line[len("WRK_JSON ") :])
            return parsed
    raise _procs.BenchError(f"wrk printed no result for {url}: {out[-300:]}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``tls`` scenario."""
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each (2)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per target (3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--proxy-cpu", type=int, default=0, help="CPU of the proxy under test (0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU of wrk and the upstream (1)")
    parser.add_argument(
        "--queue-proxy",
        default=str(Path(sys.executable).with_name("queue-proxy")),
        help="queue-proxy executable (default: the one next to this Python)",
    )
    parser.add_argument("--quick", action="store_true", help="2 s per target, 1 repetition")
    _gobaseline.add_go_argument(
        parser,
        "plain and TLS with the same certificates (written to /var/lib/knative/certs only "
        "while it starts; root only)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="write tls-<time>.json there too"
    )


def _start_go(
    procs: _procs.ProcessSet,
    go: str,
    cpu: int,
    up_port: int,
    certs: tuple[Path, Path],
    log: Path,
) -> tuple[int, int, subprocess.Popen[bytes]]:
    """Knative's Go queue-proxy with our certificates: (plain port, TLS port, process)."""
    _gobaseline.check_fixed_ports()
    port, tls_port = _procs.free_port(), _procs.free_port()
    env = queue_proxy_env(0, port, up_port)
    env["QUEUE_SERVING_TLS_PORT"] = str(tls_port)
    with _gobaseline.installed_certs(*certs):
        proc = procs.start(["taskset", "-c", str(cpu), go], env=env, log_path=log)
        _procs.wait_listening(tls_port, proc, 10, log_path=log)
    check_serves(tls_port, certs[0], "go")
    return port, tls_port, proc


def check_serves(port: int, cert: Path, name: str) -> None:
    """StartError unless the TLS port presents exactly this certificate (the same pair for all)."""
    try:
        pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    except OSError as exc:
        raise _procs.StartError(f"{name}: no TLS handshake on port {port}: {exc}") from exc
    if ssl.PEM_cert_to_DER_cert(pem) != ssl.PEM_cert_to_DER_cert(cert.read_text()):
        raise _procs.StartError(f"{name}: port {port} presents another certificate")


def run(args: argparse.Namespace) -> int:
    """Start the upstream and every target; measure each in turn; print the table."""
    if args.quick:
        args.duration, args.warmup, args.repeat = 2, 1, 1
    go_bin = _gobaseline.go_path(args.go)
    tools = _tools.ensure_tools(["nginx", "wrk"])
    started = dt.datetime.now().astimezone()
    tmp = Path(tempfile.mkdtemp(prefix="knd-bench-tls-"))
    try:
        return _run(args, tools, tmp, go_bin, started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    tools: dict[str, str],
    tmp: Path,
    go_bin: str | None,
    started: dt.datetime,
) -> int:
    tmp.chmod(0o755)
    script = tmp / "wrk.lua"
    script.write_text(_WRK_DONE)
    cert, key = _certs(tmp)
    results: dict[str, list[tuple[float, float]]] = {}
    go_error = None
    with _procs.ProcessSet() as procs:
        up_port = _procs.free_port()
        upstream.start_upstream(procs, tools["nginx"], tmp / "upstream", up_port, args.load_cpu)
        targets: list[tuple[str, str, subprocess.Popen[bytes]]] = []
        port, tls_port = _procs.free_port(), _procs.free_port()
        env = queue_proxy_env(0, port, up_port)
        env.update(QUEUE_SERVING_TLS_PORT=str(tls_port), QUEUE_CERT_DIR=str(tmp))
        qp = procs.start(
            ["taskset", "-c", str(args.proxy_cpu), args.queue_proxy], env=env,
            log_path=tmp / "qp.log",
        )  # fmt: skip
        _procs.wait_listening(tls_port, qp, 10, log_path=tmp / "qp.log")
        check_serves(tls_port, cert, "queue-proxy")
        targets.append(("queue-proxy plain", f"http://127.0.0.1:{port}/1k", qp))
        targets.append(("queue-proxy TLS", f"https://127.0.0.1:{tls_port}/1k", qp))
        if go_bin is not None:
            try:
                gp, gtls, go = _start_go(
                    procs, go_bin, args.proxy_cpu, up_port, (cert, key), tmp / "go.log"
                )
                targets.append(("go plain", f"http://127.0.0.1:{gp}/1k", go))
                targets.append(("go TLS", f"https://127.0.0.1:{gtls}/1k", go))
            except _procs.StartError as exc:
                go_error = f"go: failed to start: {exc}"
                print(go_error, flush=True)
        ng_port = _procs.free_port()
        prefix = tmp / "nginx-tls"
        upstream.write_nginx_conf(
            prefix, NGINX_TLS.format(up=up_port, port=ng_port, cert=cert, key=key)
        )
        ng = upstream.start_nginx(procs, tools["nginx"], prefix, ng_port, args.proxy_cpu)
        targets.append(("nginx TLS", f"https://127.0.0.1:{ng_port}/1k", ng))
        for _ in range(args.repeat):
            for name, url, proc in targets:
                if args.warmup:
                    _wrk(tools["wrk"], args.load_cpu, url, args.warmup, args.connections, script)
                cpu0 = _procs.tree_cpu_seconds(proc.pid)
                r = _wrk(tools["wrk"], args.load_cpu, url, args.duration, args.connections, script)
                cpu = _procs.tree_cpu_seconds(proc.pid) - cpu0
                n = int(r["requests"])
                errors = r["connect"] + r["read"] + r["write"] + r["timeout"] + r["status"]
                if n == 0 or errors:
                    raise _procs.BenchError(f"{name}: {n} responses, {errors} errors")
                results.setdefault(name, []).append((n / (r["duration_us"] / 1e6), 1e6 * cpu / n))
                time.sleep(0.2)
    medians = {
        name: {
            "rps": statistics.median(x[0] for x in runs),
            "cpu_us_per_req": statistics.median(x[1] for x in runs),
        }
        for name, runs in results.items()
    }
    base = medians["nginx TLS"]
    print(
        f"1 KiB GET, {args.connections} keep-alive connections, TLS 1.3, medians of {args.repeat}"
    )
    print(f"{'target':20s} {'req/s':>9s} {'us CPU/req':>11s} {'req/s vs nginx TLS':>19s}")
    for name, m in medians.items():
        print(
            f"{name:20s} {m['rps']:9.0f} {m['cpu_us_per_req']:11.1f} {m['rps'] / base['rps']:19.2f}"
        )
    print(
        f"(nginx TLS: {base['cpu_us_per_req']:.1f} us CPU/req; "
        f"load average {os.getloadavg()[0]:.1f})"
    )
    ratios = {}
    for kind in ("TLS", "plain"):
        ours, go = medians.get(f"queue-proxy {kind}"), medians.get(f"go {kind}")
        if ours and go:
            ratios[kind] = {k: ours[k] / go[k] for k in ("rps", "cpu_us_per_req")}
            print(
                f"queue-proxy / go, {kind} (same run): req/s {ratios[kind]['rps']:.2f}, "
                f"CPU per request {ratios[kind]['cpu_us_per_req']:.2f} (< 1: ours cheaper)"
            )
    if args.results_dir is not None:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"tls-{started:%Y%m%d-%H%M%S}.json"
        doc = {
            "scenario": "tls",
            "started": started.isoformat(timespec="seconds"),
            "options": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "repeat": args.repeat,
                "connections": args.connections,
            },
            "results": medians,
            "runs": results,
            "ratios_queue_proxy_vs_go": ratios,
            "go_error": go_error,
        }
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"results: {out}")
    return 1 if go_error else 0


if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks", "tls", *sys.argv[1:]])

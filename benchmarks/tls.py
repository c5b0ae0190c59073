"""Internal TLS throughput: the queue-proxy's TLS port beside its plain port and nginx with TLS.

    python -m benchmarks.tls [--duration 10] [--repeat 3] [--connections 64]

One nginx worker upstream (``GET /1k``) and wrk share the load CPU (1); each target runs alone
on the proxy CPU (0): the queue-proxy's plain main port, its TLS port (certificates made here
with the openssl CLI, Knative's default TLS 1.3), and nginx terminating TLS and proxying to the
same upstream over keep-alive. wrk keeps its 64 connections open, so this measures the record
layer, not handshakes. For each target: req/s and the target's CPU per request (from /proc),
medians over ``--repeat`` runs, and ratios against nginx TLS from the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _procs, _tools, upstream
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--queue-proxy", default=str(Path(sys.executable).with_name("queue-proxy")))
    args = p.parse_args(argv)
    tools = _tools.ensure_tools(["nginx", "wrk"])
    tmp = Path(tempfile.mkdtemp(prefix="knd-bench-tls-"))
    tmp.chmod(0o755)
    script = tmp / "wrk.lua"
    script.write_text(_WRK_DONE)
    cert, key = _certs(tmp)
    results: dict[str, list[tuple[float, float]]] = {}
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
        targets.append(("queue-proxy plain", f"http://127.0.0.1:{port}/1k", qp))
        targets.append(("queue-proxy TLS", f"https://127.0.0.1:{tls_port}/1k", qp))
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
    base_rps, base_cpu = (statistics.median(x[i] for x in results["nginx TLS"]) for i in (0, 1))
    print(
        f"1 KiB GET, {args.connections} keep-alive connections, TLS 1.3, medians of {args.repeat}"
    )
    print(f"{'target':20s} {'req/s':>9s} {'us CPU/req':>11s} {'req/s vs nginx TLS':>19s}")
    for name, runs in results.items():
        rps = statistics.median(x[0] for x in runs)
        cpu = statistics.median(x[1] for x in runs)
        print(f"{name:20s} {rps:9.0f} {cpu:11.1f} {rps / base_rps:19.2f}")
    print(f"(nginx TLS: {base_cpu:.1f} us CPU/req; load average {os.getloadavg()[0]:.1f})")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

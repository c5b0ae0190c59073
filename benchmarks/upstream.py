"""The benchmark upstream: one nginx worker serving fixed bodies, never the bottleneck.

Paths: ``GET /1k`` (1 KiB), ``GET /1m`` (1 MiB), ``POST /1k`` and ``POST /1m`` (bodies up to
4 MiB are read in full, then answered ``200 ok``). Also ``python -m benchmarks.upstream --port N``
to run it by hand until Ctrl-C.

The nginx helpers here (``write_nginx_conf``, ``start_nginx``) keep every nginx file (config, pid,
logs, temp paths) in one temporary prefix, so no system nginx state is read or written.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import _procs, _tools

BODIES = {"1k": 1024, "1m": 1024 * 1024}

_MAIN = """\
worker_processes 1;
worker_rlimit_nofile 65536;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # Long-lived keep-alive so neither wrk nor a proxy's pool reconnects during a measurement.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_max_body_size 4m;
{http}
}}
"""

_UPSTREAM_SERVER = """\
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {prefix}/www;
        # 1 KiB from memory: headers and body in one writev (cheaper than a file + sendfile).
        location = /1k {{
            if ($request_method = POST) {{ rewrite ^ /_post last; }}
            return 200 "{body_1k}";
        }}
        location = /1m {{
            if ($request_method = POST) {{ rewrite ^ /_post last; }}
        }}
        # POST: read the whole body first (a plain "return" would answer before the body is in,
        # which makes proxies close the connection), then answer "ok". mirror_request_body is
        # the stock way to make nginx read it; the static handler's 405 becomes a 200.
        location = /_post {{
            internal;
            client_body_buffer_size 4m;
            mirror /_null;
            mirror_request_body on;
            error_page 405 =200 /_ok;
        }}
        location = /_null {{
            internal;
            return 204;
        }}
        location = /_ok {{
            internal;
            return 200 "ok\\n";
        }}
        location / {{
            return 404;
        }}
    }}
"""


def write_nginx_conf(prefix: Path, http_block: str) -> Path:
    """Write ``prefix/nginx.conf`` around ``http_block``; make the prefix readable by workers."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    # nginx workers run as "nobody" when the master is root: they must traverse the prefix.
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(_MAIN.format(prefix=prefix, http=http_block))
    return conf


def nginx_argv(nginx: str, prefix: Path) -> list[str]:
    """Command line running nginx in the foreground with everything under ``prefix``."""
    return [
        nginx,
        "-p",
        f"{prefix}/",
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
        "-g",
        "daemon off;",
    ]


def start_nginx(
    procs: _procs.ProcessSet,
    nginx: str,
    prefix: Path,
    port: int,
    cpu: int | None,
    timeout: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Start nginx as set up by ``write_nginx_conf``, pinned to ``cpu``; wait until it listens."""
    argv = nginx_argv(nginx, prefix)
    test = subprocess.run(
        [*argv, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False
    )
    if test.returncode != 0:
        raise _procs.StartError(f"nginx -t: {test.stderr.strip()}")
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    log = prefix / "stderr.log"
    proc = procs.start(argv, log_path=log)
    try:
        _procs.wait_listening(port, proc, timeout, log_path=prefix / "error.log")
    except _procs.StartError:
        procs.stop(proc, graceful=False)
        raise
    return proc


def start_upstream(
    procs: _procs.ProcessSet, nginx: str, prefix: Path, port: int, cpu: int | None
) -> subprocess.Popen[bytes]:
    """Write the bodies and config under ``prefix`` and start the upstream nginx on ``port``."""
    www = prefix / "www"
    www.mkdir(parents=True, exist_ok=True)
    www.chmod(0o755)
    (www / "_post").write_bytes(b"")
    (www / "_post").chmod(0o644)
    for name, size in BODIES.items():
        body = www / name
        body.write_bytes(b"x" * size)
        body.chmod(0o644)
    write_nginx_conf(
        prefix, _UPSTREAM_SERVER.format(port=port, prefix=prefix, body_1k="x" * BODIES["1k"])
    )
    return start_nginx(procs, nginx, prefix, port, cpu)


def main(argv: list[str] | None = None) -> int:
    """Run the upstream alone in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upstream", description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="listen port on 127.0.0.1")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (taskset)")
    args = parser.parse_args(argv)
    try:
        tools = _tools.ensure_tools(["nginx", "taskset"])
        with (
            _procs.signals_raise_system_exit(),
            tempfile.TemporaryDirectory(prefix="knd-upstream-") as tmp,
            _procs.ProcessSet() as procs,
        ):
            proc = start_upstream(procs, tools["nginx"], Path(tmp), args.port, args.cpu)
            print(f"upstream nginx on http://127.0.0.1:{args.port}/1k and /1m; Ctrl-C stops it")
            proc.wait()
    except (_procs.BenchError, _procs.StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

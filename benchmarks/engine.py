"""Python cost of one proxied request in the engine, without sockets or the kernel.

Drives a real ``ServerConnection`` and pooled ``UpstreamConnection`` (with the queue-proxy
handler, breaker and stats) through in-memory transports: request bytes in, response bytes in,
and counts the microseconds of Python per request. On loopback the kernel's share of a proxied
request is large and noisy; this isolates the part our code controls, so an optimisation can be
measured before and after in a few seconds. Compare against ``--handler plain`` (no
queue-proxy logic) to see the engine's own share; ``--handler activator`` runs the activator's
handler instead (one revision, one probed pod, Host routing, stats reporter, throttler).

    python -m benchmarks engine [--requests N] [--handler qp|plain|activator] [--cc N]
                                [--compiled] [--instructions]

Wall-clock microseconds move with the machine's load; ``--instructions`` counts instructions
per request instead, which do not: it runs the scenario under ``valgrind --tool=callgrind``
twice (2,000 and 6,000 requests, one round each, ``PYTHONHASHSEED=0``) and divides the
difference of the two totals by 4,000, so start-up cancels out. ``--compiled`` runs the mypyc
build (``tools/build_compiled.py``, built first when a source is newer) instead of the source
tree.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dataplane.breaker import Breaker
from dataplane.proxy import HTTPServer, ServerConnection
from dataplane.stats import RequestStats
from dataplane.timeouts import TimeoutPolicy
from dataplane.upstream import UpstreamConnection, UpstreamPool

REQUEST = (
    b"GET /hello?name=world HTTP/1.1\r\nHost: hello.default.example.com\r\n"
    b"User-Agent: locust/2.47\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    b"X-Request-Id: 6c1f7d4e-0a9b-4f7e-8d7e-2b7c6d5e4f3a\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 1024\r\nConnection: keep-alive\r\n\r\n"
    + b"a"
    * 1024
)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=50_000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--handler", choices=("qp", "plain", "activator"), default="qp")
    p.add_argument("--cc", type=int, default=10, help="container concurrency (qp handler)")
    p.add_argument("--quick", action="store_true", help="10,000 requests x 3 rounds")
    p.add_argument(
        "--compiled",
        action="store_true",
        help="run the mypyc build in build/compiled (built first when a source is newer)",
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request under valgrind's callgrind (load-independent) instead "
        "of microseconds; needs valgrind",
    )


ROOT = Path(__file__).resolve().parent.parent
_CALLGRIND_RUNS = (2_000, 6_000)


def run(args: argparse.Namespace) -> int:
    if args.instructions:
        return _instructions(args)
    if args.compiled:
        return _child(args, [], capture=False).returncode
    if args.quick:
        args.requests, args.rounds = 10_000, 3
    loop = asyncio.new_event_loop()
    try:
        return _run(args, loop)
    finally:
        loop.close()


def _child(
    args: argparse.Namespace, prefix: list[str], *, requests: int | None = None, capture: bool
) -> subprocess.CompletedProcess[str]:
    """This scenario in a new process (after ``prefix``, e.g. valgrind), from the source tree or
    the compiled build. The compiled run starts in build/compiled: ``python -m`` puts the
    working directory first on ``sys.path``, so from the source tree it would import the
    source modules whatever PYTHONPATH says."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    cwd = ROOT
    path = [str(ROOT)]
    if args.compiled:
        build = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "build_compiled.py")],
            capture_output=True,
            text=True,
            check=True,
        )
        cwd = Path(build.stdout.strip())
        path.insert(0, str(cwd))
    env["PYTHONPATH"] = os.pathsep.join(path)
    argv = [*prefix, sys.executable, "-m", "benchmarks", "engine"]
    argv += ["--handler", args.handler, "--cc", str(args.cc)]
    if requests is not None:
        argv += ["--requests", str(requests), "--rounds", "1"]
    elif args.quick:
        argv.append("--quick")
    else:
        argv += ["--requests", str(args.requests), "--rounds", str(args.rounds)]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=capture, text=True, check=True)


def _instructions(args: argparse.Namespace) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.stderr.write("--instructions needs valgrind (Debian: apt-get install valgrind)\n")
        return 2
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in _CALLGRIND_RUNS:
            out = Path(tmp) / f"callgrind.{n}"
            _child(
                args,
                [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"],
                requests=n,
                capture=True,
            )
            m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
            if m is None:
                raise RuntimeError(f"no instruction total in {out}")
            totals.append(int(m.group(1)))
    per = (totals[1] - totals[0]) / (_CALLGRIND_RUNS[1] - _CALLGRIND_RUNS[0])
    build = "compiled" if args.compiled else "interpreted"
    print(f"engine ({args.handler}, cc={args.cc}, {build}): {per:,.0f} instructions/request")
    return 0


def _activator(loop: asyncio.AbstractEventLoop, cc: int) -> tuple[Any, UpstreamPool]:
    """The activator's handler with one revision (Host ``hello.default.example.com``) whose one
    pod is probed ready; returns it and the pool of that pod (stats are dropped)."""
    from activator.handler import Activator
    from platforms.base import Endpoints, Revision

    async def probe(dest: str, timeout: float) -> bool:
        return True

    async def setup() -> tuple[Any, UpstreamPool]:
        act = Activator(
            loop=loop, pod_name="bench", send_stats=lambda msgs: None, connected=lambda: True,
            probe=probe,
        )  # fmt: skip
        rev = Revision("default", "hello-00001", cc, hosts=("hello.default.example.com",))
        act.registry.revision_updated(rev)
        act.registry.endpoints_updated(rev.key, Endpoints(ready=("127.0.0.1:8012",)))
        rs = act.revisions[rev.key]
        for _ in range(1000):
            if rs.throttler.capacity:
                return act, rs.route("127.0.0.1:8012").pool
            await asyncio.sleep(0.001)
        raise RuntimeError("the activator never saw its pod ready")

    return loop.run_until_complete(setup())


def _run(args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> int:
    pool = UpstreamPool("127.0.0.1", 8080, loop=loop)
    handler: Any
    if args.handler == "plain":

        def handler(ex: Any) -> None:
            ex.proxy(pool)

    elif args.handler == "activator":
        handler, pool = _activator(loop, args.cc)
    else:
        from queueproxy.drain import Drainer
        from queueproxy.handler import QueueProxyHandler
        from queueproxy.readiness import ReadinessProber

        cc = args.cc
        handler = QueueProxyHandler(
            loop=loop,
            pool=pool,
            breaker=Breaker(10 * cc, cc, cc) if cc else None,
            stats=RequestStats(loop.time()),
            prober=ReadinessProber([]),
            drainer=Drainer(30.0, loop=loop),
            timeouts=TimeoutPolicy(300.0),
        )
    if args.handler == "activator":
        from activator.handler import server_config

        config = server_config()
    else:
        from queueproxy.handler import server_config as qp_config

        config = qp_config(forwarded_shim=True)
    server = HTTPServer(handler, config, loop=loop)
    conn = ServerConnection(server)
    ct = _Transport()
    conn.connection_made(ct)
    up = UpstreamConnection(pool)
    ut = _Transport()
    up.connection_made(ut)
    pool.release(up)

    def one_round(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            conn.data_received(REQUEST)
            up.data_received(RESPONSE)
        return (time.perf_counter() - t0) / n * 1e6

    one_round(2000)  # warm up
    expect = ct.written
    results = []
    for _ in range(args.rounds):
        gc.collect()
        results.append(one_round(args.requests))
    assert ct.written > expect and pool.idle_count == 1, "requests did not complete"
    print(
        f"engine ({args.handler}, cc={args.cc}): "
        f"{statistics.median(results):.2f} us/request of Python "
        f"(rounds: {', '.join(f'{r:.2f}' for r in results)})"
    )
    return 0

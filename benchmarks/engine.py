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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._headers import BROWSER_HEADERS
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
# The same GET as a browser sends it through an ingress: 13 headers (benchmarks/proxy.py's
# 1k-browser workload).
BROWSER_REQUEST = (
    b"GET /hello?name=world HTTP/1.1\r\nHost: hello.default.example.com\r\n"
    + b"".join(f"{name}: {value}\r\n".encode() for name, value in BROWSER_HEADERS)
    + b"\r\n"
)
# The GET as Knative's ingress sends it to the activator: the revision named by two headers.
INGRESS_REQUEST = REQUEST.replace(
    b"\r\n\r\n",
    b"\r\nKnative-Serving-Namespace: default\r\nKnative-Serving-Revision: hello-00001\r\n\r\n",
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
    p.add_argument(
        "--protocol",
        choices=("http1", "grpc"),
        default="http1",
        help="http1: a GET over HTTP/1.1; grpc: a unary gRPC call over h2c both sides",
    )
    p.add_argument(
        "--request",
        choices=("locust", "browser", "ingress"),
        default="locust",
        help="http1: the request's headers, locust's 6, a browser's 13 behind an ingress, or "
        "locust's with the two Knative-Serving-* headers Knative's ingress adds for the activator",
    )
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
    argv += ["--handler", args.handler, "--cc", str(args.cc), "--protocol", args.protocol]
    argv += ["--request", args.request]
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
    print(
        f"engine ({args.handler}, cc={args.cc}, {args.protocol}, {args.request}, {build}): "
        f"{per:,.0f} instructions/request"
    )
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


def _timed_rounds(
    args: argparse.Namespace, step: Callable[[], None], ct: _Transport
) -> tuple[int, list[float]]:
    """``step`` 2,000 times to warm up, then ``args.rounds`` rounds of ``args.requests``: (bytes
    written to the client before the rounds, microseconds per step of each round)."""

    def one_round(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) / n * 1e6

    one_round(2000)  # warm up
    expect = ct.written
    results = []
    for _ in range(args.rounds):
        gc.collect()
        results.append(one_round(args.requests))
    return expect, results


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
    if args.protocol == "grpc":
        return _run_grpc(args, loop, server, pool)
    conn = ServerConnection(server)
    ct = _Transport()
    conn.connection_made(ct)
    up = UpstreamConnection(pool)
    ut = _Transport()
    up.connection_made(ut)
    pool.release(up)

    request = {"browser": BROWSER_REQUEST, "ingress": INGRESS_REQUEST}.get(args.request, REQUEST)

    def one_request() -> None:
        conn.data_received(request)
        up.data_received(RESPONSE)

    expect, results = _timed_rounds(args, one_request, ct)
    assert ct.written > expect and pool.idle_count == 1, "requests did not complete"
    print(
        f"engine ({args.handler}, cc={args.cc}): "
        f"{statistics.median(results):.2f} us/request of Python "
        f"(rounds: {', '.join(f'{r:.2f}' for r in results)})"
    )
    return 0


# -- gRPC over h2c: a unary call as grpcio sends and answers it ------------------------------
GRPC_REQUEST_HEADERS = [
    (b":scheme", b"http"),
    (b":method", b"POST"),
    (b":authority", b"hello.default.example.com"),
    (b":path", b"/bench.Echo/Unary"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python-asyncio/1.76.0 grpc-c/51.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity, deflate, gzip"),
]
GRPC_RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity, deflate, gzip"),
]
GRPC_TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
GRPC_MESSAGE = b"\x00\x00\x00\x00\x64" + b"x" * 100  # length-prefixed 100 B message
# grpcio opens each call's stream window by 5 bytes (a WINDOW_UPDATE between HEADERS and DATA)
GRPC_WINDOW_UPDATE = (5).to_bytes(4, "big")


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


def _open_windows() -> bytes:
    """SETTINGS with the largest stream window, its ACK of the peer's, and the largest
    connection window: flow control never stalls the benchmark."""
    # (2**30, not the maximum: a WINDOW_UPDATE on a new stream must not overflow it)
    settings = _frame(0x4, 0, 0, (4).to_bytes(2, "big") + (2**30).to_bytes(4, "big"))
    ack = _frame(0x4, 0x1, 0, b"")
    update = _frame(0x8, 0, 0, (2**31 - 1 - 65535).to_bytes(4, "big"))
    return settings + ack + update


def _check_grpc_call(ct: _Transport, call: Any) -> None:
    """One more call with the client's bytes kept: it must get its response head (``:status``
    200, the static table's index 8), the message and the trailers, and no RST_STREAM."""
    got: list[bytes] = []
    write = ct.write
    ct.write = got.append  # type: ignore[method-assign]
    try:
        call()
    finally:
        ct.write = write  # type: ignore[method-assign]
    data = b"".join(got)
    frames = []
    pos = 0
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos : pos + 3], "big")
        frames.append((data[pos + 3], data[pos + 4], data[pos + 9 : pos + 9 + n]))
        pos += 9 + n
    kinds = [(t, f & 0x1) for t, f, _ in frames if t in (0x0, 0x1, 0x3)]
    heads = [p for t, _, p in frames if t == 0x1]
    if kinds != [(0x1, 0), (0x0, 0), (0x1, 1)] or heads[0][:1] != b"\x88":
        raise RuntimeError(f"the benchmark's gRPC call did not get its response: {frames}")


def _run_grpc(
    args: argparse.Namespace, loop: asyncio.AbstractEventLoop, server: HTTPServer, pool: Any
) -> int:
    """Unary gRPC calls through the handler over h2c both sides: the client's HEADERS + DATA
    into a downstream ``H2ServerConnection``, the app's HEADERS + DATA + trailers into the
    pooled ``H2Upstream``, one call at a time, with the loop run after each side."""
    from dataplane.h2c import H2Hub
    from dataplane.h2engine import H2ServerConnection
    from dataplane.hpack import Encoder

    hub = H2Hub(loop)
    client_enc, app_enc = Encoder(), Encoder()
    conn = H2ServerConnection(hub, server, b"127.0.0.1", 40000)
    ct = _Transport()
    conn.start(ct, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _open_windows())
    up = hub.upstream(pool)
    dial = up._dial
    if dial is not None:
        dial.cancel()
    ut = _Transport()
    up.connection_made(ut)
    up.data_received(_open_windows())
    sids = {"client": 1, "app": 1}
    # The callbacks the engine scheduled (flush_soon) run as the loop's next iteration would
    # run them, without the cost of a loop iteration in pure-Python asyncio (uvloop's is C).
    ready = loop._ready  # type: ignore[attr-defined]

    def tick() -> None:
        while ready:
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    # A client's and an app's header blocks: literals the first time, then (every field now in
    # the peer's dynamic table) the same bytes for every call.
    blocks = {
        "request": client_enc.encode(GRPC_REQUEST_HEADERS),
        "head": app_enc.encode(GRPC_RESPONSE_HEADERS),
        "trailers": app_enc.encode(GRPC_TRAILERS),
    }

    def call() -> None:
        sid = sids["client"]
        sids["client"] = sid + 2
        conn.data_received(
            _frame(0x1, 0x4, sid, blocks["request"])
            + _frame(0x8, 0, sid, GRPC_WINDOW_UPDATE)
            + _frame(0x0, 0x1, sid, GRPC_MESSAGE)
        )
        tick()
        sid = sids["app"]
        sids["app"] = sid + 2
        up.data_received(
            _frame(0x1, 0x4, sid, blocks["head"])
            + _frame(0x0, 0, sid, GRPC_MESSAGE)
            + _frame(0x1, 0x5, sid, blocks["trailers"])
        )
        tick()
        if sid == 1:
            blocks.update(
                request=client_enc.encode(GRPC_REQUEST_HEADERS),
                head=app_enc.encode(GRPC_RESPONSE_HEADERS),
                trailers=app_enc.encode(GRPC_TRAILERS),
            )

    expect, results = _timed_rounds(args, call, ct)
    assert ct.written > expect and not conn.streams and not up.streams, "calls did not complete"
    _check_grpc_call(ct, call)
    print(
        f"engine ({args.handler}, cc={args.cc}, grpc): "
        f"{statistics.median(results):.2f} us/call of Python "
        f"(rounds: {', '.join(f'{r:.2f}' for r in results)})"
    )
    return 0

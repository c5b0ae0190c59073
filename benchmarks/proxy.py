"""Queue-proxy throughput, side by side with direct, nginx, aiohttp and any --extra proxy.

One nginx worker upstream and wrk share the load CPU (1); each proxy under test runs alone on the
proxy CPU (0). For every target and workload: req/s, p50/p99 latency, the proxy's CPU per request
and wrk's errors, as medians over --repeat runs; for queue-proxies also idle and peak RSS and
exec-to-listening time. Ratios against nginx (and queue-proxy against each --extra) are computed
in the same run. Results: a table on the terminal and JSON under benchmarks/results/.

``--go PATH`` adds Knative's Go queue-proxy (a binary you built from Knative's source) as the
extra target ``go``, with the same env as ours at CONTAINER_CONCURRENCY=0 (as ``--extra
go=PATH`` does, plus a check that its fixed ports 8022 and 9090 are free). req/s and CPU per
request count valid responses only: wrk's completed responses minus those with a status >= 400,
and each target must answer one request of the workload with 200 and the full body before and
after every measured run.

The activator targets chain wrk -> activator -> queue-proxy -> upstream, both proxies on the
proxy CPU, requests carrying ``Host: bench.example.com`` (the revision's host in the platform
file); their CPU per request is reported in total and per process.

With ``--go-activator PATH`` Knative's own Go activator runs beside ours in front of the same
queue-proxy and upstream (benchmarks/_go_activator.py: a fake API server, a network namespace
of its own), ours runs that way too (the ``-ns`` targets), and the report gives ours / Go.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Container
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _activator, _go_activator, _gobaseline, _procs, _tools, upstream
from benchmarks._headers import BROWSER_HEADERS
from benchmarks._procs import BenchError, ProcessSet, StartError

RESULTS_DIR = Path(__file__).resolve().parent / "results"
START_TIMEOUT = 10.0
LOAD_BOUND_PCT = 95.0
BUSY_WARN_PCT = 10.0
ACTIVATOR_HOST = "bench.example.com"


@dataclass(frozen=True)
class Workload:
    """One wrk load shape."""

    name: str
    path: str
    connections: int
    method: str = "GET"
    body_size: int = 0
    response_size: int = 0
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request, besides Host

    def describe(self) -> str:
        body = f" with a {self.body_size // 1024} KiB body" if self.body_size else ""
        extra = f", {len(self.headers) + 1} request headers" if self.headers else ""
        return f"{self.method} {self.path}{body}{extra}, {self.connections} connections"


WORKLOADS = {
    "1k": Workload("1k", "/1k", 64, response_size=1024),
    "1m": Workload("1m", "/1m", 16, response_size=1024 * 1024),
    "post-1m": Workload("post-1m", "/1m", 16, "POST", 1024 * 1024, response_size=3),
    "1k-browser": Workload("1k-browser", "/1k", 64, response_size=1024, headers=BROWSER_HEADERS),
}
# The workload whose peak RSS is the "peak under 64 connections" footprint figure.
PEAK_WORKLOAD = "1k"


@dataclass
class Run:
    """One measured wrk run against one target."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    duration_s: float
    non2xx: int  # responses with a status >= 400 (wrk's status errors): not counted in rps
    socket_errors: int
    cpu_us_per_req: float | None
    proxy_core_pct: float | None
    load_core_pct: float
    proxy_cpu_busy_pct: float
    proxy_cpu_other_pct: float
    peak_rss_mib: float | None
    # Activator targets: the two processes' shares of cpu_us_per_req.
    activator_cpu_us_per_req: float | None = None
    qp_cpu_us_per_req: float | None = None
    # The kernel's part of cpu_us_per_req (system time of the measured processes).
    sys_us_per_req: float | None = None


@dataclass
class Target:
    """A thing wrk sends load to; ``argv`` is None for direct and the nginx/aiohttp baselines.

    Activator targets: ``argv`` starts the activator (the process the footprint is about) and
    ``qp_argv`` the queue-proxy behind it, the activator's only pod.
    """

    id: str
    label: str
    kind: str  # direct | nginx | aiohttp | floor | queue-proxy | extra | activator | go-activator
    argv: list[str] | None = None
    cc: int | None = None
    qp_argv: list[str] | None = None
    host: str | None = None  # Host header of every request
    error: str | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log: Path | None = None
    start_ms: list[float] = field(default_factory=list)
    idle_rss_mib: float | None = None
    runs: dict[str, list[Run]] = field(default_factory=dict)
    qp_proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    qp_port: int = 0
    qp_log: Path | None = None
    platform_file: Path | None = None
    go: bool = False  # Knative's Go queue-proxy (--go): check its fixed ports before each start
    address: str = "127.0.0.1"  # where wrk sends load (an activator namespace's address)
    netns: bool = False  # our activator in a namespace of its own, as the Go activator runs
    space: _go_activator.ActivatorNamespace | None = field(default=None, repr=False)

    @property
    def has_footprint(self) -> bool:
        return self.kind in ("queue-proxy", "extra", "activator", "go-activator", "floor")

    @property
    def is_chain(self) -> bool:
        """An activator in front of a queue-proxy (ours or Knative's Go activator)."""
        return self.kind in ("activator", "go-activator")

    def median(self, workload: str, metric: str) -> float | None:
        """Median of one metric over this target's runs of a workload (None if unavailable)."""
        values = [getattr(r, metric) for r in self.runs.get(workload, [])]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def peak_rss_mib(self, workload: str = PEAK_WORKLOAD) -> float | None:
        values = [r.peak_rss_mib for r in self.runs.get(workload, []) if r.peak_rss_mib]
        return max(values) if values else None

    def start_median_ms(self) -> float | None:
        return statistics.median(self.start_ms) if self.start_ms else None


# --- options --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``proxy`` scenario."""
    parser.add_argument(
        "--quick", action="store_true", help="3 s per measurement, 1 repetition (about a minute)"
    )
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up load before each (2)")
    parser.add_argument("--repeat", type=int, help="measurements per target and workload (3)")
    parser.add_argument(
        "--targets",
        help="comma-separated subset: direct, nginx, aiohttp-proxy, python-floor, queue-proxy "
        "(both), "
        "queue-proxy-cc0, queue-proxy-cc10, queue-proxy-mypyc (both), queue-proxy-mypyc-cc0, "
        "queue-proxy-mypyc-cc10, activator-qp (both), activator-qp-cc0, activator-qp-cc10, "
        "activator-qp-mypyc (both), activator-qp-mypyc-cc0, activator-qp-mypyc-cc10, go (with "
        "--go), go-activator-qp, activator-qp-ns, activator-qp-mypyc-ns (both each, with "
        "--go-activator), or an --extra NAME (default: all)",
    )
    parser.add_argument(
        "--workloads",
        default="1k,1m",
        help=f"comma-separated subset of {', '.join(WORKLOADS)} (default 1k,1m)",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another Knative-compatible queue-proxy, started with the same env at "
        "CONTAINER_CONCURRENCY=0 (repeatable), e.g. go=/path/to/queue",
    )
    _gobaseline.add_go_argument(
        parser,
        "measured as the target 'go' with the same env at CONTAINER_CONCURRENCY=0, with "
        "ratios queue-proxy / go (the same as --extra go=PATH)",
    )
    parser.add_argument(
        "--queue-proxy",
        help="queue-proxy executable (default: the one next to this Python, else on PATH)",
    )
    parser.add_argument(
        "--activator",
        help="activator executable (default: the one next to this Python, else on PATH)",
    )
    parser.add_argument(
        "--go-activator",
        metavar="PATH",
        help="also measure Knative's Go activator (the path of a binary you built) in front "
        "of our queue-proxy, beside ours (needs root: it runs in a network namespace)",
    )
    parser.add_argument(
        "--compiled",
        default="auto",
        metavar="auto|off|DIR",
        help="also measure the mypyc-compiled queue-proxy (the Docker image's build): 'auto' "
        "builds it into build/compiled with tools/build_compiled.py, DIR uses a build there",
    )
    parser.add_argument("--cold-starts", type=int, default=5, help="starts timed per queue-proxy")
    parser.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the proxy under test")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for wrk and the upstream")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where JSON goes")


def _resolve(args: argparse.Namespace) -> None:
    """Fill defaults that depend on --quick; validate the numbers."""
    if args.duration is None:
        args.duration = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.duration < 1 or args.warmup < 0 or args.repeat < 1 or args.cold_starts < 1:
        raise BenchError("--duration, --repeat and --cold-starts must be >= 1, --warmup >= 0")
    cpus = os.sched_getaffinity(0)
    for opt in ("proxy_cpu", "load_cpu"):
        if getattr(args, opt) not in cpus:
            raise BenchError(f"--{opt.replace('_', '-')} {getattr(args, opt)}: not an allowed CPU")
    if args.proxy_cpu == args.load_cpu:
        print("warning: proxy and load share one CPU; figures are not comparable to the table")


def _queue_proxy_path(option: str | None) -> str:
    if option:
        return option
    beside = Path(sys.executable).parent / "queue-proxy"
    if beside.exists():
        return str(beside)
    return shutil.which("queue-proxy") or str(beside)


def _compiled_dir(args: argparse.Namespace) -> str | None:
    """Directory of the mypyc build to measure, building it when asked; None to skip."""
    opt = args.compiled
    if opt == "off":
        return None
    if opt != "auto":
        if not Path(opt).is_dir():
            raise BenchError(f"--compiled {opt}: not a directory")
        return str(Path(opt).resolve())
    tools = Path(__file__).resolve().parent.parent / "tools"
    print("building the mypyc-compiled queue-proxy (tools/build_compiled.py) ...", flush=True)
    proc = subprocess.run(
        [sys.executable, str(tools / "build_compiled.py")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"warning: mypyc build failed, compiled targets skipped: {proc.stderr[-500:]}")
        return None
    return proc.stdout.strip().splitlines()[-1]


def build_targets(args: argparse.Namespace) -> list[Target]:
    """The selected targets, in table order."""
    qp = _queue_proxy_path(args.queue_proxy)
    act = _activator.activator_path(args.activator)
    targets = [
        Target("direct", "direct", "direct"),
        Target("nginx", "nginx", "nginx"),
        Target("aiohttp-proxy", "aiohttp-proxy", "aiohttp"),
        Target("python-floor", "python floor (bytes through)", "floor"),
        Target("queue-proxy-cc0", "queue-proxy cc=0", "queue-proxy", [qp], cc=0),
        Target("queue-proxy-cc10", "queue-proxy cc=10", "queue-proxy", [qp], cc=10),
    ]
    targets += _activator_targets("activator-qp", "activator+qp", [act], [qp])
    compiled = _compiled_dir(args)
    env_qp: list[str] | None = None
    if compiled is not None:
        env_qp = ["env", f"PYTHONPATH={compiled}", qp]
        for cc in (0, 10):
            targets.append(
                Target(
                    f"queue-proxy-mypyc-cc{cc}",
                    f"queue-proxy mypyc cc={cc}",
                    "queue-proxy",
                    env_qp,
                    cc=cc,
                )
            )
        # With this PYTHONPATH the activator runs its compiled modules (setup.py
        # COMPILED_GROUPS: its handler, throttler, ... and the engine they call).
        env_act = ["env", f"PYTHONPATH={compiled}", act]
        targets += _activator_targets("activator-qp-mypyc", "activator+qp mypyc", env_act, env_qp)
    go = _gobaseline.go_path(getattr(args, "go", None))
    if go is not None:
        targets.append(Target("go", "go", "extra", [go], cc=0, go=True))
    go_act = _go_activator.go_activator_path(getattr(args, "go_activator", None))
    if go_act is not None:
        # Ours the way the Go activator runs (a namespace of its own, both hops over the veth
        # pair), beside the loopback chains: the ratio to Go is taken on the same topology.
        for t in [t for t in targets if t.kind == "activator"]:
            variant, cc_text = t.id.rsplit("-cc", 1)
            targets.append(
                Target(
                    f"{variant}-ns-cc{cc_text}",
                    t.label.replace(" cc=", " netns cc="),
                    "activator",
                    t.argv,
                    cc=t.cc,
                    qp_argv=t.qp_argv,
                    host=t.host,
                    netns=True,
                )
            )
        # In front of our interpreted queue-proxy and, with a compiled build, of the compiled
        # one (what the image ships): our compiled chains are compared with the latter.
        go_qps = [(GO_CHAIN, "Go activator+qp", [qp])]
        if env_qp is not None:
            go_qps.append((f"{GO_CHAIN}-mypyc", "Go activator+qp mypyc", env_qp))
        targets += [
            Target(
                f"{chain}-cc{cc}",
                f"{label} cc={cc}",
                "go-activator",
                [go_act],
                cc=cc,
                qp_argv=qp_argv,
                host=_go_activator.host_header(f"bench-go{cc}-00001"),
            )
            for chain, label, qp_argv in go_qps
            for cc in (0, 10)
        ]
    for spec in args.extra:
        name, sep, command = spec.partition("=")
        name = name.strip()
        if not sep or not name or not command.strip():
            raise BenchError(f"--extra {spec!r}: expected NAME=COMMAND")
        if any(t.id == name for t in targets):
            raise BenchError(f"--extra {name}: name already used by another target")
        targets.append(Target(name, name, "extra", shlex.split(command), cc=0))
    if args.targets:
        wanted = {w.strip() for w in args.targets.split(",") if w.strip()}
        if "queue-proxy" in wanted:
            wanted |= {"queue-proxy-cc0", "queue-proxy-cc10"}
            wanted.discard("queue-proxy")
        groups = (
            *ACTIVATOR_VARIANTS,
            *(f"{v}-ns" for v in ACTIVATOR_VARIANTS),
            GO_CHAIN,
            f"{GO_CHAIN}-mypyc",
        )
        for group in ("queue-proxy-mypyc", *groups):
            if group in wanted:
                wanted |= {f"{group}-cc0", f"{group}-cc10"}
                wanted.discard(group)
        unknown = wanted - {t.id for t in targets}
        if unknown:
            known = ", ".join(t.id for t in targets)
            raise BenchError(f"--targets: unknown {', '.join(sorted(unknown))} (known: {known})")
        targets = [t for t in targets if t.id in wanted]
    return targets


def _activator_targets(
    id_prefix: str, label: str, argv: list[str], qp_argv: list[str]
) -> list[Target]:
    return [
        Target(
            f"{id_prefix}-cc{cc}",
            f"{label} cc={cc}",
            "activator",
            argv,
            cc=cc,
            qp_argv=qp_argv,
            host=ACTIVATOR_HOST,
        )
        for cc in (0, 10)
    ]


def _workloads(spec: str) -> list[Workload]:
    names = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise BenchError(f"--workloads: choose from {', '.join(WORKLOADS)}")
    return [WORKLOADS[n] for n in names]


# --- starting targets ----------------------------------------------------------------------


def queue_proxy_env(cc: int, port: int, user_port: int) -> dict[str, str]:
    """Knative's queue-proxy env contract (plus our extra ports), all on loopback."""
    env = dict(os.environ)
    env.update(
        CONTAINER_CONCURRENCY=str(cc),
        QUEUE_SERVING_PORT=str(port),
        # A free port, not Knative's 8112: a queue-proxy serves TLS there only when certificates
        # exist, and two at once must not collide if they do.
        QUEUE_SERVING_TLS_PORT=str(_procs.free_port()),
        USER_PORT=str(user_port),
        REVISION_TIMEOUT_SECONDS="300",
        SERVING_LOGGING_CONFIG="",
        SERVING_LOGGING_LEVEL="",
        SERVING_NAMESPACE="default",
        SERVING_CONFIGURATION="bench",
        SERVING_REVISION="bench-00001",
        SERVING_POD="bench-pod",
        SERVING_POD_IP="127.0.0.1",
        QUEUE_ADMIN_PORT=str(_procs.free_port()),
        QUEUE_METRICS_PORT=str(_procs.free_port()),
        QUEUE_USER_METRICS_PORT=str(_procs.free_port()),
        # As the Docker image sets them (queueproxy/cli.py MALLOC_ENV): large bodies stop
        # page-faulting through fresh mmaps.
        MALLOC_MMAP_THRESHOLD_="1048576",
        MALLOC_TRIM_THRESHOLD_="2097152",
    )
    return env


class Bench:
    """Owns the temp dir, the processes and the measurements of one ``proxy`` run."""

    def __init__(
        self, args: argparse.Namespace, procs: ProcessSet, tmp: Path, tools: dict[str, str]
    ) -> None:
        self.args = args
        self.procs = procs
        self.tmp = tmp
        tmp.chmod(0o755)  # nginx workers ("nobody" under root) read the upstream's bodies here
        self.tools = tools
        self.upstream_port = 0
        self.upstream_proc: subprocess.Popen[bytes] | None = None
        self.autoscaler_port = 0
        self.targets_started: list[Target] = []

    def pinned(self, cpu: int, argv: list[str]) -> list[str]:
        return [self.tools["taskset"], "-c", str(cpu), *argv]

    def start_upstream(self) -> None:
        self.upstream_port = _procs.free_port()
        try:
            self.upstream_proc = upstream.start_upstream(
                self.procs,
                self.tools["nginx"],
                self.tmp / "upstream",
                self.upstream_port,
                self.args.load_cpu,
            )
            for workload in WORKLOADS.values():
                check_response(self.upstream_port, workload, deadline=5.0)
        except StartError as exc:
            raise BenchError(f"upstream nginx failed to start: {exc}") from exc

    def start_target(self, target: Target) -> None:
        """Start a target's process and check it proxies every workload; sets target.error."""
        self.targets_started.append(target)
        try:
            if target.kind == "direct":
                target.port = self.upstream_port
            elif target.kind == "nginx":
                self._start_nginx(target)
            elif target.kind == "go-activator" or target.netns:
                self._start_in_namespace(target)
                time.sleep(0.5)
                assert target.proc is not None
                target.idle_rss_mib = _procs.tree_rss_mib(target.proc.pid)
            else:
                if target.kind == "activator":
                    self._start_pod(target)
                if target.has_footprint:
                    self._cold_starts(target)
                self._spawn(target)
                if target.has_footprint and target.proc is not None:
                    time.sleep(0.5)
                    target.idle_rss_mib = _procs.tree_rss_mib(target.proc.pid)
            # For the activator the first request also waits until it has probed its pod.
            for workload in self.workloads:
                check_response(
                    target.port, workload, deadline=5.0, host=target.host, address=target.address
                )
        except StartError as exc:
            target.error = "failed to start: " + " | ".join(str(exc).split("\n"))
            for proc in (target.proc, target.qp_proc):
                if proc is not None:
                    self.procs.stop(proc, graceful=False)
            target.proc = target.qp_proc = None
            if target.space is not None:
                target.space.close()
                target.space = None

    def _start_in_namespace(self, target: Target) -> None:
        """An activator in a network namespace of its own (benchmarks/_go_activator.py), pinned
        to the proxy CPU (the Go activator's GOMAXPROCS is then 1), in front of a queue-proxy
        started here as for the loopback chains and reached over the veth pair; wrk sends load
        over the veth pair too. Knative's Go activator needs this (its ports are fixed) and
        finds its pod through a fake API server; ours (``netns``) reads its platform file."""
        assert target.argv is not None and target.qp_argv is not None and target.cc is not None
        target.space = space = _go_activator.ActivatorNamespace(self.procs, self.tmp)
        space.create()
        target.qp_port = _procs.free_port()
        target.qp_log = self.tmp / f"{target.id}-queue-proxy.log"
        env = queue_proxy_env(target.cc, target.qp_port, self.upstream_port)
        env["SERVING_POD_IP"] = space.host_ip
        target.qp_proc = self.procs.start(
            self.pinned(self.args.proxy_cpu, target.qp_argv), env=env, log_path=target.qp_log
        )
        _procs.wait_listening(target.qp_port, target.qp_proc, START_TIMEOUT, 0.005, target.qp_log)
        target.log = self.tmp / f"{target.id}.log"
        prefix = [self.tools["taskset"], "-c", str(self.args.proxy_cpu)]
        target.address, target.port = space.ip, _go_activator.HTTP_PORT
        if target.kind == "go-activator":
            revision = f"bench-go{target.cc}-00001"
            target.proc = space.start_go(
                target.argv[0], revision, target.cc, target.qp_port, prefix, target.log
            )
            return
        target.platform_file = self.tmp / f"{target.id}-platform.json"
        rev = _activator.revision(
            "bench-00001", ACTIVATOR_HOST, target.cc, ready=[f"{space.host_ip}:{target.qp_port}"]
        )
        _activator.write_platform(target.platform_file, [rev])
        act_env = _activator.activator_env(
            target.port,
            _go_activator.METRICS_PORT,
            _go_activator.AUTOSCALER_PORT,
            target.platform_file,
            POD_IP=space.ip,
            ACTIVATOR_BIND_ADDRESS=space.ip,
        )
        target.proc = space.start(prefix, target.argv, act_env, target.port, target.log)

    def close(self) -> None:
        """Stop what the namespaced targets started and remove their namespaces."""
        for target in self.targets_started:
            if target.space is not None:
                target.space.close()
                target.space = None

    def _start_pod(self, target: Target) -> None:
        """The activator's pod: a queue-proxy on the proxy CPU in front of the upstream, listed
        as ready in a platform file with one revision that has the benchmark's host."""
        if not self.autoscaler_port:
            self.autoscaler_port, _ = _activator.start_autoscaler_sink(
                self.procs,
                self.tmp / "autoscaler.log",
                [self.tools["taskset"], "-c", str(self.args.load_cpu)],
            )
        assert target.qp_argv is not None and target.cc is not None
        target.qp_port = _procs.free_port()
        target.qp_log = self.tmp / f"{target.id}-queue-proxy.log"
        env = queue_proxy_env(target.cc, target.qp_port, self.upstream_port)
        target.qp_proc = self.procs.start(
            self.pinned(self.args.proxy_cpu, target.qp_argv), env=env, log_path=target.qp_log
        )
        _procs.wait_listening(target.qp_port, target.qp_proc, START_TIMEOUT, 0.005, target.qp_log)
        target.platform_file = self.tmp / f"{target.id}-platform.json"
        rev = _activator.revision(
            "bench-00001", ACTIVATOR_HOST, target.cc, ready=[f"127.0.0.1:{target.qp_port}"]
        )
        _activator.write_platform(target.platform_file, [rev])

    def _start_nginx(self, target: Target) -> None:
        prefix = self.tmp / "nginx-proxy"
        target.port = _procs.free_port()
        upstream.write_nginx_conf(
            prefix, NGINX_PROXY.format(port=target.port, up=self.upstream_port)
        )
        target.proc = upstream.start_nginx(
            self.procs, self.tools["nginx"], prefix, target.port, self.args.proxy_cpu
        )
        target.log = prefix / "error.log"

    def _command(self, target: Target) -> tuple[list[str], dict[str, str] | None]:
        """(argv, env) for a fresh instance on a fresh target.port."""
        target.port = _procs.free_port()
        if target.kind in ("aiohttp", "floor"):
            module = "aiohttp_proxy" if target.kind == "aiohttp" else "floor_proxy"
            argv = [sys.executable, "-m", f"benchmarks.{module}"]
            argv += ["--port", str(target.port), "--upstream-port", str(self.upstream_port)]
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
            return argv, env
        assert target.argv is not None and target.cc is not None
        if target.kind == "activator":
            assert target.platform_file is not None
            env = _activator.activator_env(
                target.port, _procs.free_port(), self.autoscaler_port, target.platform_file
            )
            return list(target.argv), env
        return list(target.argv), queue_proxy_env(target.cc, target.port, self.upstream_port)

    def _spawn(self, target: Target) -> float:
        """Start one instance pinned to the proxy CPU; return seconds from Popen to listening."""
        argv, env = self._command(target)
        target.log = self.tmp / f"{target.id}.log"
        target.log.write_bytes(b"")
        if target.go:
            _gobaseline.check_fixed_ports()
        begin = time.perf_counter()
        target.proc = self.procs.start(
            self.pinned(self.args.proxy_cpu, argv), env=env, log_path=target.log
        )
        _procs.wait_listening(target.port, target.proc, START_TIMEOUT, 0.001, target.log)
        return time.perf_counter() - begin

    def _cold_starts(self, target: Target) -> None:
        """Time exec-to-listening over --cold-starts fresh processes (each killed afterwards)."""
        for _ in range(self.args.cold_starts):
            try:
                target.start_ms.append(1000 * self._spawn(target))
            finally:
                if target.proc is not None:
                    self.procs.stop(target.proc, graceful=False)
                    target.proc = None

    # --- measuring --------------------------------------------------------------------------

    @property
    def workloads(self) -> list[Workload]:
        return _workloads(self.args.workloads)

    def measure(self, target: Target, workload: Workload) -> None:
        """Warm up, then one measured wrk run; appends to target.runs or sets target.error."""
        for proc, log, what in (
            (target.proc, target.log, ""),
            (target.qp_proc, target.qp_log, "its queue-proxy "),
        ):
            if proc is not None and proc.poll() is not None:
                target.error = (
                    f"{what}exited with status {proc.returncode} during the benchmark"
                    f"{_procs.log_tail(log)}"
                )
                return
        pid = target.proc.pid if target.proc is not None else None
        qp_pid = target.qp_proc.pid if target.qp_proc is not None else None
        if pid is not None and target.has_footprint and workload.name == PEAK_WORKLOAD:
            _procs.reset_tree_hwm(pid)
        if self.args.warmup:
            self.wrk(target.port, workload, self.args.warmup, target.host, target.address)
        split0 = _procs.tree_cpu_split(pid) if pid is not None else (0.0, 0.0)
        qp_split0 = _procs.tree_cpu_split(qp_pid) if qp_pid is not None else (0.0, 0.0)
        busy0 = _procs.cpu_busy_ticks()
        t0 = time.perf_counter()
        result = self.wrk(target.port, workload, self.args.duration, target.host, target.address)
        wall = time.perf_counter() - t0
        split = _procs.tree_cpu_split(pid) if pid is not None else None
        qp_split = _procs.tree_cpu_split(qp_pid) if qp_pid is not None else None
        own = None if split is None else sum(split) - sum(split0)
        qp_cpu = None if qp_split is None else sum(qp_split) - sum(qp_split0)
        cpu = None if own is None else own + (qp_cpu or 0.0)
        system = None
        if split is not None:
            system = split[1] - split0[1] + (qp_split[1] - qp_split0[1] if qp_split else 0.0)
        busy = _procs.cpu_busy_percent(busy0, _procs.cpu_busy_ticks())
        if result is None or result["requests"] == 0:
            target.error = f"wrk got no responses for {workload.name}{_procs.log_tail(target.log)}"
            return
        # Only valid responses count: wrk's "requests" are complete responses, of which
        # "status" had a status >= 400 (a 502/503 is cheap and would flatter req/s and CPU/req).
        requests = int(result["requests"]) - int(result["status"])
        duration = result["duration_us"] / 1e6
        if requests <= 0:
            target.error = f"no valid responses for {workload.name}{_procs.log_tail(target.log)}"
            return
        try:  # still answering 200 with the full body after the load
            check_response(
                target.port, workload, deadline=2.0, host=target.host, address=target.address
            )
        except StartError as exc:
            target.error = f"after the {workload.name} run: {exc}{_procs.log_tail(target.log)}"
            return
        peak = None
        if pid is not None and target.has_footprint and workload.name == PEAK_WORKLOAD:
            peak = _procs.tree_hwm_mib(pid)
        target.runs.setdefault(workload.name, []).append(
            Run(
                rps=requests / duration,
                p50_ms=result["p50_us"] / 1000,
                p90_ms=result["p90_us"] / 1000,
                p99_ms=result["p99_us"] / 1000,
                requests=requests,
                duration_s=duration,
                non2xx=int(result["status"]),
                socket_errors=int(
                    result["connect"] + result["read"] + result["write"] + result["timeout"]
                ),
                cpu_us_per_req=1e6 * cpu / requests if cpu is not None else None,
                proxy_core_pct=100 * cpu / wall if cpu is not None else None,
                load_core_pct=busy.get(self.args.load_cpu, 0.0),
                proxy_cpu_busy_pct=busy.get(self.args.proxy_cpu, 0.0),
                # Whatever else ran on the proxy's CPU: noise from outside the benchmark.
                proxy_cpu_other_pct=max(
                    0.0, busy.get(self.args.proxy_cpu, 0.0) - (100 * cpu / wall if cpu else 0.0)
                ),
                peak_rss_mib=peak,
                activator_cpu_us_per_req=(
                    1e6 * own / requests if own is not None and qp_cpu is not None else None
                ),
                qp_cpu_us_per_req=1e6 * qp_cpu / requests if qp_cpu is not None else None,
                sys_us_per_req=1e6 * system / requests if system is not None else None,
            )
        )

    def wrk(
        self,
        port: int,
        workload: Workload,
        seconds: int,
        host: str | None = None,
        address: str = "127.0.0.1",
    ) -> dict[str, float] | None:
        """Run wrk pinned to the load CPU; return the JSON its done() hook prints."""
        script = self.tmp / f"wrk-{workload.name}.lua"
        if not script.exists():
            script.write_text(wrk_script(workload))
        argv = self.pinned(
            self.args.load_cpu,
            [
                self.tools["wrk"],
                "-t1",
                f"-c{workload.connections}",
                f"-d{seconds}s",
                "--timeout",
                "5s",
                *(["-H", f"Host: {host}"] if host else []),
                "-s",
                str(script),
                f"http://{address}:{port}{workload.path}",
            ],
        )
        proc = self.procs.start(argv, stdout_pipe=True, log_path=self.tmp / "wrk.log")
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.procs.stop(proc, graceful=False)
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("WRK_JSON "):
                parsed: dict[str, float] = json.loads(line[len("WRK_JSON ") :])
                return parsed
        return None


NGINX_PROXY = """\
    upstream app {{
        server 127.0.0.1:{up};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Stream both ways like the queue-proxy. Unbuffered with 64 KiB reads is nginx's
            # cheapest setting for 1 MiB bodies (~650 us/request against ~1100 with the default
            # buffering and 4-8 KiB buffers) and the same for 1 KiB.
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}
"""

_WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %.1f, "p90_us": %.1f, ' ..
    '"p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def wrk_script(workload: Workload) -> str:
    """A wrk Lua script: the workload's method and body, and a done() that prints JSON."""
    setup = ""
    if workload.method != "GET":
        setup += f'wrk.method = "{workload.method}"\n'
    if workload.body_size:
        setup += f'wrk.body = string.rep("x", {workload.body_size})\n'
        setup += 'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    for name, value in workload.headers:
        setup += f'wrk.headers["{name}"] = "{value}"\n'
    return setup + _WRK_DONE


def check_response(
    port: int,
    workload: Workload,
    deadline: float,
    host: str | None = None,
    address: str = "127.0.0.1",
) -> None:
    """One request of the workload must come back 200 with the full body (retried until the
    deadline, since a proxy may answer 503 until it has seen its upstream)."""
    end = time.monotonic() + deadline
    body = b"x" * workload.body_size if workload.body_size else None
    headers = dict(workload.headers)
    if host:
        headers["Host"] = host
    problem = "no answer"
    while time.monotonic() < end:
        conn = http.client.HTTPConnection(address, port, timeout=5)
        try:
            conn.request(workload.method, workload.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status == 200 and len(data) == workload.response_size:
                return
            problem = f"{workload.method} {workload.path} -> {resp.status}, {len(data)} bytes"
        except (OSError, http.client.HTTPException) as exc:
            problem = f"{workload.method} {workload.path}: {exc!r}"
        finally:
            conn.close()
        time.sleep(0.05)
    raise StartError(problem)


# --- report --------------------------------------------------------------------------------


VARIANTS = ("queue-proxy", "queue-proxy-mypyc")  # interpreted and mypyc-compiled builds
# activator + queue-proxy chains, each with the queue-proxy variant of the same build.
ACTIVATOR_VARIANTS = {"activator-qp": "queue-proxy", "activator-qp-mypyc": "queue-proxy-mypyc"}
GO_CHAIN = "go-activator-qp"  # Knative's Go activator in front of our queue-proxy


def go_partner(variant: str, cc: int, ran: Container[str]) -> str:
    """The Go activator chain an activator variant of ours is compared with: the one in front
    of the same queue-proxy build (the compiled one for ``*-mypyc*``, when it ran: its id is
    in ``ran``)."""
    if "mypyc" in variant and f"{GO_CHAIN}-mypyc-cc{cc}" in ran:
        return f"{GO_CHAIN}-mypyc-cc{cc}"
    return f"{GO_CHAIN}-cc{cc}"


ACT_CPU = "activator_cpu_us_per_req"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compute_ratios(targets: list[Target], workloads: list[Workload]) -> dict[str, Any]:
    """Ratios to nginx and direct per target, cc=10/cc=0, and each queue-proxy build's cc=0
    against each extra (``vs_extra[variant][extra]``)."""
    by_id = {t.id: t for t in targets if not t.error}
    out: dict[str, Any] = {
        "vs_nginx": {},
        "vs_direct": {},
        "cc10_vs_cc0": {},
        "vs_extra": {},
        "activator_vs_qp": {},
        "activator_vs_go": {},
    }
    metrics = {"rps": "rps", "cpu_per_req": "cpu_us_per_req", "p99": "p99_ms"}

    def compare(a: Target, b: Target) -> dict[str, dict[str, float | None]]:
        return {
            w.name: {
                key: _ratio(a.median(w.name, m), b.median(w.name, m)) for key, m in metrics.items()
            }
            for w in workloads
        }

    for base_id, key in (("nginx", "vs_nginx"), ("direct", "vs_direct")):
        if base_id in by_id:
            for t in by_id.values():
                out[key][t.id] = compare(t, by_id[base_id])
    for variant in (*VARIANTS, *ACTIVATOR_VARIANTS):
        cc0, cc10 = by_id.get(f"{variant}-cc0"), by_id.get(f"{variant}-cc10")
        if cc0 and cc10:
            out["cc10_vs_cc0"][variant] = compare(cc10, cc0)
    # What the activator hop costs: the chain against the queue-proxy alone, same build and CC.
    for variant, qp_variant in ACTIVATOR_VARIANTS.items():
        for cc in (0, 10):
            chain, alone = by_id.get(f"{variant}-cc{cc}"), by_id.get(f"{qp_variant}-cc{cc}")
            if chain and alone:
                out["activator_vs_qp"][f"{variant}-cc{cc}"] = compare(chain, alone)
    # Ours against Knative's Go activator, same queue-proxy behind both: the activator process
    # alone (its CPU per request: ours / Go, above 1 is more CPU than Go), and the whole chain.
    for variant in (*ACTIVATOR_VARIANTS, *(f"{v}-ns" for v in ACTIVATOR_VARIANTS)):
        for cc in (0, 10):
            ours, go = by_id.get(f"{variant}-cc{cc}"), by_id.get(go_partner(variant, cc, by_id))
            if ours and go:
                out["activator_vs_go"][f"{variant}-cc{cc}"] = {
                    w.name: {
                        key: _ratio(ours.median(w.name, m), go.median(w.name, m))
                        for key, m in (*metrics.items(), ("activator_cpu", ACT_CPU))
                    }
                    for w in workloads
                }
    for variant in VARIANTS:
        cc0 = by_id.get(f"{variant}-cc0")
        for extra in (t for t in by_id.values() if t.kind == "extra"):
            if cc0 is None or not cc0.runs or not extra.runs:
                continue
            entry: dict[str, Any] = compare(cc0, extra)
            entry["footprint"] = {
                "idle_rss": _ratio(cc0.idle_rss_mib, extra.idle_rss_mib),
                "peak_rss": _ratio(cc0.peak_rss_mib(), extra.peak_rss_mib()),
                "start": _ratio(cc0.start_median_ms(), extra.start_median_ms()),
            }
            out["vs_extra"].setdefault(variant, {})[extra.id] = entry
    return out


def _floor_lines(targets: list[Target], workloads: list[Workload]) -> list[str]:
    """Each queue-proxy's and activator's CPU per request above the python floor's (what its
    HTTP work costs on the same runtime), split into the kernel's part and its own code's."""
    floor = next((t for t in targets if t.kind == "floor" and not t.error and t.runs), None)
    if floor is None:
        return []
    lines = ["", "above the python floor (CPU us/request: the proxy's - the floor's)"]
    for t in targets:
        if t.error or t.kind not in ("queue-proxy", "activator") or t.cc != 0:
            continue
        own = ACT_CPU if t.kind == "activator" else "cpu_us_per_req"
        for w in workloads:
            cpu, base = t.median(w.name, own), floor.median(w.name, "cpu_us_per_req")
            sys_, base_sys = (
                t.median(w.name, "sys_us_per_req"),
                floor.median(w.name, "sys_us_per_req"),
            )
            if cpu is None or base is None:
                continue
            split = ""
            if t.kind == "queue-proxy" and sys_ is not None and base_sys is not None:
                kernel, code = sys_ - base_sys, (cpu - sys_) - (base - base_sys)
                split = f" (kernel {kernel:+.1f}, own code {code:+.1f})"
            lines.append(
                f"  {t.label}, {w.name}: {cpu:.1f} = floor {base:.1f} {cpu - base:+.1f}{split}"
                + (" (the activator process alone)" if t.kind == "activator" else "")
            )
    return lines


def compute_goals(
    targets: list[Target], ratios: dict[str, Any], workloads: list[Workload]
) -> list[dict[str, Any]]:
    """DESIGN.md's performance targets that this run can check, per queue-proxy build."""
    goals: list[dict[str, Any]] = []
    for variant in VARIANTS:
        goals += _variant_goals(variant, targets, ratios, workloads)
    return goals


def _variant_goals(
    variant: str, targets: list[Target], ratios: dict[str, Any], workloads: list[Workload]
) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = []
    qp = next((t for t in targets if t.id == f"{variant}-cc0" and not t.error), None)
    if qp is None:
        return goals
    names = {w.name for w in workloads}
    selected = {t.id for t in targets}

    def goal(text: str, value: float | None, limit: float, at_least: bool) -> None:
        ok = None if value is None else (value >= limit if at_least else value <= limit)
        goals.append({"build": variant, "goal": text, "value": value, "limit": limit, "ok": ok})

    for wl in ("1k", "1m"):
        if wl not in names:
            continue
        if "nginx" in selected:
            vs_nginx = ratios["vs_nginx"].get(qp.id, {}).get(wl, {})
            goal(f"{wl}: throughput >= 0.6 x nginx", vs_nginx.get("rps"), 0.6, True)
            goal(f"{wl}: CPU/request <= 2 x nginx", vs_nginx.get("cpu_per_req"), 2.0, False)
        if f"{variant}-cc10" in selected:
            cc = ratios["cc10_vs_cc0"].get(variant, {}).get(wl, {})
            goal(f"{wl}: cc=10 throughput >= 0.9 x cc=0", cc.get("rps"), 0.9, True)
        for name, entry in ratios["vs_extra"].get(variant, {}).items():
            goal(f"{wl}: throughput >= 2 x {name}", entry.get(wl, {}).get("rps"), 2.0, True)
            goal(f"{wl}: p99 <= 0.5 x {name}", entry.get(wl, {}).get("p99"), 0.5, False)
    goal("idle RSS <= 23 MiB", qp.idle_rss_mib, 23.0, False)
    if PEAK_WORKLOAD in names:
        goal("peak RSS under 64 connections <= 39 MiB", qp.peak_rss_mib(), 39.0, False)
    goal("exec to listening <= 100 ms", qp.start_median_ms(), 100.0, False)
    return goals


def load_bound(target: Target, workload: str) -> bool:
    """True when wrk + upstream, not the proxy's CPU, limited this target's throughput."""
    if target.median(workload, "proxy_core_pct") is None:
        return False  # direct: nothing but the load side
    load = target.median(workload, "load_core_pct")
    proxy_cpu = target.median(workload, "proxy_cpu_busy_pct")
    return load is not None and load >= LOAD_BOUND_PCT and (proxy_cpu or 0.0) < 90


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(
    targets: list[Target],
    workloads: list[Workload],
    ratios: dict[str, Any],
    goals: list[dict[str, Any]],
    args: argparse.Namespace,
) -> str:
    """The terminal report: one table per workload, footprint, ratios and goals."""
    lines = []
    lw = max(len(t.label) for t in targets) + 2 if targets else 20
    runs = f"{args.duration} s x {args.repeat}, median; warm-up {args.warmup} s"
    head = (
        f"{'target':<{lw}}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/req':>11}{'sys us':>7}"
        f"{'proxy%':>7}{'other%':>7}{'load%':>6}{'errors':>7}{'xdirect':>8}{'xnginx':>7}{'CPUxng':>7}"
        f"{'p99xng':>7}"
    )
    for w in workloads:
        lines += ["", f"{w.name}: {w.describe()} ({runs})", head, "-" * len(head)]
        for t in targets:
            if t.error and not t.runs.get(w.name):
                lines.append(f"{t.label:<{lw}}{t.error}")
                continue
            errors = sum(r.non2xx + r.socket_errors for r in t.runs.get(w.name, []))
            mark = "*" if load_bound(t, w.name) else " "
            vn = ratios["vs_nginx"].get(t.id, {}).get(w.name, {})
            vd = ratios["vs_direct"].get(t.id, {}).get(w.name, {})
            lines.append(
                f"{t.label:<{lw}}{_fmt(t.median(w.name, 'rps'), ',.0f'):>8}{mark}"
                f"{_fmt(t.median(w.name, 'p50_ms'), '.2f'):>8}"
                f"{_fmt(t.median(w.name, 'p99_ms'), '.2f'):>8}"
                f"{_fmt(t.median(w.name, 'cpu_us_per_req'), '.1f'):>11}"
                f"{_fmt(t.median(w.name, 'sys_us_per_req'), '.1f'):>7}"
                f"{_fmt(t.median(w.name, 'proxy_core_pct'), '.0f'):>7}"
                f"{_fmt(t.median(w.name, 'proxy_cpu_other_pct'), '.0f'):>7}"
                f"{_fmt(t.median(w.name, 'load_core_pct'), '.0f'):>6}"
                f"{errors:>7}{_fmt(vd.get('rps'), '.2f'):>8}{_fmt(vn.get('rps'), '.2f'):>7}"
                f"{_fmt(vn.get('cpu_per_req'), '.2f'):>7}{_fmt(vn.get('p99'), '.2f'):>7}"
            )
            if t.error:
                lines.append(f"{'':<{lw}}then {t.error}")
    if any((t.median(w.name, "proxy_cpu_other_pct") or 0) > 10 for t in targets for w in workloads):
        lines += [
            "",
            "other% is CPU time on the proxy's CPU not used by the proxy: above ~10 % something "
            "outside the benchmark competed with it and that row is noisy",
        ]
    if any(load_bound(t, w.name) for t in targets for w in workloads):
        lines += [
            "",
            f"* load-bound: the load CPU was >= {LOAD_BOUND_PCT:.0f} % busy while the proxy's CPU "
            "was not; that req/s is a lower bound (compare CPU/request instead)",
        ]
    chains = [t for t in targets if t.is_chain and t.runs]
    if chains:
        cw = max(10, *(len(w.name) + 5 for w in workloads))
        head = f"{'CPU us/req split':<{lw}}" + "".join(
            f"{w.name + ' act':>{cw}}{w.name + ' qp':>{cw}}" for w in workloads
        )
        lines += ["", head, "-" * len(head)]
        for t in chains:
            lines.append(
                f"{t.label:<{lw}}"
                + "".join(
                    f"{_fmt(t.median(w.name, 'activator_cpu_us_per_req'), '.1f'):>{cw}}"
                    f"{_fmt(t.median(w.name, 'qp_cpu_us_per_req'), '.1f'):>{cw}}"
                    for w in workloads
                )
            )
    footprint = [t for t in targets if t.has_footprint]
    if footprint:
        head = f"{'footprint':<{lw}}{'idle RSS MiB':>13}{'peak RSS MiB (64c)':>20}"
        head += f"{'exec->listen ms':>17}"
        lines += ["", head, "-" * len(head)]
        for t in footprint:
            if t.error and t.idle_rss_mib is None:
                lines.append(f"{t.label:<{lw}}{t.error}")
                continue
            lines.append(
                f"{t.label:<{lw}}{_fmt(t.idle_rss_mib, '.1f'):>13}"
                f"{_fmt(t.peak_rss_mib(), '.1f'):>20}"
                f"{_fmt(t.start_median_ms(), '.1f'):>17}"
                f"  (median of {len(t.start_ms)}: {', '.join(f'{v:.0f}' for v in t.start_ms)})"
            )
        if any(t.is_chain for t in footprint):
            lines.append("activator+qp rows: the activator process alone (its pod excluded)")
    pairs = []
    labels = {t.id: t.label for t in targets}
    for variant, entry in ratios["cc10_vs_cc0"].items():
        name = labels.get(f"{variant}-cc0", variant).removesuffix(" cc=0")
        pairs.append((f"{name} cc=10 / cc=0", entry))
    for variant, extras in ratios["vs_extra"].items():
        for name, entry in extras.items():
            pairs.append((f"{labels.get(f'{variant}-cc0', variant)} / {name}", entry))
    for tid, entry in ratios["activator_vs_qp"].items():
        variant, cc = tid.rsplit("-cc", 1)
        alone = labels.get(f"{ACTIVATOR_VARIANTS[variant]}-cc{cc}", "queue-proxy")
        pairs.append((f"{labels.get(tid, tid)} / {alone}", entry))
    if pairs:
        width = max(28, *(len(label) for label, _ in pairs))
        lines += ["", "ratios (req/s, CPU/req, p99)"]
        for label, entry in pairs:
            parts = [
                f"{w.name}: {_fmt(entry[w.name]['rps'], '.2f')}, "
                f"{_fmt(entry[w.name]['cpu_per_req'], '.2f')}, {_fmt(entry[w.name]['p99'], '.2f')}"
                for w in workloads
            ]
            if "footprint" in entry:
                fp = entry["footprint"]
                parts.append(
                    f"idle RSS {_fmt(fp['idle_rss'], '.2f')}, peak RSS "
                    f"{_fmt(fp['peak_rss'], '.2f')}, start {_fmt(fp['start'], '.2f')}"
                )
            lines.append(f"  {label:<{width}}  " + "; ".join(parts))
    lines += _floor_lines(targets, workloads)
    go_lines = []
    for tid, entry in ratios["activator_vs_go"].items():
        variant, cc = tid.rsplit("-cc", 1)
        ran = {t.id for t in targets if not t.error}
        go = next(t for t in targets if t.id == go_partner(variant, int(cc), ran))
        ours = next(t for t in targets if t.id == tid)
        for w in workloads:
            r = entry[w.name]
            go_lines.append(
                f"  {ours.label} / {go.label}, {w.name}: activator CPU/req "
                f"{_fmt(ours.median(w.name, ACT_CPU), '.1f')} / "
                f"{_fmt(go.median(w.name, ACT_CPU), '.1f')} us = "
                f"{_fmt(r['activator_cpu'], '.2f')}; chain CPU/req "
                f"{_fmt(r['cpu_per_req'], '.2f')}, "
                f"req/s {_fmt(r['rps'], '.2f')}, p99 {_fmt(r['p99'], '.2f')}"
            )
    if go_lines:
        lines += ["", "ours / Knative's Go activator (same queue-proxy and upstream)", *go_lines]
    for variant in VARIANTS:
        vgoals = [g for g in goals if g["build"] == variant]
        if not vgoals:
            continue
        lines += ["", f"DESIGN.md targets ({variant} cc=0)"]
        for g in vgoals:
            mark = {True: "ok", False: "MISS", None: "n/a"}[g["ok"]]
            lines.append(f"  {mark:<5}{g['goal']:<42}{_fmt(g['value'], '.3g'):>8}")
    return "\n".join(lines)


def background_load(cpus: list[int], seconds: float = 1.0) -> dict[int, float]:
    """Busy % of the benchmark CPUs before anything starts; warn when the machine is not idle."""
    before = _procs.cpu_busy_ticks()
    time.sleep(seconds)
    busy = _procs.cpu_busy_percent(before, _procs.cpu_busy_ticks())
    found = {cpu: round(busy.get(cpu, 0.0), 1) for cpu in cpus}
    noisy = {cpu: pct for cpu, pct in found.items() if pct > BUSY_WARN_PCT}
    if noisy:
        shown = ", ".join(f"CPU {cpu} {pct:.0f} %" for cpu, pct in noisy.items())
        print(f"warning: the machine is not idle ({shown} busy before the run): figures are noisy")
    return found


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
        check=False,
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "nginx": _tools.tool_version([_tools.which("nginx") or "nginx", "-v"]),
        "wrk": _tools.tool_version([_tools.which("wrk") or "wrk", "-v"]),
        "git_commit": commit or None,
    }


def to_json(
    targets: list[Target],
    workloads: list[Workload],
    ratios: dict[str, Any],
    goals: list[dict[str, Any]],
    args: argparse.Namespace,
    started: str,
) -> dict[str, Any]:
    """Everything measured, with per-run figures, for the results file."""
    medians = (
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "cpu_us_per_req",
        "proxy_core_pct",
        "proxy_cpu_busy_pct",
        "proxy_cpu_other_pct",
        "load_core_pct",
        "activator_cpu_us_per_req",
        "qp_cpu_us_per_req",
        "sys_us_per_req",
    )
    return {
        "scenario": "proxy",
        "started": started,
        "options": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "cold_starts": args.cold_starts,
            "proxy_cpu": args.proxy_cpu,
            "load_cpu": args.load_cpu,
            "workloads": {w.name: asdict(w) for w in workloads},
        },
        "machine": machine(),
        "targets": {
            t.id: {
                "label": t.label,
                "kind": t.kind,
                "command": t.argv,
                "queue_proxy_command": t.qp_argv,
                "host_header": t.host,
                "container_concurrency": t.cc,
                "error": t.error,
                "footprint": {
                    "idle_rss_mib": t.idle_rss_mib,
                    "peak_rss_mib_64c": t.peak_rss_mib(),
                    "exec_to_listening_ms_median": t.start_median_ms(),
                    "exec_to_listening_ms": t.start_ms,
                }
                if t.has_footprint
                else None,
                "workloads": {
                    w.name: {
                        "median": {m: t.median(w.name, m) for m in medians}
                        | {
                            "non2xx": sum(r.non2xx for r in t.runs.get(w.name, [])),
                            "socket_errors": sum(r.socket_errors for r in t.runs.get(w.name, [])),
                        },
                        "runs": [asdict(r) for r in t.runs.get(w.name, [])],
                    }
                    for w in workloads
                },
            }
            for t in targets
        },
        "ratios": ratios,
        "goals": goals,
    }


def _compile_bytecode() -> None:
    """Write fresh .pyc files for our packages, as an installed image has them: a stale or
    missing .pyc (e.g. under PYTHONDONTWRITEBYTECODE) would be compiled at every start and
    inflate start-up time and idle RSS."""
    root = Path(__file__).resolve().parent.parent
    dirs = [root / "dataplane", root / "queueproxy", root / "activator", root / "platforms"]
    dirs.append(root / "build" / "compiled")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(d) for d in dirs if d.is_dir())],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
    )


def run(args: argparse.Namespace) -> int:
    """Run the scenario: start everything, measure, report; every process stops on the way out."""
    _resolve(args)
    workloads = _workloads(args.workloads)
    targets = build_targets(args)
    _compile_bytecode()
    tools = _tools.ensure_tools(["nginx", "wrk", "taskset"])
    started = dt.datetime.now().astimezone()
    per = args.warmup + args.duration
    estimate = len(targets) * len(workloads) * args.repeat * per
    print(
        f"proxy: {len(targets)} targets x {len(workloads)} workloads x {args.repeat} runs of "
        f"{args.warmup}+{args.duration} s (about {estimate} s of load); "
        f"proxy on CPU {args.proxy_cpu}, wrk and upstream on CPU {args.load_cpu}",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="knd-bench-proxy-") as tmp,
        ProcessSet() as procs,
        contextlib.ExitStack() as cleanup,
    ):
        bench = Bench(args, procs, Path(tmp), tools)
        cleanup.callback(bench.close)  # before the process set stops what is left
        background = background_load([args.proxy_cpu, args.load_cpu])
        bench.start_upstream()
        lw = max([20, *(len(t.label) + 2 for t in targets)])
        for t in targets:
            bench.start_target(t)
            state = t.error or f"listening on {t.port}"
            if t.start_ms:
                state += f", exec->listening {statistics.median(t.start_ms):.1f} ms"
            print(f"  {t.label:<{lw}}{state}", flush=True)
        for rep in range(args.repeat):
            for w in workloads:
                for t in targets:
                    if t.error:
                        continue
                    bench.measure(t, w)
                    last = t.runs.get(w.name, [])
                    shown = (
                        t.error
                        if t.error
                        else f"{last[-1].rps:,.0f} req/s, p99 {last[-1].p99_ms:.2f} ms"
                    )
                    print(
                        f"  [{rep + 1}/{args.repeat}] {w.name:<8}{t.label:<{lw}}{shown}", flush=True
                    )
    ratios = compute_ratios(targets, workloads)
    goals = compute_goals(targets, ratios, workloads)
    print(render(targets, workloads, ratios, goals, args))
    if any(pct > BUSY_WARN_PCT for pct in background.values()):
        print("\nwarning: the machine was busy before the run; repeat on an idle machine")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"proxy-{started.strftime('%Y%m%d-%H%M%S')}.json"
    data = to_json(targets, workloads, ratios, goals, args, started.isoformat(timespec="seconds"))
    data["machine"]["busy_pct_before_run"] = background
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults: {out}")
    measured = [t for t in targets if t.runs]
    return 0 if measured else 1

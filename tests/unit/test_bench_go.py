"""``--go PATH`` of the benchmarks (Knative's Go queue-proxy beside ours): option parsing, the env
and targets it builds, the fixed-port check, the certificates written for Go's TLS port, the
valid-response accounting and the same-run ratios. No Go binary: a plain executable file stands
in where only the path matters, and the Go targets are absent when ``--go`` is not given."""

from __future__ import annotations

import argparse
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as bench_main
from benchmarks import _gobaseline, _procs, h2load, proxy
from benchmarks._procs import BenchError, StartError

# Knative's queue-proxy refuses to start without these (envconfig `required:"true"`).
KNATIVE_REQUIRED = (
    "CONTAINER_CONCURRENCY",
    "QUEUE_SERVING_PORT",
    "QUEUE_SERVING_TLS_PORT",
    "USER_PORT",
    "REVISION_TIMEOUT_SECONDS",
    "SERVING_LOGGING_CONFIG",
    "SERVING_LOGGING_LEVEL",
    "SERVING_NAMESPACE",
    "SERVING_CONFIGURATION",
    "SERVING_REVISION",
    "SERVING_POD",
    "SERVING_POD_IP",
)


@pytest.fixture
def fake_go(tmp_path: Path) -> Path:
    exe = tmp_path / "queue"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    return exe


def _proxy_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    proxy.add_arguments(parser)
    return parser.parse_args(["--compiled", "off", *argv])


# --- the option -----------------------------------------------------------------------------


def test_go_path_absent_means_no_go_target() -> None:
    assert _gobaseline.go_path(None) is None
    assert _gobaseline.go_path("") is None
    targets = proxy.build_targets(_proxy_args())
    assert not any(t.go or t.kind == "extra" for t in targets)


def test_go_path_must_be_an_executable_file(tmp_path: Path, fake_go: Path) -> None:
    assert _gobaseline.go_path(str(fake_go)) == str(fake_go.resolve())
    with pytest.raises(BenchError, match="not an executable file"):
        _gobaseline.go_path(str(tmp_path / "missing"))
    with pytest.raises(BenchError, match="not an executable file"):
        _gobaseline.go_path(str(tmp_path))  # a directory
    fake_go.chmod(0o644)
    with pytest.raises(BenchError, match="not an executable file"):
        _gobaseline.go_path(str(fake_go))


@pytest.mark.parametrize("scenario", ["proxy", "h2load", "grpc", "tls"])
def test_every_scenario_takes_go_and_rejects_a_bad_path(
    scenario: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main.main([scenario, "--help"])
    assert exc.value.code == 0
    assert "--go PATH" in capsys.readouterr().out
    # The path is checked before any tool is installed or any process started.
    extra = ["--compiled", "off"] if scenario == "proxy" else []
    code = bench_main.main([scenario, "--go", str(tmp_path / "nothing"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --go {tmp_path / 'nothing'}: not an executable file"


def test_proxy_go_target_is_an_extra_at_cc0(fake_go: Path) -> None:
    targets = proxy.build_targets(_proxy_args("--go", str(fake_go), "--targets", "nginx,go"))
    assert [t.id for t in targets] == ["nginx", "go"]
    go = targets[1]
    assert (go.kind, go.cc, go.argv, go.go) == ("extra", 0, [str(fake_go.resolve())], True)
    assert go.has_footprint
    # --go is --extra go=PATH with the port check: the two cannot both name "go".
    with pytest.raises(BenchError, match="name already used"):
        proxy.build_targets(_proxy_args("--go", str(fake_go), "--extra", f"go={fake_go}"))
    plain = proxy.build_targets(_proxy_args("--extra", f"go={fake_go}", "--targets", "go"))
    assert (plain[0].kind, plain[0].cc, plain[0].go) == ("extra", 0, False)


def test_h2load_targets_with_go(fake_go: Path) -> None:
    parser = argparse.ArgumentParser()
    h2load.add_arguments(parser)
    args = parser.parse_args(["--go", str(fake_go), "--extra", "old=/bin/old --flag"])
    targets = h2load.build_targets(args, "/bin/qp", {"PYTHONPATH": "x"})
    assert [(t.name, t.argv, t.go) for t in targets] == [
        ("nginx", None, False),
        ("queue-proxy", ["/bin/qp"], False),
        ("go", [str(fake_go.resolve())], True),
        ("old", ["/bin/old", "--flag"], False),
    ]
    assert targets[1].env == {"PYTHONPATH": "x"}
    with pytest.raises(BenchError, match="name already used"):
        h2load.build_targets(
            parser.parse_args(["--go", str(fake_go), "--extra", "go=/x"]), "/bin/qp", {}
        )
    assert [t.name for t in h2load.build_targets(parser.parse_args([]), "/q", {})] == [
        "nginx",
        "queue-proxy",
    ]


# --- env and ports ---------------------------------------------------------------------------


def test_queue_proxy_env_is_knatives_contract_on_free_ports() -> None:
    env = proxy.queue_proxy_env(0, 41000, 42000)
    missing = [k for k in KNATIVE_REQUIRED if k not in env]
    assert not missing
    assert env["USER_PORT"] == "42000"
    assert env["QUEUE_SERVING_PORT"] == "41000"
    assert env["CONTAINER_CONCURRENCY"] == "0"
    ports = {env[k] for k in ("QUEUE_SERVING_TLS_PORT", "QUEUE_ADMIN_PORT", "QUEUE_METRICS_PORT")}
    assert len(ports) == 3 and "8112" not in ports and not ports & {"41000", "42000"}
    assert int(env["QUEUE_SERVING_TLS_PORT"]) not in _gobaseline.FIXED_PORTS
    other = proxy.queue_proxy_env(10, 41001, 42000)
    assert other["CONTAINER_CONCURRENCY"] == "10"


def test_check_fixed_ports_names_a_listening_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(StartError, match=f"port {port} in use"):
            _gobaseline.check_fixed_ports((port,))
    _gobaseline.check_fixed_ports((port,))  # closed: free again


# --- certificates at Knative's fixed path -----------------------------------------------------


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("CERT")
    key.write_text("KEY")
    return cert, key


def test_installed_certs_are_removed_with_the_dirs_created(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    root = tmp_path / "var"
    root.mkdir()
    cert_dir = root / "lib" / "knative" / "certs"
    with _gobaseline.installed_certs(cert, key, cert_dir) as where:
        assert where == cert_dir
        assert (cert_dir / "tls.crt").read_text() == "CERT"
        assert (cert_dir / "tls.key").read_text() == "KEY"
        assert stat.S_IMODE((cert_dir / "tls.key").stat().st_mode) == 0o600
    assert not (root / "lib").exists()
    assert root.is_dir() and cert.exists() and key.exists()


def test_installed_certs_removed_on_error_and_existing_dir_kept(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    (cert_dir / "other").write_text("keep")
    with pytest.raises(RuntimeError), _gobaseline.installed_certs(cert, key, cert_dir):
        raise RuntimeError("start failed")
    assert sorted(p.name for p in cert_dir.iterdir()) == ["other"]


def test_installed_certs_refuse_to_overwrite(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    (cert_dir / "tls.key").write_text("theirs")
    with (
        pytest.raises(BenchError, match="already exist"),
        _gobaseline.installed_certs(cert, key, cert_dir),
    ):
        pass
    assert (cert_dir / "tls.key").read_text() == "theirs"
    assert not (cert_dir / "tls.crt").exists()


# --- what counts, and the ratios ---------------------------------------------------------------


H2LOAD_OUT = """\
finished in 1.00s, 4000.00 req/s, 4.50MB/s
requests: 4000 total, 4000 started, 4000 done, 3990 succeeded, 10 failed, 0 errored, 0 timeout
status codes: 3000 2xx, 0 3xx, 990 4xx, 10 5xx
"""


def test_h2load_counts_only_2xx() -> None:
    got = h2load.parse_h2load(H2LOAD_OUT)
    assert got == {"rps": 3000.0, "valid": 3000.0, "errors": 1000.0}
    with pytest.raises(BenchError, match="not understood"):
        h2load.parse_h2load("h2load: connection refused\n")


def test_h2load_ratios_are_ours_over_each_other_queue_proxy() -> None:
    results = {
        "nginx": {"rps": 9000.0, "errors": 0.0},
        "queue-proxy": {"rps": 6000.0, "cpu_us_per_req": 40.0, "errors": 0.0},
        "go": {"rps": 3000.0, "cpu_us_per_req": 100.0, "errors": 0.0},
    }
    assert h2load.same_run_ratios(results) == {"go": {"rps": 2.0, "cpu_per_req": 0.4}}


def _run(rps: float, cpu: float, p99: float) -> proxy.Run:
    return proxy.Run(
        rps=rps,
        p50_ms=1.0,
        p90_ms=1.0,
        p99_ms=p99,
        requests=int(rps),
        duration_s=1.0,
        non2xx=0,
        socket_errors=0,
        cpu_us_per_req=cpu,
        proxy_core_pct=50.0,
        load_core_pct=50.0,
        proxy_cpu_busy_pct=50.0,
        proxy_cpu_other_pct=0.0,
        peak_rss_mib=None,
    )


def test_proxy_ratios_per_build_against_go() -> None:
    wl = [proxy.WORKLOADS["1k"]]
    qp = proxy.Target("queue-proxy-cc0", "queue-proxy cc=0", "queue-proxy", ["qp"], cc=0)
    mypyc = proxy.Target("queue-proxy-mypyc-cc0", "queue-proxy mypyc cc=0", "queue-proxy", ["q"])
    go = proxy.Target("go", "go", "extra", ["go"], cc=0, go=True)
    qp.runs["1k"] = [_run(10000, 50, 2.0)]
    mypyc.runs["1k"] = [_run(15000, 30, 1.0)]
    go.runs["1k"] = [_run(5000, 100, 8.0)]
    ratios = proxy.compute_ratios([qp, mypyc, go], wl)
    assert ratios["vs_extra"]["queue-proxy"]["go"]["1k"] == {
        "rps": 2.0,
        "cpu_per_req": 0.5,
        "p99": 0.25,
    }
    assert ratios["vs_extra"]["queue-proxy-mypyc"]["go"]["1k"]["rps"] == 3.0
    goals = proxy.compute_goals([qp, mypyc, go], ratios, wl)
    by_build = {(g["build"], g["goal"]): g["value"] for g in goals}
    assert by_build[("queue-proxy", "1k: throughput >= 2 x go")] == 2.0
    assert by_build[("queue-proxy-mypyc", "1k: throughput >= 2 x go")] == 3.0
    args = argparse.Namespace(duration=3, repeat=1, warmup=1)
    text = proxy.render([qp, mypyc, go], wl, ratios, goals, args)
    assert "queue-proxy cc=0 / go" in text and "queue-proxy mypyc cc=0 / go" in text
    # A Go target that failed to start gives no ratio line instead of a broken one.
    go.error, go.runs = "failed to start: port 8022 in use", {}
    assert proxy.compute_ratios([qp, go], wl)["vs_extra"] == {}


def test_proxy_table_shows_the_kernel_share() -> None:
    wl = [proxy.WORKLOADS["1k"]]
    qp = proxy.Target("queue-proxy-cc0", "queue-proxy cc=0", "queue-proxy", ["qp"], cc=0)
    run = _run(10000, 50, 2.0)
    run.sys_us_per_req = 21.5
    qp.runs["1k"] = [run]
    ratios = proxy.compute_ratios([qp], wl)
    goals = proxy.compute_goals([qp], ratios, wl)
    args = argparse.Namespace(duration=3, repeat=1, warmup=1)
    lines = proxy.render([qp], wl, ratios, goals, args).splitlines()
    head = next(line for line in lines if line.startswith("target"))
    row = next(line for line in lines if line.startswith("queue-proxy cc=0 "))
    col = head.index("sys us") + len("sys us")
    assert row[col - 7 : col].strip() == "21.5"


def test_cpu_split_puts_a_child_s_reads_in_system_time() -> None:
    # 2,000 reads of 4 MiB from /dev/zero: the copying is the kernel's (about 0.2 s of it,
    # well above the child's start-up and the clock's 10 ms ticks; 1,000 of 1 MiB once tied).
    code = (
        "import os\nf = os.open('/dev/zero', os.O_RDONLY)\n"
        "for _ in range(2000): os.read(f, 4 << 20)"
    )
    user0, system0 = _procs.tree_cpu_split(os.getpid())
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    user, system = _procs.tree_cpu_split(os.getpid())  # the reaped child counts (cstime)
    assert system - system0 > user - user0  # (the child's start-up is most of its user time)
    assert abs(user + system - _procs.tree_cpu_seconds(os.getpid())) < 0.05

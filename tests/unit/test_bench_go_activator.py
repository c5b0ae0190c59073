"""``python -m benchmarks proxy --go-activator PATH``: Knative's Go activator beside ours. The
option, the targets it adds, the env, argv and API objects built for the Go activator (checked
against tests.fakekube's validation), and the ours / Go ratios. No Go binary: a plain executable
file stands in where only the path matters."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import _go_activator as goa
from benchmarks import proxy
from benchmarks._procs import BenchError
from tests.fakekube import FakeKube


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    exe = tmp_path / "activator"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    return exe


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    proxy.add_arguments(parser)
    return parser.parse_args(["--compiled", "off", *argv])


def test_without_the_option_there_is_no_go_activator_target() -> None:
    assert goa.go_activator_path(None) is None
    assert goa.go_activator_path("") is None
    assert not any(t.kind == "go-activator" for t in proxy.build_targets(_args()))


def test_the_path_must_be_an_executable_file(tmp_path: Path, fake_binary: Path) -> None:
    assert goa.go_activator_path(str(fake_binary)) == str(fake_binary.resolve())
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(BenchError, match=r"--go-activator .*: not an executable file"):
            goa.go_activator_path(str(bad))
    fake_binary.chmod(0o644)
    with pytest.raises(BenchError, match="not an executable file"):
        proxy.build_targets(_args("--go-activator", str(fake_binary)))


def test_the_option_adds_two_chains_in_front_of_our_queue_proxy(fake_binary: Path) -> None:
    targets = proxy.build_targets(_args("--go-activator", str(fake_binary)))
    go = [t for t in targets if t.kind == "go-activator"]
    assert [(t.id, t.cc) for t in go] == [("go-activator-qp-cc0", 0), ("go-activator-qp-cc10", 10)]
    ours = {t.id: t for t in targets if t.kind == "activator"}
    for t in go:
        assert t.argv == [str(fake_binary.resolve())]
        assert t.qp_argv == ours[f"activator-qp-cc{t.cc}"].qp_argv  # the same queue-proxy
        assert t.host == f"bench-go{t.cc}-00001.default.svc.cluster.local"
        assert t.is_chain and t.has_footprint
    # Ours again, the way the Go activator runs (a namespace of its own): the same topology.
    ns = [t for t in targets if t.netns]
    assert [(t.id, t.label) for t in ns] == [
        ("activator-qp-ns-cc0", "activator+qp netns cc=0"),
        ("activator-qp-ns-cc10", "activator+qp netns cc=10"),
    ]
    for t in ns:
        loop = ours[f"activator-qp-cc{t.cc}"]
        assert (t.kind, t.argv, t.qp_argv, t.host) == (
            "activator",
            loop.argv,
            loop.qp_argv,
            loop.host,
        )
    assert not any(t.netns for t in proxy.build_targets(_args()))
    # "go-activator-qp" selects both, as "activator-qp" (and "activator-qp-ns") do for ours.
    picked = proxy.build_targets(
        _args("--go-activator", str(fake_binary), "--targets", "activator-qp-cc0,go-activator-qp")
    )
    assert [t.id for t in picked] == [
        "activator-qp-cc0",
        "go-activator-qp-cc0",
        "go-activator-qp-cc10",
    ]
    picked = proxy.build_targets(
        _args("--go-activator", str(fake_binary), "--targets", "activator-qp-ns")
    )
    assert [t.id for t in picked] == ["activator-qp-ns-cc0", "activator-qp-ns-cc10"]


def test_env_and_argv() -> None:
    env = goa.go_activator_env("198.18.0.2")
    # What its envconfig requires (POD_NAME, POD_IP) and system.Namespace() reads; nothing of
    # ours (no PYTHONPATH, no allocator tuning).
    assert env.keys() == {"PATH", "POD_NAME", "POD_IP", "SYSTEM_NAMESPACE"}
    assert (env["POD_IP"], env["SYSTEM_NAMESPACE"]) == ("198.18.0.2", "knative-serving")
    argv = goa.go_activator_argv("/opt/activator", Path("/tmp/kc"))
    assert argv == ["/opt/activator", "--kubeconfig", "/tmp/kc"]
    assert goa.hosts_file("198.18.0.2").splitlines() == [
        "127.0.0.1 localhost",
        "198.18.0.2 autoscaler.knative-serving.svc.cluster.local",
    ]


def test_api_objects_are_what_the_go_informers_select() -> None:
    objects = goa.config_maps() + goa.revision_objects(
        "bench-00001", 10, "198.18.0.1", 4321, "198.18.0.2"
    )
    kube = FakeKube()
    for resource, obj in objects:  # validated as the real API server would (IPs, times)
        kube.create(resource, obj)
    assert {c["metadata"]["name"] for c in kube.list("configmaps", "knative-serving")} == {
        "config-network",
        "config-logging",
        "config-observability",
    }
    rev = kube.get("revisions.serving.knative.dev", "default", "bench-00001")
    assert (rev["spec"]["containerConcurrency"], rev["spec"]["timeoutSeconds"]) == (10, 300)
    private = kube.get("endpoints", "default", "bench-00001-private")
    labels = private["metadata"]["labels"]
    # The throttler's informer filter: a revisionUID label and serviceType Private; the
    # revision label names the revision.
    assert labels["networking.internal.knative.dev/serviceType"] == "Private"
    assert "serving.knative.dev/revisionUID" in labels
    assert labels["serving.knative.dev/revision"] == "bench-00001"
    (subset,) = private["subsets"]
    assert subset["addresses"] == [{"ip": "198.18.0.1"}]
    assert subset["ports"][0] == {"name": "http", "port": 4321, "protocol": "TCP"}
    public = kube.get("endpoints", "default", "bench-00001")
    assert public["metadata"]["labels"]["networking.internal.knative.dev/serviceType"] == "Public"
    assert public["subsets"][0]["addresses"] == [{"ip": "198.18.0.2"}]
    assert kube.get("services", "default", "bench-00001-private")["spec"]["clusterIP"]


def _run(cpu: float, act: float, rps: float = 1000.0) -> proxy.Run:
    return proxy.Run(
        rps=rps,
        p50_ms=1.0,
        p90_ms=2.0,
        p99_ms=3.0,
        requests=1000,
        duration_s=1.0,
        non2xx=0,
        socket_errors=0,
        cpu_us_per_req=cpu,
        proxy_core_pct=90.0,
        load_core_pct=50.0,
        proxy_cpu_busy_pct=90.0,
        proxy_cpu_other_pct=0.0,
        peak_rss_mib=None,
        activator_cpu_us_per_req=act,
        qp_cpu_us_per_req=cpu - act,
    )


def test_ratios_and_report_put_ours_over_go(fake_binary: Path) -> None:
    args = _args(
        "--go-activator",
        str(fake_binary),
        "--targets",
        "activator-qp,activator-qp-ns,go-activator-qp",
    )
    targets = proxy.build_targets(args)
    by_id = {t.id: t for t in targets}
    by_id["activator-qp-cc0"].runs["1k"] = [_run(80.0, 40.0, rps=12000.0)]
    by_id["go-activator-qp-cc0"].runs["1k"] = [_run(160.0, 100.0, rps=6000.0)]
    by_id["activator-qp-ns-cc0"].runs["1k"] = [_run(78.0, 38.0, rps=12500.0)]
    by_id["go-activator-qp-cc10"].error = "failed to start: no namespace"
    workloads = [proxy.WORKLOADS["1k"]]
    ratios = proxy.compute_ratios(targets, workloads)
    entry = ratios["activator_vs_go"]["activator-qp-cc0"]["1k"]
    assert entry["activator_cpu"] == pytest.approx(0.4)
    assert entry["cpu_per_req"] == pytest.approx(0.5)
    assert entry["rps"] == pytest.approx(2.0)
    assert ratios["activator_vs_go"]["activator-qp-ns-cc0"]["1k"]["activator_cpu"] == pytest.approx(
        0.38
    )
    assert "activator-qp-cc10" not in ratios["activator_vs_go"]  # its Go partner failed
    args.duration, args.repeat, args.warmup = 1, 1, 0
    text = proxy.render(targets, workloads, ratios, [], args)
    assert "ours / Knative's Go activator" in text
    assert (
        "activator+qp cc=0 / Go activator+qp cc=0, 1k: activator CPU/req 40.0 / 100.0 us = 0.40"
        in text
    )
    assert "activator+qp netns cc=0 / Go activator+qp cc=0, 1k: activator CPU/req 38.0" in text


def test_with_a_compiled_build_the_go_activator_also_fronts_the_compiled_queue_proxy(
    fake_binary: Path, tmp_path: Path
) -> None:
    build = tmp_path / "compiled"
    build.mkdir()
    parser = argparse.ArgumentParser()
    proxy.add_arguments(parser)
    args = parser.parse_args(["--compiled", str(build), "--go-activator", str(fake_binary)])
    targets = proxy.build_targets(args)
    by_id = {t.id: t for t in targets}
    mypyc = [t for t in targets if t.id.startswith("go-activator-qp-mypyc")]
    assert [(t.id, t.cc, t.label) for t in mypyc] == [
        ("go-activator-qp-mypyc-cc0", 0, "Go activator+qp mypyc cc=0"),
        ("go-activator-qp-mypyc-cc10", 10, "Go activator+qp mypyc cc=10"),
    ]
    for t in mypyc:  # the same compiled queue-proxy as our compiled chain
        assert t.qp_argv == by_id[f"activator-qp-mypyc-cc{t.cc}"].qp_argv
        assert t.qp_argv[:2] == ["env", f"PYTHONPATH={build.resolve()}"]
    # Our compiled chains are compared with the Go chain in front of the compiled queue-proxy,
    # the interpreted ones with the other; without the compiled Go chain, with the other.
    ran = set(by_id)
    assert proxy.go_partner("activator-qp-mypyc-ns", 0, ran) == "go-activator-qp-mypyc-cc0"
    assert proxy.go_partner("activator-qp-ns", 10, ran) == "go-activator-qp-cc10"
    ran.discard("go-activator-qp-mypyc-cc0")
    assert proxy.go_partner("activator-qp-mypyc-ns", 0, ran) == "go-activator-qp-cc0"
    by_id["activator-qp-mypyc-ns-cc0"].runs["1k"] = [_run(50.0, 25.0, rps=20000.0)]
    by_id["go-activator-qp-cc0"].runs["1k"] = [_run(160.0, 100.0, rps=6000.0)]
    by_id["go-activator-qp-mypyc-cc0"].runs["1k"] = [_run(125.0, 100.0, rps=6500.0)]
    ratios = proxy.compute_ratios(targets, [proxy.WORKLOADS["1k"]])
    entry = ratios["activator_vs_go"]["activator-qp-mypyc-ns-cc0"]["1k"]
    assert entry["cpu_per_req"] == pytest.approx(50.0 / 125.0)  # against the compiled Go chain
    picked = proxy.build_targets(
        parser.parse_args(
            ["--compiled", str(build), "--go-activator", str(fake_binary), "--targets",
             "go-activator-qp-mypyc"]
        )
    )  # fmt: skip
    assert [t.id for t in picked] == ["go-activator-qp-mypyc-cc0", "go-activator-qp-mypyc-cc10"]

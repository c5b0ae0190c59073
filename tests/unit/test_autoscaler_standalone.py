"""knd-autoscaler's environment: defaults, config-autoscaler from a directory and variables,
and one message naming the variable for every bad value (exit code 1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoscaler.standalone import parse_env, read_config
from dataplane.envconfig import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    e = parse_env({"POD_NAME": "knd-autoscaler-7d9f-abc", "POD_NAMESPACE": "knd-system"})
    assert e.namespace == "" and e.pod_name == "knd-autoscaler-7d9f-abc"
    assert (e.lease_namespace, e.lease_name) == ("knd-system", "knd-autoscaler")
    assert (e.lease_duration, e.renew_deadline, e.retry_period) == (15.0, 10.0, 2.0)
    assert (e.stat_port, e.metrics_port, e.cluster_domain) == (8080, 9090, "cluster.local")
    assert e.config.stable_window == 60.0 and e.config.enable_scale_to_zero
    assert parse_env({}).pod_name  # the host name when POD_NAME is unset


def test_namespace_and_lease_settings() -> None:
    e = parse_env(
        {
            "KND_NAMESPACE": "apps",
            "KND_LEASE_NAME": "as",
            "KND_LEASE_DURATION": "30s",
            "KND_LEASE_RENEW_DEADLINE": "20s",
            "KND_LEASE_RETRY_PERIOD": "500ms",
            "KND_STAT_PORT": "18080",
        }
    )
    assert (e.namespace, e.lease_name, e.lease_duration, e.retry_period) == ("apps", "as", 30, 0.5)
    assert e.stat_port == 18080
    assert parse_env({"KND_WATCH_NAMESPACE": "web"}).namespace == "web"


def test_lease_namespace_from_the_service_account_directory(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("team-a\n")
    e = parse_env({"KND_SERVICE_ACCOUNT_DIR": str(tmp_path)})
    assert e.lease_namespace == "team-a"
    e = parse_env({"KND_SERVICE_ACCOUNT_DIR": str(tmp_path), "POD_NAMESPACE": "knd-system"})
    assert e.lease_namespace == "knd-system"  # the Downward API's value wins
    assert parse_env({"KND_SERVICE_ACCOUNT_DIR": str(tmp_path / "none")}).lease_namespace == (
        "knd-system"
    )


def test_config_from_directory_and_variables(tmp_path: Path) -> None:
    d = tmp_path / "config-autoscaler"
    d.mkdir()
    (d / "stable-window").write_text("30s\n")
    (d / "scale-to-zero-grace-period").write_text("10s")
    (d / "_example").write_text("# Knative's documentation block is ignored")
    (d / "..data").mkdir()  # ConfigMap volume internals
    cfg = read_config(
        {"KND_CONFIG_DIR": str(d), "KND_AUTOSCALER_SCALE_TO_ZERO_GRACE_PERIOD": "20s"}
    )
    assert cfg.stable_window == 30.0
    assert cfg.scale_to_zero_grace_period == 20.0  # the variable wins over the file
    e = parse_env({"KND_AUTOSCALER_MAX_SCALE_UP_RATE": "10", "KND_CONFIG_DIR": str(d)})
    assert e.config.max_scale_up_rate == 10 and e.config.stable_window == 30


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KND_NAMESPACE": "Not A Namespace"}, "KND_NAMESPACE"),
        ({"POD_NAME": ""}, "POD_NAME"),
        ({"KND_STAT_PORT": "http"}, "KND_STAT_PORT"),
        ({"KND_METRICS_PORT": "70000"}, "KND_METRICS_PORT"),
        ({"KND_LEASE_DURATION": "soon"}, "KND_LEASE_DURATION"),
        ({"KND_LEASE_DURATION": "5s"}, "KND_LEASE_DURATION"),  # not above the renew deadline
        ({"KND_LEASE_RENEW_DEADLINE": "1s"}, "KND_LEASE_RENEW_DEADLINE"),
        ({"KND_LEASE_RETRY_PERIOD": "0s"}, "KND_LEASE_RETRY_PERIOD"),
        ({"KND_KUBE_API_WAIT_SECONDS": "-1"}, "KND_KUBE_API_WAIT_SECONDS"),
        ({"KND_CONFIG_DIR": "/nonexistent/knd"}, "KND_CONFIG_DIR"),
        ({"KND_AUTOSCALER_STABLE_WINDOW": "1h30m"}, "KND_AUTOSCALER_STABLE_WINDOW"),
        ({"KND_AUTOSCALER_NO_SUCH_KEY": "1"}, "KND_AUTOSCALER_NO_SUCH_KEY"),
        ({"KND_AUTOSCALER_ENABLE_SCALE_TO_ZERO": "maybe"}, "KND_AUTOSCALER_ENABLE_SCALE_TO_ZERO"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_env(env)
    assert str(e.value).startswith(names), str(e.value)


def test_bad_file_value_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "stable-window").write_text("forever")
    with pytest.raises(ConfigError, match="KND_CONFIG_DIR") as e:
        read_config({"KND_CONFIG_DIR": str(tmp_path)})
    assert "stable-window" in str(e.value) and str(tmp_path) in str(e.value)


def test_the_entry_point_exits_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KND_", "KUBE"))}
    env["KND_LEASE_RETRY_PERIOD"] = "often"
    proc = subprocess.run(
        [sys.executable, "-m", "autoscaler.standalone"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("knd-autoscaler: KND_LEASE_RETRY_PERIOD"), lines
    # and without any Kubernetes configuration at all: one line saying so
    env.pop("KND_LEASE_RETRY_PERIOD")
    env["KUBERNETES_SERVICE_HOST"] = ""
    env["KND_STAT_PORT"] = "0"
    env["KND_METRICS_PORT"] = "0"
    proc = subprocess.run(
        [sys.executable, "-m", "autoscaler.standalone"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "KUBECONFIG is not set" in lines[0], lines


def test_unreachable_api_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KND_", "KUBE"))}
    env.update(
        KUBECONFIG=str(kubeconfig),
        KND_KUBE_API_WAIT_SECONDS="0",
        KND_STAT_PORT="0",
        KND_METRICS_PORT="0",
        KND_BIND_ADDRESS="127.0.0.1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "autoscaler.standalone"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("knd-autoscaler: Kubernetes API server not available after 0s"), last
    assert f"127.0.0.1:{port}" in last

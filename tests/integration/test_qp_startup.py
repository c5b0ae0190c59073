"""Start-up failures: one clear stderr line naming the setting, non-zero exit, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from .helpers import QP_BIN, QueueProxy, free_ports, knative_env


def run_qp(
    overrides: dict[str, str | None], *, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    serving, tls, admin, metrics, user_metrics, user = free_ports(6)
    env = knative_env(
        serving=serving,
        tls=tls,
        admin=admin,
        metrics=metrics,
        user_metrics=user_metrics,
        user_port=user,
    )
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run(
        [QP_BIN], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def assert_config_failure(proc: subprocess.CompletedProcess[str], setting: str) -> None:
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert setting in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


REQUIRED = [
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
]


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_required_variable(name: str) -> None:
    assert_config_failure(run_qp({name: None}), name)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONTAINER_CONCURRENCY", "abc"),
        ("CONTAINER_CONCURRENCY", "-1"),
        ("CONTAINER_CONCURRENCY", "1.5"),
        ("QUEUE_SERVING_PORT", "70000"),
        ("USER_PORT", "http"),
        ("REVISION_TIMEOUT_SECONDS", "soon"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "-5"),
        ("SERVING_READINESS_PROBE", "{not json"),
        ("SERVING_READINESS_PROBE", '{"exec":{"command":["true"]}}'),
        ("SERVING_READINESS_PROBE", '{"tcpSocket":{"port":"named"}}'),
        ("SERVING_READINESS_PROBE", '[{"tcpSocket":{}}]'),
        ("OBSERVABILITY_CONFIG", "{oops"),
        ("DRAIN_QUIET_PERIOD_SECONDS", "x"),
        ("QUEUE_MAX_HEADER_BYTES", "10"),
        ("SERVING_LOGGING_LEVEL", "verbose"),
    ],
)
def test_bad_value(name: str, value: str) -> None:
    assert_config_failure(run_qp({name: value}), name)


@pytest.mark.parametrize(
    "setting", ["QUEUE_SERVING_PORT", "QUEUE_ADMIN_PORT", "QUEUE_METRICS_PORT"]
)
def test_port_in_use(setting: str) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        proc = run_qp({setting: str(s.getsockname()[1])})
    assert_config_failure(proc, setting)


def test_user_metrics_port_in_use_with_prometheus() -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_qp(
            {
                "QUEUE_USER_METRICS_PORT": str(port),
                "OBSERVABILITY_CONFIG": '{"requestMetrics":{"protocol":"prometheus"}}',
            }
        )
    assert_config_failure(proc, "QUEUE_USER_METRICS_PORT")


async def test_runs_the_build_under_test(qp: QueueProxy) -> None:
    """`make test-compiled` points PYTHONPATH at the mypyc build: make sure the queue-proxy
    really runs the compiled engine there (and the interpreted one otherwise), so that the
    suite cannot silently test the wrong build."""
    with open(f"/proc/{qp.pid}/maps") as f:
        maps = f.read()
    compiled = "dataplane/proxy.cpython" in maps
    expect = "compiled" in os.environ.get("PYTHONPATH", "")
    assert compiled == expect, f"PYTHONPATH={os.environ.get('PYTHONPATH')!r}"

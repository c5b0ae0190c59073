"""OBSERVABILITY_CONFIG means the same to the queue-proxy and the activator: one parser
(dataplane/observability.py) with Knative's types and errors. Real processes; spans go to an
OTLP/HTTP collector on loopback."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.apps import otlp_collector
from tests.apps.autoscaler_stub import RunningStub
from tests.apps.otlp_collector import RunningCollector

from .activator_helpers import ACTIVATOR_BIN, PlatformFile, Pods, StartActivator, rev_headers
from .conftest import StartQP, make_client
from .helpers import free_ports

REV = "hello-00001"


@pytest.fixture
async def collector() -> AsyncIterator[RunningCollector]:
    c = await otlp_collector.start()
    yield c
    await c.close()


async def test_flat_configmap_keys_trace_in_both(
    tmp_path: Path,
    collector: RunningCollector,
    stub: RunningStub,
    start_activator: StartActivator,
    pods: Pods,
) -> None:
    """config-observability's flat keys turn tracing on in the queue-proxy as in the
    activator (they used to trace the activator only)."""
    env = {
        "OBSERVABILITY_CONFIG": json.dumps(
            {
                "tracing-protocol": "http/protobuf",
                "tracing-endpoint": collector.endpoint,
                "tracing-sampling-rate": "1",
            }
        ),
        "OTEL_BSP_SCHEDULE_DELAY": "20",
    }
    pod = await pods.start(**env)
    platform = PlatformFile(tmp_path / "platform.json")
    platform.revision(REV, cc=0, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url, **env)
    tid, pid = secrets.token_hex(16), secrets.token_hex(8)
    async with make_client(act.url()) as c:
        r = await c.get("/hello", headers={**rev_headers(REV), "traceparent": f"00-{tid}-{pid}-01"})
    assert r.status_code == 200
    scopes = {"knative.dev/serving/pkg/activator", "knative.dev/serving/pkg/queue"}
    await collector.wait_for(lambda s: {x.scope for x in s if x.trace_id == tid} >= scopes)


def _exit_line(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
    }
    p = subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"tracing": {"samplingRate": "0.5"}},
            "OBSERVABILITY_CONFIG: json: cannot unmarshal string into Go struct field "
            "Config.tracing.samplingRate of type float64",
        ),
        (
            {"tracing-protocol": "grpc", "tracing-sampling-rate": "0.5"},
            'OBSERVABILITY_CONFIG: tracing: endpoint should be set for protocol "grpc"',
        ),
        (
            {"tracing-sampling-rate": "half"},
            'OBSERVABILITY_CONFIG: failed to parse "tracing-sampling-rate": '
            'strconv.ParseFloat: parsing "half": invalid syntax',
        ),
    ],
)
async def test_bad_config_is_the_same_error_in_both(
    tmp_path: Path, start_qp: StartQP, config: dict[str, object], error: str
) -> None:
    raw = json.dumps(config)
    qp = await start_qp({"OBSERVABILITY_CONFIG": raw}, wait=False)
    assert await qp.wait_exit() == 1
    assert qp.stderr().strip().splitlines()[-1] == "queue-proxy: " + error
    platform = PlatformFile(tmp_path / "platform.json")
    platform.write()
    port, metrics = free_ports(2)
    rc, line = _exit_line(
        [ACTIVATOR_BIN],
        {
            "POD_NAME": "a",
            "POD_IP": "127.0.0.1",
            "ACTIVATOR_PLATFORM_FILE": str(platform.path),
            "ACTIVATOR_PORT": str(port),
            "ACTIVATOR_METRICS_PORT": str(metrics),
            "ACTIVATOR_H2C_PORT": "0",
            "OBSERVABILITY_CONFIG": raw,
        },
    )
    assert (rc, line) == (1, "activator: " + error)

"""knd-autoscaler as a process (``python -m autoscaler.standalone``) against the fake API server:
on SIGTERM it flushes the spans still batched before it exits, as Knative's binaries do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.apps import otlp_collector
from tests.fakekube import FakeKube

from .helpers import free_ports

pytestmark = pytest.mark.timeout(60)


async def test_spans_batched_at_sigterm_are_exported(tmp_path: Path) -> None:
    collector = await otlp_collector.start()
    try:
        async with FakeKube() as kube:
            config = tmp_path / "kubeconfig"
            config.write_text(json.dumps(kube.kubeconfig()))  # JSON is YAML
            stat_port, metrics_port = free_ports(2)
            obs = {"tracing": {"protocol": "http/protobuf", "endpoint": collector.endpoint}}
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "KUBECONFIG": str(config),
                "POD_NAME": "knd-autoscaler-0",
                "POD_NAMESPACE": "knd-system",
                "KND_STAT_PORT": str(stat_port),
                "KND_METRICS_PORT": str(metrics_port),
                "KND_BIND_ADDRESS": "127.0.0.1",
                "KND_KUBE_API_WAIT_SECONDS": "5",
                "OBSERVABILITY_CONFIG": json.dumps(obs),
                # a batch that would wait a minute: only the flush at exit can send it
                "OTEL_BSP_SCHEDULE_DELAY": "60000",
            }
            if os.environ.get("PYTHONPATH"):
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "autoscaler.standalone", env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{metrics_port}/healthz"
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                async with httpx.AsyncClient() as client:
                    while True:
                        assert proc.returncode is None, "knd-autoscaler exited at start-up"
                        try:
                            r = await client.get(url)
                            break
                        except httpx.TransportError:
                            assert loop.time() < deadline, "knd-autoscaler did not listen"
                            await asyncio.sleep(0.05)
                assert r.status_code == 200
                assert collector.spans == []  # batched, not sent
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 20) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            spans = await collector.wait_for(lambda s: len(s) > 0, timeout=5)
            assert any(s.kind == 2 for s in spans), spans  # the traced /healthz (SERVER)
    finally:
        await collector.close()

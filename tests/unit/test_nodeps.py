"""The sidecar's imports (Knative's ``pkg/queue/nodeps_test.go``): the queue-proxy imports no
aiohttp, kubernetes-asyncio, YAML or OpenTelemetry, nor the activator, autoscaler, platforms or
knd packages. A sidecar runs in every pod: each of those costs start-up time and memory."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "aiohttp",
    "kubernetes_asyncio",
    "yaml",
    "opentelemetry",
    "activator",
    "autoscaler",
    "platforms",
    "knd",
    "httpx",
)


def test_queue_proxy_imports_none_of_the_heavy_or_foreign_packages() -> None:
    code = (
        "import json, sys\n"
        "import queueproxy.cli, queueproxy.main, queueproxy.handler, queueproxy.readiness\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    modules = json.loads(out)
    assert "queueproxy.main" in modules and "dataplane.proxy" in modules  # the check ran
    bad = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
    assert bad == []

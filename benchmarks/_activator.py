"""Running an activator in a benchmark: its env, its JSON platform file, a stand-in autoscaler.

The activator reads revisions and endpoints from ``ACTIVATOR_PLATFORM_FILE`` (re-read within
100 ms of a change, see ``platforms/static.py``) and sends stats to ``AUTOSCALER_URL``; its
health is 500 until that websocket is up, which does not affect proxying.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _procs
from benchmarks._procs import ProcessSet

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "default"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "2097152"}


def activator_path(option: str | None = None) -> str:
    """The ``activator`` executable: --activator, else next to this Python, else on PATH."""
    if option:
        return option
    beside = Path(sys.executable).parent / "activator"
    if beside.exists():
        return str(beside)
    return shutil.which("activator") or str(beside)


def activator_env(
    port: int, metrics_port: int, autoscaler_port: int, platform_file: Path, **extra: str
) -> dict[str, str]:
    """The activator's environment, all on loopback, no drain quiet period (benchmarks stop it
    with SIGTERM), the allocator settings the queue-proxy runs with."""
    env = dict(os.environ)
    env.update(
        POD_NAME="bench-activator",
        POD_IP="127.0.0.1",
        ACTIVATOR_PORT=str(port),
        ACTIVATOR_METRICS_PORT=str(metrics_port),
        AUTOSCALER_URL=f"ws://127.0.0.1:{autoscaler_port}/",
        ACTIVATOR_PLATFORM_FILE=str(platform_file),
        ACTIVATOR_H2C_PORT="0",
        ACTIVATOR_BIND_ADDRESS="127.0.0.1",
        DRAIN_QUIET_PERIOD_SECONDS="0",
        **MALLOC_ENV,
    )
    env.update(extra)
    return env


def revision(
    name: str,
    host: str,
    cc: int,
    ready: Sequence[str] = (),
    not_ready: Sequence[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One revision entry of the platform file."""
    rev: dict[str, Any] = {
        "namespace": NAMESPACE,
        "name": name,
        "containerConcurrency": cc,
        "hosts": [host],
        "endpoints": {"ready": list(ready), "notReady": list(not_ready)},
    }
    rev.update(extra)
    return rev


def write_platform(path: Path, revisions: list[dict[str, Any]]) -> None:
    """Replace the platform file atomically (temp file + rename) so the activator never reads
    half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"revisions": revisions}, indent=1) + "\n")
    os.replace(tmp, path)


def start_autoscaler_sink(
    procs: ProcessSet, log_path: Path, prefix: Sequence[str] = ()
) -> tuple[int, Any]:
    """Start ``benchmarks.autoscaler_sink`` (``prefix`` e.g. a taskset command); return
    (port, process) once it listens."""
    port = _procs.free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [*prefix, sys.executable, "-m", "benchmarks.autoscaler_sink", "--port", str(port)]
    proc = procs.start(argv, env=env, log_path=log_path, cwd=ROOT)
    _procs.wait_listening(port, proc, 10.0, 0.01, log_path)
    return port, proc


_QUEUED = re.compile(
    rb'^kn_revision_request_queued\{[^}]*kn_revision_name="([^"]+)"\} (\S+)$', re.MULTILINE
)


async def queued(metrics_port: int, timeout: float = 2.0) -> dict[str, int]:
    """Requests waiting per revision name, from the activator's /metrics ({} if unreachable)."""

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
            return await reader.read(-1)
        finally:
            writer.close()

    try:
        body = await asyncio.wait_for(fetch(), timeout)
    except (OSError, TimeoutError):
        return {}
    return {m[1].decode(): int(float(m[2])) for m in _QUEUED.finditer(body)}

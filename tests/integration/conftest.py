"""Fixtures for the queue-proxy integration tests.

``queue-proxy`` runs as a real subprocess (the installed console script) with a complete Knative
environment on free loopback ports; the test upstream (:mod:`tests.apps.upstream`) runs inside
the test's event loop. Per-test env overrides: ``@pytest.mark.qp_env(NAME="value", ...)`` or
parametrizing the ``qp_env`` fixture; a value of ``None`` removes a variable.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.apps import upstream

from .helpers import QP_BIN, QueueProxy, free_ports, knative_env

if TYPE_CHECKING:
    from tests.apps.autoscaler_stub import RunningStub

    from .activator_helpers import PlatformFile, Pods, StartActivator

START_TIMEOUT = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qp_env(**env): environment overrides for the qp fixture")


async def _wait_listening(qp: QueueProxy, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    pending = list(ports)
    while pending:
        if qp.proc.poll() is not None:
            raise AssertionError(
                f"queue-proxy exited with {qp.proc.returncode} during start-up:\n{qp.stderr()}"
            )
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", pending[0]), 1.0)
        except (OSError, TimeoutError):
            if loop.time() >= deadline:
                raise AssertionError(
                    f"queue-proxy port {pending[0]} not accepting after {START_TIMEOUT}s:\n"
                    + qp.stderr()
                ) from None
            await asyncio.sleep(0.01)
            continue
        w.close()
        await w.wait_closed()
        pending.pop(0)


StartQP = Callable[..., Awaitable[QueueProxy]]


@pytest.fixture
async def start_qp(tmp_path: Path) -> AsyncIterator[StartQP]:
    """Factory: ``await start_qp(env_overrides, user_port=N, wait=True)``."""
    started: list[QueueProxy] = []

    async def start(
        overrides: Mapping[str, str | None] | None = None,
        *,
        user_port: int | None = None,
        wait: bool = True,
    ) -> QueueProxy:
        serving, tls, admin, metrics, user_metrics, spare = free_ports(6)
        env = knative_env(
            serving=serving,
            tls=tls,
            admin=admin,
            metrics=metrics,
            user_metrics=user_metrics,
            user_port=user_port if user_port is not None else spare,
        )
        for k, v in (overrides or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        n = len(started)
        out, err = tmp_path / f"qp{n}.stdout", tmp_path / f"qp{n}.stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                [QP_BIN], env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL
            )
        qp = QueueProxy(proc, env, out, err)
        started.append(qp)
        if wait:
            ports = [qp.port, qp.admin_port, qp.metrics_port]
            if '"prometheus"' in env.get("OBSERVABILITY_CONFIG", ""):
                ports.append(qp.user_metrics_port)
            await _wait_listening(qp, ports)
        return qp

    yield start
    for qp in started:
        qp.kill()
        # Shown by pytest only when the test fails.
        print(f"--- queue-proxy {qp.pid} rc={qp.proc.returncode} stderr (tail) ---")
        print("\n".join(qp.stderr().splitlines()[-40:]))


@pytest.fixture
async def app() -> AsyncIterator[upstream.RunningApp]:
    running = await upstream.start()
    yield running
    await running.close()


@pytest.fixture
def qp_env(request: pytest.FixtureRequest) -> dict[str, str | None]:
    marker = request.node.get_closest_marker("qp_env")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
async def qp(
    app: upstream.RunningApp, qp_env: dict[str, str | None], start_qp: StartQP
) -> QueueProxy:
    return await start_qp(qp_env, user_port=app.port)


def make_client(base_url: str, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        trust_env=False,
        timeout=kw.pop("timeout", 10.0),  # type: ignore[arg-type]
        limits=httpx.Limits(max_connections=400, max_keepalive_connections=400),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def client(qp: QueueProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(qp.url()) as c:
        yield c


# -- the activator's fixtures (imports inside: activator_helpers imports this module) ---------


@pytest.fixture
async def stub() -> AsyncIterator[RunningStub]:
    """A stand-in autoscaler: accepts the stats websocket and decodes the frames."""
    from tests.apps import autoscaler_stub

    s = await autoscaler_stub.start()
    yield s
    await s.close()


@pytest.fixture
async def start_activator(tmp_path: Path, stub: RunningStub) -> AsyncIterator[StartActivator]:
    """Factory: ``await start_activator(platform, autoscaler_url, **env)``; killed at teardown."""
    from .activator_helpers import activator_factory

    async for start in activator_factory(tmp_path):
        yield start


@pytest.fixture
async def pods(start_qp: StartQP) -> AsyncIterator[Pods]:
    from .activator_helpers import Pods

    p = Pods(start_qp)
    yield p
    await p.close()


@pytest.fixture
def platform(tmp_path: Path) -> PlatformFile:
    from .activator_helpers import PlatformFile

    return PlatformFile(tmp_path / "platform.json")

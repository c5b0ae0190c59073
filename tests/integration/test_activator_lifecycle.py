"""Activator health over its life (SPEC §2.7 transport, §2.8): the autoscaler connection and
the drain on SIGTERM, with real processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.apps import autoscaler_stub
from tests.apps.autoscaler_stub import RunningStub

from .activator_helpers import (
    ActivatorProc,
    PlatformFile,
    Pods,
    StartActivator,
    activator_factory,
    rev_headers,
    stub_stats,
)
from .conftest import make_client
from .helpers import eventually, free_ports

REV = "hello-00001"


@pytest.fixture
async def start_activator(tmp_path: Path) -> AsyncIterator[StartActivator]:
    async for start in activator_factory(tmp_path):
        yield start


async def health_is(act: ActivatorProc, status: int, body: bytes, timeout: float) -> None:
    async def check() -> bool:
        r = await act.health()
        return (r.status_code, r.content) == (status, body)

    await eventually(check, timeout=timeout, interval=0.01, what=f"health {status} {body!r}")


async def test_health_follows_the_autoscaler_connection(
    platform: PlatformFile, start_activator: StartActivator, pods: Pods
) -> None:
    """No autoscaler: health 500 `connection has not yet been established`, yet revisions with
    pods are served. The autoscaler comes up: health 200 and stats flow; it goes away (1012):
    500 again; it comes back: 200 again."""
    pod = await pods.start()
    assert pod.app is not None
    platform.revision(REV, cc=0, ready=[pod.dest])
    platform.write()
    (port,) = free_ports(1)
    act = await start_activator(platform, f"ws://127.0.0.1:{port}/", wait_connected=False)
    down = b"connection has not yet been established\n"
    stub: RunningStub | None = None
    try:
        r = await act.health()
        assert (r.status_code, r.content) == (500, down)
        assert await act.metric("kn_activator_stats_conn_reachable", peer="autoscaler") == 0
        async with make_client(act.url()) as c:
            r = await c.get("/hello", headers=rev_headers(REV))
            assert (r.status_code, r.text) == (200, "hello")
            # A long request keeps the revision's stats alive across the reconnection.
            held = asyncio.create_task(c.get("/gate", headers=rev_headers(REV)))
            try:
                await pod.app.state.wait_for(lambda s: s.in_flight == 1)
                stub = await autoscaler_stub.start(port=port)
                # Knative's dial back-off (100 ms x 1.3 per failed attempt, jitter up to 1.5 x)
                # has grown while no autoscaler listened: on a slow machine the next attempt
                # can be several seconds away.
                await health_is(act, 200, b"", timeout=15)
                assert await act.metric("kn_activator_stats_conn_reachable", peer="autoscaler") == 1
                # The 1 s stats now reach the autoscaler, with the request in flight.
                await eventually(
                    lambda: any(avg > 0.9 for avg, _ in stub_stats(stub, REV)),  # type: ignore[arg-type]
                    timeout=3,
                    what="a stat with the request in flight",
                )
                await stub.close()
                await health_is(act, 500, down, timeout=3)
                r = await c.get("/hello", headers=rev_headers(REV))
                assert (r.status_code, r.text) == (200, "hello")
                stub = await autoscaler_stub.start(port=port)
                await health_is(act, 200, b"", timeout=15)
                await eventually(
                    lambda: stub_stats(stub, REV),  # type: ignore[arg-type]
                    timeout=3,
                    what="stats after the reconnection",
                )
                errors = await act.metric("kn_activator_stats_conn_errors_total", peer="autoscaler")
                assert errors == 1
            finally:
                pod.app.state.gate.set()
                r = await asyncio.wait_for(held, 5)
            assert r.status_code == 200
    finally:
        act.kill()  # before the stub closes, so it does not race a reconnection
        if stub is not None:
            await stub.close()


async def test_sigterm_drains_without_losing_requests(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """SIGTERM under load: health fails at once (network probes still answer), requests in
    flight, waiting and new during the quiet period all succeed, then the servers stop
    accepting, wait for the last request, and the process exits 0."""
    quiet = 2.0
    busy, cold = await pods.start(), await pods.start()
    assert busy.app is not None and cold.app is not None
    platform.revision(REV, cc=10, ready=[busy.dest])
    platform.revision("cold-00001", cc=1)  # no pods yet
    platform.write()
    act = await start_activator(platform, stub.url, DRAIN_QUIET_PERIOD_SECONDS=str(quiet))
    loop = asyncio.get_running_loop()
    async with make_client(act.url(), timeout=20.0) as c, make_client(act.url()) as load:
        long = asyncio.create_task(c.get("/gate", headers=rev_headers(REV)))
        waiting = asyncio.create_task(c.get("/hello", headers=rev_headers("cold-00001")))
        tasks = [long, waiting]
        try:
            await busy.app.state.wait_for(lambda s: s.in_flight == 1)
            await eventually(
                lambda: act.queued("cold-00001"), timeout=5, what="the cold request queued"
            )
            t_term = loop.time()
            act.signal(signal.SIGTERM)
            await health_is(act, 500, b"received SIGTERM from kubelet\n", timeout=0.5)
            r = await load.get("/", headers={"K-Network-Probe": "activator"})
            assert (r.status_code, r.text) == (200, "activator")
            # New requests during the quiet period: served.
            results = await asyncio.gather(
                *(
                    load.get("/sleep", params={"ms": "20"}, headers=rev_headers(REV))
                    for _ in range(40)
                )
            )
            assert [x.status_code for x in results] == [200] * 40
            # A pod for the waiting request's revision arrives during the drain.
            platform.endpoints("cold-00001", ready=[cold.dest])
            platform.write()
            r = await asyncio.wait_for(waiting, 5)
            assert (r.status_code, r.text) == (200, "hello")
            assert loop.time() - t_term < quiet, "the checks above took the whole quiet period"
            assert act.running()

            # After the quiet period the listener closes, but the long request is still served.
            async def refused() -> bool:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", act.port)
                except OSError:
                    return True
                w.close()
                await w.wait_closed()
                return False

            await eventually(refused, timeout=quiet + 3, what="the listener closed")
            assert loop.time() - t_term >= quiet - 0.05
            assert act.running()
            assert not long.done()
            busy.app.state.gate.set()
            r = await asyncio.wait_for(long, 5)
            assert (r.status_code, r.text) == (200, "released")
        finally:
            busy.app.state.gate.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert await act.wait_exit(timeout=5) == 0
    assert "Traceback" not in act.stderr()

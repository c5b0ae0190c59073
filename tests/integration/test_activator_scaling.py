"""Activator, scale from zero and load balancing (SPEC §2.4, §2.5, §2.7), with real processes.

The activator and the queue-proxies are subprocesses; the apps and the autoscaler stub run in
the test's event loop. The queue-proxies run without a concurrency limit of their own (unless
a test says otherwise), so an app's most requests in flight is what the activator sent it.
"""

from __future__ import annotations

import asyncio

from tests.apps.autoscaler_stub import RunningStub

from .activator_helpers import (
    ActivatorProc,
    PlatformFile,
    Pods,
    StartActivator,
    apply,
    established_to,
    rev_headers,
    stub_stats,
)
from .conftest import make_client
from .helpers import eventually

REV = "hello-00001"


async def wait_queued(act: ActivatorProc, rev: str, n: int, timeout: float = 5.0) -> None:
    async def check() -> bool:
        return await act.queued(rev) == n

    await eventually(check, timeout=timeout, what=f"{n} requests queued for {rev}")


async def test_burst_at_zero_is_held_then_served_within_cc(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """The scale-from-zero path end to end: 200 requests wait at a revision with no pods, the
    autoscaler gets the immediate stat, a pod (not ready in the platform, its app not even
    started) is probed until its app listens, then every request is served and the pod never
    has more than CC of them at once."""
    cc, n = 5, 200
    platform.revision(REV, cc=cc)
    platform.write()
    act = await start_activator(platform, stub.url)
    loop = asyncio.get_running_loop()
    async with make_client(act.url(), timeout=30.0) as c:
        tasks = [
            asyncio.create_task(c.get("/sleep", params={"ms": "10"}, headers=rev_headers(REV)))
            for _ in range(n)
        ]
        try:
            # The first request is reported at once, before any tick could report it.
            await eventually(lambda: stub_stats(stub, REV), timeout=3, what="the immediate stat")
            assert stub_stats(stub, REV)[0] == (1.0, 1.0)
            await wait_queued(act, REV, n)
            t_all_queued = loop.time()
            assert not any(t.done() for t in tasks)
            # Requests waiting for a pod are demand: the 1 s stats carry them.
            await eventually(
                lambda: any(avg >= 0.9 * n for avg, _ in stub_stats(stub, REV)),
                timeout=3,
                what="a stat with the waiting requests",
            )

            pod = await pods.start(app=False, readiness=True)
            platform.endpoints(REV, not_ready=[pod.dest])
            platform.write()
            # The activator's probe waits at the queue-proxy for the app to come up.
            await eventually(
                lambda: established_to(pod.qp.port), timeout=5, what="the activator's probe"
            )
            assert not any(t.done() for t in tasks)
            app = await pod.start_app()
            done = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.status_code for r in done] == [200] * n
    assert all(r.text == "slept" for r in done)
    assert app.state.total == n
    assert app.state.max_in_flight <= cc
    assert app.state.max_in_flight == cc  # and the pod's capacity was used
    release_ms = (app.arrivals[0] - app.listening_at) * 1000
    print(
        f"\nrelease latency (app listening -> first held request at the app): {release_ms:.1f} ms"
    )
    print(f"  all {n} served {(loop.time() - app.listening_at) * 1000:.0f} ms after it listened")
    # Every response waited for capacity, and says how long.
    waits = [int(r.headers["knd-activator-wait-ms"]) for r in done]
    assert min(waits) >= (app.listening_at - t_all_queued) * 1000 - 1
    # The Kubernetes readiness catching up later changes nothing.
    platform.endpoints(REV, ready=[pod.dest])
    await apply(platform, act)
    async with make_client(act.url()) as c:
        r = await c.get("/hello", headers=rev_headers(REV))
    assert r.status_code == 200
    assert "knd-activator-wait-ms" not in r.headers  # served at once: no wait header
    labels = {"k8s_namespace_name": "default", "kn_revision_name": REV}
    assert await act.metric("knd_activator_request_wait_seconds_count", **labels) == n
    assert await act.queued(REV) == 0
    assert await act.metric("kn_revision_request_active", **labels) == 0


async def test_two_pods_share_the_load_each_within_cc(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    cc, n = 4, 80
    a, b = await pods.start(), await pods.start()
    platform.revision(REV, cc=cc, ready=[a.dest, b.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=30.0) as c:
        done = await asyncio.gather(
            *(c.get("/sleep", params={"ms": "20"}, headers=rev_headers(REV)) for _ in range(n))
        )
    assert [r.status_code for r in done] == [200] * n
    assert a.app is not None and b.app is not None
    sa, sb = a.app.state, b.app.state
    assert sa.total + sb.total == n
    assert sa.max_in_flight <= cc and sb.max_in_flight <= cc
    assert sa.total >= n // 4 and sb.total >= n // 4  # spread, not all on one pod
    assert sa.max_in_flight == cc and sb.max_in_flight == cc


async def test_removed_pod_stops_receiving_traffic(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """A pod that leaves the endpoints gets no new requests; the one it is serving completes."""
    a, b = await pods.start(), await pods.start()
    assert a.app is not None and b.app is not None
    platform.revision(REV, cc=10, ready=[a.dest, b.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=15.0) as c:
        # Round robin (CC > 3) puts one long request on each pod.
        held = [asyncio.create_task(c.get("/gate", headers=rev_headers(REV))) for _ in range(2)]
        await a.app.state.wait_for(lambda s: s.in_flight == 1)
        await b.app.state.wait_for(lambda s: s.in_flight == 1)
        platform.endpoints(REV, ready=[b.dest])
        await apply(platform, act)
        for _ in range(30):
            r = await c.get("/hello", headers=rev_headers(REV))
            assert r.status_code == 200
        assert a.app.state.per_path.get("/hello", 0) == 0
        assert b.app.state.per_path.get("/hello", 0) == 30
        # The request in flight on the removed pod was not cut.
        assert a.app.state.in_flight == 1
        a.app.state.gate.set()
        b.app.state.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*held), 10)
    assert [(r.status_code, r.text) for r in results] == [(200, "released")] * 2


async def test_pod_back_while_busy_keeps_cc(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """CC 1. Pod A serves a long request; A leaves the endpoints and comes back. A new request
    must go to B (A's only slot is still taken), not to A."""
    p1, p2 = await pods.start(), await pods.start()
    a, b = sorted((p1, p2), key=lambda p: p.dest)  # first available: A is tried first
    assert a.app is not None and b.app is not None
    platform.revision(REV, cc=1, ready=[a.dest, b.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=15.0) as c:
        held = asyncio.create_task(c.get("/gate", headers=rev_headers(REV)))
        try:
            await a.app.state.wait_for(lambda s: s.in_flight == 1)
            platform.endpoints(REV, ready=[b.dest])
            await apply(platform, act)
            platform.endpoints(REV, ready=[a.dest, b.dest])
            await apply(platform, act)
            # A passes its probe again at once (its queue-proxy has no readiness probe); make
            # sure it is a target again before the next request: a request to A's revision
            # served by A.
            r = await c.get("/hello", headers=rev_headers(REV))
            assert r.status_code == 200
            assert a.app.state.max_in_flight == 1, "A got a second request while busy"
            assert b.app.state.per_path.get("/hello") == 1
        finally:
            a.app.state.gate.set()
            r = await asyncio.wait_for(held, 10)
    assert r.status_code == 200


async def test_pod_turning_not_ready_is_probed_again(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """A pod that moves from ready to not ready leaves the targets until its queue-proxy
    passes a probe again (Knative's re-probe); requests meanwhile wait for it."""
    pod = await pods.start(
        SERVING_READINESS_PROBE='{"httpGet": {"path": "/ready", "port": 0, "host": '
        '"127.0.0.1"}, "periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1}'
    )
    assert pod.app is not None
    st = pod.app.state
    st.ready = False  # Kubernetes says ready, the queue-proxy does not (yet)
    platform.revision(REV, cc=2, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=15.0) as c:
        first = asyncio.create_task(c.get("/hello", headers=rev_headers(REV)))
        try:
            await wait_queued(act, REV, 1)
            await st.wait_for(lambda s: s.ready_hits >= 2)
            assert not first.done()
            assert st.total == 0
            st.ready = True
            r = await asyncio.wait_for(first, 5)
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        assert r.status_code == 200
        st.ready = False
        hits = st.ready_hits
        platform.endpoints(REV, not_ready=[pod.dest])
        await apply(platform, act)
        waiting = asyncio.create_task(c.get("/hello", headers=rev_headers(REV)))
        try:
            await wait_queued(act, REV, 1)
            # Probed again (and again: it fails while the app says not ready).
            await st.wait_for(lambda s: s.ready_hits >= hits + 2)
            assert not waiting.done()
            assert st.per_path["/hello"] == 1
            st.ready = True
            r = await asyncio.wait_for(waiting, 5)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    assert r.status_code == 200
    assert st.per_path["/hello"] == 2
    assert "knd-activator-wait-ms" in r.headers


async def test_cc_zero_has_no_per_pod_limit(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """CC 0: every request goes through at once, spread over the pods (power of two choices)."""
    n = 40
    a, b = await pods.start(), await pods.start()
    assert a.app is not None and b.app is not None
    platform.revision(REV, cc=0, ready=[a.dest, b.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=15.0) as c:
        tasks = [asyncio.create_task(c.get("/gate", headers=rev_headers(REV))) for _ in range(n)]
        try:
            await eventually(
                lambda: a.app.state.in_flight + b.app.state.in_flight == n,  # type: ignore[union-attr]
                timeout=10,
                what="all requests at the pods at once",
            )
            assert min(a.app.state.in_flight, b.app.state.in_flight) >= n // 4
            a.app.state.gate.set()
            b.app.state.gate.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            a.app.state.gate.set()
            b.app.state.gate.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.status_code for r in done] == [200] * n


async def test_stats_report_concurrency_each_second(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """The 1 s stats carry the revision's concurrency through the activator; the first request
    is counted once (immediate stat, then the adjusted tick); an idle revision is dropped, so
    its next request is reported at once again."""
    n = 5
    pod = await pods.start()
    assert pod.app is not None
    platform.revision(REV, cc=0, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=15.0) as c:
        tasks = [asyncio.create_task(c.get("/gate", headers=rev_headers(REV))) for _ in range(n)]
        try:
            await pod.app.state.wait_for(lambda s: s.in_flight == n)

            def full_window() -> bool:
                return any(n - 0.05 <= avg <= n + 1e-6 for avg, _ in stub_stats(stub, REV)[1:])

            await eventually(full_window, timeout=4, what=f"a 1 s stat with concurrency {n}")
            pod.app.state.gate.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            pod.app.state.gate.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert [r.status_code for r in done] == [200] * n
        stats = stub_stats(stub, REV)
        assert stats[0] == (1.0, 1.0)
        # Idle for a whole period: reported as (0, 0), then forgotten.
        await eventually(
            lambda: stub_stats(stub, REV)[-1] == (0.0, 0.0), timeout=4, what="an idle stat"
        )
        stats = stub_stats(stub, REV)
        assert sum(count for _, count in stats) == n  # each request counted exactly once
        assert all(avg <= n + 1e-6 for avg, _ in stats)
        before = len(stats)
        r = await c.get("/hello", headers=rev_headers(REV))
        assert r.status_code == 200
    await eventually(
        lambda: len(stub_stats(stub, REV)) > before, timeout=3, what="the next immediate stat"
    )
    assert stub_stats(stub, REV)[before] == (1.0, 1.0)
    for batch in stub.state.batches:
        for m in batch:
            assert m.stat is not None
            assert m.stat.pod_name == "activator-test-0"
            assert m.stat.average_proxied_concurrent_requests == 0
            assert m.stat.proxied_request_count == 0


async def test_activator_uses_its_share_of_the_pods(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Activator 0 of 2, two pods, CC 1: it sends to the first pod only (SPEC §2.10)."""
    p1, p2 = await pods.start(), await pods.start()
    a, b = sorted((p1, p2), key=lambda p: p.dest)
    assert a.app is not None and b.app is not None
    platform.revision(REV, cc=1, ready=[a.dest, b.dest], activators={"index": 0, "count": 2})
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=15.0) as c:
        tasks = [asyncio.create_task(c.get("/gate", headers=rev_headers(REV))) for _ in range(2)]
        try:
            await a.app.state.wait_for(lambda s: s.in_flight == 1)
            await wait_queued(act, REV, 1)
            assert b.app.state.total == 0
            # Alone now: both pods.
            platform.revision(
                REV, cc=1, ready=[a.dest, b.dest], activators={"index": 0, "count": 1}
            )
            platform.write()
            await b.app.state.wait_for(lambda s: s.in_flight == 1)
            a.app.state.gate.set()
            b.app.state.gate.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            a.app.state.gate.set()
            b.app.state.gate.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.status_code for r in done] == [200, 200]

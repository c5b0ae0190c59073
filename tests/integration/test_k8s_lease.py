"""Leader election on a Lease against the fake API server, with the real kubernetes-asyncio
client and an injected clock: acquire, renew, expiry takeover, lost leadership, release,
races, step-down after the renew deadline, RBAC errors, and the run loop handing over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient

from platforms.kubernetes.api import LEASES, KubeAPI, KubeError, KubeForbidden
from platforms.kubernetes.lease import LeaderElector
from tests.fakekube import FakeKube

NS, NAME = "knd-system", "knd-autoscaler"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        yield k


@pytest.fixture
async def api(kube: FakeKube) -> AsyncIterator[KubeAPI]:
    api = KubeAPI(ApiClient(kube.configuration()))
    yield api
    await api.close()


def elector(api: KubeAPI, who: str, clock: Clock, events: list[str]) -> LeaderElector:
    return LeaderElector(
        api,
        NS,
        NAME,
        who,
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
        clock=clock,
        on_started=lambda: events.append(f"{who} started"),
        on_stopped=lambda: events.append(f"{who} stopped"),
    )


def holder(kube: FakeKube) -> str | None:
    spec = kube.get("leases", NS, NAME)["spec"]
    h = spec.get("holderIdentity")
    return h if isinstance(h, str) else None


async def test_acquire_renew_takeover_and_lost(kube: FakeKube, api: KubeAPI) -> None:
    clock, events = Clock(), []
    a, b = elector(api, "a", clock, events), elector(api, "b", clock, events)

    assert await a.try_acquire_or_renew() is True  # creates the Lease
    assert holder(kube) == "a" and a.is_leader
    lease = kube.get("leases", NS, NAME)
    assert lease["spec"]["leaseDurationSeconds"] == 15
    assert lease["spec"]["renewTime"].endswith("Z") and lease["spec"]["leaseTransitions"] == 0
    assert await b.try_acquire_or_renew() is False
    assert b.leader == "a" and not b.is_leader

    clock.t += 5
    first_renew = lease["spec"]["renewTime"]
    assert await a.try_acquire_or_renew() is True  # renew
    renewed = kube.get("leases", NS, NAME)["spec"]
    assert renewed["renewTime"] != first_renew
    assert renewed["acquireTime"] == lease["spec"]["acquireTime"]

    clock.t += 1  # b sees the renewal: expiry counts from here (t0 + 6)
    assert await b.try_acquire_or_renew() is False
    clock.t += 14.5  # a has been silent for 15.5 s, but b observed it 14.5 s ago
    assert await b.try_acquire_or_renew() is False
    clock.t += 1  # now 15.5 s since b observed the record: expired
    assert await b.try_acquire_or_renew() is True
    spec = kube.get("leases", NS, NAME)["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1

    # a comes back (it was stuck, say): it finds b's valid lease and learns it lost
    assert await a.try_acquire_or_renew() is False
    assert not a.is_leader and a.leader == "b"
    assert events == ["a started", "b started", "a stopped"]


async def test_release_hands_over_without_waiting(kube: FakeKube, api: KubeAPI) -> None:
    clock, events = Clock(), []
    a, b = elector(api, "a", clock, events), elector(api, "b", clock, events)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert await a.release() is True
    spec = kube.get("leases", NS, NAME)["spec"]
    assert spec.get("holderIdentity") is None and spec["leaseDurationSeconds"] == 1
    assert not a.is_leader
    assert await b.try_acquire_or_renew() is True  # no expiry wait (same clock instant)
    assert events == ["a started", "a stopped", "b started"]
    assert await a.release() is False  # not the leader: nothing written
    assert holder(kube) == "b"


async def test_a_race_for_an_expired_lease_has_one_winner(kube: FakeKube, api: KubeAPI) -> None:
    clock, events = Clock(), []
    old = elector(api, "old", clock, events)
    a, b = elector(api, "a", clock, events), elector(api, "b", clock, events)
    assert await old.try_acquire_or_renew()
    assert not await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.t += 16
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True]
    winner = "a" if results[0] else "b"
    assert holder(kube) == winner
    conflicts = [r for r in kube.requests_for("update", "leases")]
    assert len(conflicts) >= 2  # both wrote; the stale resourceVersion lost with 409


async def test_leader_steps_down_after_the_renew_deadline(kube: FakeKube, api: KubeAPI) -> None:
    clock, events = Clock(), []
    a = elector(api, "a", clock, events)
    assert await a.try_acquire_or_renew()
    kube.fail("update", "leases", status=500, times=100)
    clock.t += 2
    with pytest.raises(
        KubeError, match=r"update leases\.coordination\.k8s\.io in namespace knd-system"
    ):
        await a.try_acquire_or_renew()
    assert a.is_leader  # 2 s without a renewal: still within the 10 s deadline
    clock.t += 8
    with pytest.raises(KubeError):
        await a.try_acquire_or_renew()
    assert not a.is_leader  # 10 s: steps down before anybody else may take over (15 s)
    assert events == ["a started", "a stopped"]


async def test_forbidden_lease_names_verb_and_resource(kube: FakeKube, api: KubeAPI) -> None:
    clock, events = Clock(), []
    kube.forbid("get", "leases")
    a = elector(api, "a", clock, events)
    with pytest.raises(KubeError) as e:
        await a.try_acquire_or_renew()
    msg = str(e.value)
    assert "forbidden" in msg and "get leases" in msg and "coordination.k8s.io" in msg
    assert e.value.status == 403
    kube.allow("get", "leases")
    kube.forbid("create", "leases")
    with pytest.raises(KubeForbidden, match="cannot create leases"):
        await a.try_acquire_or_renew()
    assert events == []


async def test_run_loop_hands_over_on_shutdown(kube: FakeKube, api: KubeAPI) -> None:
    """Real time, short periods: the leader's run task is cancelled (shutdown), it releases,
    and the standby's loop takes over at its next retry instead of after the lease duration."""
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    def make(who: str) -> LeaderElector:
        return LeaderElector(
            api,
            NS,
            NAME,
            who,
            lease_duration=30,  # far longer than the test: only a release can hand over
            renew_deadline=20,
            retry_period=0.05,
            on_started=started[who].set,
        )

    a, b = make("a"), make("b")
    ta = asyncio.create_task(a.run())
    await asyncio.wait_for(started["a"].wait(), 5)
    tb = asyncio.create_task(b.run())
    while b.leader != "a":  # b has looked at least once
        await asyncio.sleep(0.01)
    assert not b.is_leader
    ta.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ta
    assert holder(kube) is None
    await asyncio.wait_for(started["b"].wait(), 5)
    assert holder(kube) == "b"
    tb.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tb
    assert holder(kube) is None


async def test_a_leader_stuck_on_a_hung_api_steps_down(kube: FakeKube, api: KubeAPI) -> None:
    """Each attempt is bounded by half the renew deadline, so a leader whose requests hang
    notices (on its clock) that it has not renewed for the renew deadline and steps down."""
    clock, events = Clock(), []
    a = elector(api, "a", clock, events)
    a.renew_deadline, a.retry_period = 0.2, 0.01  # the attempt bound: 0.1 s of real time
    assert await a.try_acquire_or_renew()

    class Hung:
        host = api.host

        async def get(self, *args: object, **kw: object) -> dict[str, object]:
            await asyncio.Event().wait()  # never answers
            raise AssertionError

    a.api = Hung()  # type: ignore[assignment]

    async def sleep(_d: float) -> None:
        clock.t += 0.1  # each retry period moves the injected clock on
        await asyncio.sleep(0)

    a.sleep = sleep
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(_until(lambda: not a.is_leader), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["a started", "a stopped"]
    assert holder(kube) == "a"  # nothing written: it expires, and others take over then


async def _until(cond: object) -> None:
    assert callable(cond)
    while not cond():
        await asyncio.sleep(0.01)


async def test_a_lease_without_acquire_time_is_renewed_and_released(
    kube: FakeKube, api: KubeAPI
) -> None:
    """A Lease written by another tool may carry no acquireTime; renewing or releasing it
    must not send ``acquireTime: ""`` (the API server answers 400, parsing time "")."""
    kube.create(
        "leases",
        {
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {
                "holderIdentity": "a",
                "leaseDurationSeconds": 15,
                "renewTime": "2027-01-15T08:00:00.000000Z",
            },
        },
    )
    clock, events = Clock(), []
    a = elector(api, "a", clock, events)
    assert await a.try_acquire_or_renew() is True  # ours already: a renewal
    [renew] = kube.requests_for("update", "leases")
    assert renew.body["spec"]["acquireTime"] is None
    assert kube.get("leases", NS, NAME)["spec"].get("acquireTime") is None
    assert await a.release() is True
    assert holder(kube) is None  # the release was written, not refused
    assert kube.requests_for("update", "leases")[-1].body["spec"]["acquireTime"] is None


async def test_fakekube_refuses_an_empty_micro_time(kube: FakeKube, api: KubeAPI) -> None:
    """What the real API server does with ``acquireTime: ""`` (so the test above can fail)."""
    with pytest.raises(KubeError) as e:
        await api.create(
            LEASES,
            NS,
            {
                "metadata": {"name": NAME},
                "spec": {"holderIdentity": "x", "acquireTime": ""},
            },
        )
    assert e.value.status == 400 and 'parsing time ""' in str(e.value)
    with pytest.raises(KubeError) as e:  # a MicroTime has six fraction digits
        await api.create(
            LEASES, NS, {"metadata": {"name": NAME}, "spec": {"renewTime": "2027-01-15T08:00Z"}}
        )
    assert e.value.status == 400
    await api.create(
        LEASES,
        NS,
        {"metadata": {"name": NAME}, "spec": {"acquireTime": None, "renewTime": None}},
    )


async def test_release_has_its_own_short_deadline(kube: FakeKube) -> None:
    """With the API server hung, a leader's shutdown (run cancelled, then release) ends after
    ``release_timeout``, not after the 30 s request timeout: the kubelet's grace period for the
    autoscaler is 30 s (deploy/standalone/autoscaler.yaml)."""
    api = KubeAPI(ApiClient(kube.configuration()), request_timeout=30.0)
    try:
        started = asyncio.Event()
        a = LeaderElector(
            api,
            NS,
            NAME,
            "a",
            lease_duration=30,
            renew_deadline=20,
            retry_period=0.05,
            release_timeout=0.2,
            on_started=started.set,
        )
        assert a.release_timeout == 0.2
        task = asyncio.create_task(a.run())
        await asyncio.wait_for(started.wait(), 5)
        kube.hang("get", "leases")
        kube.hang("update", "leases")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 5)  # 30 s without the deadline
        assert task.done() and not a.is_leader
        assert holder(kube) == "a"  # not released: it expires after its duration
    finally:
        kube.unhang()
        await api.close()


def test_the_default_release_deadline_fits_the_grace_period() -> None:
    import yaml

    from platforms.kubernetes.lease import RELEASE_TIMEOUT
    from tests.unit.test_deploy_manifests import DEPLOY

    docs = yaml.safe_load_all((DEPLOY / "standalone" / "autoscaler.yaml").read_text())
    [dep] = [d for d in docs if d and d["kind"] == "Deployment"]
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # the release is the only API call on the way out; leave most of the grace period
    assert grace / 4 >= RELEASE_TIMEOUT

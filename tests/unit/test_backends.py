"""activator.backends: which pods take traffic, and the ClusterIP fallback (SPEC §2.4).

The probe is a scripted coroutine (no sockets): per dest, a result to return (True healthy,
None no response / 502 / 503, False any other answer). Waits poll the recorded state with a
bounded number of loop turns; the backends' own pauses are a few milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from activator.backends import RevisionBackends
from platforms.base import Endpoints

P1, P2 = "10.0.0.1:8012", "10.0.0.2:8012"
CLUSTER = "10.96.0.7:80"


class Probes:
    """Scripted probe results per dest, and every call made."""

    def __init__(self, results: dict[str, bool | None]) -> None:
        self.results = results
        self.calls: list[str] = []

    async def __call__(self, dest: str, timeout: float) -> bool | None:
        self.calls.append(dest)
        await asyncio.sleep(0)
        return self.results.get(dest, None)


class Seen:
    def __init__(self) -> None:
        self.healthy: list[list[str]] = []
        self.cluster: list[tuple[str | None, int]] = []


def make(probes: Probes, seen: Seen, mode: str = "auto") -> RevisionBackends:
    return RevisionBackends(
        ("default", "r-00001"),
        seen.healthy.append,
        probe=probes,
        frequency=0.002,
        timeout=0.1,
        mesh_mode=mode,
        on_cluster=lambda dest, n: seen.cluster.append((dest, n)),
    )


async def until(cond: Callable[[], bool], what: str, turns: int = 2000) -> None:
    for _ in range(turns):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


async def test_auto_falls_back_to_the_cluster_ip_when_every_pod_fails_like_a_mesh() -> None:
    probes, seen = Probes({P1: None, P2: None, CLUSTER: True}), Seen()
    b = make(probes, seen)
    b.update(Endpoints(ready=(P1, P2), cluster=CLUSTER))
    await until(lambda: seen.cluster == [(CLUSTER, 2)], "the ClusterIP in use")
    assert b.cluster_healthy and not b.addressable
    pods_probed = sum(1 for d in probes.calls if d != CLUSTER)
    b.update(Endpoints(ready=(P1,), cluster=CLUSTER))  # sticky: K8s-ready count only
    assert seen.cluster[-1] == (CLUSTER, 1)
    for _ in range(20):
        await asyncio.sleep(0.002)
    assert sum(1 for d in probes.calls if d != CLUSTER) == pods_probed  # pods not probed again
    b.update(Endpoints(cluster=CLUSTER))  # scaled to zero
    assert seen.cluster[-1] == (None, 0) and not b.cluster_healthy
    b.close()


async def test_auto_keeps_pods_when_a_failure_is_not_a_mesh_one() -> None:
    probes, seen = Probes({P1: None, P2: False, CLUSTER: True}), Seen()
    b = make(probes, seen)
    b.update(Endpoints(ready=(P1, P2), cluster=CLUSTER))
    await until(lambda: probes.calls.count(P2) >= 3, "several rounds of pod probes")
    assert CLUSTER not in probes.calls and seen.cluster == []
    b.close()


async def test_auto_keeps_pods_while_one_is_healthy_and_without_a_cluster_ip() -> None:
    probes, seen = Probes({P1: None, P2: True, CLUSTER: True}), Seen()
    b = make(probes, seen)
    b.update(Endpoints(ready=(P1, P2), cluster=CLUSTER))
    await until(lambda: seen.healthy == [[P2]], "P2 healthy")
    await until(lambda: probes.calls.count(P1) >= 3, "P1 probed again")
    assert CLUSTER not in probes.calls
    b.close()
    probes, seen = Probes({P1: None, CLUSTER: True}), Seen()
    b = make(probes, seen)
    b.update(Endpoints(ready=(P1,)))  # no ClusterIP known
    await until(lambda: probes.calls.count(P1) >= 3, "P1 probed again")
    assert seen.cluster == []
    b.close()


async def test_enabled_never_probes_pods() -> None:
    probes, seen = Probes({P1: True, CLUSTER: True}), Seen()
    b = make(probes, seen, "enabled")
    b.update(Endpoints(ready=(P1,), cluster=CLUSTER))
    await until(lambda: seen.cluster == [(CLUSTER, 1)], "the ClusterIP in use")
    assert probes.calls == [CLUSTER] and seen.healthy == []
    b.close()


async def test_disabled_trusts_ready_pods_and_never_uses_the_cluster_ip() -> None:
    probes, seen = Probes({P1: None, P2: None, CLUSTER: True}), Seen()
    b = make(probes, seen, "disabled")
    b.update(Endpoints(ready=(P1,), not_ready=(P2,), cluster=CLUSTER))
    assert seen.healthy == [[P1]]  # ready by Kubernetes: healthy without a probe
    await until(lambda: probes.calls.count(P2) >= 3, "the not-ready pod probed")
    assert CLUSTER not in probes.calls and seen.cluster == [] and P1 not in probes.calls
    b.close()


def test_unknown_mesh_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mesh mode"):
        RevisionBackends(("default", "r"), lambda dests: None, mesh_mode="sometimes")

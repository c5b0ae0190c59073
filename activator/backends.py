"""Which pods of a revision may take traffic: probe-verified backends (Knative SPEC §2.4).

A pod becomes a target only after its queue-proxy answers ``GET /healthz`` with
``K-Network-Probe: queue`` and ``User-Agent: Knative-Activator-Probe`` by ``200 queue``. Pods
Kubernetes still lists as not ready may take traffic once they pass (Knative's probe
optimisation). A pod that moves from ready to not ready is dropped and probed again; pods that
leave the endpoints are dropped.

Two probing paces: while requests wait for the revision, every pending pod keeps one
*long-poll* probe in flight (the queue-proxy holds it while its own aggressive readiness check
polls the app, and answers the moment the app is up), re-issued within ``eager_retry`` on
failure; otherwise Knative's pace: a round every ``frequency`` with ``timeout`` per probe.

The ClusterIP fallback (config-network's ``mesh-compatibility-mode``): in ``auto`` (the default)
when no pod is healthy and every pod's last probe failed the way a mesh makes it fail (no
response, 502 or 503), the private service's ClusterIP is probed once; if it answers, traffic
goes there from then on (sticky: pods are no longer probed) with a capacity of CC per K8s-ready
pod. ``enabled``: always the ClusterIP, pods never probed; ``disabled``: never the ClusterIP,
and pods Kubernetes lists as ready are trusted without a probe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from dataplane import httpget
from platforms.base import Endpoints, RevisionKey

__all__ = ["RevisionBackends", "probe_queue_proxy"]

log = logging.getLogger("activator.backends")

# A probe's result: True healthy; None no response, 502 or 503 (what a mesh in the way gives);
# False any other answer (the pod is reachable: no ClusterIP fallback).
ProbeFn = Callable[[str, float], Awaitable[bool | None]]
MESH_MODES = ("auto", "enabled", "disabled")


_PROBE_HEADERS = b"K-Network-Probe: queue\r\nUser-Agent: Knative-Activator-Probe\r\n"


async def probe_queue_proxy(dest: str, timeout: float) -> bool | None:
    """One activator probe of a queue-proxy at ``ip:port``: True on ``200`` + body ``queue``,
    None when nothing answered or the answer was 502 or 503, else False."""
    host, _, port = dest.rpartition(":")
    try:
        r = await httpget.get(
            host.strip("[]"), int(port), "/healthz", timeout, headers=_PROBE_HEADERS,
            authority=dest, max_body=64,
        )  # fmt: skip
    except (httpget.GetError, ValueError):
        return None
    if r.status == 200 and r.complete and r.body == b"queue":
        return True
    return None if r.status in (502, 503) else False


class RevisionBackends:
    """Tracks one revision's endpoints and reports its healthy pods through ``on_update``."""

    def __init__(
        self,
        key: RevisionKey,
        on_update: Callable[[list[str]], None],
        *,
        probe: ProbeFn = probe_queue_proxy,
        frequency: float = 0.2,
        timeout: float = 0.3,
        eager_timeout: float = 10.0,
        eager_retry: float = 0.005,
        mesh_mode: str = "auto",
        on_cluster: Callable[[str | None, int], None] | None = None,
    ) -> None:
        if mesh_mode not in MESH_MODES:
            raise ValueError(f"mesh mode must be one of {', '.join(MESH_MODES)}: {mesh_mode!r}")
        self.key = key
        self.on_update = on_update
        self.mesh_mode = mesh_mode
        self.on_cluster = on_cluster  # (ClusterIP dest or None, K8s-ready count)
        self.cluster = ""  # the private service's ClusterIP:port, as the platform says
        self.cluster_healthy = False
        self.addressable = mesh_mode != "enabled"  # pods probed one by one (sticky once off)
        self._mesh_failed: dict[str, bool] = {}  # latest failed probe per pod: mesh-like?
        self._cluster_probe: asyncio.Task[None] | None = None
        self.probe = probe
        self.frequency = frequency
        self.timeout = timeout
        self.eager_timeout = eager_timeout
        self.eager_retry = eager_retry
        self.ready: frozenset[str] = frozenset()
        self.not_ready: frozenset[str] = frozenset()
        self.healthy: set[str] = set()
        self.demand = False
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._closed = False

    @property
    def pods(self) -> frozenset[str]:
        return self.ready | self.not_ready

    def update(self, eps: Endpoints) -> None:
        """New endpoints for the revision (Knative's checkDests)."""
        prev_ready = self.ready
        self.ready = frozenset(eps.ready)
        self.not_ready = frozenset(eps.not_ready)
        self.cluster = eps.cluster
        pods = self.pods
        for dest in list(self._mesh_failed):
            if dest not in pods:
                del self._mesh_failed[dest]
        if not pods:  # scaled to zero: no ClusterIP either until pods come back
            if self.cluster_healthy:
                self.cluster_healthy = False
                self._report_cluster()
        elif self.cluster_healthy:
            self._report_cluster()  # Dests = the K8s-ready count behind the ClusterIP
            return
        if not self.addressable or self.mesh_mode == "enabled":
            self._maybe_probe_cluster()
            return
        if self.mesh_mode == "disabled":
            # Pods Kubernetes lists as ready are trusted without a probe.
            changed = bool(self.ready - self.healthy)
            self.healthy |= self.ready
        else:
            changed = False
        for dest in (prev_ready & self.not_ready) | (self.healthy - pods):
            if dest in self.healthy:
                self.healthy.discard(dest)  # went not-ready (probe again) or left
                changed = True
        for dest in list(self._probes):
            if dest not in pods:
                self._probes.pop(dest).cancel()
                self._wake.pop(dest, None)
        if changed:
            self._publish()
        self._start_probes()

    def set_demand(self, demand: bool) -> None:
        """Requests are (or are no longer) waiting: switch probing pace."""
        if demand == self.demand:
            return
        self.demand = demand
        if demand:
            for ev in self._wake.values():
                ev.set()  # cut the slow-pace pause short
            self._start_probes()

    def close(self) -> None:
        self._closed = True
        for t in self._probes.values():
            t.cancel()
        self._probes.clear()
        self._wake.clear()
        if self._cluster_probe is not None:
            self._cluster_probe.cancel()
            self._cluster_probe = None

    # -- ClusterIP fallback ----------------------------------------------------------------
    def _report_cluster(self) -> None:
        if self.on_cluster is not None:
            dest = self.cluster if self.cluster_healthy and self.cluster else None
            self.on_cluster(dest, len(self.ready))

    def _maybe_probe_cluster(self) -> None:
        """Probe the ClusterIP (one task at a time) when the mode and the pods' failures say
        so: ``enabled``, or ``auto`` with no healthy pod and every pod's last probe mesh-like."""
        if (
            self._closed
            or self.cluster_healthy
            or not self.cluster
            or not self.ready
            or self.mesh_mode == "disabled"
            or self._cluster_probe is not None
        ):
            return
        if self.addressable and self.mesh_mode == "auto":
            pods = self.pods
            if self.healthy or not all(self._mesh_failed.get(d, False) for d in pods):
                return
        self._cluster_probe = asyncio.get_running_loop().create_task(self._probe_cluster())

    async def _probe_cluster(self) -> None:
        try:
            while not self._closed and self.cluster and self.ready and not self.cluster_healthy:
                ok = await self.probe(self.cluster, self.timeout)  # close() cancels this task
                if ok:
                    # Sticky for the revision's lifetime here, as Knative's watcher: pods are
                    # not probed one by one any more.
                    self.addressable = False
                    self.cluster_healthy = True
                    for t in self._probes.values():
                        t.cancel()
                    self._probes.clear()
                    self._wake.clear()
                    if self.healthy:
                        self.healthy.clear()
                        self._publish()
                    log.info(
                        "%s/%s: pods cannot be probed directly; using the ClusterIP %s",
                        self.key[0],
                        self.key[1],
                        self.cluster,
                    )
                    self._report_cluster()
                    return
                if self.addressable and self.mesh_mode == "auto":
                    return  # one try per round of failed pod probes
                await asyncio.sleep(self.frequency)
        finally:
            if self._cluster_probe is asyncio.current_task():
                self._cluster_probe = None

    def _publish(self) -> None:
        self.on_update(sorted(self.healthy))

    def _start_probes(self) -> None:
        if self._closed or not self.addressable:
            return
        loop = asyncio.get_running_loop()
        for dest in self.pods - self.healthy:
            if dest not in self._probes:
                self._wake[dest] = asyncio.Event()
                self._probes[dest] = loop.create_task(self._probe_loop(dest))

    async def _probe_loop(self, dest: str) -> None:
        try:
            while not self._closed and dest in self.pods and dest not in self.healthy:
                eager = self.demand
                ok = await self.probe(dest, self.eager_timeout if eager else self.timeout)
                if ok and dest in self.pods and not self._closed:
                    self._mesh_failed.pop(dest, None)
                    self.healthy.add(dest)
                    self._publish()
                    return
                if dest in self.pods and not self._closed:
                    self._mesh_failed[dest] = ok is None
                    self._maybe_probe_cluster()
                wake = self._wake.get(dest)
                if wake is None:
                    return
                wake.clear()
                pause = self.eager_retry if self.demand else self.frequency
                try:
                    await asyncio.wait_for(wake.wait(), pause)
                except TimeoutError:
                    pass
        finally:
            if self._probes.get(dest) is asyncio.current_task():
                del self._probes[dest]
                self._wake.pop(dest, None)

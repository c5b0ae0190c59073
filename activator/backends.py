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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from dataplane import httpget
from platforms.base import Endpoints, RevisionKey

__all__ = ["RevisionBackends", "probe_queue_proxy"]

log = logging.getLogger("activator.backends")

ProbeFn = Callable[[str, float], Awaitable[bool]]


_PROBE_HEADERS = b"K-Network-Probe: queue\r\nUser-Agent: Knative-Activator-Probe\r\n"


async def probe_queue_proxy(dest: str, timeout: float) -> bool:
    """One activator probe of a queue-proxy at ``ip:port``; True on ``200`` + body ``queue``."""
    host, _, port = dest.rpartition(":")
    try:
        r = await httpget.get(
            host.strip("[]"), int(port), "/healthz", timeout, headers=_PROBE_HEADERS,
            authority=dest, max_body=64,
        )  # fmt: skip
    except (httpget.GetError, ValueError):
        return False
    return r.status == 200 and r.complete and r.body == b"queue"


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
    ) -> None:
        self.key = key
        self.on_update = on_update
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
        """New endpoints for the revision (Knative's checkDests, without the ClusterIP path)."""
        prev_ready = self.ready
        self.ready = frozenset(eps.ready)
        self.not_ready = frozenset(eps.not_ready)
        pods = self.pods
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

    def _publish(self) -> None:
        self.on_update(sorted(self.healthy))

    def _start_probes(self) -> None:
        if self._closed:
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
                    self.healthy.add(dest)
                    self._publish()
                    return
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

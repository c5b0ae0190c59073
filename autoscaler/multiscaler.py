"""The autoscaler's loop: stats in, decisions every 2 s, replicas out (Knative SPEC §3).

One :class:`RevisionScaler` per revision holds the pure :class:`~autoscaler.decider.Decider`
and :class:`~autoscaler.scaler.ScaleController`; this module feeds them and acts on their
answers: a tick every ``TICK_INTERVAL`` (2 s) for every revision, an immediate tick when a stat
with demand arrives for a revision at zero (Knative's *poke*), and another when a waiting rule
of the scale controller expires. Stats come from activators (:meth:`Autoscaler.record_wire`)
and from scraping queue-proxies (:mod:`autoscaler.scraper`). Actuation goes through the
platform's ``scale(key, n)``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from dataplane.statpb import Stat, WireStatMessage
from platforms.base import Revision, RevisionKey

from .config import AutoscalerConfig, RevisionScaling, resolve_scaling
from .decider import TICK_INTERVAL, Decider, Decision
from .scaler import ScaleController

__all__ = ["Autoscaler", "RevisionScaler", "ScaleEvent"]

log = logging.getLogger("autoscaler")


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """A replica change the autoscaler asked for (for logs and status lines)."""

    key: RevisionKey
    old: int
    new: int
    decision: Decision


class RevisionScaler:
    """Decider + scale controller of one revision, and what was last asked of the platform."""

    def __init__(self, rev: Revision, scaling: RevisionScaling, now: float) -> None:
        self.rev = rev
        self.scaling = scaling
        self.decider = Decider(scaling, now)
        self.controller = ScaleController(scaling, now)
        self.replicas = 0  # last count sent to the platform
        self.wake: asyncio.TimerHandle | None = None
        self.held_tick = False  # a decision for a rise of held requests is scheduled
        self.last = self.decider.decision

    def update(self, rev: Revision, scaling: RevisionScaling) -> None:
        self.rev = rev
        self.scaling = scaling
        self.decider.update(scaling)
        self.controller.update(scaling)


class Autoscaler:
    """Receives revisions and stats; keeps each revision at the replica count the KPA wants."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        scale: Callable[[RevisionKey, int], Awaitable[None]],
        ready: Callable[[RevisionKey], int],
        config: AutoscalerConfig | None = None,
        on_scale: Callable[[ScaleEvent], None] | None = None,
        on_error: Callable[[RevisionKey, BaseException], None] | None = None,
    ) -> None:
        self.loop = loop
        self.scale = scale
        self.ready = ready
        self.config = config or AutoscalerConfig()
        self.on_scale = on_scale
        self.on_error = on_error
        self.revisions: dict[RevisionKey, RevisionScaler] = {}
        self._ticker: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- revisions -------------------------------------------------------------------------
    def revision_updated(self, rev: Revision) -> None:
        """Create or update a revision's scaler; raises ConfigError for bad annotations."""
        scaling = resolve_scaling(self.config, rev.container_concurrency, rev.annotations)
        rs = self.revisions.get(rev.key)
        if rs is None:
            self.revisions[rev.key] = RevisionScaler(rev, scaling, self.loop.time())
            self._tick_soon(rev.key)  # initial scale is acted on at once
        else:
            rs.update(rev, scaling)

    def revision_deleted(self, key: RevisionKey) -> None:
        rs = self.revisions.pop(key, None)
        if rs is not None and rs.wake is not None:
            rs.wake.cancel()

    # -- stats -----------------------------------------------------------------------------
    def record(self, key: RevisionKey, stat: Stat, t: float | None = None) -> None:
        """One stat (from an activator or a scrape); proxied values are subtracted as Knative
        does, since activators report those requests themselves."""
        rs = self.revisions.get(key)
        if rs is None:
            return
        now = self.loop.time() if t is None else t
        concurrency = stat.average_concurrent_requests - stat.average_proxied_concurrent_requests
        rps = stat.request_count - stat.proxied_request_count
        if not (math.isfinite(concurrency) and math.isfinite(rps)):
            # A NaN or infinity (from the network) would stay in the windows and make every
            # tick of the revision fail for a whole stable window.
            log.warning("dropping a non-finite stat for %s/%s: %s", key[0], key[1], stat)
            return
        rs.decider.record(now, concurrency, rps)
        if rs.replicas == 0 and stat.average_concurrent_requests > 0:
            self._tick_soon(key)  # poke: demand at zero is acted on without waiting a tick

    def held(self, key: RevisionKey, n: int) -> None:
        """``n`` requests are held at the (in-process) activator for ``key`` right now. While
        the revision has no ready pod, a rise decides at once with that count (see
        :meth:`Decider.record_held`), so a burst from zero gets its pods in one step."""
        rs = self.revisions.get(key)
        if rs is None:
            return
        prev = rs.decider.held
        rs.decider.record_held(n)
        if n > prev and not rs.held_tick:
            rs.held_tick = True  # one decision per loop iteration, whatever arrived in it
            self.loop.call_soon(self._held_tick, key)

    def _held_tick(self, key: RevisionKey) -> None:
        rs = self.revisions.get(key)
        if rs is None:
            return
        rs.held_tick = False
        if self.ready(key) == 0:
            self._tick_guarded(key)

    def record_wire(self, messages: list[WireStatMessage]) -> None:
        """A batch from an activator (in process, or decoded from a websocket frame)."""
        now = self.loop.time()
        for m in messages:
            if m.stat is not None:
                self.record((m.namespace, m.name), m.stat, now)

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> None:
        self._ticker = self.loop.call_later(TICK_INTERVAL, self._tick_all)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for rs in self.revisions.values():
            if rs.wake is not None:
                rs.wake.cancel()
                rs.wake = None

    def _tick_all(self) -> None:
        self._ticker = self.loop.call_later(TICK_INTERVAL, self._tick_all)
        for key in list(self.revisions):
            self._tick_guarded(key)

    def _tick_soon(self, key: RevisionKey) -> None:
        self.loop.call_soon(self._tick_guarded, key)

    def _tick_guarded(self, key: RevisionKey) -> None:
        """A scheduled tick: one revision's failure (its ``ready`` lookup, a callback) must
        not starve the revisions after it in the round, as Knative's per-revision loops don't."""
        try:
            self.tick(key)
        except Exception as e:
            if self.on_error is not None:
                self.on_error(key, e)
            else:
                log.exception("tick of %s/%s failed", key[0], key[1])

    def tick(self, key: RevisionKey) -> None:
        """Decide now for one revision and actuate a change."""
        rs = self.revisions.get(key)
        if rs is None:
            return
        now = self.loop.time()
        ready = self.ready(key)
        decision = rs.decider.tick(now, ready)
        rs.last = decision
        want = rs.controller.replicas(now, decision, ready, rs.replicas)
        if rs.wake is not None:
            rs.wake.cancel()
            rs.wake = None
        wake_at = rs.controller.wake_at
        if wake_at is not None:
            rs.wake = self.loop.call_at(max(wake_at, now + 0.01), self._tick_guarded, key)
        if want is None or want == rs.replicas:
            return
        event = ScaleEvent(key, rs.replicas, want, decision)
        rs.replicas = want
        t = self.loop.create_task(self._actuate(key, event.old, want))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        if self.on_scale is not None:
            self.on_scale(
                event
            )  # after the actuation is under way: a failing callback can't stop it

    async def _actuate(self, key: RevisionKey, old: int, n: int) -> None:
        try:
            await self.scale(key, n)
        except Exception as e:
            rs = self.revisions.get(key)
            if rs is not None and rs.replicas == n:
                # The platform stayed where it was: the next tick asks again (Knative
                # reconciles against the actual replicas, so a failed patch is retried).
                rs.replicas = old
            if self.on_error is not None:
                self.on_error(key, e)  # the owner reports it
            else:
                log.error("scaling %s/%s to %d failed: %s", key[0], key[1], n, e)

    def status(self) -> Mapping[RevisionKey, RevisionScaler]:
        return self.revisions

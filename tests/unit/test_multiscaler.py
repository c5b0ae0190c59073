"""Unit tests for autoscaler.multiscaler: the KPA loop around the decider (SPEC §2.7, §3.1-3.6).

The autoscaler runs on :class:`ManualLoop`, whose clock and timers move only when a test says so
(``advance``), so 2 s ticks, pokes and wake-ups are driven deterministically and instantly.
Actuation is a fake platform that records ``scale(key, n)`` calls; its coroutines run on the
test's real event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, cast

import pytest

from autoscaler.config import AutoscalerConfig
from autoscaler.decider import TICK_INTERVAL
from autoscaler.multiscaler import Autoscaler, ScaleEvent
from autoscaler.scaler import ACTIVE, INACTIVE
from autoscaler.scraper import Scraper
from dataplane.statpb import Stat, WireStatMessage
from platforms.base import Revision, RevisionKey

T0 = 10_000.0
A: RevisionKey = ("default", "a-00001")
B: RevisionKey = ("default", "b-00001")


class _Handle:
    __slots__ = ("_cancelled", "args", "callback", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]):
        self.when = when
        self.callback = callback
        self.args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class ManualLoop:
    """The parts of an event loop the autoscaler uses, with a clock that moves on demand.

    ``call_*`` timers run only inside :meth:`advance`; tasks go to the real running loop.
    """

    def __init__(self, real: asyncio.AbstractEventLoop, now: float = T0) -> None:
        self.real = real
        self.now = now
        self._heap: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> _Handle:
        h = _Handle(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), h))
        return h

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Handle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> _Handle:
        return self.call_at(self.now, callback, *args)

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        return self.real.create_task(coro)

    def pending(self, *args: Any) -> list[_Handle]:
        """Timers not yet run nor cancelled (with these arguments, if given), earliest first."""
        return [
            h
            for _, _, h in sorted(self._heap, key=lambda e: e[:2])
            if not h.cancelled() and (not args or h.args == args)
        ]

    def due(self) -> list[_Handle]:
        """Timers due now (pokes are scheduled for now)."""
        return [h for h in self.pending() if h.when <= self.now]

    def advance(self, dt: float = 0.0) -> None:
        """Move the clock by ``dt``, running every timer due by then at its own time."""
        until = self.now + dt
        while self._heap and self._heap[0][0] <= until:
            when, _, h = heapq.heappop(self._heap)
            if h.cancelled():
                continue
            self.now = max(self.now, when)
            h.callback(*h.args)
        self.now = until


class FakePlatform:
    """``scale`` and ``ready`` callbacks: records every scale call; tests set the ready counts."""

    def __init__(self) -> None:
        self.calls: list[tuple[RevisionKey, int]] = []
        self.ready_counts: dict[RevisionKey, int] = {}
        self.ready_asked: list[RevisionKey] = []
        self.fail: BaseException | None = None

    async def scale(self, key: RevisionKey, n: int) -> None:
        self.calls.append((key, n))
        if self.fail is not None:
            raise self.fail

    def ready(self, key: RevisionKey) -> int:
        self.ready_asked.append(key)
        return self.ready_counts.get(key, 0)


class Harness:
    def __init__(self, config: dict[str, str] | None = None) -> None:
        self.loop = ManualLoop(asyncio.get_running_loop())
        self.platform = FakePlatform()
        self.events: list[ScaleEvent] = []
        self.errors: list[tuple[RevisionKey, BaseException]] = []
        self.autoscaler = Autoscaler(
            loop=cast(asyncio.AbstractEventLoop, self.loop),
            scale=self.platform.scale,
            ready=self.platform.ready,
            config=AutoscalerConfig.from_map(
                {"allow-zero-initial-scale": "true", **(config or {})}
            ),
            on_scale=self.events.append,
            on_error=lambda key, e: self.errors.append((key, e)),
        )

    def add(self, key: RevisionKey, **annotations: str) -> None:
        ann = {f"autoscaling.knative.dev/{k.replace('_', '-')}": v for k, v in annotations.items()}
        self.autoscaler.revision_updated(Revision(key[0], key[1], annotations=ann))

    async def settle(self) -> None:
        """Run the timers due now, then let the actuation tasks finish."""
        self.loop.advance(0.0)
        for _ in range(10):
            if not self.autoscaler._tasks:
                return
            await asyncio.sleep(0)
        raise AssertionError("actuation tasks did not finish")

    async def advance(self, dt: float) -> None:
        self.loop.advance(dt)
        await self.settle()

    def scaled(self) -> list[tuple[RevisionKey, int]]:
        calls = list(self.platform.calls)
        self.platform.calls.clear()
        return calls


def conc(c: float, proxied: float = 0.0, rps: float = 0.0, proxied_rps: float = 0.0) -> Stat:
    return Stat(
        pod_name="p",
        average_concurrent_requests=c,
        average_proxied_concurrent_requests=proxied,
        request_count=rps,
        proxied_request_count=proxied_rps,
    )


async def at_zero(h: Harness, key: RevisionKey = A, **ann: str) -> None:
    """A revision created with initial-scale 0: nothing is asked of the platform."""
    h.add(key, initial_scale="0", **ann)
    await h.settle()
    assert h.scaled() == []
    assert h.autoscaler.revisions[key].replicas == 0


async def running(h: Harness, key: RevisionKey = A, **ann: str) -> None:
    """A revision created with the default initial scale 1 whose pod is ready."""
    h.add(key, **ann)
    await h.settle()  # the initial scale is acted on at once, without waiting for a tick
    assert h.scaled() == [(key, 1)]
    h.platform.ready_counts[key] = 1
    h.autoscaler.tick(key)  # sees the ready pod: active
    assert h.autoscaler.revisions[key].controller.state == ACTIVE


# -- stats per revision ------------------------------------------------------------------------


async def test_record_goes_to_its_revision_only() -> None:
    h = Harness()
    await running(h, A)
    await running(h, B)
    h.autoscaler.record(A, conc(140.0))
    h.autoscaler.record(B, conc(7.0))
    h.autoscaler.record(("default", "unknown"), conc(1000.0))  # no such revision: dropped
    h.autoscaler.tick(A)
    h.autoscaler.tick(B)
    await h.settle()
    a, b = h.autoscaler.revisions[A].last, h.autoscaler.revisions[B].last
    assert (a.stable_value, a.panic_value, a.desired) == (140.0, 140.0, 2)  # ceil(140 / 70)
    assert (b.stable_value, b.desired) == (7.0, 1)
    assert h.scaled() == [(A, 2)]
    assert list(h.autoscaler.revisions) == [A, B]


async def test_record_wire_batch_routes_each_message_and_skips_nil_stats() -> None:
    h = Harness()
    await running(h, A)
    await running(h, B)
    h.autoscaler.record_wire(
        [
            WireStatMessage("default", "a-00001", conc(100.0, rps=3.0)),
            WireStatMessage("default", "b-00001", conc(30.0, rps=1.0)),
            WireStatMessage("default", "a-00001", conc(40.0, rps=2.0)),  # same second: summed
            WireStatMessage("default", "b-00001", None),  # no stat: skipped
            WireStatMessage("other", "a-00001", conc(999.0)),  # unknown revision
        ]
    )
    for key in (A, B):
        h.autoscaler.tick(key)
    a, b = h.autoscaler.revisions[A].last, h.autoscaler.revisions[B].last
    assert a.stable_value == pytest.approx(140.0)
    assert b.stable_value == pytest.approx(30.0)
    assert h.autoscaler.revisions[A].decider._stable_rps.window_average(h.loop.now) == 5.0


async def test_record_at_explicit_time_lands_in_that_second() -> None:
    h = Harness({"stable-window": "6s"})
    await running(h, A)
    h.autoscaler.record(A, conc(60.0), t=T0 - 10.0)  # older than the window: not in it
    h.autoscaler.tick(A)
    assert h.autoscaler.revisions[A].last.desired == -1  # still no data
    h.autoscaler.record(A, conc(60.0), t=T0)
    h.autoscaler.tick(A)
    assert h.autoscaler.revisions[A].last.stable_value == 60.0


# -- proxied stats (SPEC §3.1) -----------------------------------------------------------------


async def test_requests_through_the_activator_are_counted_once() -> None:
    """Activator reports 5 in flight; the pod's QP sees those 5 as proxied plus 3 direct: 8."""
    h = Harness()
    await running(h, A)
    activator = WireStatMessage("default", "a-00001", conc(5.0, rps=10.0))
    h.autoscaler.record_wire([activator])
    h.autoscaler.record(A, conc(8.0, proxied=5.0, rps=16.0, proxied_rps=10.0))  # scrape
    h.autoscaler.tick(A)
    d = h.autoscaler.revisions[A].last
    assert d.stable_value == pytest.approx(8.0)
    rps = h.autoscaler.revisions[A].decider._stable_rps.window_average(h.loop.now)
    assert rps == pytest.approx(16.0)


async def test_scraped_proxied_stat_adds_nothing_beyond_the_activator() -> None:
    """Through the Scraper: all QP traffic came via the activator, so the scrape nets to 0."""
    h = Harness()
    await running(h, A)
    h.platform.ready_counts[A] = 2

    async def scrape(addr: str) -> Stat:
        return conc(35.0, proxied=35.0, rps=4.0, proxied_rps=4.0)

    scraper = Scraper(h.autoscaler, lambda key: ["p1:9090", "p2:9090"], scrape=scrape)
    agg = await scraper.scrape_revision(A)
    assert agg is not None and agg.average_concurrent_requests == 70.0
    h.autoscaler.record_wire([WireStatMessage("default", "a-00001", conc(70.0, rps=8.0))])
    h.autoscaler.tick(A)
    d = h.autoscaler.revisions[A].last
    assert d.stable_value == pytest.approx(70.0)  # not 140
    assert d.desired == 1


# -- pokes ---------------------------------------------------------------------------------------


async def test_stat_for_revision_at_zero_ticks_immediately() -> None:
    h = Harness()
    await at_zero(h)
    h.autoscaler.record_wire([WireStatMessage("default", "a-00001", conc(1.0, rps=1.0))])
    assert h.scaled() == []  # the poke is a tick scheduled now, not a nested call
    await h.advance(0.0)  # no time passes: not a 2 s tick
    assert h.scaled() == [(A, 1)]
    assert [(e.key, e.old, e.new) for e in h.events] == [(A, 0, 1)]


async def test_stat_with_activation_scale_pokes_to_that_many() -> None:
    h = Harness()
    await at_zero(h, activation_scale="3")
    h.autoscaler.record(A, conc(1.0))
    await h.advance(0.0)
    assert h.scaled() == [(A, 3)]


async def test_no_poke_without_concurrency_or_above_zero() -> None:
    h = Harness()
    await at_zero(h)
    h.autoscaler.record(A, conc(0.0, rps=5.0))  # AverageConcurrentRequests == 0: no poke
    assert h.loop.due() == []
    await running(h, B)
    h.autoscaler.record(B, conc(500.0))  # B has a pod: waits for the regular tick
    assert h.loop.due() == []
    await h.advance(0.0)
    assert h.scaled() == []


async def test_poke_after_scale_to_zero_scales_up_again() -> None:
    """Down to zero by the scale-to-zero rules, then the activator's first stat brings a pod."""
    h = Harness({"stable-window": "6s", "scale-to-zero-grace-period": "2s"})
    await running(h, A)
    h.autoscaler.start()
    h.autoscaler.record(A, conc(0.0))
    await h.advance(30.0)
    assert h.scaled() == [(A, 0)]
    h.platform.ready_counts[A] = 0
    await h.advance(0.0)
    h.autoscaler.record(A, conc(1.0, rps=1.0))
    await h.advance(0.0)
    assert h.scaled() == [(A, 1)]
    h.autoscaler.stop()


# -- the regular tick ----------------------------------------------------------------------------


async def test_ticks_every_two_seconds_for_every_revision() -> None:
    h = Harness()
    await running(h, A)
    await running(h, B)
    h.autoscaler.start()
    h.autoscaler.record(A, conc(150.0))  # ceil(150 / 70) = 3
    h.platform.ready_asked.clear()
    await h.advance(TICK_INTERVAL - 0.01)
    assert h.scaled() == [] and h.platform.ready_asked == []
    await h.advance(0.01)
    assert h.scaled() == [(A, 3)]
    assert sorted(h.platform.ready_asked) == [A, B]
    h.platform.ready_asked.clear()
    await h.advance(10 * TICK_INTERVAL)
    assert h.platform.ready_asked.count(A) == 10
    assert h.platform.ready_asked.count(B) == 10
    h.autoscaler.stop()
    h.platform.ready_asked.clear()
    await h.advance(10 * TICK_INTERVAL)
    assert h.platform.ready_asked == []
    assert h.loop.pending() == []


async def test_tick_scales_out_and_panics_under_a_burst() -> None:
    """3 ready pods, 700 in flight: ceil(700 / 70) = 10 pods, and 10 / 3 >= 2 is panic."""
    h = Harness()
    await running(h, A)
    h.autoscaler.start()
    h.platform.ready_counts[A] = 3
    h.autoscaler.record(A, conc(700.0))
    await h.advance(TICK_INTERVAL)
    assert h.scaled() == [(A, 10)]
    assert h.autoscaler.revisions[A].last.panicking
    h.autoscaler.stop()


async def test_tick_scale_down_is_limited_by_max_scale_down_rate() -> None:
    """10 ready pods and a load worth 1: at most halve (max-scale-down-rate 2), so 5."""
    h = Harness()
    await running(h, A)
    h.platform.ready_counts[A] = 10
    h.autoscaler.revisions[A].replicas = 10
    h.autoscaler.record(A, conc(70.0))
    h.autoscaler.tick(A)
    await h.settle()
    assert h.autoscaler.revisions[A].last.desired == 5
    assert h.scaled() == [(A, 5)]


# -- wake_at -------------------------------------------------------------------------------------


async def test_wake_at_ticks_when_the_scale_to_zero_wait_expires() -> None:
    """Idle and active: 1 pod is kept for the stable window; a timer at that instant (not the
    next 2 s tick) marks the revision inactive, and then the grace period takes it to zero."""
    h = Harness({"stable-window": "7s", "scale-to-zero-grace-period": "3s"})
    await running(h, A)  # no start(): only pokes and wake-ups tick
    rs = h.autoscaler.revisions[A]
    assert rs.controller.state == ACTIVE
    since = rs.controller.state_since
    h.autoscaler.record(A, conc(0.0))
    h.autoscaler.tick(A)
    assert rs.last.desired == 0
    assert rs.controller.wake_at == since + 7.0
    assert [t.when for t in h.loop.pending()] == [since + 7.0]
    await h.advance(since + 7.0 - h.loop.now - 0.001)
    assert rs.controller.state == ACTIVE and h.scaled() == []
    await h.advance(0.001)
    assert rs.controller.state == INACTIVE
    # In Proxy mode since the start (EBC < 0 with the default TBC 211), for longer than the
    # grace period: the next tick takes it to zero.
    h.autoscaler.start()
    await h.advance(TICK_INTERVAL)
    assert h.scaled() == [(A, 0)]
    h.autoscaler.stop()
    assert rs.replicas == 0
    assert rs.wake is None or rs.wake.cancelled()


async def test_a_new_tick_replaces_the_pending_wake() -> None:
    h = Harness({"stable-window": "7s"})
    await running(h, A)
    h.autoscaler.record(A, conc(0.0))
    for _ in range(5):
        h.autoscaler.tick(A)
    assert len(h.loop.pending()) == 1  # one wake timer per revision, never a pile


# -- callbacks -----------------------------------------------------------------------------------


async def test_on_scale_reports_each_change_with_its_decision() -> None:
    h = Harness()
    await running(h, A)
    assert [(e.key, e.old, e.new, e.decision.desired) for e in h.events] == [(A, 0, 1, -1)]
    h.autoscaler.record(A, conc(350.0))
    h.autoscaler.tick(A)
    h.autoscaler.tick(A)  # same answer: no second event
    await h.settle()
    assert [(e.old, e.new) for e in h.events[1:]] == [(1, 5)]
    assert h.events[1].decision.stable_value == 350.0
    assert h.scaled() == [(A, 5)]


async def test_on_error_gets_the_failed_actuation() -> None:
    h = Harness()
    boom = RuntimeError("no capacity")
    h.platform.fail = boom
    h.add(A)
    await h.settle()
    assert h.scaled() == [(A, 1)]
    assert h.errors == [(A, boom)]


async def test_failed_actuation_is_retried_on_the_next_tick() -> None:
    """A failed scale leaves the platform where it was: the next tick asks again (Knative
    reconciles against the Deployment's actual replicas)."""
    h = Harness()
    await running(h, A)
    h.autoscaler.start()
    h.platform.fail = RuntimeError("API server unavailable")
    h.autoscaler.record(A, conc(210.0))
    await h.advance(TICK_INTERVAL)
    assert h.scaled() == [(A, 3)]
    assert len(h.errors) == 1
    h.platform.fail = None
    h.autoscaler.record(A, conc(210.0))
    await h.advance(TICK_INTERVAL)
    assert h.scaled() == [(A, 3)]
    assert h.autoscaler.revisions[A].replicas == 3
    await h.advance(TICK_INTERVAL)
    assert h.scaled() == []  # done: no further calls
    h.autoscaler.stop()


# -- revision removal ----------------------------------------------------------------------------


async def test_deleted_revision_stops_ticking() -> None:
    h = Harness({"stable-window": "7s"})
    await running(h, A)
    await running(h, B)
    h.autoscaler.record(A, conc(0.0))
    h.autoscaler.tick(A)  # leaves a wake timer for A
    (wake,) = h.loop.pending(A)
    h.autoscaler.start()
    h.autoscaler.revision_deleted(A)
    h.autoscaler.record(A, conc(1000.0))  # late stats for it are dropped
    assert A not in h.autoscaler.revisions
    assert wake.cancelled()
    h.platform.ready_asked.clear()
    await h.advance(20.0)
    assert h.scaled() == []
    assert A not in h.platform.ready_asked
    assert h.platform.ready_asked.count(B) == 10
    h.autoscaler.revision_deleted(A)  # twice: harmless
    h.autoscaler.stop()


async def test_poke_scheduled_before_deletion_does_nothing() -> None:
    h = Harness()
    await at_zero(h)
    h.autoscaler.record(A, conc(1.0))
    h.autoscaler.revision_deleted(A)
    await h.advance(0.0)
    assert h.scaled() == [] and h.events == []


async def test_revision_update_keeps_its_history_and_replicas() -> None:
    h = Harness()
    await running(h, A)
    h.autoscaler.record(A, conc(140.0))
    h.add(A, max_scale="1")  # new settings, same revision
    h.autoscaler.tick(A)
    await h.settle()
    assert h.autoscaler.revisions[A].last.stable_value == 140.0  # history kept
    assert h.scaled() == []  # desired 2, capped at 1 = current


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["average_concurrent_requests", "request_count"])
async def test_non_finite_stat_is_dropped_and_ticks_go_on(bad: float, field: str) -> None:
    """A NaN or infinity from the network must not poison the windows (every tick would fail
    converting it to a pod count) nor poke."""
    h = Harness()
    await at_zero(h)
    stat = conc(1.0, rps=1.0)
    setattr(stat, field, bad)
    h.autoscaler.record(A, stat)
    h.autoscaler.record_wire([WireStatMessage("default", "a-00001", stat)])
    h.autoscaler.tick(A)  # no exception
    await h.settle()
    assert h.scaled() == []
    h.autoscaler.record(A, conc(1.0, rps=1.0))
    await h.advance(0.0)
    assert h.scaled() == [(A, 1)]
    assert h.autoscaler.revisions[A].last.stable_value == 1.0


async def test_one_revision_failing_does_not_starve_the_others() -> None:
    """``ready`` raising for A (e.g. a platform lookup) is reported; B still ticks and scales."""
    h = Harness()
    await running(h, A)
    await running(h, B)
    err = KeyError(A)
    real_ready = h.platform.ready

    def ready(key: RevisionKey) -> int:
        if key == A:
            raise err
        return real_ready(key)

    h.autoscaler.ready = ready
    h.autoscaler.start()
    h.autoscaler.record(A, conc(300.0))
    h.autoscaler.record(B, conc(300.0))
    await h.advance(TICK_INTERVAL)  # A comes first in the round
    assert h.scaled() == [(B, 5)]
    assert h.errors == [(A, err)]
    await h.advance(TICK_INTERVAL)
    assert h.errors == [(A, err), (A, err)]  # reported each round; the ticker goes on
    h.autoscaler.stop()


async def test_failing_on_scale_callback_does_not_stop_the_actuation() -> None:
    h = Harness()
    err = RuntimeError("status line failed")

    def on_scale(ev: ScaleEvent) -> None:
        raise err

    h.autoscaler.on_scale = on_scale
    await at_zero(h)
    h.autoscaler.record(A, conc(1.0))
    await h.advance(0.0)  # the poke
    assert h.scaled() == [(A, 1)]
    assert h.errors == [(A, err)]


# -- held requests at zero: the burst gets its pods in one step ---------------------------------


async def test_held_burst_from_zero_scales_to_the_demand_in_one_step() -> None:
    h = Harness()
    await at_zero(h, A, target="1")  # CC-like target 1 at 70 %: 0.7 per pod
    h.autoscaler.record(A, conc(1.0))  # the activator's first-request stat
    for n in range(1, 6):  # five requests held in the same loop iteration
        h.autoscaler.held(A, n)
    await h.settle()
    # ceil(5 / 0.7) = 8 at once (the poke alone would have said ceil(1 / 0.7) = 2)
    assert h.scaled() == [(A, 8)]
    assert h.autoscaler.revisions[A].last.panicking  # kept for a stable window


async def test_held_rising_later_raises_the_scale_again_and_respects_max_scale() -> None:
    h = Harness()
    await at_zero(h, A, target="1", max_scale="5")
    h.autoscaler.record(A, conc(1.0))
    h.autoscaler.held(A, 1)
    await h.settle()
    assert h.scaled() == [(A, 2)]
    h.autoscaler.held(A, 3)  # more arrive while the pods start
    await h.settle()
    assert h.scaled() == [(A, 5)]  # ceil(3 / 0.7) = 5
    h.autoscaler.held(A, 9)
    await h.settle()
    assert h.scaled() == []  # already at max-scale


async def test_held_count_falling_schedules_nothing_and_is_ignored_once_pods_are_ready() -> None:
    h = Harness()
    await at_zero(h, A, target="1")
    h.autoscaler.record(A, conc(1.0))
    h.autoscaler.held(A, 4)
    await h.settle()
    assert h.scaled() == [(A, 6)]
    h.autoscaler.held(A, 2)  # dispatched as pods came up: no extra decision
    assert h.loop.due() == []
    h.platform.ready_counts[A] = 6
    h.autoscaler.held(A, 10)  # pods are ready: the normal windows decide, not the held count
    await h.settle()
    assert h.scaled() == []
    assert h.autoscaler.revisions[A].decider.held == 10


async def test_held_for_unknown_revision_is_ignored() -> None:
    h = Harness()
    h.autoscaler.held(("default", "nope"), 3)
    await h.settle()
    assert h.scaled() == []

"""Unit tests for queueproxy.drain: the drainer's quiet-period logic on a fake clock and timers.

The drainer only needs ``create_future`` and ``call_later`` from its loop, so a small fake
records the timers it arms (with their exact delays) and the tests fire them by hand after
moving the fake clock; futures still come from the running asyncio loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from queueproxy.drain import Drainer

QUIET = 30.0


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Records call_later timers instead of scheduling them."""

    def __init__(self, real: asyncio.AbstractEventLoop) -> None:
        self.real = real
        self.timers: list[FakeTimer] = []

    def create_future(self) -> asyncio.Future[Any]:
        return self.real.create_future()

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        t = FakeTimer(delay, callback)
        self.timers.append(t)
        return t

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]

    def fire(self) -> FakeTimer:
        """Run the one pending timer, as the event loop would when it is due."""
        (t,) = self.pending()
        t.cancelled = True  # a fired handle is spent
        t.callback()
        return t


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake_loop() -> FakeLoop:
    return FakeLoop(asyncio.get_running_loop())


@pytest.fixture
async def drainer(fake_loop: FakeLoop, clock: FakeClock) -> Drainer:
    return Drainer(QUIET, loop=fake_loop, clock=clock)  # type: ignore[arg-type]


async def start(d: Drainer) -> asyncio.Task[None]:
    task = asyncio.create_task(d.drain())
    await settle()
    return task


class TestDrain:
    async def test_initial_state(self, drainer: Drainer, fake_loop: FakeLoop) -> None:
        assert drainer.draining is False
        assert fake_loop.timers == []

    async def test_draining_flips_at_once(self, drainer: Drainer, fake_loop: FakeLoop) -> None:
        coro = drainer.drain()
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0)
        assert drainer.draining is True
        assert not task.done()
        assert [t.delay for t in fake_loop.pending()] == [QUIET]
        drainer.reset()
        await task

    async def test_completes_after_quiet_period(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        task = await start(drainer)
        clock.advance(QUIET)
        fake_loop.fire()
        await settle()
        assert task.done()
        await task
        assert drainer.draining is True  # probes keep failing after the drain
        assert fake_loop.pending() == []

    async def test_early_timer_rearms_for_remaining_time(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        task = await start(drainer)
        clock.advance(10)  # the timer came back early (e.g. clock skew)
        fake_loop.fire()
        assert [t.delay for t in fake_loop.pending()] == [pytest.approx(20.0)]
        await settle()
        assert not task.done()
        clock.advance(20)
        fake_loop.fire()
        await settle()
        assert task.done()

    async def test_request_seen_postpones_completion(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        task = await start(drainer)
        clock.advance(25)
        drainer.request_seen()  # restarts the 30 s quiet period at t0+25
        clock.advance(5)
        fake_loop.fire()  # the original timer, due at t0+30
        await settle()
        assert not task.done()
        assert [t.delay for t in fake_loop.pending()] == [pytest.approx(25.0)]
        clock.advance(24.5)
        drainer.request_seen()  # another request: restart again
        clock.advance(0.5)
        fake_loop.fire()
        await settle()
        assert not task.done()
        assert [t.delay for t in fake_loop.pending()] == [pytest.approx(29.5)]
        clock.advance(29.5)
        fake_loop.fire()
        await settle()
        assert task.done()

    async def test_exact_boundary_completes(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        task = await start(drainer)
        drainer.request_seen()
        clock.advance(QUIET - 1e-9)
        fake_loop.fire()
        await settle()
        assert not task.done()
        clock.advance(1e-9)
        fake_loop.fire()
        await settle()
        assert task.done()

    async def test_request_seen_when_not_draining_is_noop(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        clock.advance(100)
        drainer.request_seen()
        assert drainer.draining is False
        assert fake_loop.timers == []
        # the quiet period is measured from the drain start, not from that earlier request
        clock.advance(1)
        task = await start(drainer)
        clock.advance(QUIET)
        fake_loop.fire()
        await settle()
        assert task.done()

    async def test_concurrent_drains_share_one(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        t1 = await start(drainer)
        clock.advance(10)
        t2 = await start(drainer)
        t3 = await start(drainer)
        assert len(fake_loop.timers) == 1  # one drain, one timer
        clock.advance(20)  # 30 s after the *first* call
        fake_loop.fire()
        await settle()
        assert t1.done() and t2.done() and t3.done()

    async def test_drain_after_completion_returns_at_once(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        task = await start(drainer)
        clock.advance(QUIET)
        fake_loop.fire()
        await task
        again = await start(drainer)
        assert again.done()
        assert len(fake_loop.timers) == 1

    async def test_cancelling_one_waiter_keeps_the_drain(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        t1 = await start(drainer)
        t2 = await start(drainer)
        t1.cancel()
        await settle()
        assert t1.cancelled()
        assert drainer.draining is True
        assert not t2.done()
        clock.advance(QUIET)
        fake_loop.fire()
        await settle()
        assert t2.done() and not t2.cancelled()


class TestReset:
    async def test_reset_releases_waiters_and_clears_draining(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        t1 = await start(drainer)
        t2 = await start(drainer)
        (timer,) = fake_loop.pending()
        drainer.reset()
        assert drainer.draining is False
        assert timer.cancelled
        await settle()
        assert t1.done() and t2.done()
        await t1
        await t2

    async def test_request_seen_after_reset_is_noop(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        task = await start(drainer)
        drainer.reset()
        await task
        drainer.request_seen()
        assert drainer.draining is False
        assert fake_loop.pending() == []

    async def test_stale_timer_after_reset_is_harmless(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        await start(drainer)
        (timer,) = fake_loop.pending()
        drainer.reset()
        clock.advance(QUIET)
        timer.callback()  # a callback that raced with cancel()
        assert drainer.draining is False
        assert fake_loop.pending() == []

    async def test_drain_again_after_reset(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        first = await start(drainer)
        clock.advance(20)
        drainer.reset()
        await first
        clock.advance(5)
        second = await start(drainer)
        assert drainer.draining is True
        assert [t.delay for t in fake_loop.pending()] == [QUIET]  # a fresh quiet period
        clock.advance(QUIET - 1)
        fake_loop.fire()
        await settle()
        assert not second.done()
        clock.advance(1)
        fake_loop.fire()
        await settle()
        assert second.done()

    async def test_reset_without_drain(self, drainer: Drainer, fake_loop: FakeLoop) -> None:
        drainer.reset()
        assert drainer.draining is False
        assert fake_loop.timers == []

    async def test_reset_after_completion_clears_draining(
        self, drainer: Drainer, fake_loop: FakeLoop, clock: FakeClock
    ) -> None:
        task = await start(drainer)
        clock.advance(QUIET)
        fake_loop.fire()
        await task
        drainer.reset()
        assert drainer.draining is False


class TestRealLoop:
    async def test_default_clock_is_loop_time(self) -> None:
        loop = asyncio.get_running_loop()
        d = Drainer(0.0)
        assert d._clock == loop.time
        # quiet period 0: the first timer check completes the drain
        await asyncio.wait_for(d.drain(), timeout=5)
        assert d.draining is True

    async def test_check_called_directly_on_real_loop(self) -> None:
        clock = FakeClock()
        d = Drainer(0.0, clock=clock)
        d.quiet_period = 1.0  # not yet elapsed on the fake clock when the real timer fires
        task = asyncio.create_task(d.drain())
        await settle()
        assert d.draining and not task.done()
        clock.advance(1.0)
        assert d._handle is not None
        d._handle.cancel()
        d._check()
        await asyncio.wait_for(task, timeout=5)

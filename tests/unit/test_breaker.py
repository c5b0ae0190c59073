"""Unit tests for dataplane.breaker: admission, FIFO hand-off, cancellation and capacity changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dataplane.breaker import (
    MAX_BREAKER_CAPACITY,
    Breaker,
    BreakerParamsError,
    QueueFullError,
    Waiter,
)


def qp_breaker(cc: int) -> Breaker:
    """The breaker Knative's queue-proxy builds for a container concurrency ``cc``."""
    return Breaker(queue_depth=10 * cc, max_concurrency=cc, initial_capacity=cc)


class Recorder:
    """Collects grant callbacks in the order they run."""

    def __init__(self) -> None:
        self.granted: list[int] = []

    def cb(self, i: int) -> Callable[[], None]:
        def grant() -> None:
            self.granted.append(i)

        return grant


def check_counts(b: Breaker) -> None:
    assert b.in_flight == b.in_use + b.waiting
    assert 0 <= b.in_flight <= b.total_slots
    assert b.waiting >= 0
    assert b.in_use >= 0


# --------------------------------------------------------------------------- construction


class TestParams:
    @pytest.mark.parametrize("depth", [0, -1, -100])
    def test_queue_depth_must_be_positive(self, depth: int) -> None:
        with pytest.raises(BreakerParamsError, match="queue depth"):
            Breaker(depth, 1, 1)

    def test_negative_max_concurrency(self) -> None:
        with pytest.raises(BreakerParamsError, match="max concurrency"):
            Breaker(1, -1, 0)

    @pytest.mark.parametrize(("maxc", "initial"), [(1, 2), (0, 1), (5, -1), (3, 4)])
    def test_initial_capacity_out_of_range(self, maxc: int, initial: int) -> None:
        with pytest.raises(BreakerParamsError, match="initial capacity"):
            Breaker(1, maxc, initial)

    def test_params_error_is_value_error(self) -> None:
        assert issubclass(BreakerParamsError, ValueError)

    @pytest.mark.parametrize(("depth", "maxc", "initial"), [(1, 0, 0), (1, 1, 0), (10, 1, 1)])
    def test_valid_edges(self, depth: int, maxc: int, initial: int) -> None:
        b = Breaker(depth, maxc, initial)
        assert b.capacity == initial
        assert b.total_slots == depth + maxc
        assert b.queue_depth == depth
        assert b.max_concurrency == maxc
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)

    @pytest.mark.parametrize("cc", [1, 2, 7, 100])
    def test_queue_proxy_sizes(self, cc: int) -> None:
        b = qp_breaker(cc)
        assert b.total_slots == 11 * cc
        assert b.capacity == cc

    def test_queue_full_message(self) -> None:
        assert str(QueueFullError()) == "pending request queue full"


# --------------------------------------------------------------------------- admission


class TestAdmission:
    def test_fast_path_until_capacity(self) -> None:
        b = qp_breaker(3)
        assert [b.try_acquire() for _ in range(3)] == [True, True, True]
        assert (b.in_flight, b.in_use, b.waiting) == (3, 3, 0)
        assert b.try_acquire() is None
        # None does not admit anything: the caller must enqueue.
        assert b.in_flight == 3

    def test_enqueue_admits_and_waits(self) -> None:
        b = qp_breaker(1)
        assert b.try_acquire() is True
        rec = Recorder()
        w = b.enqueue(rec.cb(0))
        assert isinstance(w, Waiter)
        assert (b.in_flight, b.in_use, b.waiting) == (2, 1, 1)
        assert rec.granted == []

    @pytest.mark.parametrize("cc", [1, 2, 5])
    def test_queue_full_at_total_slots(self, cc: int) -> None:
        b = qp_breaker(cc)
        rec = Recorder()
        for _ in range(cc):
            assert b.try_acquire() is True
        for i in range(10 * cc):
            assert b.try_acquire() is None
            b.enqueue(rec.cb(i))
        assert b.in_flight == 11 * cc == b.total_slots
        with pytest.raises(QueueFullError):
            b.try_acquire()
        with pytest.raises(QueueFullError):
            b.enqueue(rec.cb(-1))
        assert b.reserve() is False
        assert b.in_flight == b.total_slots
        check_counts(b)

    def test_admission_reopens_after_release(self) -> None:
        b = Breaker(1, 1, 1)
        rec = Recorder()
        assert b.try_acquire()
        b.enqueue(rec.cb(0))
        with pytest.raises(QueueFullError):
            b.try_acquire()
        b.release()  # hands the slot to waiter 0
        assert rec.granted == [0]
        assert (b.in_flight, b.in_use, b.waiting) == (1, 1, 0)
        assert b.try_acquire() is None  # admission is open again, but no active slot
        b.enqueue(rec.cb(1))
        with pytest.raises(QueueFullError):
            b.enqueue(rec.cb(2))

    def test_release_without_waiters(self) -> None:
        b = qp_breaker(2)
        assert b.try_acquire() and b.try_acquire()
        b.release()
        b.release()
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)
        assert b.try_acquire() is True


class TestFifo:
    def test_release_grants_oldest_first(self) -> None:
        b = qp_breaker(1)
        rec = Recorder()
        assert b.try_acquire()
        for i in range(5):
            b.enqueue(rec.cb(i))
        for expected in range(5):
            b.release()
            assert rec.granted == list(range(expected + 1))
            assert b.in_use == 1
            check_counts(b)
        b.release()
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)

    def test_one_release_grants_exactly_one(self) -> None:
        b = qp_breaker(2)
        rec = Recorder()
        assert b.try_acquire() and b.try_acquire()
        for i in range(4):
            b.enqueue(rec.cb(i))
        b.release()
        assert rec.granted == [0]
        b.release()
        assert rec.granted == [0, 1]

    def test_callback_runs_inside_release_with_slot_counted(self) -> None:
        b = qp_breaker(1)
        seen: list[tuple[int, int, int]] = []
        assert b.try_acquire()
        w = b.enqueue(lambda: seen.append((b.in_flight, b.in_use, b.waiting)))
        b.release()
        assert seen == [(1, 1, 0)]
        assert w.state == 1

    def test_newcomer_cannot_jump_queue(self) -> None:
        b = qp_breaker(1)
        rec = Recorder()
        assert b.try_acquire()
        b.enqueue(rec.cb(0))
        b.release()  # slot goes to waiter 0, not to a later try_acquire
        assert rec.granted == [0]
        assert b.try_acquire() is None

    def test_granted_callback_may_release_synchronously(self) -> None:
        b = qp_breaker(1)
        order: list[int] = []
        assert b.try_acquire()

        def make(i: int) -> Callable[[], None]:
            def cb() -> None:
                order.append(i)
                b.release()  # finishes at once (e.g. failed synchronously)

            return cb

        for i in range(5):
            b.enqueue(make(i))
        b.release()
        assert order == [0, 1, 2, 3, 4]
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)


class TestCancel:
    def test_cancel_frees_admission(self) -> None:
        b = Breaker(2, 1, 1)
        rec = Recorder()
        assert b.try_acquire()
        w0 = b.enqueue(rec.cb(0))
        b.enqueue(rec.cb(1))
        with pytest.raises(QueueFullError):
            b.enqueue(rec.cb(2))
        assert w0.cancel() is True
        assert (b.in_flight, b.in_use, b.waiting) == (2, 1, 1)
        b.enqueue(rec.cb(2))  # the admission slot is usable again
        check_counts(b)

    def test_cancelled_waiter_is_skipped(self) -> None:
        b = qp_breaker(1)
        rec = Recorder()
        assert b.try_acquire()
        ws = [b.enqueue(rec.cb(i)) for i in range(4)]
        assert ws[0].cancel() and ws[2].cancel()
        b.release()
        assert rec.granted == [1]
        b.release()
        assert rec.granted == [1, 3]
        b.release()
        assert rec.granted == [1, 3]
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)

    def test_cancel_twice_returns_false(self) -> None:
        b = qp_breaker(1)
        assert b.try_acquire()
        w = b.enqueue(lambda: None)
        assert w.cancel() is True
        assert w.cancel() is False
        assert b.in_flight == 1

    def test_cancel_after_grant_returns_false_and_changes_nothing(self) -> None:
        b = qp_breaker(1)
        rec = Recorder()
        assert b.try_acquire()
        w = b.enqueue(rec.cb(0))
        b.release()
        assert rec.granted == [0]
        assert w.cancel() is False
        assert (b.in_flight, b.in_use, b.waiting) == (1, 1, 0)
        b.release()
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)

    def test_all_cancelled_then_release(self) -> None:
        b = qp_breaker(1)
        rec = Recorder()
        assert b.try_acquire()
        ws = [b.enqueue(rec.cb(i)) for i in range(10)]
        for w in ws:
            assert w.cancel()
        assert b.waiting == 0
        b.release()
        assert rec.granted == []
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)
        assert b.try_acquire() is True

    @pytest.mark.parametrize("n", [100, 200, 1000])
    def test_compaction_keeps_counts_and_order(self, n: int) -> None:
        b = Breaker(queue_depth=10_000, max_concurrency=1, initial_capacity=1)
        rec = Recorder()
        assert b.try_acquire()
        ws = [b.enqueue(rec.cb(i)) for i in range(n)]
        keep = set(range(0, n, 7))
        for i, w in enumerate(ws):
            if i not in keep:
                assert w.cancel()
                check_counts(b)
        assert b.waiting == len(keep)
        assert b.in_flight == 1 + len(keep)
        # internal storage was compacted: far fewer entries than were enqueued
        assert len(b._waiters) < n
        for _ in range(len(keep)):
            b.release()
            check_counts(b)
        assert rec.granted == sorted(keep)
        b.release()
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)

    def test_compaction_then_more_enqueues(self) -> None:
        b = Breaker(queue_depth=1000, max_concurrency=1, initial_capacity=1)
        rec = Recorder()
        assert b.try_acquire()
        first = [b.enqueue(rec.cb(i)) for i in range(100)]
        for w in first[:90]:
            w.cancel()
        more = [b.enqueue(rec.cb(100 + i)) for i in range(5)]
        assert b.waiting == 15
        more[0].cancel()
        for _ in range(14):
            b.release()
        assert rec.granted == [*range(90, 100), 101, 102, 103, 104]
        check_counts(b)

    def test_compaction_during_grant_callback(self) -> None:
        b = Breaker(queue_depth=1000, max_concurrency=3, initial_capacity=0)
        calls: dict[str, int] = {}
        victims: list[Waiter] = []

        def first() -> None:
            calls["first"] = calls.get("first", 0) + 1
            for v in victims:  # e.g. clients that went away, noticed synchronously
                v.cancel()

        def last() -> None:
            calls["last"] = calls.get("last", 0) + 1

        b.enqueue(first)
        victims.extend(b.enqueue(lambda: None) for _ in range(100))
        b.enqueue(last)
        b.update_concurrency(3)
        check_counts(b)
        assert b.waiting == 0
        b.release()
        b.release()
        assert calls == {"first": 1, "last": 1}
        assert b._cancelled_waiting >= 0


class TestUpdateConcurrency:
    @pytest.mark.parametrize(("old", "new"), [(0, 1), (0, 3), (1, 4), (2, 10), (3, 3)])
    def test_raise_wakes_exactly_new_minus_old(self, old: int, new: int) -> None:
        b = Breaker(queue_depth=100, max_concurrency=10, initial_capacity=old)
        rec = Recorder()
        for _ in range(old):
            assert b.try_acquire()
        for i in range(20):
            assert b.try_acquire() is None
            b.enqueue(rec.cb(i))
        b.update_concurrency(new)
        assert rec.granted == list(range(new - old))
        assert b.in_use == new
        assert b.capacity == new
        check_counts(b)

    def test_raise_with_fewer_waiters(self) -> None:
        b = Breaker(100, 10, 1)
        rec = Recorder()
        assert b.try_acquire()
        b.enqueue(rec.cb(0))
        b.enqueue(rec.cb(1))
        b.update_concurrency(10)
        assert rec.granted == [0, 1]
        assert b.in_use == 3
        assert b.try_acquire() is True

    def test_lower_preempts_nobody(self) -> None:
        b = Breaker(100, 10, 5)
        rec = Recorder()
        for _ in range(5):
            assert b.try_acquire()
        b.enqueue(rec.cb(0))
        b.update_concurrency(2)
        assert b.capacity == 2
        assert b.in_use == 5  # holders keep their slots
        assert rec.granted == []
        assert b.try_acquire() is None
        assert b.reserve() is False
        # releases do not hand out slots until in_use drops below the new capacity
        b.release()
        b.release()
        b.release()
        assert rec.granted == []
        assert b.in_use == 2
        b.release()
        assert rec.granted == [0]
        assert b.in_use == 2
        check_counts(b)

    def test_clamped(self) -> None:
        b = Breaker(1, 1, 1)
        b.update_concurrency(-5)
        assert b.capacity == 0
        b.update_concurrency(MAX_BREAKER_CAPACITY + 10)
        assert b.capacity == MAX_BREAKER_CAPACITY
        assert MAX_BREAKER_CAPACITY == 2**31 - 1

    def test_capacity_zero_queues_everyone(self) -> None:
        b = Breaker(queue_depth=3, max_concurrency=5, initial_capacity=0)
        rec = Recorder()
        for i in range(8):
            assert b.try_acquire() is None
            b.enqueue(rec.cb(i))
        with pytest.raises(QueueFullError):
            b.try_acquire()
        assert b.reserve() is False
        assert rec.granted == []
        b.update_concurrency(2)
        assert rec.granted == [0, 1]
        b.update_concurrency(0)
        b.release()
        assert rec.granted == [0, 1]  # capacity 0: the release hands nothing out
        b.update_concurrency(1)
        assert rec.granted == [0, 1]  # in_use 1 already equals capacity 1
        b.release()
        assert rec.granted == [0, 1, 2]
        check_counts(b)

    def test_update_with_no_waiters(self) -> None:
        b = Breaker(10, 10, 1)
        b.update_concurrency(4)
        assert [b.try_acquire() for _ in range(5)] == [True, True, True, True, None]


class TestReserve:
    def test_reserve_takes_both_or_nothing(self) -> None:
        b = Breaker(queue_depth=1, max_concurrency=2, initial_capacity=2)
        assert b.reserve() is True
        assert b.reserve() is True
        assert b.reserve() is False  # no active slot; nothing is taken
        assert (b.in_flight, b.in_use, b.waiting) == (2, 2, 0)
        b.release()
        assert b.reserve() is True
        assert (b.in_flight, b.in_use) == (2, 2)

    def test_reserve_never_queues(self) -> None:
        b = Breaker(queue_depth=5, max_concurrency=1, initial_capacity=0)
        for _ in range(10):
            assert b.reserve() is False
        assert (b.in_flight, b.in_use, b.waiting) == (0, 0, 0)

    def test_reserve_fails_when_admission_full(self) -> None:
        b = Breaker(queue_depth=1, max_concurrency=2, initial_capacity=1)
        assert b.try_acquire()
        b.enqueue(lambda: None)
        b.update_concurrency(2)  # grants the waiter
        assert b.in_use == 2
        b.update_concurrency(2)
        assert b.reserve() is False

    def test_reserve_and_release_hand_over_to_waiter(self) -> None:
        b = qp_breaker(1)
        rec = Recorder()
        assert b.reserve() is True
        b.enqueue(rec.cb(0))
        b.release()
        assert rec.granted == [0]


# --------------------------------------------------------------------------- state machine


class BreakerMachine(RuleBasedStateMachine):
    """Random operation sequences checked against a simple model of the breaker."""

    def __init__(self) -> None:
        super().__init__()
        self.b: Breaker | None = None
        self.holders = 0  # slots held by model requests (fast path, reserve or grant)
        self.queue: list[int] = []  # waiting ids, oldest first (model)
        self.waiters: dict[int, Waiter] = {}
        self.granted: list[int] = []
        self.grant_calls: dict[int, int] = {}
        self.next_id = 0
        self.prev_in_use = 0

    @initialize(depth=st.integers(1, 6), maxc=st.integers(0, 4), data=st.data())
    def create(self, depth: int, maxc: int, data: st.DataObject) -> None:
        initial = data.draw(st.integers(0, maxc))
        self.b = Breaker(depth, maxc, initial)

    def _breaker(self) -> Breaker:
        assert self.b is not None
        return self.b

    def _grant_cb(self, i: int) -> Callable[[], None]:
        def cb() -> None:
            self.grant_calls[i] = self.grant_calls.get(i, 0) + 1
            self.granted.append(i)

        return cb

    def _absorb_grants(self, before: int) -> None:
        new = self.granted[before:]
        # FIFO: the grants are exactly the oldest waiting ids, in order
        assert new == self.queue[: len(new)]
        del self.queue[: len(new)]
        for i in new:
            del self.waiters[i]
        self.holders += len(new)

    @rule()
    @precondition(lambda self: self.b is not None)
    def arrive(self) -> None:
        b = self._breaker()
        full = b.in_flight >= b.total_slots
        try:
            got = b.try_acquire()
        except QueueFullError:
            assert full
            return
        assert not full
        if got:
            assert not self.queue  # a free slot while others wait would be queue jumping
            self.holders += 1
            return
        assert got is None
        i = self.next_id
        self.next_id += 1
        self.waiters[i] = b.enqueue(self._grant_cb(i))
        self.queue.append(i)

    @rule()
    @precondition(lambda self: self.b is not None)
    def reserve(self) -> None:
        b = self._breaker()
        expect = b.in_flight < b.total_slots and b.in_use < b.capacity
        assert b.reserve() is expect
        if expect:
            self.holders += 1

    @rule()
    @precondition(lambda self: self.b is not None and self.holders > 0)
    def release(self) -> None:
        b = self._breaker()
        before = len(self.granted)
        self.holders -= 1
        b.release()
        self._absorb_grants(before)
        assert len(self.granted) - before <= 1

    @rule(data=st.data())
    @precondition(lambda self: self.b is not None and len(self.queue) > 0)
    def cancel(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self.queue))
        assert self.waiters[i].cancel() is True
        assert self.waiters[i].cancel() is False
        self.queue.remove(i)
        del self.waiters[i]

    @rule(cap=st.integers(-1, 6))
    @precondition(lambda self: self.b is not None)
    def update(self, cap: int) -> None:
        b = self._breaker()
        before = len(self.granted)
        in_use_before = b.in_use
        b.update_concurrency(cap)
        new = max(cap, 0)
        assert b.capacity == new
        self._absorb_grants(before)
        woken = len(self.granted) - before
        assert woken == min(len(self.queue) + woken, max(0, new - in_use_before))

    @invariant()
    def counts(self) -> None:
        if self.b is None:
            return
        b = self.b
        assert b.in_use == self.holders
        assert b.waiting == len(self.queue)
        assert b.in_flight == b.in_use + b.waiting
        assert b.in_flight <= b.total_slots
        if b.in_use > b.capacity:
            # only a lowered capacity leaves holders above it, and then nobody new gets a slot
            assert b.in_use <= self.prev_in_use
        self.prev_in_use = b.in_use
        if self.queue:
            # live waiters only exist while every active slot is taken
            assert b.in_use >= b.capacity
        assert all(n == 1 for n in self.grant_calls.values())


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

"""Unit tests for activator.throttler: capacity, subsetting, FIFO queue, grants and pod limits."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from activator.lb_policy import PodTracker
from activator.throttler import (
    Lease,
    QueueFullError,
    RevisionThrottler,
    Ticket,
    assign_slice,
)
from dataplane.breaker import MAX_BREAKER_CAPACITY
from dataplane.breaker import QueueFullError as BreakerQueueFullError

PODS = [f"10.0.0.{i}:8012" for i in range(1, 10)]
A, B, C, D, E = PODS[:5]


class Grants:
    """Records on_grant calls in order: (name, lease)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Lease]] = []

    def cb(self, name: str) -> Callable[[Lease], None]:
        def on_grant(lease: Lease) -> None:
            self.got.append((name, lease))

        return on_grant

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.got]

    def lease(self, name: str) -> Lease:
        return next(lease for n, lease in self.got if n == name)


def never(lease: Lease) -> None:
    raise AssertionError("on_grant must not be called for an immediate lease")


def lease_now(th: RevisionThrottler) -> Lease:
    got = th.try_acquire(never)
    assert isinstance(got, Lease), got
    return got


def ticket(th: RevisionThrottler, on_grant: Callable[[Lease], None]) -> Ticket:
    got = th.try_acquire(on_grant)
    assert isinstance(got, Ticket), got
    return got


def tracker(th: RevisionThrottler, dest: str) -> PodTracker:
    """The live tracker of ``dest`` (to simulate a pod-level race from outside)."""
    return th._trackers[dest]


def per_pod(leases: list[Lease]) -> Counter[str]:
    return Counter(lease.dest for lease in leases if not lease.released)


# --------------------------------------------------------------------------- construction


class TestConstruction:
    def test_defaults(self) -> None:
        th = RevisionThrottler(5)
        assert th.queue_depth == 10_000
        assert th.container_concurrency == 5
        assert (th.capacity, th.in_flight, th.waiting, th.assigned) == (0, 0, 0, [])

    @pytest.mark.parametrize("cc", [-1, -10])
    def test_negative_cc(self, cc: int) -> None:
        with pytest.raises(ValueError, match="container concurrency"):
            RevisionThrottler(cc)

    @pytest.mark.parametrize("depth", [0, -1])
    def test_bad_queue_depth(self, depth: int) -> None:
        with pytest.raises(ValueError, match="queue depth"):
            RevisionThrottler(1, queue_depth=depth)

    def test_queue_full_error_is_the_breakers(self) -> None:
        assert QueueFullError is BreakerQueueFullError
        assert str(QueueFullError()) == "pending request queue full"


# --------------------------------------------------------------------------- assign_slice


class TestAssignSlice:
    def test_five_pods_two_activators(self) -> None:
        pods = PODS[:5]
        assert assign_slice(pods, 0, 2) == [pods[0], pods[1], pods[4]]
        assert assign_slice(pods, 1, 2) == [pods[2], pods[3]]

    def test_seven_pods_three_activators(self) -> None:
        p = list(range(7))
        assert [assign_slice(p, i, 3) for i in range(3)] == [[0, 1, 6], [2, 3], [4, 5]]

    def test_eight_pods_three_activators_two_remnants(self) -> None:
        p = list(range(8))
        assert [assign_slice(p, i, 3) for i in range(3)] == [[0, 1, 6], [2, 3, 7], [4, 5]]

    def test_even_split(self) -> None:
        p = list(range(6))
        assert [assign_slice(p, i, 3) for i in range(3)] == [[0, 1], [2, 3], [4, 5]]

    def test_more_activators_than_pods(self) -> None:
        p = ["a", "b"]
        assert [assign_slice(p, i, 5) for i in range(5)] == [["a"], ["b"], ["a"], ["b"], ["a"]]

    @pytest.mark.parametrize(
        ("n", "index", "count"),
        [(5, -1, 3), (1, 2, 3), (0, 1, 3), (4, 0, 1), (4, 0, 0), (4, -1, -1)],
    )
    def test_all_pods(self, n: int, index: int, count: int) -> None:
        p = list(range(n))
        assert assign_slice(p, index, count) == p

    @settings(max_examples=200, deadline=None)
    @given(n=st.integers(2, 40), count=st.integers(2, 40))
    def test_partition_when_enough_pods(self, n: int, count: int) -> None:
        p = list(range(n))
        slices = [assign_slice(p, i, count) for i in range(count)]
        if count > n:
            assert all(len(s) == 1 for s in slices)
            assert {s[0] for s in slices} == set(p)
        else:
            flat = [x for s in slices for x in s]
            assert sorted(flat) == p  # disjoint and complete
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
            assert all(s == sorted(s) for s in slices)


# --------------------------------------------------------------------------- capacity


class TestCapacity:
    def test_no_pods_zero(self) -> None:
        for cc in (0, 1, 10):
            th = RevisionThrottler(cc)
            th.update_backends([])
            assert th.capacity == 0

    @pytest.mark.parametrize(("cc", "n"), [(1, 1), (3, 2), (10, 3), (100, 9)])
    def test_cc_times_pods(self, cc: int, n: int) -> None:
        th = RevisionThrottler(cc)
        th.update_backends(PODS[:n])
        assert th.capacity == cc * n
        assert th.assigned == sorted(PODS[:n])

    def test_cc0_open_with_a_pod(self) -> None:
        th = RevisionThrottler(0)
        th.update_backends([A])
        assert th.capacity == MAX_BREAKER_CAPACITY
        th.update_backends([A, B, C])
        assert th.capacity == MAX_BREAKER_CAPACITY
        th.update_backends([])
        assert th.capacity == 0

    def test_capped_at_max(self) -> None:
        th = RevisionThrottler(2**30)
        th.update_backends(PODS[:3])
        assert th.capacity == MAX_BREAKER_CAPACITY

    def test_dests_deduplicated_and_sorted(self) -> None:
        th = RevisionThrottler(2)
        th.update_backends([C, A, B, A])
        assert th.assigned == [A, B, C]
        assert th.capacity == 6

    def test_three_pods_two_activators_cc10(self) -> None:
        caps = []
        for index in (0, 1):
            th = RevisionThrottler(10)
            th.update_backends([A, B, C])
            th.update_activators(index, 2)
            caps.append(th.capacity)
        assert caps == [20, 10]

    def test_five_pods_two_activators(self) -> None:
        th0, th1 = RevisionThrottler(1), RevisionThrottler(1)
        for th, i in ((th0, 0), (th1, 1)):
            th.update_activators(i, 2)
            th.update_backends(PODS[:5])
        assert th0.assigned == [PODS[0], PODS[1], PODS[4]]
        assert th1.assigned == [PODS[2], PODS[3]]
        assert (th0.capacity, th1.capacity) == (3, 2)

    def test_more_activators_than_pods(self) -> None:
        caps = []
        for i in range(4):
            th = RevisionThrottler(5)
            th.update_backends([A, B])
            th.update_activators(i, 4)
            assert th.assigned == [[A], [B]][i % 2]
            caps.append(th.capacity)
        assert caps == [5, 5, 5, 5]  # each activator assumes the full CC of its pod

    def test_unknown_activators_use_all(self) -> None:
        th = RevisionThrottler(3)
        th.update_backends([A, B, C])
        th.update_activators(1, 3)
        assert th.assigned == [B]
        th.update_activators(-1, 3)
        assert th.assigned == [A, B, C]
        th.update_activators(1, 3)
        th.update_activators(0, 0)
        assert th.assigned == [A, B, C]
        th.update_activators(0, 1)
        assert th.capacity == 9

    def test_cc0_not_sliced(self) -> None:
        th = RevisionThrottler(0)
        th.update_backends([A, B, C])
        th.update_activators(1, 2)
        assert th.assigned == [A, B, C]
        assert th.capacity == MAX_BREAKER_CAPACITY

    def test_index_out_of_range(self) -> None:
        th = RevisionThrottler(1)
        with pytest.raises(ValueError, match="activator index"):
            th.update_activators(2, 2)

    def test_single_pod_not_sliced(self) -> None:
        th = RevisionThrottler(4)
        th.update_backends([A])
        th.update_activators(1, 2)
        assert th.assigned == [A]
        assert th.capacity == 4


# --------------------------------------------------------------------------- immediate leases


class TestImmediate:
    def test_lease_at_once_without_callback(self) -> None:
        th = RevisionThrottler(2)
        th.update_backends([A])
        lease = lease_now(th)
        assert lease.dest == A
        assert th.in_flight == 1
        lease.release()
        assert th.in_flight == 0
        assert lease.released

    def test_release_twice_is_noop(self) -> None:
        th = RevisionThrottler(1)
        th.update_backends([A])
        first = lease_now(th)
        first.release()
        second = lease_now(th)
        first.release()  # must not free second's slot
        assert th.in_flight == 1
        assert tracker(th, A).weight == 1
        g = Grants()
        ticket(th, g.cb("t"))
        first.release()
        assert g.names == []
        second.release()
        assert g.names == ["t"]

    def test_cc1_first_available_packs(self) -> None:
        th = RevisionThrottler(2)
        th.update_backends([C, A, B])
        dests = [lease_now(th).dest for _ in range(6)]
        assert dests == [A, A, B, B, C, C]

    def test_cc_over_3_round_robin(self) -> None:
        th = RevisionThrottler(4)
        th.update_backends([C, A, B])
        leases = [lease_now(th) for _ in range(7)]
        assert [x.dest for x in leases] == [A, B, C, A, B, C, A]
        leases[1].release()
        # index is now 1 (after A); B has a free slot again
        assert lease_now(th).dest == B

    def test_round_robin_index_reset_after_shrink(self) -> None:
        th = RevisionThrottler(4)
        th.update_backends([A, B, C])
        for _ in range(3):
            lease_now(th).release()  # index now past C -> 3
        th.update_backends([A, B])
        assert lease_now(th).dest == A

    def test_cc0_balances(self) -> None:
        th = RevisionThrottler(0, rng=random.Random(1))
        th.update_backends([A, B])
        leases = [lease_now(th) for _ in range(100)]
        counts = per_pod(leases)
        assert abs(counts[A] - counts[B]) <= 1

    def test_cc0_unlimited_once_a_pod_exists(self) -> None:
        th = RevisionThrottler(0, queue_depth=1, rng=random.Random(1))
        th.update_backends([A])
        leases = [lease_now(th) for _ in range(5000)]
        assert th.in_flight == 5000
        assert th.waiting == 0
        for x in leases:
            x.release()
        assert th.in_flight == 0
        assert tracker(th, A).weight == 0


# --------------------------------------------------------------------------- queueing


class TestQueue:
    def test_queue_overflow(self) -> None:
        th = RevisionThrottler(1, queue_depth=3)
        tickets = [ticket(th, never) for _ in range(3)]
        with pytest.raises(QueueFullError, match=r"^pending request queue full$"):
            th.try_acquire(never)
        assert th.waiting == 3
        assert tickets[1].cancel()
        assert isinstance(th.try_acquire(never), Ticket)
        with pytest.raises(QueueFullError):
            th.try_acquire(never)

    def test_overflow_counts_waiting_only(self) -> None:
        th = RevisionThrottler(2, queue_depth=2)
        th.update_backends([A])
        leases = [lease_now(th) for _ in range(2)]
        ticket(th, never)
        ticket(th, never)
        with pytest.raises(QueueFullError):
            th.try_acquire(never)
        assert th.in_flight == 2
        assert leases[0].dest == A

    def test_cc0_queue_is_bounded(self) -> None:
        th = RevisionThrottler(0, queue_depth=2)
        ticket(th, never)
        ticket(th, never)
        with pytest.raises(QueueFullError, match="pending request queue full"):
            th.try_acquire(never)

    def test_cancel_semantics(self) -> None:
        th = RevisionThrottler(1)
        g = Grants()
        t1 = ticket(th, g.cb("t1"))
        t2 = ticket(th, g.cb("t2"))
        assert (t1.waiting, t1.granted, t1.cancelled) == (True, False, False)
        assert th.waiting == 2
        assert t1.cancel()
        assert (t1.waiting, t1.granted, t1.cancelled) == (False, False, True)
        assert not t1.cancel()
        assert th.waiting == 1
        th.update_backends([A])
        assert g.names == ["t2"]
        assert t2.granted
        assert not t2.cancel()  # already granted: the lease stays with its owner
        assert th.in_flight == 1
        assert th.waiting == 0

    def test_fifo_one_by_one(self) -> None:
        th = RevisionThrottler(1)
        th.update_backends([A])
        first = lease_now(th)
        g = Grants()
        tickets = [ticket(th, g.cb(str(i))) for i in range(5)]
        tickets[2].cancel()
        held = first
        for expect in ["0", "1", "3", "4"]:
            held.release()
            assert g.names[-1] == expect
            held = g.lease(expect)
            # a newcomer never overtakes the waiting ones
            if th.waiting:
                # ... it queues behind them; cancel it to keep the script simple
                assert ticket(th, never).cancel()
        assert g.names == ["0", "1", "3", "4"]

    def test_newcomer_queues_behind_waiting(self) -> None:
        th = RevisionThrottler(1)
        g = Grants()
        ticket(th, g.cb("old"))
        th.update_backends([A])
        assert g.names == ["old"]
        ticket(th, g.cb("new"))  # capacity full again
        g.lease("old").release()
        assert g.names == ["old", "new"]

    def test_cancelled_tickets_compacted(self) -> None:
        th = RevisionThrottler(1)
        tickets = [ticket(th, never) for _ in range(300)]
        for t in tickets[:-1]:
            assert t.cancel()
        assert th.waiting == 1
        assert len(th._queue) < 150
        g = Grants()
        tickets[-1].on_grant = g.cb("last")
        th.update_backends([A])
        assert g.names == ["last"]
        assert len(th._queue) == 0


# --------------------------------------------------------------------------- scaling


class TestScaling:
    def test_scale_from_zero(self) -> None:
        th = RevisionThrottler(2)
        g = Grants()
        tickets = [ticket(th, g.cb(str(i))) for i in range(10)]
        assert th.waiting == 10 and th.capacity == 0
        th.update_backends([A, B])
        assert g.names == ["0", "1", "2", "3"]
        assert per_pod([x for _, x in g.got]) == {A: 2, B: 2}
        assert th.waiting == 6
        th.update_backends([A, B, C])
        assert g.names[4:] == ["4", "5"]
        assert g.lease("4").dest == C and g.lease("5").dest == C
        g.lease("1").release()
        assert g.names[-1] == "6"
        assert all(t.granted for t in tickets[:7])
        assert per_pod([x for _, x in g.got]) == {A: 2, B: 2, C: 2}

    def test_cc0_queued_while_no_pod_then_all_released(self) -> None:
        th = RevisionThrottler(0, rng=random.Random(2))
        g = Grants()
        for i in range(50):
            ticket(th, g.cb(str(i)))
        assert th.capacity == 0
        th.update_backends([A])
        assert g.names == [str(i) for i in range(50)]
        assert th.in_flight == 50 and th.waiting == 0
        th.update_backends([])
        ticket(th, never)  # no pod again: queue
        assert th.in_flight == 50

    def test_scale_down_with_leases_outstanding(self) -> None:
        th = RevisionThrottler(2)
        th.update_backends([A, B])
        leases = [lease_now(th) for _ in range(4)]
        on_b = [x for x in leases if x.dest == B]
        on_a = [x for x in leases if x.dest == A]
        th.update_backends([A])
        assert th.capacity == 2 and th.in_flight == 4  # nobody pre-empted
        g = Grants()
        ticket(th, g.cb("w"))
        on_b[0].release()
        on_b[1].release()
        assert th.in_flight == 2
        assert g.names == []  # A is still full
        assert th._retired == {}
        on_a[0].release()
        assert g.names == ["w"] and g.lease("w").dest == A

    def test_removed_pod_readded_keeps_its_count(self) -> None:
        th = RevisionThrottler(2)
        th.update_backends([A])
        old = [lease_now(th) for _ in range(2)]
        th.update_backends([B])
        th.update_backends([A, B])
        fresh = [lease_now(th) for _ in range(2)]
        assert [x.dest for x in fresh] == [B, B]  # A still holds two old leases
        assert isinstance(th.try_acquire(never), Ticket)
        counts = per_pod(old + fresh)
        assert counts == {A: 2, B: 2}

    def test_release_after_pod_removed_for_good(self) -> None:
        th = RevisionThrottler(1)
        th.update_backends([A])
        lease = lease_now(th)
        th.update_backends([])
        assert th.capacity == 0
        lease.release()
        lease.release()
        assert th.in_flight == 0
        assert th._retired == {}
        th.update_backends([A])
        assert tracker(th, A).weight == 0
        assert lease_now(th).dest == A

    def test_shrink_by_activator_count_preempts_nobody(self) -> None:
        th = RevisionThrottler(1)
        th.update_backends([A, B, C, D])
        leases = [lease_now(th) for _ in range(4)]
        th.update_activators(0, 2)
        assert th.assigned == [A, B]
        assert th.capacity == 2 and th.in_flight == 4
        g = Grants()
        ticket(th, g.cb("w"))
        by = {x.dest: x for x in leases}
        by[C].release()
        by[D].release()
        assert g.names == []  # in_flight 2 = capacity
        by[B].release()
        assert g.lease("w").dest == B

    def test_growth_by_activator_change_grants(self) -> None:
        th = RevisionThrottler(1)
        th.update_activators(1, 2)
        th.update_backends([A, B])
        assert th.assigned == [B]
        lease_now(th)
        g = Grants()
        ticket(th, g.cb("w"))
        th.update_activators(-1, 0)
        assert g.lease("w").dest == A


# --------------------------------------------------------------------------- re-enqueue


class TestReenqueue:
    def test_slot_free_but_no_pod(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls = 0
        real_pick = RevisionThrottler._pick

        def counting_pick(self: RevisionThrottler) -> PodTracker | None:
            nonlocal calls
            calls += 1
            return real_pick(self)

        monkeypatch.setattr(RevisionThrottler, "_pick", counting_pick)
        th = RevisionThrottler(2)
        th.update_backends([A])
        t = tracker(th, A)
        assert t.reserve() and t.reserve()  # a pod-level race took both slots
        g = Grants()
        ticket(th, g.cb("first"))  # revision slot free, no pod: queued
        ticket(th, g.cb("second"))  # behind it, not ahead
        assert th.in_flight == 0 and th.waiting == 2
        calls = 0
        t.release()  # outside the throttler: nothing to notice, nothing spins
        assert calls == 0 and g.names == []
        th.update_backends([A])  # any change retries, from the front
        assert g.names == ["first"]
        assert calls == 2  # one grant, one failed pick for "second"; no loop
        t.release()
        th.update_activators(-1, 1)
        assert g.names == ["first", "second"]
        assert th.in_flight == 2

    def test_front_stays_first_after_failed_grant(self) -> None:
        th = RevisionThrottler(2)
        th.update_backends([A])
        t = tracker(th, A)
        assert t.reserve() and t.reserve()
        g = Grants()
        for name in ("1", "2", "3"):
            ticket(th, g.cb(name))
        th.update_backends([A])  # a grant attempt: "1" fails to find a pod, stays first
        assert g.names == []
        t.release()
        # a newcomer does not take the freed pod slot ahead of the waiting ones
        late = ticket(th, g.cb("late"))
        th.update_activators(0, 1)
        assert g.names == ["1"]
        t.release()
        th.update_backends([A])
        assert g.names == ["1", "2"]
        assert late.waiting

    def test_front_kept_across_release(self) -> None:
        th = RevisionThrottler(2)
        th.update_backends([A])
        lease = lease_now(th)
        t = tracker(th, A)
        assert t.reserve()
        g = Grants()
        ticket(th, g.cb("first"))
        ticket(th, g.cb("second"))
        lease.release()  # frees a pod slot: goes to the front ticket
        assert g.names == ["first"]
        t.release()
        g.lease("first").release()  # two pod slots free now, both granted in order
        assert g.names == ["first", "second"]


# --------------------------------------------------------------------------- re-entrancy


class TestReentrancy:
    def test_grant_releases_at_once(self) -> None:
        th = RevisionThrottler(1)
        order: list[str] = []
        depth = 0

        def cb(name: str) -> Callable[[Lease], None]:
            def on_grant(lease: Lease) -> None:
                nonlocal depth
                assert depth == 0, "callbacks never nest"
                depth += 1
                order.append(name)
                lease.release()
                depth -= 1

            return on_grant

        for i in range(5):
            ticket(th, cb(str(i)))
        th.update_backends([A])
        assert order == ["0", "1", "2", "3", "4"]
        assert th.in_flight == 0 and th.waiting == 0

    def test_grant_acquires_again(self) -> None:
        th = RevisionThrottler(1)
        g = Grants()
        inner: list[Lease | Ticket] = []

        def on_grant(lease: Lease) -> None:
            g.got.append(("outer", lease))
            inner.append(th.try_acquire(g.cb("inner")))

        ticket(th, on_grant)
        ticket(th, g.cb("second"))
        th.update_backends([A])
        assert g.names == ["outer"]
        assert isinstance(inner[0], Ticket)  # behind "second"
        g.lease("outer").release()
        assert g.names == ["outer", "second"]
        g.lease("second").release()
        assert g.names == ["outer", "second", "inner"]

    def test_grant_order_when_callback_frees_capacity(self) -> None:
        th = RevisionThrottler(1)
        order: list[str] = []

        def releaser(lease: Lease) -> None:
            order.append("r")
            lease.release()  # grants "c" now, delivered after "b"

        def rec(name: str) -> Callable[[Lease], None]:
            return lambda lease: order.append(name)

        ticket(th, releaser)
        ticket(th, rec("b"))
        ticket(th, rec("c"))
        th.update_backends([A, B])  # r and b granted together
        assert order == ["r", "b", "c"]
        assert th.in_flight == 2

    def test_cancel_of_granted_pending_ticket(self) -> None:
        th = RevisionThrottler(1)
        g = Grants()
        tickets: list[Ticket] = []
        results: list[bool] = []

        def first(lease: Lease) -> None:
            g.got.append(("first", lease))
            results.append(tickets[1].cancel())

        tickets.append(ticket(th, first))
        tickets.append(ticket(th, g.cb("second")))
        th.update_backends([A, B])
        assert results == [False]  # granted already; its on_grant still runs
        assert g.names == ["first", "second"]

    def test_raising_callback_releases_and_reraises(self) -> None:
        th = RevisionThrottler(1)
        g = Grants()

        def boom(lease: Lease) -> None:
            raise RuntimeError("boom")

        ticket(th, boom)
        ticket(th, g.cb("after"))
        ticket(th, g.cb("third"))
        with pytest.raises(RuntimeError, match="boom"):
            th.update_backends([A, B])
        # boom's lease was released and given to "third"; "after" still delivered
        assert g.names == ["after", "third"]
        assert th.in_flight == 2
        assert not th._delivering
        g.lease("after").release()
        assert th.in_flight == 1

    def test_update_inside_callback(self) -> None:
        th = RevisionThrottler(1)
        g = Grants()

        def grow(lease: Lease) -> None:
            g.got.append(("grow", lease))
            th.update_backends([A, B, C])

        ticket(th, grow)
        ticket(th, g.cb("b"))
        ticket(th, g.cb("c"))
        th.update_backends([A])
        assert g.names == ["grow", "b", "c"]
        assert per_pod([x for _, x in g.got]) == {A: 1, B: 1, C: 1}


# --------------------------------------------------------------------------- state machine


def model_assigned(pods: list[str], index: int, count: int) -> list[str]:
    """Independent formulation of assignSlice: which activator owns each sorted position."""
    n = len(pods)
    if index < 0 or count <= 1 or n <= 1:
        return pods
    if count > n:
        return [pods[index % n]]
    size = n // count
    out = []
    for pos, pod in enumerate(pods):
        owner = pos // size if pos < size * count else pos - size * count
        if owner == index:
            out.append(pod)
    return out


class ThrottlerMachine(RuleBasedStateMachine):
    """Random sequences of requests, releases, cancels, pod and activator updates."""

    @initialize(
        cc=st.sampled_from([0, 1, 2, 3, 4, 5]),
        depth=st.integers(1, 6),
        seed=st.integers(0, 2**32 - 1),
    )
    def init(self, cc: int, depth: int, seed: int) -> None:
        self.cc = cc
        self.depth = depth
        self.th = RevisionThrottler(cc, queue_depth=depth, rng=random.Random(seed))
        self.pods: list[str] = []
        self.index, self.count = -1, -1
        self.leases: list[Lease] = []  # held by the test
        self.released: list[Lease] = []
        self.tickets: list[Ticket | None] = []  # by request number; None: immediate lease
        self.waiting: list[int] = []  # ticket numbers, FIFO
        self.delivered: list[int] = []
        self.cancelled: set[int] = set()
        self.on_pod: Counter[str] = Counter()  # outstanding leases per dest
        self.stolen: list[PodTracker] = []
        self.dirty = False  # a stolen slot came back: the throttler cannot know until a change
        self.issued = 0
        self.prev_in_flight = 0
        self.stole = False  # a stolen slot freed on a removed pod leaves an idle retired tracker

    # -- helpers ---------------------------------------------------------------------------
    def _ticket(self, n: int) -> Ticket:
        t = self.tickets[n]
        assert t is not None
        return t

    def _issue(self, lease: Lease) -> None:
        self.issued += 1
        self.on_pod[lease.dest] += 1
        if self.cc > 0:
            stolen = sum(1 for t in self.stolen if t.dest == lease.dest)
            assert self.on_pod[lease.dest] + stolen <= self.cc, "more than CC on one pod"

    def _release(self, lease: Lease) -> None:
        self.on_pod[lease.dest] -= 1
        lease.release()
        self.released.append(lease)

    def _acquire(self, behaviour: str) -> None:
        n = len(self.tickets)

        def on_grant(lease: Lease) -> None:
            assert n not in self.cancelled
            assert n not in self.delivered, "granted twice"
            assert self.waiting and self.waiting[0] == n, "not FIFO"
            self.waiting.pop(0)
            self.delivered.append(n)
            self._issue(lease)
            if behaviour == "release":
                self._release(lease)
            else:
                self.leases.append(lease)
                if behaviour == "acquire":
                    self._acquire("hold")

        # tickets granted but not delivered yet (we may be inside an on_grant) no longer wait
        live_waiting = sum(1 for i in self.waiting if self._ticket(i).waiting)
        try:
            got = self.th.try_acquire(on_grant)
        except QueueFullError:
            assert live_waiting == self.depth
            return
        if isinstance(got, Lease):
            assert live_waiting == 0, "a newcomer overtook a waiting request"
            self._issue(got)
            self.leases.append(got)
            self.tickets.append(None)
        else:
            self.tickets.append(got)
            self.waiting.append(n)

    # -- rules -----------------------------------------------------------------------------
    @rule(behaviour=st.sampled_from(["hold", "hold", "release", "acquire"]))
    def acquire(self, behaviour: str) -> None:
        self._acquire(behaviour)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        self._release(lease)
        self.dirty = False

    @precondition(lambda self: self.released)
    @rule(data=st.data())
    def release_again(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.released))
        before = (self.th.in_flight, self.th.waiting, len(self.delivered))
        lease.release()
        assert (self.th.in_flight, self.th.waiting, len(self.delivered)) == before

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(self.waiting))
        assert self._ticket(n).cancel()
        assert not self._ticket(n).cancel()
        self.waiting.remove(n)
        self.cancelled.add(n)

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def cancel_granted(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(self.delivered))
        assert not self._ticket(n).cancel()

    @rule(pods=st.sets(st.sampled_from(PODS[:6]), max_size=6))
    def update_backends(self, pods: set[str]) -> None:
        self.pods = sorted(pods)
        self.th.update_backends(pods)
        self.dirty = False

    @rule(data=st.data())
    def update_activators(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(-1, 4))
        index = data.draw(st.integers(-1, count - 1)) if count > 0 else -1
        changed = (index, count) != (self.index, self.count)
        self.index, self.count = index, count
        self.th.update_activators(index, count)
        if changed:
            self.dirty = False

    @precondition(lambda self: self.cc > 0)
    @rule(data=st.data())
    def steal(self, data: st.DataObject) -> None:
        """A pod-level race: a reservation the throttler did not make."""
        free = [t for t in self.th._assigned if t.available]
        if not free:
            return
        t = data.draw(st.sampled_from(free))
        assert t.reserve()
        self.stolen.append(t)
        self.stole = True

    @precondition(lambda self: self.stolen)
    @rule(data=st.data())
    def unsteal(self, data: st.DataObject) -> None:
        t = self.stolen.pop(data.draw(st.integers(0, len(self.stolen) - 1)))
        t.release()
        self.dirty = True

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def counts(self) -> None:
        th = self.th
        assert th.in_flight == len(self.leases)
        assert th.waiting == len(self.waiting) <= self.depth
        assigned = self.pods if self.cc == 0 else model_assigned(self.pods, self.index, self.count)
        assert th.assigned == assigned
        if self.cc == 0:
            assert th.capacity == (MAX_BREAKER_CAPACITY if self.pods else 0)
        else:
            assert th.capacity == self.cc * len(assigned)

    @invariant()
    def per_pod_limit(self) -> None:
        held = per_pod(self.leases)
        assert held == +self.on_pod
        stolen = Counter(t.dest for t in self.stolen)
        if self.cc > 0:
            for dest in set(held) | set(stolen):
                assert held[dest] + stolen[dest] <= self.cc
        for dest, t in {**self.th._retired, **self.th._trackers}.items():
            assert t.weight == held[dest] + stolen[dest]
        for dest, t in self.th._retired.items():
            assert dest not in self.th._trackers
            assert t.weight > 0 or self.stole

    @invariant()
    def capacity_respected(self) -> None:
        th = self.th
        if self.issued:
            assert th.in_flight <= th.capacity, "granted beyond capacity"
        assert th.in_flight <= max(th.capacity, self.prev_in_flight)
        self.prev_in_flight = th.in_flight
        self.issued = 0

    @invariant()
    def no_stuck_waiter(self) -> None:
        th = self.th
        if th.waiting and not self.dirty and th.in_flight < th.capacity:
            # only a reservation made behind the throttler's back can block the front ticket
            assert not any(t.available for t in th._assigned)
            assert self.stolen

    @invariant()
    def tickets_consistent(self) -> None:
        assert not (self.cancelled & set(self.delivered))
        assert self.delivered == sorted(self.delivered)
        for n in self.waiting:
            assert self._ticket(n).waiting

    def teardown(self) -> None:
        if not hasattr(self, "th"):
            return
        for t in self.stolen:
            t.release()
        self.stolen.clear()
        for n in list(self.waiting):
            assert self._ticket(n).cancel()
        self.waiting.clear()
        for lease in list(self.leases):
            lease.release()
        self.leases.clear()
        assert self.th.in_flight == 0 and self.th.waiting == 0
        if not self.stole:
            assert self.th._retired == {}


TestThrottlerMachine = ThrottlerMachine.TestCase
TestThrottlerMachine.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the ClusterIP fallback (SPEC §2.5: capacity from the K8s-ready count) -------------------

CLUSTER = "10.96.0.7:80"


@pytest.mark.parametrize(
    ("cc", "ready", "activators", "capacity"),
    [
        (10, 3, -1, 30),  # activator count unknown: all of it
        (10, 3, 2, 15),
        (1, 1, 3, 1),  # integer division gives 0: raised to 1
        (10, 0, 2, 0),  # no ready pod behind the ClusterIP
        (0, 2, 2, MAX_BREAKER_CAPACITY),  # CC 0: open
        (0, 0, 2, 0),
    ],
)
def test_cluster_capacity(cc: int, ready: int, activators: int, capacity: int) -> None:
    th = RevisionThrottler(cc)
    th.update_backends([A, B])  # pods are not used while the ClusterIP is
    if activators > 0:
        th.update_activators(0, activators)
    th.update_cluster(CLUSTER, ready)
    assert th.capacity == capacity
    assert th.assigned == [] and th.cluster == CLUSTER


def test_cluster_dest_takes_every_lease_then_pods_again() -> None:
    th = RevisionThrottler(2)
    th.update_backends([A])
    th.update_cluster(CLUSTER, 2)
    leases = [th.try_acquire(lambda lease: None) for _ in range(4)]
    assert all(isinstance(x, Lease) and x.dest == CLUSTER for x in leases)
    assert isinstance(th.try_acquire(lambda lease: None), Ticket)  # 2 x 2 slots taken
    assert th.in_flight_by_pod() == {CLUSTER: 4}
    th.update_cluster(None, 0)  # back to the pods: capacity CC x 1
    assert th.cluster is None and th.capacity == 2 and th.assigned == [A]
    for x in leases:
        assert isinstance(x, Lease)
        x.release()  # leases on the old ClusterIP tracker release cleanly
    assert th.in_flight_by_pod() == {A: 1}  # the waiting request got the pod
    with pytest.raises(ValueError):
        th.update_cluster(CLUSTER, -1)

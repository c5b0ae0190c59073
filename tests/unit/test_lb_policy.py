"""Unit tests for activator.lb_policy: pod trackers and the three load-balancing policies."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from activator.lb_policy import PodTracker, RoundRobin, first_available, random_choice_2


def trackers(n: int, cc: int) -> list[PodTracker]:
    return [PodTracker(f"10.0.0.{i}:8012", cc) for i in range(1, n + 1)]


def available(t: PodTracker) -> bool:
    """``t.available`` through a call, so mypy does not narrow it across reservations."""
    return t.available


def fill(t: PodTracker, k: int) -> None:
    for _ in range(k):
        assert t.reserve()


class ScriptedRng(random.Random):
    """A Random whose ``randrange`` and ``getrandbits`` answers are scripted."""

    def __init__(self, ranges: list[int], bits: list[int] | None = None) -> None:
        super().__init__(0)
        self.ranges = list(ranges)
        self.bits = list(bits or [])
        self.range_calls: list[int] = []

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        assert stop is None and step == 1
        self.range_calls.append(start)
        v = self.ranges.pop(0)
        assert 0 <= v < start
        return v

    def getrandbits(self, k: int) -> int:
        assert k == 1
        return self.bits.pop(0)


# --------------------------------------------------------------------------- PodTracker


class TestPodTracker:
    def test_cc0_has_no_limit_and_never_refuses(self) -> None:
        t = PodTracker("a:1", 0)
        assert t.limit == 0
        assert t.dest == "a:1"
        for i in range(1, 1001):
            assert t.reserve()
            assert t.weight == i
        assert t.available
        t.release()
        assert t.weight == 999

    def test_cc_is_the_limit(self) -> None:
        t = PodTracker("a:1", 7)
        assert t.limit == 7
        fill(t, 7)
        assert not t.reserve()

    @pytest.mark.parametrize("cc", [1, 2, 3, 10])
    def test_reserve_up_to_cc(self, cc: int) -> None:
        t = PodTracker("a:1", cc)
        fill(t, cc)
        assert t.weight == cc
        assert not available(t)
        assert not t.reserve()
        assert t.weight == cc  # a refused reserve changes nothing
        t.release()
        assert t.weight == cc - 1
        assert available(t)
        assert t.reserve()

    def test_release_without_reservation_is_an_error(self) -> None:
        for cc in (0, 1):
            t = PodTracker("a:1", cc)
            with pytest.raises(RuntimeError):
                t.release()
            assert t.weight == 0


# --------------------------------------------------------------------------- random_choice_2


class TestRandomChoice2:
    def test_empty(self) -> None:
        assert random_choice_2([], random.Random(1)) is None

    def test_single_tracker_always_picked(self) -> None:
        (t,) = trackers(1, 0)
        rng = ScriptedRng([])  # no randomness consumed
        for i in range(1, 6):
            assert random_choice_2([t], rng) is t
            assert t.weight == i

    def test_two_trackers_lower_weight_wins(self) -> None:
        a, b = trackers(2, 0)
        fill(a, 3)
        rng = ScriptedRng([])  # no tie, no randomness
        assert random_choice_2([a, b], rng) is b
        assert (a.weight, b.weight) == (3, 1)
        assert random_choice_2([b, a], rng) is b

    def test_two_trackers_tie_is_random(self) -> None:
        a, b = trackers(2, 0)
        assert random_choice_2([a, b], ScriptedRng([], bits=[0])) is a
        a.release()
        assert random_choice_2([a, b], ScriptedRng([], bits=[1])) is b

    def test_two_trackers_stay_balanced(self) -> None:
        a, b = trackers(2, 0)
        rng = random.Random(7)
        for _ in range(101):
            random_choice_2([a, b], rng)
            assert abs(a.weight - b.weight) <= 1

    def test_tie_breaks_both_ways(self) -> None:
        a, b = trackers(2, 0)
        rng = random.Random(3)
        seen: Counter[str] = Counter()
        for _ in range(200):
            t = random_choice_2([a, b], rng)
            assert t is not None
            seen[t.dest] += 1
            t.release()
        assert seen[a.dest] > 50 and seen[b.dest] > 50

    def test_more_than_two_draws_distinct_pair(self) -> None:
        ts = trackers(3, 0)
        fill(ts[0], 5)
        fill(ts[1], 2)
        fill(ts[2], 1)
        # r1 = 1, second draw 1 from range(2) is shifted past r1 -> 2: compare ts[1] and ts[2].
        rng = ScriptedRng([1, 1])
        assert random_choice_2(ts, rng) is ts[2]
        assert rng.range_calls == [3, 2]
        # r1 = 2, second draw 0 -> 0: compare ts[2] (now 2) and ts[0] (5).
        assert random_choice_2(ts, ScriptedRng([2, 0])) is ts[2]
        # r1 = 0, second draw 0 -> shifted to 1: ts[0] (5) against ts[1] (2).
        assert random_choice_2(ts, ScriptedRng([0, 0])) is ts[1]

    def test_heaviest_never_picked(self) -> None:
        ts = trackers(5, 0)
        fill(ts[3], 100)
        rng = random.Random(11)
        for _ in range(300):
            t = random_choice_2(ts, rng)
            assert t is not None and t is not ts[3]
            t.release()

    def test_spreads_load(self) -> None:
        ts = trackers(4, 0)
        rng = random.Random(5)
        for _ in range(400):
            random_choice_2(ts, rng)
        weights = [t.weight for t in ts]
        assert sum(weights) == 400
        assert max(weights) - min(weights) <= 3

    def test_full_limited_tracker_gives_none(self) -> None:
        # Not used with CC > 0 by the throttler, but a refused reserve must not be returned.
        (t,) = trackers(1, 1)
        fill(t, 1)
        assert random_choice_2([t], random.Random(0)) is None
        assert t.weight == 1


# --------------------------------------------------------------------------- first_available


class TestFirstAvailable:
    def test_empty(self) -> None:
        assert first_available([]) is None

    def test_packs_in_order(self) -> None:
        ts = trackers(3, 2)
        got = [first_available(ts) for _ in range(6)]
        assert [t.dest if t else None for t in got] == [
            ts[0].dest,
            ts[0].dest,
            ts[1].dest,
            ts[1].dest,
            ts[2].dest,
            ts[2].dest,
        ]
        assert first_available(ts) is None
        assert [t.weight for t in ts] == [2, 2, 2]

    def test_takes_first_freed(self) -> None:
        ts = trackers(3, 1)
        for _ in range(3):
            first_available(ts)
        ts[1].release()
        assert first_available(ts) is ts[1]
        ts[2].release()
        ts[0].release()
        assert first_available(ts) is ts[0]

    def test_single_and_two(self) -> None:
        (t,) = trackers(1, 3)
        assert [first_available([t]) for _ in range(4)] == [t, t, t, None]
        a, b = trackers(2, 1)
        assert first_available([a, b]) is a
        assert first_available([a, b]) is b
        assert first_available([a, b]) is None


# --------------------------------------------------------------------------- RoundRobin


class TestRoundRobin:
    def test_empty(self) -> None:
        rr = RoundRobin()
        assert rr.pick([]) is None
        assert rr.index == 0

    def test_cycles_and_wraps(self) -> None:
        ts = trackers(3, 10)
        rr = RoundRobin()
        got = [rr.pick(ts) for _ in range(7)]
        assert got == [ts[0], ts[1], ts[2], ts[0], ts[1], ts[2], ts[0]]
        assert rr.index == 1

    def test_skips_full_and_stores_next(self) -> None:
        ts = trackers(3, 4)
        fill(ts[1], 4)
        rr = RoundRobin()
        assert rr.pick(ts) is ts[0]
        assert rr.index == 1
        assert rr.pick(ts) is ts[2]  # ts[1] full: skipped
        assert rr.index == 3
        assert rr.pick(ts) is ts[0]  # index 3 is past the end: reset to 0
        assert rr.index == 1

    def test_wraps_from_the_middle(self) -> None:
        ts = trackers(3, 4)
        fill(ts[2], 4)
        rr = RoundRobin()
        rr.index = 2
        assert rr.pick(ts) is ts[0]  # 2 full, wrap to 0
        assert rr.index == 1

    def test_index_reset_when_list_shrinks(self) -> None:
        ts = trackers(5, 4)
        rr = RoundRobin()
        rr.index = 4
        assert rr.pick(ts[:2]) is ts[0]
        assert rr.index == 1

    def test_all_full(self) -> None:
        ts = trackers(2, 4)
        for t in ts:
            fill(t, 4)
        rr = RoundRobin()
        rr.index = 1
        assert rr.pick(ts) is None
        assert rr.index == 1
        assert [t.weight for t in ts] == [4, 4]

    def test_single_tracker(self) -> None:
        (t,) = trackers(1, 4)
        rr = RoundRobin()
        assert [rr.pick([t]) for _ in range(5)] == [t, t, t, t, None]
        t.release()
        assert rr.pick([t]) is t

    def test_even_spread(self) -> None:
        ts = trackers(4, 100)
        rr = RoundRobin()
        for _ in range(40):
            rr.pick(ts)
        assert [t.weight for t in ts] == [10, 10, 10, 10]

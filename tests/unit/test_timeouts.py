"""Unit tests for dataplane.timeouts: total, response-start and idle limits as a state machine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.timeouts import RequestDeadlines, TimeoutPolicy

START = 1000.0


def deadlines(total: float, rs: float = 0.0, idle: float = 0.0) -> RequestDeadlines:
    return RequestDeadlines(TimeoutPolicy(total, rs, idle), START)


class TestPolicy:
    def test_defaults(self) -> None:
        p = TimeoutPolicy(300)
        assert p == (300, 0.0, 0.0)
        assert p.response_start == 0.0
        assert p.idle == 0.0

    @pytest.mark.parametrize(
        ("policy", "enabled"),
        [
            (TimeoutPolicy(0), False),
            (TimeoutPolicy(0, 0, 0), False),
            (TimeoutPolicy(300), True),
            (TimeoutPolicy(0, 5), True),
            (TimeoutPolicy(0, 0, 5), True),
            (TimeoutPolicy(-1, -1, -1), False),
            (TimeoutPolicy(0.001), True),
        ],
    )
    def test_enabled(self, policy: TimeoutPolicy, enabled: bool) -> None:
        assert policy.enabled is enabled


class TestTotal:
    @pytest.mark.parametrize("last_write", [None, START, START + 5, START + 9.99])
    def test_total_always_fires(self, last_write: float | None) -> None:
        d = deadlines(10)
        assert d.next_deadline(last_write) == START + 10
        assert not d.expired(START + 9.999, last_write)
        assert d.expired(START + 10, last_write)
        assert d.expired(START + 1000, last_write)

    def test_total_fires_even_with_recent_writes_and_idle(self) -> None:
        d = deadlines(10, 0, 3)
        assert d.expired(START + 10, START + 9.5)
        assert d.next_deadline(START + 9.5) == START + 10


class TestResponseStart:
    def test_fires_when_nothing_written(self) -> None:
        d = deadlines(10, 2)
        assert d.next_deadline(None) == START + 2
        assert not d.expired(START + 1.999, None)
        assert d.expired(START + 2, None)

    def test_ignored_once_something_written(self) -> None:
        d = deadlines(10, 2)
        assert d.next_deadline(START + 1) == START + 10
        assert not d.expired(START + 2, START + 1)
        assert not d.expired(START + 9.9, START + 1)
        assert d.expired(START + 10, START + 1)

    def test_write_after_rs_deadline_still_counts(self) -> None:
        # a write that lands before the timer callback runs prevents the 504
        d = deadlines(10, 2)
        assert not d.expired(START + 2.5, START + 2.1)

    def test_longer_than_total_never_matters(self) -> None:
        d = deadlines(10, 20)
        assert d.next_deadline(None) == START + 10
        assert not d.expired(START + 9, None)
        assert d.expired(START + 10, None)


class TestIdle:
    def test_counts_from_start_when_nothing_written(self) -> None:
        d = deadlines(100, 0, 5)
        assert d.next_deadline(None) == START + 5
        assert not d.expired(START + 4.9, None)
        assert d.expired(START + 5, None)

    def test_counts_from_last_write(self) -> None:
        d = deadlines(100, 0, 5)
        assert d.next_deadline(START + 3) == START + 8
        assert not d.expired(START + 5, START + 3)
        assert not d.expired(START + 7.9, START + 3)
        assert d.expired(START + 8, START + 3)
        # each write moves the deadline
        assert d.next_deadline(START + 7) == START + 12
        assert not d.expired(START + 8, START + 7)

    def test_idle_with_response_start(self) -> None:
        d = deadlines(100, 2, 5)
        assert d.next_deadline(None) == START + 2
        assert d.next_deadline(START + 1) == START + 6
        assert d.expired(START + 6, START + 1)
        assert not d.expired(START + 5.5, START + 1)


class TestNextDeadline:
    @pytest.mark.parametrize(
        ("total", "rs", "idle", "last_write", "expected"),
        [
            (10, 0, 0, None, START + 10),
            (10, 3, 0, None, START + 3),
            (10, 3, 2, None, START + 2),
            (10, 2, 3, None, START + 2),
            (10, 3, 2, START + 1, START + 3),
            (10, 3, 20, START + 1, START + 10),
            (10, 3, 5, START + 6, START + 10),
            (0, 3, 0, None, START + 3),
            (0, 0, 4, START + 1, START + 5),
        ],
    )
    def test_earliest(
        self, total: float, rs: float, idle: float, last_write: float | None, expected: float
    ) -> None:
        assert deadlines(total, rs, idle).next_deadline(last_write) == expected

    def test_all_disabled(self) -> None:
        d = deadlines(0, 0, 0)
        assert d.next_deadline(None) is None
        assert d.next_deadline(START + 5) is None
        assert not d.expired(START + 10**9, None)
        assert not d.expired(START + 10**9, START)

    def test_only_response_start_after_write(self) -> None:
        d = deadlines(0, 5, 0)
        assert d.next_deadline(None) == START + 5
        assert d.next_deadline(START + 1) is None
        assert not d.expired(START + 10**6, START + 1)

    @pytest.mark.parametrize("value", [0, -1])
    def test_non_positive_disables(self, value: float) -> None:
        d = deadlines(value, value, value)
        assert d.next_deadline(None) is None
        assert not d.expired(START + 10**6, None)


# exact binary fractions keep float additions exact, so both methods must agree to the bit
_t = st.integers(0, 4000).map(lambda n: n / 8)
_limit = st.one_of(st.just(0.0), st.integers(1, 800).map(lambda n: n / 8))


@settings(max_examples=200, deadline=None)
@given(
    total=_limit,
    rs=_limit,
    idle=_limit,
    wrote=st.booleans(),
    lw=_t,
    now=_t,
)
def test_expired_iff_past_next_deadline(
    total: float, rs: float, idle: float, wrote: bool, lw: float, now: float
) -> None:
    d = RequestDeadlines(TimeoutPolicy(total, rs, idle), 0.0)
    last_write = lw if wrote else None
    nd = d.next_deadline(last_write)
    if nd is None:
        assert not d.expired(now, last_write)
    else:
        assert d.expired(now, last_write) is (now >= nd)
    # independent model of the three limits
    expect = (
        (total > 0 and now >= total)
        or (rs > 0 and last_write is None and now >= rs)
        or (idle > 0 and now - (0.0 if last_write is None else last_write) >= idle)
    )
    assert d.expired(now, last_write) is expect

"""Unit tests for autoscaler.aggregation: Knative's linear and weighted window averages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.aggregation import (
    TimedFloat64Buckets,
    WeightedFloat64Buckets,
    smoothing_coefficient,
)

T0 = 1_000_000.0  # an arbitrary epoch; buckets are floor(t)


def fill(b: TimedFloat64Buckets, start: int, stop: int, value: float) -> None:
    """Record ``value`` at every second in [start, stop)."""
    for s in range(start, stop):
        b.record(T0 + s, value)


# --- linear ---------------------------------------------------------------------------------


def test_empty_series_averages_zero() -> None:
    b = TimedFloat64Buckets(60)
    assert b.is_empty(T0)
    assert b.window_average(T0) == 0


def test_full_window_of_constant_values() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 120, 7.0)
    assert b.window_average(T0 + 119) == 7.0
    assert b.window_average(T0 + 119.9) == 7.0


def test_values_in_one_bucket_are_summed() -> None:
    b = TimedFloat64Buckets(60)
    b.record(T0 + 5.1, 1.0)  # e.g. an activator
    b.record(T0 + 5.7, 2.0)  # and the scraper, in the same second
    assert b.window_average(T0 + 5.9) == 3.0


def test_partial_window_divides_by_elapsed_buckets() -> None:
    b = TimedFloat64Buckets(60)
    b.record(T0, 10.0)
    assert b.window_average(T0) == 10.0  # one bucket so far
    b.record(T0 + 1, 20.0)
    assert b.window_average(T0 + 1) == 15.0  # (10 + 20) / 2
    fill(b, 2, 10, 10.0)
    assert b.window_average(T0 + 9) == 11.0  # 110 / 10


def test_gaps_count_as_zero() -> None:
    b = TimedFloat64Buckets(60)
    b.record(T0, 10.0)
    b.record(T0 + 4, 10.0)
    assert b.window_average(T0 + 4) == 4.0  # 20 over 5 buckets, 3 of them empty


def test_trailing_empty_buckets_are_excluded() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 10, 10.0)
    # 5 s without writes: still the average of the 10 written buckets.
    assert b.window_average(T0 + 14) == 10.0
    assert not b.is_empty(T0 + 14)


def test_trailing_exclusion_drops_buckets_that_left_the_window() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 60, 1.0)
    fill(b, 60, 61, 61.0)  # bucket 60 replaces bucket 0: total 59 + 61 = 120
    assert b.window_average(T0 + 60) == 2.0
    # 10 s later with no writes: buckets 1..10 left the window and the 10 trailing empty
    # ones are not counted, so the average is over buckets 11..60 (49 x 1 + 61) / 50.
    assert b.window_average(T0 + 70) == pytest.approx((49 * 1 + 61) / 50)


def test_nothing_for_a_whole_window_is_zero_and_empty() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 10, 5.0)
    assert b.window_average(T0 + 9 + 60) == 0.0  # exactly a window: average 0 ...
    assert not b.is_empty(T0 + 9 + 60)  # ... but not yet empty (Knative: d > window)
    assert b.window_average(T0 + 9 + 61) == 0.0
    assert b.is_empty(T0 + 9 + 61)


def test_first_write_after_silence_starts_a_new_partial_window() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 60, 100.0)
    b.record(T0 + 200, 10.0)
    assert b.window_average(T0 + 200) == 10.0
    b.record(T0 + 201, 20.0)
    assert b.window_average(T0 + 201) == 15.0


def test_writes_a_window_older_than_the_last_are_ignored() -> None:
    b = TimedFloat64Buckets(60)
    b.record(T0 + 100, 6.0)
    b.record(T0 + 40, 1000.0)  # 60 s before the last write: dropped
    assert b.window_average(T0 + 100) == 6.0
    b.record(T0 + 41, 54.0)  # inside the window: lands in its bucket, first write moves back
    assert b.window_average(T0 + 100) == pytest.approx(60.0 / 60)


def test_now_before_the_last_write() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 4, 8.0)
    assert b.window_average(T0) == 8.0  # total over the written buckets


def test_average_is_floored_to_six_digits() -> None:
    b = TimedFloat64Buckets(60)
    b.record(T0, 1.0)
    b.record(T0 + 2, 0.0)
    assert b.window_average(T0 + 2) == 0.333333
    b2 = TimedFloat64Buckets(60)
    b2.record(T0, 2.0)
    b2.record(T0 + 2, 0.0)
    assert b2.window_average(T0 + 2) == 0.666666  # floor, not round


def test_coarser_granularity() -> None:
    b = TimedFloat64Buckets(10, granularity=2)
    for s in range(0, 10, 2):
        b.record(T0 + s, 4.0)
        b.record(T0 + s + 1, 4.0)  # same 2 s bucket: summed to 8
    assert b.window_average(T0 + 9) == 8.0
    assert b.window_average(T0 + 13) == 8.0  # two trailing buckets excluded
    assert not b.is_empty(T0 + 19)  # last bucket 8..9, five buckets on: exactly the window
    assert b.is_empty(T0 + 20)


def test_invalid_windows() -> None:
    with pytest.raises(ValueError):
        TimedFloat64Buckets(0)
    with pytest.raises(ValueError):
        TimedFloat64Buckets(10, granularity=0)


def test_resize_keeps_newest_buckets() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 30, 1.0)
    fill(b, 30, 60, 3.0)
    assert b.window_average(T0 + 59) == 2.0
    b.resize_window(30, T0 + 59)
    assert b.window == 30
    assert b.window_average(T0 + 59) == 3.0
    b.resize_window(60, T0 + 59)  # growing keeps what is left, over the old span
    assert b.window_average(T0 + 59) == pytest.approx(90 / 30)
    b.resize_window(60, T0 + 59)  # same window: no-op
    assert b.window_average(T0 + 59) == pytest.approx(90 / 30)


def test_resize_after_silence_forgets() -> None:
    b = TimedFloat64Buckets(60)
    fill(b, 0, 10, 5.0)
    b.resize_window(30, T0 + 500)
    assert b.is_empty(T0 + 500)
    b.record(T0 + 501, 2.0)
    assert b.window_average(T0 + 501) == 2.0
    with pytest.raises(ValueError):
        b.resize_window(-1, T0)


@given(
    c=st.floats(0, 1e6, allow_nan=False),
    n=st.integers(1, 200),
    window=st.integers(6, 120),
    lag=st.floats(0, 5),
)
def test_constant_stream_averages_to_the_constant(
    c: float, n: int, window: int, lag: float
) -> None:
    b = TimedFloat64Buckets(window)
    fill(b, 0, n, c)
    got = b.window_average(T0 + n - 1 + lag)
    assert got == pytest.approx(c, rel=1e-6, abs=2e-6)  # floored to 6 digits


@given(
    writes=st.lists(
        st.tuples(st.floats(0, 300, allow_nan=False), st.floats(0, 1000, allow_nan=False)),
        min_size=1,
        max_size=80,
    ),
    probe=st.floats(0, 400, allow_nan=False),
)
def test_average_bounded_by_bucket_sums(writes: list[tuple[float, float]], probe: float) -> None:
    b = TimedFloat64Buckets(60)
    for t, v in sorted(writes):
        b.record(T0 + t, v)
    avg = b.window_average(T0 + probe)
    assert avg >= 0
    assert avg <= sum(v for _, v in writes) + 1e-6
    if b.is_empty(T0 + probe):
        assert avg == 0


# --- weighted-exponential -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "coef"), [(4, 0.9), (6, 1 - 1e-4 ** (1 / 6)), (60, 0.2), (1, 0.9999)]
)
def test_smoothing_coefficient(n: int, coef: float) -> None:
    assert smoothing_coefficient(n) == pytest.approx(coef)


def test_weighted_newest_counts_most() -> None:
    # Window of 4 buckets: coefficient 0.9. Data [10, 10, 5, 5], newest last.
    b = WeightedFloat64Buckets(4)
    assert b.coefficient == pytest.approx(0.9)
    for i, v in enumerate([10.0, 10.0, 5.0, 5.0]):
        b.record(T0 + i, v)
    expected = 5 * 0.9 + 5 * 0.9 * 0.1 + 10 * 0.9 * 0.01 + 10 * 0.9 * 0.001
    assert b.window_average(T0 + 3) == pytest.approx(expected)  # 5.049
    r = WeightedFloat64Buckets(4)
    for i, v in enumerate([5.0, 5.0, 10.0, 10.0]):
        r.record(T0 + i, v)
    assert r.window_average(T0 + 3) == pytest.approx(9.0 + 0.9 + 0.045 + 0.0045)


def test_weighted_trailing_empty_buckets_decay() -> None:
    b = WeightedFloat64Buckets(4)
    for i, v in enumerate([10.0, 10.0, 5.0, 5.0]):
        b.record(T0 + i, v)
    # Two empty buckets since the last write: weights start at 0.9 * 0.1^2 over two buckets.
    assert b.window_average(T0 + 5) == pytest.approx(5 * 0.009 + 5 * 0.0009)
    assert b.window_average(T0 + 7) == 0.0  # a full window of zeros
    assert b.window_average(T0 + 8) == 0.0 and b.is_empty(T0 + 8)


def test_weighted_constant_full_window_is_nearly_the_constant() -> None:
    b = WeightedFloat64Buckets(6)
    fill(b, 0, 6, 10.0)
    assert b.window_average(T0 + 5) == pytest.approx(10 * 0.9999, rel=1e-9)
    big = WeightedFloat64Buckets(60)  # coefficient floored at 0.2: the weights still sum to ~1
    fill(big, 0, 60, 10.0)
    assert big.window_average(T0 + 59) == pytest.approx(10.0, rel=1e-5)


def test_weighted_empty_and_resize() -> None:
    b = WeightedFloat64Buckets(60)
    assert b.window_average(T0) == 0.0
    fill(b, 0, 6, 10.0)
    b.resize_window(4, T0 + 5)
    assert b.coefficient == pytest.approx(0.9)
    assert b.window_average(T0 + 5) == pytest.approx(10 * (1 - 0.1**4))


def test_copy_state_between_algorithms() -> None:
    lin = TimedFloat64Buckets(60)
    fill(lin, 0, 4, 5.0)
    w = WeightedFloat64Buckets(4)
    lin.copy_state_to(w, T0 + 3)
    assert w.window_average(T0 + 3) == pytest.approx(5 * (1 - 0.1**4))
    back = TimedFloat64Buckets(60)
    w.copy_state_to(back, T0 + 3)
    assert back.window_average(T0 + 3) == pytest.approx(5.0, rel=1e-6)


def test_rounding_drift_of_the_running_total_never_reports_negative_concurrency() -> None:
    # 0.7 + 0.2 + 0.9 added, then subtracted as the buckets age out, leaves -1.1e-16 in the
    # running total: the average of an idle window is 0.0, not -0.000001.
    b = TimedFloat64Buckets(3.0)
    for t, v in enumerate([0.7, 0.2, 0.9, 0.0, 0.0, 0.0]):
        b.record(float(t), v)
    assert b.window_average(5.0) == 0.0
    assert str(b.window_average(5.0)) == "0.0"

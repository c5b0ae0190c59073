"""Unit tests for autoscaler.decider: desired pods, panic mode, delay, EBC and activators."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.config import AutoscalerConfig, RevisionScaling, resolve_scaling
from autoscaler.decider import (
    MIN_ACTIVATORS,
    Decider,
    Decision,
    excess_burst_capacity,
    initial_excess_burst_capacity,
    num_activators,
    population_mean_sample_size,
)

T0 = 1_000_000.0  # even, so 2 s delay-window steps line up with T0 + 2k
BASE = resolve_scaling(AutoscalerConfig(), 0, {})  # target 70, total 100, TBC 211


def spec(**kw: object) -> RevisionScaling:
    return dataclasses.replace(BASE, **kw)  # type: ignore[arg-type]


def feed(d: Decider, start: int, stop: int, conc: float, rps: float = 0.0) -> None:
    """One stat per second in [start, stop)."""
    for s in range(start, stop):
        d.record(T0 + s, conc, rps)


# --- sample size (the scraper's formula) ----------------------------------------------------


@pytest.mark.parametrize(
    ("n", "size"),
    [(-1, 0), (0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (10, 7), (16, 9), (100, 14)],
)
def test_population_mean_sample_size(n: int, size: int) -> None:
    assert population_mean_sample_size(n) == size
    if n > 3:
        assert size == math.ceil(n * 15.3664 / (n + 14.3664))


@given(st.integers(0, 100_000))
def test_sample_size_is_at_most_n_and_16(n: int) -> None:
    size = population_mean_sample_size(n)
    assert size <= n and size <= 16
    assert population_mean_sample_size(n + 1) >= size


# --- EBC and activators (SPEC §3.5) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tbc", "ready", "panic", "ebc"),
    [
        (0, 5, 100.0, 0),
        (-1, 5, 100.0, -1),
        (211, 0, 0.0, -211),
        (211, 1, 0.0, -111),
        (211, 3, 0.0, 89),
        (211, 3, 50.0, 39),
        (211, 3, 50.5, 38),  # floor
        (10, 1, 0.2, 89),
    ],
)
def test_excess_burst_capacity(tbc: float, ready: int, panic: float, ebc: int) -> None:
    assert excess_burst_capacity(spec(target_burst_capacity=tbc), ready, panic) == ebc


@pytest.mark.parametrize(
    ("tbc", "initial", "total", "ebc"),
    [
        (0, 1, 100, 0),
        (-1, 1, 100, -1),
        (211, 1, 100, -111),
        (211, 3, 100, 89),
        (150.5, 1, 100, -50),
    ],
)
def test_initial_excess_burst_capacity(tbc: float, initial: int, total: float, ebc: int) -> None:
    s = spec(target_burst_capacity=tbc, initial_scale=initial, total=total)
    assert initial_excess_burst_capacity(s) == ebc


def test_defaults_start_behind_the_activator() -> None:
    d = Decider(BASE, T0)
    assert d.decision == Decision(
        desired=-1,
        excess_burst_capacity=-111,
        num_activators=3,
        panicking=False,
        stable_value=0.0,
        panic_value=0.0,
    )


@pytest.mark.parametrize(
    ("tbc", "ready", "cap", "n"),
    [
        (0, 50, 100, 2),  # TBC 0: always the minimum
        (211, 0, 100, 3),  # ceil(211 / 100)
        (211, 10, 100, 13),  # ceil(1211 / 100)
        (211, 1, 1000, 2),  # never below 2
        (-1, 1, 100, 2),  # TBC -1 adds nothing
        (-1, 5, 100, 5),
        (-1, 7, 100, 7),
        (50, 3, 100, 4),  # ceil(350 / 100)
    ],
)
def test_num_activators(tbc: float, ready: int, cap: float, n: int) -> None:
    s = spec(target_burst_capacity=tbc, activator_capacity=cap)
    assert num_activators(s, ready) == n
    assert n >= MIN_ACTIVATORS


# --- desired pod count (SPEC §3.4) ----------------------------------------------------------


def test_stable_desired_is_ceil_of_average_over_target() -> None:
    d = Decider(spec(target=10.0, total=100.0), T0)
    feed(d, 0, 60, 25.0)
    dec = d.tick(T0 + 59, ready=3)
    assert (dec.stable_value, dec.panic_value) == (25.0, 25.0)
    assert dec.desired == 3  # ceil(25 / 10)
    assert not dec.panicking
    assert dec.excess_burst_capacity == math.floor(3 * 100 - 211 - 25)
    assert dec.num_activators == math.ceil((300 + 211) / 100)


def test_default_target_seventy() -> None:
    d = Decider(BASE, T0)
    feed(d, 0, 60, 71.0)
    assert d.tick(T0 + 59, ready=2).desired == 2  # ceil(71 / 70)
    feed(d, 60, 120, 70.0)
    assert d.tick(T0 + 119, ready=2).desired == 1


def test_max_scale_up_rate_clamps() -> None:
    # Knative's own example: MSUR 1.1, 2 ready, target 1, load 3: ceil(2.2) = 3 lets it grow.
    d = Decider(spec(target=1.0, max_scale_up_rate=1.1, panic_threshold=10.0), T0)
    feed(d, 0, 60, 3.0)
    assert d.tick(T0 + 59, ready=2).desired == 3
    d2 = Decider(spec(target=1.0, max_scale_up_rate=2.0), T0)
    feed(d2, 0, 60, 100.0)
    dec = d2.tick(T0 + 59, ready=2)
    assert dec.desired == 4  # ceil(2 * 2), in panic as well
    assert dec.panicking


def test_max_scale_down_rate_clamps() -> None:
    d = Decider(spec(target=10.0), T0)
    feed(d, 0, 60, 0.0)
    assert d.tick(T0 + 59, ready=10).desired == 5  # floor(10 / 2)
    d3 = Decider(spec(target=10.0, max_scale_down_rate=4.0), T0)
    feed(d3, 0, 60, 0.0)
    assert d3.tick(T0 + 59, ready=10).desired == 2  # floor(10 / 4)


def test_zero_ready_counts_as_one() -> None:
    d = Decider(spec(target=10.0), T0)
    feed(d, 0, 10, 0.0)
    assert d.tick(T0 + 9, ready=0).desired == 0  # floor(1 / 2) = 0: can reach zero
    d.record(T0 + 10, 1.0, 0.0)
    dec = d.tick(T0 + 10, ready=0)
    assert dec.desired == 1


def test_rps_metric_uses_rps_windows() -> None:
    d = Decider(spec(metric="rps", target=140.0, total=200.0), T0)
    feed(d, 0, 60, conc=1000.0, rps=280.0)
    dec = d.tick(T0 + 59, ready=2)
    assert dec.stable_value == 280.0
    assert dec.desired == 2
    assert dec.excess_burst_capacity == math.floor(2 * 200 - 211 - 280)


def test_weighted_aggregation_is_used_when_chosen() -> None:
    d = Decider(spec(aggregation="weighted-exponential", target=1.0), T0)
    feed(d, 0, 60, 10.0)
    dec = d.tick(T0 + 59, ready=10)
    assert dec.stable_value == pytest.approx(10.0, rel=1e-4)
    assert dec.stable_value != 10.0  # exponential weights, not the plain mean


# --- panic mode -----------------------------------------------------------------------------


def test_panic_entry_extension_no_scale_down_and_exit() -> None:
    s = spec(target=10.0, total=100.0)
    d = Decider(s, T0)
    feed(d, 0, 54, 5.0)
    feed(d, 54, 60, 50.0)  # a burst fills the 6 s panic window
    dec = d.tick(T0 + 59, ready=1)
    assert dec.panic_value == 50.0
    assert dec.stable_value == pytest.approx((54 * 5 + 6 * 50) / 60)
    assert dec.panicking  # ceil(50 / 10) / 1 = 5 >= 2
    assert dec.desired == 5  # max(stable 1, panic 5)

    feed(d, 60, 62, 100.0)
    dec = d.tick(T0 + 61, ready=3)  # still over (7 / 3 >= 2): panic extended to t=61
    assert dec.panicking
    assert dec.panic_value == pytest.approx(400 / 6, abs=1e-5)
    assert dec.desired == 7  # max(stable ceil(12.7/10) = 2, panic ceil(66.7/10) = 7)

    feed(d, 62, 200, 0.0)  # the burst is over
    for t in range(63, 121, 2):
        dec = d.tick(T0 + t, ready=5)
        assert dec.panicking, t
        assert dec.desired == 7  # never below the panic high-water mark
    dec = d.tick(T0 + 121, ready=7)  # 61 + 60 = 121 is not *after* the window yet
    assert dec.panicking
    dec = d.tick(T0 + 121.5, ready=7)
    assert not dec.panicking
    assert dec.desired == 3  # stable (0) clamped by maxDown floor(7 / 2)


def test_panic_high_water_mark_is_raised_not_lowered() -> None:
    d = Decider(spec(target=10.0), T0)
    feed(d, 0, 6, 40.0)
    assert d.tick(T0 + 5, ready=1).desired == 4
    feed(d, 6, 8, 200.0)
    assert d.tick(T0 + 7, ready=4).desired == max(4, math.ceil(d.decision.panic_value / 10))
    high = d.decision.desired
    feed(d, 8, 10, 0.0)
    assert d.tick(T0 + 9, ready=high).desired == high


def test_created_with_several_ready_pods_starts_in_panic() -> None:
    d = Decider(spec(target=10.0), T0, ready=3)
    assert d.panicking and d.decision.panicking
    feed(d, 0, 70, 0.0)
    assert d.tick(T0 + 2, ready=3).desired == 3  # holds the ready count: no scale-down
    assert d.tick(T0 + 60, ready=3).desired == 3
    dec = d.tick(T0 + 61, ready=3)
    assert not dec.panicking
    assert dec.desired == 1  # floor(3 / 2)


def test_one_ready_pod_does_not_start_in_panic() -> None:
    assert not Decider(BASE, T0, ready=1).panicking


# --- activation scale and scale-down delay --------------------------------------------------


def test_activation_scale_raises_non_zero_results() -> None:
    d = Decider(spec(activation_scale=3), T0)
    feed(d, 0, 10, 1.0)
    assert d.tick(T0 + 9, ready=0).desired == 3  # ceil(1/70) = 1 -> 3
    d2 = Decider(spec(activation_scale=5, max_scale_up_rate=2.0), T0)
    feed(d2, 0, 10, 1.0)
    assert d2.tick(T0 + 9, ready=1).desired == 5  # even above maxUp (2), as Knative
    d3 = Decider(spec(activation_scale=3), T0)
    feed(d3, 0, 10, 0.0)
    assert d3.tick(T0 + 9, ready=0).desired == 0  # zero stays zero


def _run(d: Decider, loads: list[float], ready: list[int]) -> list[int]:
    out = []
    for k, (load, r) in enumerate(zip(loads, ready, strict=True)):
        d.record(T0 + 2 * k, load, 0.0)
        d.record(T0 + 2 * k + 1, load, 0.0)
        out.append(d.tick(T0 + 2 * k + 1, r).desired)
    return out


def test_scale_down_delay_holds_the_max_of_the_window() -> None:
    s = spec(target=10.0, stable_window=6.0, panic_window=6.0, panic_threshold=10.0)
    loads = [50.0] * 4 + [0.0] * 12
    ready = [5] * 16
    plain = _run(Decider(s, T0), loads, ready)
    delayed = _run(Decider(dataclasses.replace(s, scale_down_delay=10.0), T0), loads, ready)
    assert plain[:4] == [5, 5, 5, 5]
    assert plain[4:] != [5] * 12  # without delay it scales down as the window drains
    # 10 s = 5 ticks: each decision is the max over the current and 4 previous ticks.
    assert delayed == [max(plain[max(0, i - 4) : i + 1]) for i in range(16)]
    assert delayed[7] == 5 and delayed[-1] == plain[-1]


@settings(max_examples=50, deadline=None)
@given(
    loads=st.lists(st.sampled_from([0.0, 5.0, 20.0, 60.0, 150.0]), min_size=1, max_size=40),
    delay=st.integers(1, 20),
)
def test_scale_down_delay_is_a_sliding_max(loads: list[float], delay: int) -> None:
    s = spec(target=10.0, stable_window=6.0, panic_window=6.0, panic_threshold=10.0)
    ready = [5] * len(loads)
    plain = _run(Decider(s, T0), loads, ready)
    delayed = _run(Decider(dataclasses.replace(s, scale_down_delay=float(delay)), T0), loads, ready)
    span = math.ceil(delay / 2)
    assert delayed == [max(plain[max(0, i - span + 1) : i + 1]) for i in range(len(plain))]


# --- data availability ----------------------------------------------------------------------


def test_no_data_with_a_scrape_target_repeats_the_last_decision() -> None:
    d = Decider(BASE, T0)  # TBC 211: QP is scraped, so an empty window is "no data"
    seen = [d.has_data]
    dec = d.tick(T0, ready=0)
    assert dec.desired == -1 and dec.excess_burst_capacity == -111
    d.record(T0 + 1, 100.0, 0.0)
    seen.append(d.has_data)
    assert d.tick(T0 + 1, ready=0).desired == 2
    dec = d.tick(T0 + 63, ready=1)  # nothing for more than a window
    seen.append(d.has_data)
    assert seen == [False, True, False]
    assert dec.desired == 2  # Knative keeps the decider status
    assert dec.num_activators == num_activators(BASE, 1)


def test_tbc_minus_one_empty_window_means_zero() -> None:
    s = spec(target_burst_capacity=-1.0)
    d = Decider(s, T0)
    assert d.decision.excess_burst_capacity == -1
    dec = d.tick(T0, ready=1)
    assert dec.desired == 0
    assert dec.excess_burst_capacity == -1


# --- settings updates -----------------------------------------------------------------------


def test_update_resizes_windows_and_keeps_history() -> None:
    d = Decider(spec(target=10.0), T0)
    feed(d, 0, 30, 0.0)
    feed(d, 30, 60, 40.0)
    assert d.tick(T0 + 59, ready=4).stable_value == 20.0
    d.update(spec(target=10.0, stable_window=30.0, panic_window=3.0))
    dec = d.tick(T0 + 59, ready=4)
    assert dec.stable_value == 40.0
    assert d.scaling.stable_window == 30.0


def test_update_switches_aggregation_keeping_data() -> None:
    d = Decider(spec(target=10.0), T0)
    feed(d, 0, 60, 10.0)
    d.update(spec(target=10.0, aggregation="weighted-exponential"))
    assert d.tick(T0 + 59, ready=1).stable_value == pytest.approx(10.0, rel=1e-4)
    d.update(spec(target=10.0))
    assert d.tick(T0 + 59, ready=1).stable_value == pytest.approx(10.0, rel=1e-5)


def test_update_scale_down_delay() -> None:
    s = spec(target=10.0, stable_window=6.0, panic_window=6.0, panic_threshold=10.0)
    d = Decider(s, T0)
    d.update(dataclasses.replace(s, scale_down_delay=20.0))
    assert _run(d, [50.0] * 3 + [0.0] * 4, [5] * 7)[-1] == 5  # held by the new delay
    d.update(s)
    d.record(T0 + 20, 0.0, 0.0)
    assert d.tick(T0 + 20, ready=5).desired < 5


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 2000, allow_nan=False), st.integers(0, 60)),
        min_size=1,
        max_size=30,
    ),
    up=st.floats(1.01, 10, allow_nan=False),
    down=st.floats(1.01, 10, allow_nan=False),
    target=st.floats(0.5, 200, allow_nan=False),
)
def test_out_of_panic_desired_stays_within_rate_limits(
    steps: list[tuple[float, int]], up: float, down: float, target: float
) -> None:
    s = spec(target=target, max_scale_up_rate=up, max_scale_down_rate=down)
    d = Decider(s, T0)
    for k, (load, ready) in enumerate(steps):
        d.record(T0 + 2 * k, load, 0.0)
        dec = d.tick(T0 + 2 * k, ready)
        pods = max(1, ready)
        if not dec.panicking:
            assert math.floor(pods / down) <= dec.desired <= math.ceil(up * pods)
        else:
            assert dec.desired >= math.floor(pods / down)
        assert dec.desired >= 0


# --- requests held at the activator while no pod is ready --------------------------------------


def test_held_requests_count_as_concurrency_only_while_no_pod_is_ready() -> None:
    d = Decider(spec(target=1.0), T0)
    d.record_held(5)
    r = d.tick(T0, 0)  # no stat yet: the held count is the data
    assert r.desired == 5 and r.panicking
    assert r.stable_value == 5.0 and r.panic_value == 5.0
    d2 = Decider(spec(target=1.0), T0)
    d2.record_held(5)
    assert d2.tick(T0, 1).desired == -1  # a pod is ready: no data, as before


def test_held_count_is_a_floor_never_lowers_the_windows() -> None:
    d = Decider(spec(target=1.0), T0)
    feed(d, 0, 6, 8.0)
    d.record_held(2)
    assert d.tick(T0 + 5, 0).desired == 8


def test_held_count_ignored_for_the_rps_metric() -> None:
    d = Decider(spec(target=1.0, metric="rps"), T0)
    d.record_held(5)
    assert d.tick(T0, 0).desired == -1
    d.record_held(-3)
    assert d.held == 0

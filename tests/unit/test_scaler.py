"""Unit tests for autoscaler.scaler: bounds, initial/activation scale and scale-to-zero timing."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.config import AutoscalerConfig, RevisionScaling, resolve_scaling
from autoscaler.decider import Decider, Decision
from autoscaler.scaler import (
    ACTIVATING,
    ACTIVE,
    DEFAULT_ACTIVATION_TIMEOUT,
    INACTIVE,
    PROXY,
    SERVE,
    ScaleController,
    apply_bounds,
)

T0 = 1_000_000.0
BASE = resolve_scaling(AutoscalerConfig(), 0, {})  # TBC 211, stable 60 s, grace 30 s


def spec(**kw: object) -> RevisionScaling:
    return dataclasses.replace(BASE, **kw)  # type: ignore[arg-type]


def dec(desired: int, ebc: int = 0) -> Decision:
    return Decision(desired, ebc, 2, False, 0.0, 0.0)


def started(s: RevisionScaling, *, ebc: int = 0) -> ScaleController:
    """A controller whose first pods became ready at T0: active since T0."""
    c = ScaleController(s, T0)
    first = c.replicas(T0, dec(-1, ebc), ready=0, current=0)
    assert first == max(1, s.min_scale)
    assert c.replicas(T0, dec(-1, ebc), ready=first, current=first) is None
    assert (c.state, c.state_since, c.initialized) == (ACTIVE, T0, True)
    return c


def idle_until(c: ScaleController, stop: float, *, ebc: int = 0, step: float = 2.0) -> float:
    """Feed desired 0 every ``step`` s from T0 until replicas says 0; return that time."""
    t = T0
    current = 1
    while t <= stop:
        r = c.replicas(t, dec(0, ebc), ready=current, current=current)
        if r is not None:
            assert r == 0, (t, r)
            return t
        t += step
    return -1.0


@pytest.mark.parametrize(
    ("lo", "hi", "x", "out"),
    [(0, 0, 5, 5), (0, 3, 5, 3), (2, 0, 0, 2), (2, 5, -1, 2), (4, 3, 0, 4), (0, 0, -1, 0)],
)
def test_apply_bounds(lo: int, hi: int, x: int, out: int) -> None:
    assert apply_bounds(lo, hi, x) == out


# --- initial scale --------------------------------------------------------------------------


def test_new_revision_gets_its_initial_pod() -> None:
    c = ScaleController(BASE, T0)
    assert (c.state, c.initialized, c.mode) == (ACTIVATING, False, None)
    assert c.replicas(T0, dec(-1, -111), ready=0, current=0) == 1
    assert c.state == ACTIVATING and not c.initialized
    assert c.mode == PROXY  # EBC < 0: the activator stays in the path
    assert c.replicas(T0 + 1, dec(-1, -111), ready=1, current=1) is None
    assert (c.state, c.initialized) == (ACTIVE, True)


def test_initial_scale_is_held_until_reached_then_ignored() -> None:
    c = ScaleController(spec(initial_scale=3), T0)
    assert c.replicas(T0, dec(-1), ready=0, current=0) == 3
    assert c.replicas(T0 + 2, dec(1), ready=1, current=3) is None  # still 3: not initialised
    assert c.replicas(T0 + 4, dec(0), ready=2, current=3) is None
    assert (c.initialized, c.state) == (False, ACTIVATING)
    assert c.replicas(T0 + 6, dec(1), ready=3, current=3) is None
    assert (c.initialized, c.state) == (True, ACTIVE)
    assert c.replicas(T0 + 8, dec(1), ready=3, current=3) == 1  # now the decider rules


def test_min_scale_above_initial_scale_wins() -> None:
    c = ScaleController(spec(initial_scale=2, min_scale=4), T0)
    assert c.replicas(T0, dec(-1), ready=0, current=0) == 4
    assert c.replicas(T0 + 2, dec(1), ready=4, current=4) is None
    assert c.replicas(T0 + 4, dec(1), ready=4, current=4) is None  # min-scale 4 holds
    assert c.state == ACTIVE


def test_initial_scale_zero_starts_inactive_at_zero() -> None:
    s = spec(initial_scale=0)
    c = ScaleController(s, T0)
    assert c.replicas(T0, dec(-1), ready=0, current=0) is None  # already 0
    assert (c.state, c.initialized, c.mode) == (INACTIVE, True, PROXY)
    c2 = ScaleController(s, T0)
    assert c2.replicas(T0, dec(-1), ready=0, current=1) == 0  # platform made one: remove it
    # First request: up from zero.
    assert c.replicas(T0 + 5, dec(1), ready=0, current=0) == 1
    assert c.state == ACTIVATING


# --- bounds ---------------------------------------------------------------------------------


def test_max_scale_caps_and_min_scale_floors() -> None:
    c = started(spec(min_scale=2, max_scale=5))
    assert c.replicas(T0 + 2, dec(10), ready=2, current=2) == 5
    assert c.replicas(T0 + 4, dec(0), ready=5, current=5) == 2
    for t in range(6, 400, 2):  # never below min-scale, never inactive
        assert c.replicas(T0 + t, dec(0), ready=2, current=2) is None
    assert c.state == ACTIVE


def test_no_data_changes_nothing() -> None:
    c = started(BASE)
    assert c.replicas(T0 + 2, dec(-1), ready=1, current=1) is None
    assert c.replicas(T0 + 4, dec(-1), ready=1, current=3) is None
    assert c.state == ACTIVE


# --- activation scale -----------------------------------------------------------------------


def test_activation_scale_floor_when_scaling_up_from_zero() -> None:
    c = started(spec(activation_scale=3), ebc=-111)
    assert idle_until(c, T0 + 200, ebc=-111) > 0
    assert c.replicas(T0 + 300, dec(1), ready=0, current=0) == 3
    assert c.state == ACTIVATING
    assert c.replicas(T0 + 302, dec(3), ready=3, current=3) is None
    assert c.state == ACTIVE
    # Once up, the controller follows the decider (whose own rule lifts non-zero results).
    assert c.replicas(T0 + 304, dec(2), ready=3, current=3) == 2


def test_activation_scale_is_capped_by_max_scale() -> None:
    c = ScaleController(spec(activation_scale=5, max_scale=2, initial_scale=0), T0)
    c.replicas(T0, dec(-1), ready=0, current=0)
    assert c.replicas(T0 + 1, dec(1), ready=0, current=0) == 2


# --- scale to zero (SPEC §3.6) --------------------------------------------------------------


def test_active_then_inactive_after_stable_window_then_zero_after_grace() -> None:
    c = started(spec(target_burst_capacity=0.0))  # EBC 0: Serve mode while pods are wanted
    assert c.mode == SERVE
    for t in range(2, 60, 2):  # wants 0, but has been active for less than a stable window
        assert c.replicas(T0 + t, dec(0), ready=1, current=1) is None
        assert c.state == ACTIVE
        assert c.wake_at == T0 + 60
    assert c.replicas(T0 + 60, dec(0), ready=1, current=1) is None
    assert (c.state, c.state_since, c.mode) == (INACTIVE, T0 + 60, PROXY)
    for t in range(62, 90, 2):  # grace period since the activator went into the path
        assert c.replicas(T0 + t, dec(0), ready=1, current=1) is None
        assert c.wake_at == pytest.approx(T0 + 90)
    assert c.replicas(T0 + 90, dec(0), ready=1, current=1) == 0
    assert c.state == INACTIVE


def test_active_revision_wanting_zero_is_trimmed_to_one_pod_first() -> None:
    c = started(BASE)
    assert c.replicas(T0 + 2, dec(4), ready=1, current=1) == 4
    assert c.replicas(T0 + 4, dec(0), ready=4, current=4) == 1


def test_fast_path_when_activator_already_in_path() -> None:
    # Defaults: TBC 211 keeps EBC negative, so the revision is in Proxy mode all along and
    # goes to zero as soon as it is inactive (Knative's "fast path").
    c = started(BASE, ebc=-111)
    assert c.mode == PROXY
    assert idle_until(c, T0 + 200, ebc=-111) == T0 + 62
    c2 = started(BASE, ebc=-111)
    assert idle_until(c2, T0 + 200, ebc=-111, step=1.0) == T0 + 61


def test_pod_retention_period_holds_the_last_pod() -> None:
    c = started(spec(pod_retention_period=45.0), ebc=-111)
    assert idle_until(c, T0 + 300, ebc=-111, step=1.0) == T0 + 60 + 45
    c2 = started(spec(pod_retention_period=10.0, target_burst_capacity=0.0))
    # Retention over at 70 but the activator entered the path only at 60: grace until 90.
    assert idle_until(c2, T0 + 300, step=1.0) == T0 + 90


def test_wake_at_during_retention() -> None:
    c = started(spec(pod_retention_period=45.0), ebc=-111)
    c.replicas(T0 + 60, dec(0, -111), ready=1, current=1)
    c.replicas(T0 + 61, dec(0, -111), ready=1, current=1)
    assert c.wake_at == T0 + 105


def test_traffic_while_inactive_reactivates_without_zero() -> None:
    c = started(spec(target_burst_capacity=0.0))
    c.replicas(T0 + 60, dec(0), ready=1, current=1)
    assert c.state == INACTIVE
    assert c.replicas(T0 + 70, dec(2), ready=1, current=1) == 2
    assert (c.state, c.state_since) == (ACTIVE, T0 + 70)
    assert c.mode == SERVE
    # Idle again: needs a fresh stable window of activity before going inactive.
    assert c.replicas(T0 + 80, dec(0), ready=2, current=2) == 1
    assert c.replicas(T0 + 128, dec(0), ready=1, current=1) is None
    assert c.state == ACTIVE
    assert c.replicas(T0 + 130, dec(0), ready=1, current=1) is None
    assert c.state == INACTIVE


def test_scale_to_zero_disabled_keeps_one() -> None:
    c = started(spec(enable_scale_to_zero=False), ebc=-111)
    assert c.replicas(T0 + 2, dec(3, -111), ready=1, current=1) == 3
    assert c.replicas(T0 + 4, dec(0, -111), ready=3, current=3) == 1
    for t in range(6, 1000, 10):
        assert c.replicas(T0 + t, dec(0, -111), ready=1, current=1) is None
    assert c.state == ACTIVE


def test_unknown_desired_while_inactive_keeps_proxy_mode() -> None:
    c = started(spec(target_burst_capacity=0.0))
    c.replicas(T0 + 60, dec(0), ready=1, current=1)
    assert c.replicas(T0 + 62, dec(-1), ready=1, current=1) is None
    assert (c.state, c.mode) == (INACTIVE, PROXY)


# --- activation -----------------------------------------------------------------------------


def test_scale_from_zero_then_activation_timeout() -> None:
    c = started(BASE, ebc=-111)
    zero_at = idle_until(c, T0 + 200, ebc=-111)
    t1 = zero_at + 100
    assert c.replicas(t1, dec(1, -111), ready=0, current=0) == 1
    assert (c.state, c.state_since) == (ACTIVATING, t1)
    # The request went away but the pod never became ready: hold it while activating.
    assert c.replicas(t1 + 10, dec(0, -111), ready=0, current=1) is None
    assert c.wake_at == t1 + DEFAULT_ACTIVATION_TIMEOUT
    assert c.replicas(t1 + DEFAULT_ACTIVATION_TIMEOUT, dec(0), ready=0, current=1) is None
    assert c.replicas(t1 + DEFAULT_ACTIVATION_TIMEOUT + 1, dec(0), ready=0, current=1) == 0
    assert c.state == INACTIVE


def test_new_revision_that_never_gets_ready_gives_up() -> None:
    c = ScaleController(BASE, T0, activation_timeout=100.0)
    assert c.replicas(T0, dec(-1), ready=0, current=0) == 1
    for t in range(2, 101, 2):
        assert c.replicas(T0 + t, dec(-1), ready=0, current=1) is None
    assert c.replicas(T0 + 102, dec(-1), ready=0, current=1) == 0
    assert c.state == INACTIVE and not c.initialized


def test_activation_holds_a_desired_zero_only_while_activating() -> None:
    c = ScaleController(BASE, T0)
    assert c.replicas(T0, dec(0), ready=0, current=0) == 1  # initial scale, not the 0
    assert c.replicas(T0 + 2, dec(0), ready=1, current=1) is None
    assert c.state == ACTIVE


def test_update_takes_effect() -> None:
    c = started(BASE)
    c.update(spec(max_scale=2))
    assert c.replicas(T0 + 2, dec(9), ready=1, current=1) == 2


# --- the whole loop with a fake clock -------------------------------------------------------


def simulate(s: RevisionScaling, load_until: float, horizon: float) -> list[tuple[float, int]]:
    """Decider + controller ticking every 2 s; pods are ready as soon as requested."""
    d = Decider(s, T0)
    c = ScaleController(s, T0)
    current = ready = 0
    changes: list[tuple[float, int]] = []
    for sec in range(int(horizon)):
        t = T0 + sec
        if current > 0:  # the scraper reports while pods exist
            d.record(t, 1.0 if sec < load_until else 0.0, 0.0)
        if sec % 2 == 0:
            r = c.replicas(t, d.tick(t, ready), ready, current)
            if r is not None:
                changes.append((float(sec), r))
                current = r
            ready = current
    return changes


def test_end_to_end_idle_to_zero_defaults() -> None:
    # Load stops at 10 s; the stable window drains by 70 s, the PA goes inactive, and with
    # the activator already in the path (EBC < 0) the pod is removed at the next tick.
    assert simulate(BASE, 10, 300) == [(0.0, 1), (72.0, 0)]


def test_end_to_end_idle_to_zero_with_grace() -> None:
    assert simulate(spec(target_burst_capacity=0.0), 10, 300) == [(0.0, 1), (100.0, 0)]


def test_end_to_end_scale_to_zero_disabled() -> None:
    assert simulate(spec(enable_scale_to_zero=False), 10, 300) == [(0.0, 1)]


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    min_scale=st.integers(0, 4),
    extra=st.integers(0, 6),
    unlimited=st.booleans(),
    initial=st.integers(0, 5),
    activation=st.integers(1, 6),
    stz=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.floats(0.1, 40, allow_nan=False),
            st.integers(-1, 30),
            st.integers(-300, 300),
            st.floats(0, 1),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_replicas_respect_bounds(
    min_scale: int,
    extra: int,
    unlimited: bool,
    initial: int,
    activation: int,
    stz: bool,
    steps: list[tuple[float, int, int, float]],
) -> None:
    max_scale = 0 if unlimited else max(1, min_scale + extra)
    s = spec(
        min_scale=min_scale,
        max_scale=max_scale,
        initial_scale=initial,
        activation_scale=activation,
        enable_scale_to_zero=stz,
    )
    c = ScaleController(s, T0)
    t, current = T0, 0
    for dt, desired, ebc, ready_frac in steps:
        t += dt
        ready = int(current * ready_frac)
        r = c.replicas(t, dec(desired, ebc), ready, current)
        if r is None:
            continue
        assert r != current
        assert r >= min_scale
        if max_scale:
            assert r <= max_scale
        if r == 0:
            assert min_scale == 0
            assert stz or (initial == 0 and not c.initialized) or c.state == INACTIVE
        if not stz:
            assert r >= 1 or (initial == 0 and min_scale == 0)
        current = r
        assert c.state in (ACTIVATING, ACTIVE, INACTIVE)
        assert c.mode in (SERVE, PROXY)

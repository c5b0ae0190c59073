"""The KPA decider: desired pods, panic mode, EBC and activator count (SPEC §3.4, §3.5).

A sans-I/O port of Knative's ``pkg/autoscaler/scaling/autoscaler.go`` plus the metric
collection it reads (``collector.go``): the caller records stats (already net of proxied
values) and calls :meth:`Decider.tick` every 2 s (``TICK_INTERVAL``) or on a poke.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .aggregation import TimedFloat64Buckets, WeightedFloat64Buckets
from .config import BUCKET_SIZE, RPS, WEIGHTED_EXPONENTIAL, RevisionScaling

__all__ = [
    "MIN_ACTIVATORS",
    "TICK_INTERVAL",
    "Decider",
    "Decision",
    "excess_burst_capacity",
    "initial_excess_burst_capacity",
    "num_activators",
    "population_mean_sample_size",
]

TICK_INTERVAL = 2.0
"""Knative computes the desired scale every 2 s (``tickInterval``); also the delay-window step."""
MIN_ACTIVATORS = 2
"""A revision always gets at least two activators (``minActivators``)."""


def population_mean_sample_size(n: int) -> int:
    """How many of ``n`` pods the scraper samples (``sample_size.go``): 95 % / ±5 % of 100."""
    if n < 0:
        return 0
    if n <= 3:
        return n
    return math.ceil(n * 15.3664 / (n + 14.3664))


def excess_burst_capacity(scaling: RevisionScaling, ready: int, panic_value: float) -> int:
    """EBC: 0 for TBC 0, -1 for TBC -1, else ``floor(ready * total - TBC - panic)``."""
    tbc = scaling.target_burst_capacity
    if tbc == 0:
        return 0
    if tbc < 0:
        return -1
    return math.floor(ready * scaling.total - tbc - panic_value)


def initial_excess_burst_capacity(scaling: RevisionScaling) -> int:
    """EBC before the first tick: TBC for -1 or 0, else ``initial * total - TBC``."""
    tbc = scaling.target_burst_capacity
    if tbc <= 0:
        return int(tbc)
    return int(scaling.initial_scale * scaling.total - tbc)  # Go int32(): truncation


def num_activators(scaling: RevisionScaling, ready: int) -> int:
    """Activators for the revision: 2 for TBC 0, else ``max(2, ceil((ready*total + TBC⁺)/cap))``."""
    tbc = scaling.target_burst_capacity
    if tbc == 0:
        return MIN_ACTIVATORS
    capacity = ready * scaling.total + max(tbc, 0.0)
    return max(MIN_ACTIVATORS, math.ceil(capacity / scaling.activator_capacity))


@dataclass(frozen=True, slots=True)
class Decision:
    """One decider result (Knative's ScaleResult / Decider status)."""

    desired: int
    """Desired pods before min/max/scale-to-zero rules; -1 until the first tick with data."""
    excess_burst_capacity: int
    num_activators: int
    panicking: bool
    stable_value: float
    panic_value: float


class _DelayWindow:
    """Sliding maximum over ``delay`` seconds in 2 s steps (Knative ``max.TimeWindow``)."""

    __slots__ = ("_entries", "_size")

    def __init__(self, delay: float) -> None:
        self._size = max(1, math.ceil(delay / TICK_INTERVAL - 1e-9))
        self._entries: deque[tuple[int, int]] = deque()  # (index, value), values descending

    def record(self, now: float, value: int) -> int:
        """Record ``value`` at ``now`` and return the maximum over the window."""
        index = math.floor(now / TICK_INTERVAL)
        entries = self._entries
        while entries and value >= entries[-1][1]:
            entries.pop()
        while entries and index - entries[0][0] >= self._size:
            entries.popleft()
        if entries and entries[-1][0] == index:
            value = max(value, entries.pop()[1])
        entries.append((index, value))
        return entries[0][1]


def _make_buckets(aggregation: str, window: float) -> TimedFloat64Buckets:
    if aggregation == WEIGHTED_EXPONENTIAL:
        return WeightedFloat64Buckets(window, BUCKET_SIZE)
    return TimedFloat64Buckets(window, BUCKET_SIZE)


class Decider:
    """One revision's autoscaler: stat windows, panic state and the scale-down delay.

    ``has_data`` and the no-data rule follow Knative's collector: when the chosen metric's
    stable window is empty and the revision has a scrape target (TBC ≠ -1), a tick has no
    data and repeats the previous decision (-1 before any data), as Knative keeps the decider
    status. With TBC = -1 only the activators report, so an empty window simply means 0.
    """

    def __init__(self, scaling: RevisionScaling, now: float, ready: int = 0) -> None:
        self._scaling = scaling
        self._now = now
        self._stable_conc = _make_buckets(scaling.aggregation, scaling.stable_window)
        self._panic_conc = _make_buckets(scaling.aggregation, scaling.panic_window)
        self._stable_rps = _make_buckets(scaling.aggregation, scaling.stable_window)
        self._panic_rps = _make_buckets(scaling.aggregation, scaling.panic_window)
        # Created with more than one ready pod: start in panic, holding that count, so a
        # restart that lost the metric history does not scale down.
        self._panic_time: float | None = now if ready > 1 else None
        self._max_panic_pods = ready
        self._delay = _DelayWindow(scaling.scale_down_delay) if scaling.scale_down_delay else None
        self._held = 0  # requests held at the activator, counted while no pod is ready
        self._decision = Decision(
            desired=-1,
            excess_burst_capacity=initial_excess_burst_capacity(scaling),
            num_activators=num_activators(scaling, ready),
            panicking=self._panic_time is not None,
            stable_value=0.0,
            panic_value=0.0,
        )

    @property
    def scaling(self) -> RevisionScaling:
        """The settings in force."""
        return self._scaling

    @property
    def decision(self) -> Decision:
        """The latest decision (before the first tick: desired -1 and the initial EBC)."""
        return self._decision

    @property
    def panicking(self) -> bool:
        """Whether the decider is in panic mode."""
        return self._panic_time is not None

    @property
    def has_data(self) -> bool:
        """Whether the chosen metric's stable window holds data as of the latest time seen."""
        return not self._stable_buckets().is_empty(self._now)

    def _stable_buckets(self) -> TimedFloat64Buckets:
        return self._stable_rps if self._scaling.metric == RPS else self._stable_conc

    def record(self, t: float, concurrency: float, rps: float) -> None:
        """Record one stat (net of proxied values) into the four window series."""
        self._now = max(self._now, t)
        self._stable_conc.record(t, concurrency)
        self._panic_conc.record(t, concurrency)
        self._stable_rps.record(t, rps)
        self._panic_rps.record(t, rps)

    def record_held(self, held: int) -> None:
        """The number of requests the activator holds for this revision right now.

        Beyond Knative: while no pod is ready, a tick takes this count as the revision's
        concurrency (stable and panic) when it exceeds the windows' averages, so a burst from
        zero gets its pods in one step (Knative sees the first request at once and the rest
        only through the averaged 1 s stats, and scales up over several ticks). A burst from
        zero is panic by Knative's rule, so the pods are then kept for a stable window.
        """
        self._held = max(0, held)

    @property
    def held(self) -> int:
        """The held count last recorded."""
        return self._held

    def update(self, scaling: RevisionScaling) -> None:
        """Apply changed settings, keeping the recorded history where the windows allow."""
        old = self._scaling
        self._scaling = scaling
        now = self._now
        if scaling.aggregation != old.aggregation:
            pairs = (
                ("_stable_conc", scaling.stable_window),
                ("_panic_conc", scaling.panic_window),
                ("_stable_rps", scaling.stable_window),
                ("_panic_rps", scaling.panic_window),
            )
            for attr, window in pairs:
                fresh = _make_buckets(scaling.aggregation, window)
                getattr(self, attr).copy_state_to(fresh, now)
                setattr(self, attr, fresh)
        else:
            self._stable_conc.resize_window(scaling.stable_window, now)
            self._stable_rps.resize_window(scaling.stable_window, now)
            self._panic_conc.resize_window(scaling.panic_window, now)
            self._panic_rps.resize_window(scaling.panic_window, now)
        if scaling.scale_down_delay != old.scale_down_delay:
            self._delay = (
                _DelayWindow(scaling.scale_down_delay) if scaling.scale_down_delay else None
            )

    def tick(self, now: float, ready: int) -> Decision:
        """Compute the decision at ``now`` with ``ready`` ready pods (SPEC §3.4)."""
        self._now = max(self._now, now)
        s = self._scaling
        if s.metric == RPS:
            stable_b, panic_b = self._stable_rps, self._panic_rps
        else:
            stable_b, panic_b = self._stable_conc, self._panic_conc
        held = self._held if ready == 0 and s.metric != RPS else 0
        if held == 0 and stable_b.is_empty(now) and s.target_burst_capacity != -1:
            # Knative: ErrNoData, the scaler skips the tick and the status stays.
            prev = self._decision
            self._decision = Decision(
                desired=prev.desired,
                excess_burst_capacity=prev.excess_burst_capacity,
                num_activators=num_activators(s, ready),
                panicking=self.panicking,
                stable_value=prev.stable_value,
                panic_value=prev.panic_value,
            )
            return self._decision
        stable = stable_b.window_average(now)
        panic = panic_b.window_average(now)
        if held:
            stable = max(stable, float(held))
            panic = max(panic, float(held))

        pods = max(1, ready)
        max_up = math.ceil(s.max_scale_up_rate * pods)
        max_down = math.floor(pods / s.max_scale_down_rate)
        dspc = math.ceil(stable / s.target)
        dppc = math.ceil(panic / s.target)
        desired_stable = min(max(dspc, max_down), max_up)
        desired_panic = min(max(dppc, max_down), max_up)
        if s.activation_scale > 1:
            if dspc > 0 and s.activation_scale > desired_stable:
                desired_stable = s.activation_scale
            if dppc > 0 and s.activation_scale > desired_panic:
                desired_panic = s.activation_scale

        over_panic = dppc / pods >= s.panic_threshold
        if over_panic:
            self._panic_time = now  # enter, or extend
        elif self._panic_time is not None and self._panic_time + s.stable_window < now:
            self._panic_time = None
            self._max_panic_pods = 0

        desired = desired_stable
        if self._panic_time is not None:
            desired = max(desired, desired_panic)
            # No scale-down while panicking.
            self._max_panic_pods = max(self._max_panic_pods, desired)
            desired = self._max_panic_pods

        if self._delay is not None:
            desired = self._delay.record(now, desired)

        self._decision = Decision(
            desired=desired,
            excess_burst_capacity=excess_burst_capacity(s, ready, panic),
            num_activators=num_activators(s, ready),
            panicking=self._panic_time is not None,
            stable_value=stable,
            panic_value=panic,
        )
        return self._decision

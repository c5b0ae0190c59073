"""Time-bucketed window averages (Knative ``pkg/autoscaler/aggregation/bucketing.go``, SPEC §3.1).

A ring buffer of ``ceil(window / granularity)`` buckets. Values recorded in the same bucket
are summed (several activators plus the scraper in one second add up). Times are floats in
seconds supplied by the caller; a bucket is ``floor(t / granularity)``.
"""

from __future__ import annotations

import math

__all__ = ["TimedFloat64Buckets", "WeightedFloat64Buckets", "smoothing_coefficient"]

_PRECISION = 1e6
"""Linear averages are floored to 6 decimal places, as Knative's ``roundToNDigits(6, …)``."""
_MIN_EXPONENT = 0.2
_WEIGHT_PRECISION = 0.9999


def smoothing_coefficient(n_buckets: int) -> float:
    """Knative's decay for the weighted average: ``max(1 - (1 - 0.9999)^(1/n), 0.2)``."""
    decay: float = (1.0 - _WEIGHT_PRECISION) ** (1.0 / n_buckets)
    return max(1.0 - decay, _MIN_EXPONENT)


class TimedFloat64Buckets:
    """Linear window average over time buckets with Knative's valid-bucket rules."""

    __slots__ = ("_buckets", "_first", "_granularity", "_last", "_total", "_window")

    def __init__(self, window: float, granularity: float = 1.0) -> None:
        if not window > 0 or not granularity > 0:
            raise ValueError("window and granularity must be positive")
        self._granularity = granularity
        self._window = window
        self._buckets = [0.0] * self._count(window)
        self._first: int | None = None  # bucket index of the first write in this run
        self._last: int | None = None  # bucket index of the latest write
        self._total = 0.0  # sum of all ring slots, including stale ones past lastWrite

    def _count(self, window: float) -> int:
        return max(1, math.ceil(window / self._granularity - 1e-9))

    def _index(self, t: float) -> int:
        return math.floor(t / self._granularity)

    @property
    def window(self) -> float:
        """The window length in seconds."""
        return self._window

    def record(self, t: float, value: float) -> None:
        """Add ``value`` to the bucket of ``t``; a window older than the last write is dropped."""
        b = self._index(t)
        n = len(self._buckets)
        last = self._last
        if last != b:
            if last is not None and (last - b) * self._granularity >= self._window:
                return  # a window older than what we have: ignore
            if self._first is None or self._first > b:
                self._first = b
            if last is None or b > last:
                if last is None or (b - last) * self._granularity >= self._window:
                    # No writes for a whole window: start over.
                    self._first = b
                    self._buckets = [0.0] * n
                    self._total = 0.0
                else:
                    # Zero the slots skipped since the last write, and the one we write to.
                    for i in range(last + 1, b + 1):
                        slot = i % n
                        self._total -= self._buckets[slot]
                        self._buckets[slot] = 0.0
                self._last = b
        self._buckets[b % n] += value
        self._total += value

    def is_empty(self, now: float) -> bool:
        """True when nothing was recorded within the last window."""
        if self._last is None:
            return True
        return (self._index(now) - self._last) * self._granularity > self._window

    def window_average(self, now: float) -> float:
        """Sum of the valid buckets over their number; 0 when nothing arrived for a window.

        Before a full window of data the divisor is ``elapsed since first write + 1`` buckets;
        buckets after the last write (when it is older than ``now``'s bucket) are excluded;
        gaps between writes count as zeros.
        """
        last, first = self._last, self._first
        if last is None or first is None:
            return 0.0
        now_b = self._index(now)
        d = now_b - last
        n = len(self._buckets)
        if d <= 0:
            valid = min(last - first + 1, n)
            return _floor6(self._total / valid)
        if d * self._granularity < self._window:
            total = self._total
            for i in range(last + 1, now_b + 1):
                total -= self._buckets[i % n]
            valid = min(last - first + 1, n - d)
            return _floor6(total / valid)
        return 0.0

    def resize_window(self, window: float, now: float) -> None:
        """Change the window, keeping the newest buckets that fit (Knative ``ResizeWindow``)."""
        if window == self._window:
            return
        if not window > 0:
            raise ValueError("window must be positive")
        old = self._buckets
        n_old, n_new = len(old), self._count(window)
        new = [0.0] * n_new
        total = 0.0
        last = self._last
        if last is not None and (self._index(now) - last) * self._granularity <= self._window:
            idx = last
            for _ in range(min(n_new, n_old)):
                v = old[idx % n_old]
                new[idx % n_new] = v
                total += v
                idx -= 1
            self._first = last - (n_old - 1)
        else:
            self._first = None
            self._last = None
        self._window = window
        self._buckets = new
        self._total = total

    def copy_state_to(self, other: TimedFloat64Buckets, now: float) -> None:
        """Move this series into ``other`` (same granularity), resizing to its window."""
        target_window = other._window
        other._window = self._window
        other._buckets = list(self._buckets)
        other._first, other._last, other._total = self._first, self._last, self._total
        other.resize_window(target_window, now)


class WeightedFloat64Buckets(TimedFloat64Buckets):
    """Exponentially weighted window average, newest bucket weighted most (Knative)."""

    __slots__ = ("_coefficient",)

    def __init__(self, window: float, granularity: float = 1.0) -> None:
        super().__init__(window, granularity)
        self._coefficient = smoothing_coefficient(len(self._buckets))

    @property
    def coefficient(self) -> float:
        """The smoothing coefficient for this window."""
        return self._coefficient

    def window_average(self, now: float) -> float:
        """``Σ c·(1-c)^k · bucket[last-k]``, with the empty buckets since the last write first."""
        last = self._last
        if last is None or self.is_empty(now):
            return 0.0
        c = self._coefficient
        n = len(self._buckets)
        count = n
        multiplier = c
        now_b = self._index(now)
        if now_b > last:
            zeros = now_b - last
            multiplier *= (1.0 - c) ** zeros
            count -= zeros
        ret = 0.0
        for i in range(count):
            ret += self._buckets[(last - i) % n] * multiplier
            multiplier *= 1.0 - c
        return ret

    def resize_window(self, window: float, now: float) -> None:
        """Resize and recompute the smoothing coefficient for the new bucket count."""
        super().resize_window(window, now)
        self._coefficient = smoothing_coefficient(len(self._buckets))


def _floor6(v: float) -> float:
    # The running total drifts by float rounding once buckets are subtracted (-1e-17 after
    # adding and removing 0.1 + 0.2): never report a negative concurrency for it.
    if v <= 0.0:
        return 0.0
    return math.floor(v * _PRECISION) / _PRECISION

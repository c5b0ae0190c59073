"""Time-weighted request statistics (Knative ``networking/pkg/http/stats/request.go``).

Sans-I/O: every method takes ``now`` (seconds, monotonic) from the caller, so tests drive it with
a fake clock. Concurrency is integrated over time at every event and at each report; the
report yields per-window averages and counts and resets the accumulators.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["RequestStats", "StatsReport"]


class StatsReport(NamedTuple):
    average_concurrency: float
    average_proxied_concurrency: float
    request_count: float
    proxied_request_count: float


class RequestStats:
    """Concurrency integrals and request counts, split into direct and activator-proxied."""

    __slots__ = (
        "_computed",
        "_computed_proxied",
        "_last_change",
        "_seconds",
        "concurrency",
        "proxied_concurrency",
        "proxied_count",
        "request_count",
    )

    def __init__(self, now: float) -> None:
        self.concurrency = 0
        self.proxied_concurrency = 0
        self.request_count = 0
        self.proxied_count = 0
        self._computed = 0.0
        self._computed_proxied = 0.0
        self._seconds = 0.0
        self._last_change = now

    def _advance(self, now: float) -> None:
        dt = now - self._last_change
        if dt > 0:
            self._seconds += dt
            self._computed += self.concurrency * dt
            self._computed_proxied += self.proxied_concurrency * dt
            self._last_change = now

    def req_in(self, now: float) -> None:
        dt = now - self._last_change  # _advance, inlined: this runs twice per request
        if dt > 0:
            self._seconds += dt
            self._computed += self.concurrency * dt
            self._computed_proxied += self.proxied_concurrency * dt
            self._last_change = now
        self.request_count += 1
        self.concurrency += 1

    def req_out(self, now: float) -> None:
        dt = now - self._last_change  # _advance, inlined: this runs twice per request
        if dt > 0:
            self._seconds += dt
            self._computed += self.concurrency * dt
            self._computed_proxied += self.proxied_concurrency * dt
            self._last_change = now
        self.concurrency -= 1

    def proxied_in(self, now: float) -> None:
        dt = now - self._last_change  # _advance, inlined: this runs twice per request
        if dt > 0:
            self._seconds += dt
            self._computed += self.concurrency * dt
            self._computed_proxied += self.proxied_concurrency * dt
            self._last_change = now
        self.request_count += 1
        self.concurrency += 1
        self.proxied_count += 1
        self.proxied_concurrency += 1

    def proxied_out(self, now: float) -> None:
        dt = now - self._last_change  # _advance, inlined: this runs twice per request
        if dt > 0:
            self._seconds += dt
            self._computed += self.concurrency * dt
            self._computed_proxied += self.proxied_concurrency * dt
            self._last_change = now
        self.concurrency -= 1
        self.proxied_concurrency -= 1

    def report(self, now: float) -> StatsReport:
        """Averages and counts since the previous report; resets the window."""
        self._advance(now)
        secs = self._seconds
        if secs > 0:
            avg = self._computed / secs
            avg_proxied = self._computed_proxied / secs
        else:
            avg = avg_proxied = 0.0
        rep = StatsReport(avg, avg_proxied, float(self.request_count), float(self.proxied_count))
        self.request_count = 0
        self.proxied_count = 0
        self._computed = 0.0
        self._computed_proxied = 0.0
        self._seconds = 0.0
        return rep

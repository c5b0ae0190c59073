"""Per-request timeouts as a pure state machine (Knative ``pkg/http/handler/timeout.go``).

Three independent limits start with the request: *total* (always fires), *response start*
(fires only if nothing has been written to the client yet) and *idle* (time since the last
write, counted from the request start when nothing has been written). A limit of 0 disables it.
The I/O layer keeps one timer handle per request, armed at :meth:`RequestDeadlines.next_deadline`,
and asks :meth:`RequestDeadlines.expired` when it fires; writes only update a timestamp.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["RequestDeadlines", "TimeoutPolicy"]

_INF: Final = float("inf")


class TimeoutPolicy(NamedTuple):
    """Limits in seconds; 0 disables one."""

    total: float
    response_start: float = 0.0
    idle: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.total > 0 or self.response_start > 0 or self.idle > 0


class RequestDeadlines:
    """Deadline bookkeeping for one request (all times in the caller's clock, seconds)."""

    __slots__ = ("_idle", "_rs_deadline", "_start", "_total_deadline")

    def __init__(self, policy: TimeoutPolicy, start: float) -> None:
        self._start = start
        self._total_deadline = start + policy.total if policy.total > 0 else _INF
        self._rs_deadline = start + policy.response_start if policy.response_start > 0 else _INF
        self._idle = policy.idle if policy.idle > 0 else 0.0

    def next_deadline(self, last_write: float | None) -> float | None:
        """When to check next, given the time of the last client write (None: nothing written)."""
        d = self._total_deadline
        if last_write is None and self._rs_deadline < d:
            d = self._rs_deadline
        if self._idle:
            i = (self._start if last_write is None else last_write) + self._idle
            if i < d:
                d = i
        return None if d == _INF else d

    def expired(self, now: float, last_write: float | None) -> bool:
        """True if one of the limits has passed at ``now``."""
        if now >= self._total_deadline:
            return True
        if last_write is None and now >= self._rs_deadline:
            return True
        if self._idle:
            base = self._start if last_write is None else last_write
            if now - base >= self._idle:
                return True
        return False

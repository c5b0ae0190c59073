"""Per-revision concurrency accounting for the autoscaler (Knative ``concurrency_reporter.go``).

Sans-I/O: the caller passes ``now`` (seconds, monotonic) to every method and ships the returned
``WireStatMessage`` batches itself (see :mod:`activator.statsink`). SPEC §2.7:

- the first request of a revision with no entry is reported *immediately* as
  ``{AverageConcurrentRequests: 1, RequestCount: 1}``, the scale-from-zero trigger;
- the 1 s tick reports every revision, subtracting that already-reported request in the first
  report after the entry was created (average floored at 0);
- an entry idle for the whole period with no request in flight is deleted, so the next request
  triggers a new immediate message.

The activator never sets the proxied fields of ``Stat``, nor ``process_uptime`` or ``timestamp``
(the autoscaler fills the timestamp in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from dataplane.statpb import Stat, WireStatMessage
from dataplane.stats import RequestStats

__all__ = ["ConcurrencyReporter", "ReportTicker", "RevisionKey"]

RevisionKey = tuple[str, str]  # (namespace, name)


class _RevisionStats:
    """One revision's accounting: the time-weighted stats, the first-request flag, live refs."""

    __slots__ = ("first_request", "refs", "stats")

    def __init__(self, now: float) -> None:
        self.stats = RequestStats(now)
        self.first_request = 1.0  # subtracted once, in the first report after creation
        self.refs = 0  # requests in flight; an entry with live refs is never deleted


class ConcurrencyReporter:
    """Request in/out accounting per revision and the per-tick ``Stat`` batch."""

    __slots__ = ("_last", "_pod_name", "_stats")

    def __init__(self, pod_name: str, now: float) -> None:
        # ``now`` is accepted for symmetry with the other sans-I/O objects: the activator's Stat
        # carries no process uptime, and each revision's window starts at its first request.
        del now
        self._pod_name = pod_name
        # Keyed by a RevisionKey as an object: compiled, a ``tuple[str, str]`` argument is
        # passed unboxed, and each lookup would build and free a tuple for it (the activator
        # passes the one it boxed once per revision, RevisionState.stat_key).
        self._stats: dict[object, _RevisionStats] = {}
        self._last: dict[RevisionKey, float] = {}

    def request_in(self, key: object, now: float) -> list[WireStatMessage] | None:
        """Record a request entering (``key``: a RevisionKey); returns the immediate message
        for a revision's first, else None."""
        entry = self._stats.get(key)
        if entry is not None:
            entry.refs += 1
            entry.stats.req_in(now)
            return None
        entry = self._stats[key] = _RevisionStats(now)
        entry.refs = 1
        entry.stats.req_in(now)
        # Always exactly 1 request: an entry is only deleted by a tick that saw no activity.
        stat = Stat(pod_name=self._pod_name, average_concurrent_requests=1.0, request_count=1.0)
        ns, name = cast(RevisionKey, key)
        return [WireStatMessage(ns, name, stat)]

    def request_out(self, key: object, now: float) -> None:
        """Record a request leaving (``key``: a RevisionKey; a revision without an entry is
        ignored)."""
        entry = self._stats.get(key)
        if entry is None:
            return
        entry.stats.req_out(now)
        entry.refs -= 1

    def report(self, now: float) -> list[WireStatMessage]:
        """The 1 s tick: one message per revision, all to be sent as one batch."""
        msgs: list[WireStatMessage] = []
        last: dict[RevisionKey, float] = {}
        pod = self._pod_name
        for boxed, entry in list(self._stats.items()):
            key = cast(RevisionKey, boxed)
            rep = entry.stats.report(now)
            first_adj = entry.first_request
            entry.first_request = 0.0
            # Zero only when there was no activity for the entire period.
            if rep.average_concurrency == 0 and entry.refs == 0:
                del self._stats[boxed]
            # The immediate message already counted one request at concurrency 1; the period's
            # real average may be below 1, hence the floor.
            avg = max(rep.average_concurrency - first_adj, 0.0)
            count = rep.request_count - first_adj
            stat = Stat(pod_name=pod, average_concurrent_requests=avg, request_count=count)
            msgs.append(WireStatMessage(key[0], key[1], stat))
            last[key] = avg
        self._last = last
        return msgs

    def concurrency(self) -> dict[RevisionKey, float]:
        """The averages of the last :meth:`report`, per revision (the value that was sent).

        For the ``kn.revision.request.concurrency`` gauge; a revision deleted by that tick is
        still listed (with its final value) until the next tick.
        """
        return dict(self._last)

    def __len__(self) -> int:
        """Number of revisions currently tracked."""
        return len(self._stats)


class ReportTicker:
    """The 1 s tick that ships a :class:`ConcurrencyReporter`'s batch with ``send`` (the only
    I/O of the activator's stats: a timer on ``loop``)."""

    __slots__ = ("_handle", "loop", "reporter", "send")

    def __init__(
        self,
        loop: Any,
        reporter: ConcurrencyReporter,
        send: Callable[[list[WireStatMessage]], None],
    ) -> None:
        self.loop = loop
        self.reporter = reporter
        self.send = send
        self._handle: Any = None

    def start(self) -> None:
        self._handle = self.loop.call_later(1.0, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = self.loop.call_later(1.0, self._tick)
        msgs = self.reporter.report(self.loop.time())
        if msgs:
            self.send(msgs)

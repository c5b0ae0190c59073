"""Per-revision throttler: capacity, a bounded FIFO of waiting requests, pod load balancing.

Knative ``pkg/activator/net/throttler.go`` (SPEC §2.5, §2.10), sans-I/O and callback driven:
no asyncio, no clock, no sockets. The HTTP engine asks :meth:`RevisionThrottler.try_acquire`
for a :class:`Lease` (a revision slot plus a reservation on one pod); when none is available at
once it gets a :class:`Ticket`, which costs one small object and no Task, and its ``on_grant``
callback later receives the lease.

Capacity (SPEC §2.5): CC > 0: ``CC x len(assigned pods)``; CC = 0: "open" (Knative's infinite
breaker; reported as ``MAX_BREAKER_CAPACITY``) while there is at least one pod, else 0. Unlike
Knative's infinite breaker the queue is bounded here too: at most ``queue_depth`` requests wait
(DESIGN "bounded everything"); beyond that :class:`QueueFullError`. Unlike Knative's breaker, the
bound is on *waiting* requests, not on waiting plus executing ones.

Ordering and re-entrancy:

- Waiting requests are granted strictly FIFO and a newcomer never overtakes a waiting request:
  ``try_acquire`` returns a lease at once only when nobody waits.
- A grant happens only when the revision has a free slot *and* the LB policy reserves a pod. If
  the slot is free but no pod is (Knative's "re-enqueue", e.g. a pod-level race), the request
  stays at the front of the queue and is retried on the next change (a lease release or an
  update), never in a loop, so this cannot spin.
- All state (counts, ticket states, leases) is updated before any ``on_grant`` runs. Callbacks
  then run synchronously, in grant (FIFO) order, one at a time and never nested: grants caused
  by a callback (it releases a lease, say) are appended and delivered by the outermost delivery
  loop after it returns. Callbacks may call ``try_acquire``, ``Lease.release``,
  ``Ticket.cancel`` and the update methods. If a callback raises, its lease is released (so no
  capacity leaks), the remaining grants are still delivered, and the first exception is then
  re-raised to the caller of the method that triggered the grants.
- ``Ticket.cancel`` returns False once the ticket is granted, even if its ``on_grant`` has not
  run yet (another callback cancelled it): the lease is then still delivered, and its owner must
  release it.

Pods removed by :meth:`RevisionThrottler.update_backends` while leases on them are outstanding
keep their tracker (retired) until the last of those leases is released; if the pod comes back
meanwhile, the same tracker is reused, so a pod never holds more than CC of this throttler's
leases, whatever the sequence of updates. Lowering capacity pre-empts nobody.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeVar

from activator.lb_policy import PodTracker, RoundRobin, first_available, random_choice_2
from dataplane.breaker import MAX_BREAKER_CAPACITY, QueueFullError

__all__ = [
    "DEFAULT_QUEUE_DEPTH",
    "Lease",
    "QueueFullError",
    "RevisionThrottler",
    "Ticket",
    "assign_slice",
]

DEFAULT_QUEUE_DEPTH: Final = 10_000  # Knative's breakerQueueDepth

_T = TypeVar("_T")

# Ticket states
_WAITING: Final = 0
_GRANTED: Final = 1
_CANCELLED: Final = 2


def assign_slice(items: Sequence[_T], index: int, count: int) -> list[_T]:
    """This activator's share of the sorted pods (SPEC §2.10, Knative ``assignSlice``).

    All of them when the index is unknown (< 0), the activator count is unknown (<= 0) or 1, or
    there is at most one pod; ``items[index % n]`` alone when there are more activators than
    pods; otherwise the contiguous slice ``[index*size, index*size + size)`` with
    ``size = n // count``, plus ``tail[index]`` for the first ``n % count`` activators, where
    ``tail`` is the last ``n % count`` items.
    """
    n = len(items)
    if index < 0 or count <= 1 or n <= 1:
        return list(items)
    if count > n:
        return [items[index % n]]
    size = n // count
    start = index * size
    out = list(items[start : start + size])
    remnants = n % count
    if index < remnants:
        out.append(items[n - remnants + index])
    return out


class Lease:
    """A revision slot plus a reservation on the pod ``dest``, held while proxying."""

    __slots__ = ("_throttler", "_tracker", "dest")

    def __init__(self, throttler: RevisionThrottler, tracker: PodTracker) -> None:
        self._throttler = throttler
        self._tracker: PodTracker | None = tracker
        self.dest = tracker.dest

    def release(self) -> None:
        """Give back the pod reservation and the revision slot; a second call does nothing.

        Safe after the pod was removed. May run ``on_grant`` callbacks of waiting requests.
        """
        tracker = self._tracker
        if tracker is None:
            return
        self._tracker = None
        self._throttler._release(tracker)

    @property
    def released(self) -> bool:
        return self._tracker is None

    def __repr__(self) -> str:
        return f"Lease({self.dest!r}, released={self._tracker is None})"


class Ticket:
    """A request waiting for capacity; ``on_grant(lease)`` runs once it gets a lease."""

    __slots__ = ("_throttler", "on_grant", "state")

    def __init__(self, throttler: RevisionThrottler, on_grant: Callable[[Lease], None]) -> None:
        self._throttler = throttler
        self.on_grant = on_grant
        self.state = _WAITING

    def cancel(self) -> bool:
        """Stop waiting (client gone, timeout). True if it was still waiting: its queue slot is
        freed and ``on_grant`` will never run; False if already granted or cancelled."""
        if self.state != _WAITING:
            return False
        self.state = _CANCELLED
        self._throttler._cancelled(self)
        return True

    @property
    def waiting(self) -> bool:
        return self.state == _WAITING

    @property
    def granted(self) -> bool:
        return self.state == _GRANTED

    @property
    def cancelled(self) -> bool:
        return self.state == _CANCELLED


class RevisionThrottler:
    """Capacity, waiting requests and pod choice for one revision in this activator."""

    __slots__ = (
        "_activator_count",
        "_activator_index",
        "_assigned",
        "_backend_count",
        "_capacity",
        "_cc",
        "_cluster",
        "_delivering",
        "_in_flight",
        "_pending",
        "_queue",
        "_queue_cancelled",
        "_retired",
        "_rng",
        "_rr",
        "_sorted",
        "_trackers",
        "_waiting",
        "queue_depth",
    )

    def __init__(
        self,
        container_concurrency: int,
        *,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        rng: random.Random | None = None,
    ) -> None:
        if container_concurrency < 0:
            raise ValueError(
                f"container concurrency must be 0 or more, got {container_concurrency}"
            )
        if queue_depth <= 0:
            raise ValueError(f"queue depth must be greater than 0, got {queue_depth}")
        self._cc = container_concurrency
        self.queue_depth = queue_depth
        self._rng = rng if rng is not None else random.Random()
        self._rr = RoundRobin()
        self._trackers: dict[str, PodTracker] = {}  # current pods by dest
        self._sorted: list[PodTracker] = []  # current pods, sorted by dest
        self._assigned: list[PodTracker] = []  # this activator's subset, sorted by dest
        self._retired: dict[str, PodTracker] = {}  # removed pods that still hold leases
        self._activator_index = -1
        self._activator_count = -1
        self._cluster: PodTracker | None = None  # the ClusterIP fallback, when in use
        self._backend_count = 0  # K8s-ready pods behind the ClusterIP
        self._capacity = 0
        self._in_flight = 0
        self._queue: deque[Ticket] = deque()  # FIFO; may hold cancelled tickets (lazy removal)
        self._queue_cancelled = 0
        self._waiting = 0
        self._pending: deque[tuple[Callable[[Lease], None], Lease]] = deque()
        self._delivering = False

    # -- queries ---------------------------------------------------------------------------
    @property
    def container_concurrency(self) -> int:
        return self._cc

    @property
    def capacity(self) -> int:
        """Revision slots: CC x assigned pods; CC = 0: MAX_BREAKER_CAPACITY with a pod, else 0."""
        return self._capacity

    @property
    def in_flight(self) -> int:
        """Leases outstanding (may exceed capacity after it shrank: nobody is pre-empted)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Tickets waiting (not granted, not cancelled)."""
        return self._waiting

    @property
    def assigned(self) -> list[str]:
        """Dests of the pods this activator sends to, sorted."""
        return [t.dest for t in self._assigned]

    @property
    def cluster(self) -> str | None:
        """The ClusterIP dest in use instead of pods (Knative's fallback), or None."""
        return None if self._cluster is None else self._cluster.dest

    def in_flight_by_pod(self) -> dict[str, int]:
        """Leases outstanding per pod (``ip:port``), pods that left included; none listed at 0
        (the ClusterIP dest, when in use, is listed as one)."""
        out: dict[str, int] = {}
        for trackers in (self._trackers, self._retired):
            for d, t in trackers.items():
                if t.weight:
                    out[d] = out.get(d, 0) + t.weight
        c = self._cluster
        if c is not None and c.weight:
            out[c.dest] = out.get(c.dest, 0) + c.weight
        return out

    # -- request path ----------------------------------------------------------------------
    def try_acquire(self, on_grant: Callable[[Lease], None]) -> Lease | Ticket:
        """A Lease at once if nobody waits and a slot and a pod are free (``on_grant`` is not
        called); otherwise a queued Ticket whose ``on_grant`` gets the lease later. Raises
        :class:`QueueFullError` when ``queue_depth`` requests already wait."""
        if self._waiting == 0 and self._in_flight < self._capacity:
            tracker = self._pick()
            if tracker is not None:
                self._in_flight += 1
                return Lease(self, tracker)
        if self._waiting >= self.queue_depth:
            raise QueueFullError()
        ticket = Ticket(self, on_grant)
        self._queue.append(ticket)
        self._waiting += 1
        return ticket

    def cancel_waiting(self) -> list[Callable[[Lease], None]]:
        """Cancel every waiting ticket (the revision will not be served) and return their
        ``on_grant`` callbacks in FIFO order, so the caller can answer each request."""
        out = [t.on_grant for t in self._queue if t.state == _WAITING]
        for t in self._queue:
            t.state = _CANCELLED
        self._queue.clear()
        self._queue_cancelled = 0
        self._waiting = 0
        return out

    # -- updates ---------------------------------------------------------------------------
    def update_backends(self, dests: Iterable[str]) -> None:
        """Replace the set of healthy pods (``ip:port``). Trackers of pods that stay keep their
        state; removed pods are dropped (their outstanding leases still release safely). Pods
        are in place before capacity is raised, and waiting requests are then granted."""
        names = sorted(set(dests))
        old = self._trackers
        retired = self._retired
        trackers: dict[str, PodTracker] = {}
        for d in names:
            t = old.get(d)
            if t is None:
                t = retired.pop(d, None)
                if t is None:
                    t = PodTracker(d, self._cc)
            trackers[d] = t
        for d, t in old.items():
            if d not in trackers and t.weight > 0:
                retired[d] = t
        if retired:
            self._retired = {d: t for d, t in retired.items() if t.weight > 0}
        self._trackers = trackers
        self._sorted = [trackers[d] for d in names]
        self._update_capacity()

    def update_cluster(self, dest: str | None, backend_count: int) -> None:
        """Route through the private service's ClusterIP ``dest`` (None: through the pods
        again), with ``backend_count`` K8s-ready pods behind it (SPEC §2.5: capacity
        ``CC x backend_count`` split across the activators, at least 1). The ClusterIP has no
        per-pod accounting: Kubernetes balances behind it."""
        if backend_count < 0:
            raise ValueError(f"backend count must be 0 or more, got {backend_count}")
        cur = self._cluster
        if dest is None:
            self._cluster = None
        elif cur is None or cur.dest != dest:
            self._cluster = PodTracker(dest, 0)  # no breaker: capacity is revision-wide
        self._backend_count = backend_count
        self._update_capacity()

    def update_activators(self, index: int, count: int) -> None:
        """This activator's position among ``count`` activators serving the revision (SPEC
        §2.10); ``index`` -1 or ``count`` 0 mean unknown: use every pod."""
        if count > 0 and index >= count:
            raise ValueError(f"activator index {index} out of range for {count} activators")
        if (index, count) == (self._activator_index, self._activator_count):
            return
        self._activator_index = index
        self._activator_count = count
        self._update_capacity()

    # -- internals -------------------------------------------------------------------------
    def _update_capacity(self) -> None:
        cc = self._cc
        if self._cluster is not None:
            # ClusterIP routing: no assigned pods; capacity from the K8s-ready count.
            self._assigned = []
            n = self._backend_count
            cap = cc * n
            if cap > 0:
                cap = max(1, cap // max(1, self._activator_count))
            if n > 0 and (cc == 0 or cap > MAX_BREAKER_CAPACITY):
                cap = MAX_BREAKER_CAPACITY
            self._capacity = cap
        elif cc == 0:
            # Subsetting applies only to CC > 0; the infinite breaker is open iff any pod.
            self._assigned = list(self._sorted)
            self._capacity = MAX_BREAKER_CAPACITY if self._assigned else 0
        else:
            self._assigned = assign_slice(
                self._sorted, self._activator_index, self._activator_count
            )
            self._capacity = min(cc * len(self._assigned), MAX_BREAKER_CAPACITY)
        if self._waiting:
            self._dispatch()

    def _pick(self) -> PodTracker | None:
        c = self._cluster
        if c is not None:
            c.reserve()
            return c
        cc = self._cc
        if cc == 0:
            return random_choice_2(self._assigned, self._rng)
        if cc <= 3:
            return first_available(self._assigned)
        return self._rr.pick(self._assigned)

    def _release(self, tracker: PodTracker) -> None:
        tracker.release()
        self._in_flight -= 1
        if tracker.weight == 0 and self._retired.get(tracker.dest) is tracker:
            del self._retired[tracker.dest]
        if self._waiting:
            self._dispatch()

    def _cancelled(self, ticket: Ticket) -> None:
        self._waiting -= 1
        self._queue_cancelled += 1
        if self._queue_cancelled > 64 and self._queue_cancelled * 2 > len(self._queue):
            live = [t for t in self._queue if t.state == _WAITING]
            self._queue.clear()
            self._queue.extend(live)
            self._queue_cancelled = 0

    def _dispatch(self) -> None:
        """Grant waiting tickets FIFO while a slot and a pod are free, then deliver."""
        queue = self._queue
        pending = self._pending
        while queue and self._in_flight < self._capacity:
            ticket = queue[0]
            if ticket.state != _WAITING:  # cancelled: drop lazily
                queue.popleft()
                self._queue_cancelled -= 1
                continue
            tracker = self._pick()
            if tracker is None:
                # Re-enqueue: the slot stays free and the ticket stays first in line; the next
                # release or update retries.
                break
            queue.popleft()
            ticket.state = _GRANTED
            self._waiting -= 1
            self._in_flight += 1
            pending.append((ticket.on_grant, Lease(self, tracker)))
        if pending and not self._delivering:
            self._deliver()

    def _deliver(self) -> None:
        pending = self._pending
        error: Exception | None = None
        self._delivering = True
        try:
            while pending:
                on_grant, lease = pending.popleft()
                try:
                    on_grant(lease)
                except Exception as e:
                    lease.release()
                    if error is None:
                        error = e
        finally:
            self._delivering = False
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return (
            f"RevisionThrottler(cc={self._cc}, capacity={self._capacity}, "
            f"in_flight={self._in_flight}, waiting={self._waiting}, pods={len(self._sorted)}, "
            f"assigned={len(self._assigned)})"
        )

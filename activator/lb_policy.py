"""Per-pod trackers and the activator's load-balancing policies (Knative ``lb_policy.go``).

Sans-I/O: a policy looks at the assigned trackers of a revision and returns one that it has
*already reserved* (the caller owns the reservation and gives it back with
:meth:`PodTracker.release`), or ``None`` when every tracker is full. The policy is chosen by the
revision's container concurrency (CC), SPEC §2.5:

- CC = 0: :func:`random_choice_2`, power of two choices on the in-flight ``weight``; never fails
  while there is a tracker;
- CC 1..3: :func:`first_available`, the first tracker in sorted order with a free slot, so a
  small CC packs requests onto as few pods as possible;
- CC > 3: :class:`RoundRobin`, which spreads requests while skipping full pods.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["PodTracker", "RoundRobin", "first_available", "random_choice_2"]


class PodTracker:
    """One pod (its queue-proxy ``ip:port``) and the requests this activator has on it.

    ``weight`` counts this activator's in-flight requests on the pod; for CC > 0 it is bounded
    by CC (``limit``), for CC = 0 there is no limit. Knative keeps a breaker per pod here, used
    only through its non-blocking reserve: that never queues, so it is this counter (two calls
    fewer per request than a :class:`~dataplane.breaker.Breaker`).
    """

    __slots__ = ("dest", "limit", "weight")

    def __init__(self, dest: str, container_concurrency: int) -> None:
        self.dest = dest
        self.limit = container_concurrency  # 0: no limit
        self.weight = 0

    def reserve(self) -> bool:
        """Take a slot on the pod without waiting; False when the pod is at CC."""
        if self.limit and self.weight >= self.limit:
            return False
        self.weight += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`reserve`."""
        if self.weight <= 0:
            raise RuntimeError(f"release of {self.dest} without a reservation")
        self.weight -= 1

    @property
    def available(self) -> bool:
        """Whether :meth:`reserve` would succeed now (no side effects)."""
        return not self.limit or self.weight < self.limit

    def __repr__(self) -> str:
        return f"PodTracker({self.dest!r}, weight={self.weight})"


def random_choice_2(trackers: Sequence[PodTracker], rng: random.Random) -> PodTracker | None:
    """Power of two choices (CC = 0): of two distinct random trackers take the lighter one.

    One tracker: pick it; two: compare both; more: two distinct random indices. Ties are broken
    at random. Returns the tracker already reserved, or None when there is no tracker.
    """
    n = len(trackers)
    if n == 0:
        return None
    if n == 1:
        pick = trackers[0]
    else:
        r1, r2 = 0, 1
        if n > 2:
            r1 = rng.randrange(n)
            r2 = rng.randrange(n - 1)
            if r2 >= r1:  # draw from [0, n) without r1
                r2 += 1
        pick, alt = trackers[r1], trackers[r2]
        if pick.weight > alt.weight or (pick.weight == alt.weight and rng.getrandbits(1)):
            pick = alt
    return pick if pick.reserve() else None


def first_available(trackers: Sequence[PodTracker]) -> PodTracker | None:
    """First tracker, in the given (sorted by dest) order, whose reserve succeeds (CC 1..3)."""
    for t in trackers:
        if t.reserve():
            return t
    return None


class RoundRobin:
    """Round robin over the trackers, skipping full ones (CC > 3).

    Starts at the stored index (reset to 0 when it is past the end because the list shrank),
    tries each tracker once with wrap-around, and stores the index after the one reserved.
    """

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = 0

    def pick(self, trackers: Sequence[PodTracker]) -> PodTracker | None:
        """The next tracker with a free slot, already reserved, or None if all are full."""
        n = len(trackers)
        if self.index >= n:
            self.index = 0
        start = self.index
        if n:  # the tracker at the index first: the loop below only when it is full
            t = trackers[start]
            if t.reserve():
                self.index = start + 1
                return t
        for i in range(1, n):
            p = (start + i) % n
            t = trackers[p]
            if t.reserve():
                self.index = p + 1
                return t
        return None

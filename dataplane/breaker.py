"""Breaker: a concurrency limit with a bounded queue (Knative ``pkg/queue/breaker.go``).

Sans-I/O and callback driven: nothing here touches the event loop. A request is *admitted* while
``in_flight < queue_depth + max_concurrency`` and then either gets an *active* slot at once or
waits in a FIFO of waiters until ``release`` or a capacity increase hands it one. Waiting costs
one small object and no Task; a waiter that gives up (client gone, timeout) is cancelled and
frees its admission slot at once.

Unlike Go's semaphore, hand-off here is strict FIFO: a released slot goes to the oldest waiter,
never to a newcomer, so queued requests cannot starve.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_BREAKER_CAPACITY", "Breaker", "BreakerParamsError", "QueueFullError", "Waiter"]

MAX_BREAKER_CAPACITY: Final = 2**31 - 1


class BreakerParamsError(ValueError):
    """Invalid breaker parameters."""


class QueueFullError(Exception):
    """Every admission slot is taken: the caller answers 503 ``pending request queue full``."""

    def __init__(self) -> None:
        super().__init__("pending request queue full")


class Waiter:
    """A queued request waiting for an active slot."""

    __slots__ = ("_breaker", "callback", "state")

    # state: 0 waiting, 1 granted, 2 cancelled
    def __init__(self, breaker: Breaker, callback: Callable[[], None]) -> None:
        self._breaker = breaker
        self.callback = callback
        self.state = 0

    def cancel(self) -> bool:
        """Give up waiting; returns True if the waiter was still queued (its admission is freed)."""
        if self.state != 0:
            return False
        self.state = 2
        b = self._breaker
        b._in_flight -= 1
        b._cancelled_waiting += 1
        if b._cancelled_waiting > 64 and b._cancelled_waiting * 2 > len(b._waiters):
            b._compact()
        return True


class Breaker:
    """Admission counter plus a dynamic-capacity semaphore with FIFO hand-off."""

    __slots__ = (
        "_cancelled_waiting",
        "_capacity",
        "_in_flight",
        "_in_use",
        "_waiters",
        "max_concurrency",
        "queue_depth",
        "total_slots",
    )

    def __init__(self, queue_depth: int, max_concurrency: int, initial_capacity: int) -> None:
        if queue_depth <= 0:
            raise BreakerParamsError(f"queue depth must be greater than 0, got {queue_depth}")
        if max_concurrency < 0:
            raise BreakerParamsError(f"max concurrency must be 0 or more, got {max_concurrency}")
        if not 0 <= initial_capacity <= max_concurrency:
            raise BreakerParamsError(
                f"initial capacity must be within 0..{max_concurrency}, got {initial_capacity}"
            )
        self.queue_depth = queue_depth
        self.max_concurrency = max_concurrency
        self.total_slots = queue_depth + max_concurrency
        self._capacity = initial_capacity
        self._in_flight = 0
        self._in_use = 0
        self._waiters: deque[Waiter] = deque()
        self._cancelled_waiting = 0

    # -- queries ---------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Admitted requests: executing plus waiting."""
        return self._in_flight

    @property
    def in_use(self) -> int:
        """Requests holding an active slot."""
        return self._in_use

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def waiting(self) -> int:
        return len(self._waiters) - self._cancelled_waiting

    # -- admission -------------------------------------------------------------------------
    def try_acquire(self) -> bool | None:
        """Fast path: True if an active slot was taken at once, None if the caller must queue
        with :meth:`enqueue`; raises :class:`QueueFullError` when every admission slot is taken."""
        if self._in_flight >= self.total_slots:
            raise QueueFullError()
        # Invariant: live waiters exist only while in_use >= capacity, so a free slot here
        # cannot be jumping the queue.
        if self._in_use < self._capacity:
            self._in_flight += 1
            self._in_use += 1
            return True
        return None

    def enqueue(self, callback: Callable[[], None]) -> Waiter:
        """Admit and queue; ``callback`` runs (synchronously, inside ``release`` or
        ``update_concurrency``) once an active slot is granted. Raises QueueFullError."""
        if self._in_flight >= self.total_slots:
            raise QueueFullError()
        self._in_flight += 1
        w = Waiter(self, callback)
        self._waiters.append(w)
        return w

    def reserve(self) -> bool:
        """Non-blocking: take an admission and an active slot, or nothing (activator trackers)."""
        if self._in_flight >= self.total_slots or self._in_use >= self._capacity:
            return False
        self._in_flight += 1
        self._in_use += 1
        return True

    def release(self) -> None:
        """Give back an active slot (and its admission); hands the slot to the oldest waiter."""
        self._in_use -= 1
        self._in_flight -= 1
        if self._waiters:
            self._grant()

    def update_concurrency(self, capacity: int) -> None:
        """Set the active-slot capacity; raising it wakes waiters, lowering it pre-empts nobody."""
        if capacity < 0:
            capacity = 0
        elif capacity > MAX_BREAKER_CAPACITY:
            capacity = MAX_BREAKER_CAPACITY
        self._capacity = capacity
        if self._waiters:
            self._grant()

    # -- internals -------------------------------------------------------------------------
    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self._in_use < self._capacity:
            w = waiters.popleft()
            if w.state != 0:
                if w.state == 2:
                    self._cancelled_waiting -= 1
                continue
            w.state = 1
            self._in_use += 1
            w.callback()

    def _compact(self) -> None:
        # In place: _grant may be iterating this very deque (a grant callback can cancel).
        live = [w for w in self._waiters if w.state == 0]
        self._waiters.clear()
        self._waiters.extend(live)
        self._cancelled_waiting = 0

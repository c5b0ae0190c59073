"""The drainer (Knative ``pkg/network/handlers/drain.go``): quiet-period wait before shutdown.

``drain()`` flips the pod to *draining* at once (probes then answer 503 ``shutting down``) and
completes once ``quiet_period`` has passed without a non-probe request; every request seen
while draining restarts that period. Concurrent callers share one drain; ``reset()`` cancels it
(the ``/wait-for-drain`` liveness-restart case). The hot path pays one attribute check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Drainer"]


class Drainer:
    __slots__ = ("_clock", "_done", "_handle", "_last", "_loop", "draining", "quiet_period")

    def __init__(
        self,
        quiet_period: float,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.quiet_period = quiet_period
        self._loop = loop or asyncio.get_event_loop()
        self._clock = clock or self._loop.time
        self.draining = False
        self._done: asyncio.Future[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0

    def request_seen(self) -> None:
        """A non-probe request arrived: restart the quiet period if draining."""
        if self.draining:
            self._last = self._clock()

    async def drain(self) -> None:
        """Start (or join) the drain and wait until it completes or is reset."""
        if self._done is None:
            self.draining = True
            self._last = self._clock()
            self._done = self._loop.create_future()
            self._arm()
        await asyncio.shield(self._done)

    def _arm(self) -> None:
        remaining = self._last + self.quiet_period - self._clock()
        self._handle = self._loop.call_later(max(remaining, 0.0), self._check)

    def _check(self) -> None:
        self._handle = None
        if self._done is None:
            return
        if self._clock() - self._last >= self.quiet_period:
            if not self._done.done():
                self._done.set_result(None)
        else:
            self._arm()

    def reset(self) -> None:
        """Cancel a drain: waiters return and probes answer normally again."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        done = self._done
        self._done = None
        self.draining = False
        if done is not None and not done.done():
            done.set_result(None)

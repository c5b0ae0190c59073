"""Readiness probing of the user container (SPEC §1.12): Knative-style probe cycles.

Single flight, all probes concurrently, aggressive (poll every 10 ms, every 3 ms while the port
refuses, 100 ms attempts, give up after 10 s) or standard (one attempt) mode. The specs come
from dataplane/probespec.py, the attempts from queueproxy/probes.py. Stdlib asyncio only: this
runs inside the memory-constrained queue-proxy sidecar.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from dataplane.probespec import ProbeSpec

from .probes import ProbeRefused, attempt_probe, host_port

__all__ = [
    "AGGRESSIVE_PROBE_TIMEOUT",
    "POLL_TIMEOUT",
    "REFUSED_RETRY_INTERVAL",
    "RETRY_INTERVAL",
    "ReadinessProber",
]

# pkg/queue/readiness/probe.go constants.
AGGRESSIVE_PROBE_TIMEOUT = 0.1
# Knative polls every 50 ms; 10 ms lets a pod take its first request (through the activator's
# long-poll probe) within ~10 ms of the app listening. While the app's port refuses connections
# (it is still starting: the common case) a retry costs one refused local connect, ~50-100 us of
# Python, so those retries come every 3 ms: the app is seen within 3 ms of listening for ~3 %
# of a core while it starts (measured release: listen -> request at the app 6-13 ms with 10 ms
# polls, the poll phase the largest share; see benchmarks/RESULTS.md).
RETRY_INTERVAL = 0.01
REFUSED_RETRY_INTERVAL = 0.003
POLL_TIMEOUT = 10.0


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class ReadinessProber:
    """Runs probe cycles on demand (SPEC §1.12); the callers (kubelet, activator) set the pace."""

    def __init__(
        self,
        probes: list[ProbeSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        attempt: Callable[[ProbeSpec, float], Awaitable[None]] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._probes = tuple(probes)
        # Consecutive successes per probe; persists across cycles like Knative's Probe.count.
        self._counts = [0] * len(self._probes)
        self._clock = clock
        self._sleep = sleep
        self._attempt = attempt if attempt is not None else attempt_probe
        self._log = log if log is not None else _log_stderr
        self._inflight: asyncio.Task[bool] | None = None
        self._last_result: bool | None = None

    @property
    def probes(self) -> tuple[ProbeSpec, ...]:
        """The configured probes."""
        return self._probes

    @property
    def last_result(self) -> bool | None:
        """Result of the last finished cycle; None before the first one."""
        return self._last_result

    async def probe(self) -> bool:
        """Run one cycle, or join the one already running (single flight); True if all pass."""
        if not self._probes:
            self._last_result = True
            return True
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._cycle())
            self._inflight = task
            task.add_done_callback(self._cycle_done)
        # A waiter that is cancelled (client went away) must not cancel the shared cycle.
        return await asyncio.shield(task)

    def _cycle_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # mark retrieved even if every waiter went away

    async def _cycle(self) -> bool:
        if len(self._probes) == 1:
            ok = await self._run_probe(0)
        else:
            results = await asyncio.gather(*(self._run_probe(i) for i in range(len(self._probes))))
            ok = all(results)
        self._last_result = ok
        return ok

    async def _run_probe(self, index: int) -> bool:
        spec = self._probes[index]
        if spec.aggressive:
            return await self._run_aggressive(index, spec)
        timeout = float(spec.timeout_seconds) if spec.timeout_seconds > 0 else 1.0
        try:
            await self._attempt(spec, timeout)
        except Exception as exc:
            self._report(spec, _describe(exc))
            return False
        return True

    async def _run_aggressive(self, index: int, spec: ProbeSpec) -> bool:
        start = self._clock()
        deadline = start + POLL_TIMEOUT
        next_at = start
        failures = 0
        last_error: BaseException | None = None
        while True:
            try:
                await self._attempt(spec, AGGRESSIVE_PROBE_TIMEOUT)
            except Exception as exc:
                # Failures are expected while the user container starts: only the last is logged.
                self._counts[index] = 0
                failures += 1
                last_error = exc
                refused = isinstance(exc, ProbeRefused)
            else:
                refused = False
                self._counts[index] += 1
                if self._counts[index] >= spec.success_threshold:
                    return True
            now = self._clock()
            if now >= deadline:
                break
            # Ticker semantics like wait.PollImmediate: slow attempts eat into the interval.
            next_at = max(next_at + (REFUSED_RETRY_INTERVAL if refused else RETRY_INTERVAL), now)
            await self._sleep(min(next_at, deadline) - now)
        if last_error is None:
            self._report(spec, "aggressive probe error: timed out waiting for the condition")
        else:
            self._report(
                spec, f"aggressive probe error (failed {failures} times): {_describe(last_error)}"
            )
        return False

    def _report(self, spec: ProbeSpec, message: str) -> None:
        if len(self._probes) > 1:
            target = host_port(spec.host, spec.port)
            if spec.kind == "http":
                target += spec.path
            message = f"{spec.kind} probe {target}: {message}"
        self._log(message)

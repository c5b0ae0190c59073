"""Leader election on a ``coordination.k8s.io/v1`` Lease (client-go's ``leaderelection``).

One active autoscaler at a time: every candidate runs :meth:`LeaderElector.run`; the one that
holds the Lease is the leader and renews it every ``retry_period``; the others try every
``retry_period`` and take over once the holder has not renewed for ``leaseDurationSeconds``.

As client-go does, expiry is judged by the local clock from the moment this candidate *observed*
the current record (holder and renew time), never by comparing the holder's ``renewTime`` with
our clock, so clock skew between nodes does not matter. Writes carry the ``resourceVersion``
read just before: of two candidates racing for an expired Lease one gets 409 Conflict and
stays a follower. A leader that cannot renew within ``renew_deadline`` steps down (it may be
partitioned from the API server, and another candidate will take over after the lease
duration). On shutdown the leader releases the Lease (empty holder, duration 1 s) so that a
successor need not wait for expiry; the release has a short deadline of its own
(``release_timeout``, 5 s), because the process must exit well inside the pod's
``terminationGracePeriodSeconds`` even when the API server hangs (the Lease then expires).

Time comes from an injected ``clock`` (seconds, ``time.time`` by default) and waiting from an
injected ``sleep``, so tests drive elections step by step with :meth:`try_acquire_or_renew`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .api import LEASES, KubeAPI, KubeConflict, KubeError, KubeNotFound, Obj

__all__ = ["LeaderElector", "LeaseRecord"]

log = logging.getLogger("platforms.kubernetes.lease")

LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0
RELEASE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The Lease's spec as leader election reads it."""

    holder: str
    duration: float
    renew_time: str
    acquire_time: str
    transitions: int
    resource_version: str


def _micro_time(t: float) -> str:
    """Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires, renews and releases one Lease for ``identity``.

    ``api`` is the :class:`~platforms.kubernetes.api.KubeAPI`. ``on_started`` and ``on_stopped``
    are called (synchronously, on the loop) when this candidate becomes leader and when it
    stops being leader (lost, stepped down or released).
    """

    def __init__(
        self,
        api: KubeAPI,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
        release_timeout: float = RELEASE_TIMEOUT,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity (POD_NAME)")
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        if not release_timeout > 0:
            raise ValueError("need release_timeout > 0")
        self.release_timeout = release_timeout
        self.clock = clock
        self.sleep = sleep
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.is_leader = False
        self.observed: LeaseRecord | None = None
        self.observed_at = 0.0  # local clock when `observed` last changed
        self.last_renew = 0.0  # local clock of our last successful acquire or renew
        self.last_error: KubeError | None = None

    @property
    def leader(self) -> str:
        """The holder as last observed ("" when nobody holds the Lease)."""
        return self.observed.holder if self.observed is not None else ""

    # -- one step --------------------------------------------------------------------------
    async def try_acquire_or_renew(self) -> bool:
        """Acquire the Lease, or renew it when we hold it; whether we hold it afterwards.

        API errors other than a lost race are raised as :class:`KubeError` (a 403 names the
        verb and the resource) after updating the leadership state.
        """
        now = self.clock()
        try:
            current = await self._read()
        except KubeError as e:
            self._failed(now, e)
            raise
        if current is None:
            return await self._write(now, None)
        if self.observed is None or (
            (current.holder, current.renew_time, current.resource_version)
            != (self.observed.holder, self.observed.renew_time, self.observed.resource_version)
        ):
            self.observed = current
            self.observed_at = now
        held_by_other = current.holder not in ("", self.identity)
        if held_by_other and now < self.observed_at + current.duration:
            self._set_leader(False)
            return False
        return await self._write(now, current)

    async def release(self) -> bool:
        """Give the Lease up if we hold it (empty holder, 1 s duration); whether it was.

        Bounded by ``release_timeout``: a hung API server must not hold up the exit (the
        Lease expires on its own after its duration)."""
        if not self.is_leader or self.observed is None:
            self._set_leader(False)
            return False
        now = self.clock()
        body = self._body(now, holder="", duration=1, acquire=self.observed.acquire_time, rv=None)
        body["spec"]["leaseTransitions"] = self.observed.transitions

        async def write() -> None:
            current = await self._read()
            if current is not None and current.holder == self.identity:
                body["metadata"]["resourceVersion"] = current.resource_version
                await self.api.replace(LEASES, self.namespace, self.name, body)

        try:
            await asyncio.wait_for(write(), self.release_timeout)
        except KubeError as e:  # best effort: the lease expires anyway
            log.warning("releasing lease %s/%s: %s", self.namespace, self.name, e)
        except TimeoutError:
            log.warning(
                "releasing lease %s/%s: no answer from the API server in %.1fs; it expires "
                "on its own",
                self.namespace,
                self.name,
                self.release_timeout,
            )
        self._set_leader(False)
        return True

    # -- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        """Try until leader, renew while leader, step down after ``renew_deadline`` without a
        renewal, and start over; runs until cancelled (then releases the Lease)."""
        try:
            while True:
                try:
                    # One attempt may not outlast the renew deadline (client-go bounds it the
                    # same way): a leader stuck on a hung request must step down in time.
                    await asyncio.wait_for(self.try_acquire_or_renew(), self.renew_deadline / 2)
                except KubeError as e:
                    log.error("leader election: %s", e)
                except TimeoutError:
                    log.error(
                        "leader election: no answer from the API server in %.1fs",
                        self.renew_deadline / 2,
                    )
                    self._failed(self.clock(), None)
                await self.sleep(self.retry_period)
        finally:
            if self.is_leader:
                await asyncio.shield(self.release())

    # -- internals -------------------------------------------------------------------------
    def _failed(self, now: float, e: KubeError | None) -> None:
        self.last_error = e
        if self.is_leader and now - self.last_renew >= self.renew_deadline:
            log.error(
                "lease %s/%s: no renewal for %.0fs, stepping down",
                self.namespace,
                self.name,
                now - self.last_renew,
            )
            self._set_leader(False)

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            log.info("lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)
            if self.on_started is not None:
                self.on_started()
        else:
            log.info("lease %s/%s: %s stopped leading", self.namespace, self.name, self.identity)
            if self.on_stopped is not None:
                self.on_stopped()

    async def _read(self) -> LeaseRecord | None:
        try:
            lease = await self.api.get(LEASES, self.namespace, self.name)
        except KubeNotFound:
            return None
        spec: Obj = lease.get("spec") or {}
        meta: Obj = lease.get("metadata") or {}
        return LeaseRecord(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            renew_time=str(spec.get("renewTime") or ""),
            acquire_time=str(spec.get("acquireTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    def _body(
        self, now: float, *, holder: str, duration: int, acquire: str, rv: str | None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if rv is not None:
            meta["resourceVersion"] = rv
        spec: dict[str, Any] = {
            "holderIdentity": holder or None,
            "leaseDurationSeconds": duration,
            # A MicroTime: null when unknown (a Lease written by another tool may have none);
            # the API server refuses "" (400, parsing time "").
            "acquireTime": acquire or None,
            "renewTime": _micro_time(now),
        }
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    async def _write(self, now: float, current: LeaseRecord | None) -> bool:
        duration = max(1, round(self.lease_duration))
        ours = current is not None and current.holder == self.identity
        acquire = current.acquire_time if ours and current is not None else _micro_time(now)
        body = self._body(
            now,
            holder=self.identity,
            duration=duration,
            acquire=acquire,
            rv=None if current is None else current.resource_version,
        )
        transitions = 0 if current is None else current.transitions + (0 if ours else 1)
        body["spec"]["leaseTransitions"] = transitions
        try:
            if current is None:
                written = await self.api.create(LEASES, self.namespace, body)
            else:
                written = await self.api.replace(LEASES, self.namespace, self.name, body)
        except (KubeConflict, KubeNotFound):
            # another candidate wrote first (stale resourceVersion), or the Lease went away
            self.observed = None
            if self.is_leader:
                self._failed(now, None)
            return False
        except KubeError as e:
            self._failed(now, e)
            raise
        rv = str((written.get("metadata") or {}).get("resourceVersion") or "")
        spec = body["spec"]
        self.observed = LeaseRecord(
            holder=self.identity,
            duration=float(duration),
            renew_time=spec["renewTime"],
            acquire_time=acquire,
            transitions=transitions,
            resource_version=rv,
        )
        self.observed_at = now
        self.last_renew = now
        self.last_error = None
        self._set_leader(True)
        return True

"""The activator's revisions: per-revision state and the registry that platform events update.

:class:`RevisionState` is everything kept for one revision (throttler, probed backends, upstream
pools, timeouts, why it cannot start, the count of held requests). :class:`Revisions` is the
platform-event receiver (:class:`platforms.base.PlatformEvents`): it creates, reconfigures and
removes revisions, keeps endpoints and activator counts that arrive before their revision, and
indexes the platform's host names. The request path (activator/handler.py) only reads it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dataplane.timeouts import TimeoutPolicy
from dataplane.upstream import UpstreamPool
from platforms.base import Endpoints, Revision, RevisionKey

from .backends import RevisionBackends
from .throttler import Lease, RevisionThrottler

if TYPE_CHECKING:
    from .handler import Activator

__all__ = ["HeldRequest", "PodRoute", "RevisionState", "Revisions"]

log = logging.getLogger("activator")


class HeldRequest:
    """A request waiting in a throttler: granted a lease (called with it), or failed with a 503
    body. The activator's per-request object derives from it (a base class, not a Protocol:
    mypyc compiles this module, and an ``isinstance`` check needs a real class)."""

    __slots__ = ()

    def __call__(self, lease: Lease) -> None:
        raise NotImplementedError

    def fail(self, body: bytes, extra: bytes = b"") -> None:
        raise NotImplementedError


class PodRoute:
    """How requests reach one pod's queue-proxy (or the ClusterIP): its upstream pool, and its
    ``ip:port`` as the upstream Host (Knative's activator sends the original Host in
    K-Original-Host), encoded once."""

    __slots__ = ("host", "pool")

    def __init__(self, pool: UpstreamPool, host: bytes) -> None:
        self.pool = pool
        self.host = host


class RevisionState:
    """Everything the activator keeps per revision."""

    def __init__(self, act: Activator, rev: Revision) -> None:
        self.act = act
        self.rev = rev
        self.key = rev.key
        self.stat_key: object = rev.key  # boxed once (see ConcurrencyReporter._stats)
        self.namespace_bytes = rev.namespace.encode("latin-1", "replace")
        self.throttler = RevisionThrottler(rev.container_concurrency, queue_depth=act.queue_depth)
        self.backends = RevisionBackends(
            rev.key,
            self._healthy,
            probe=act.probe,
            frequency=act.probe_frequency,
            timeout=act.probe_timeout,
            mesh_mode=act.mesh_mode,
            on_cluster=self._cluster,
        )
        self.routes: dict[str, PodRoute] = {}
        self.queued = 0
        self.active = 0
        self.deleted = False
        self.configure(rev)

    def configure(self, rev: Revision) -> None:
        self.rev = rev
        self.timeouts = TimeoutPolicy(
            rev.timeout_seconds, rev.response_start_timeout_seconds, rev.idle_timeout_seconds
        )
        qw = rev.queue_wait_seconds if rev.queue_wait_seconds is not None else self.act.queue_wait
        self.queue_wait = qw if qw is not None and qw > 0 else None
        self.labels = (rev.namespace, rev.name)
        # Why the revision cannot start (None: it can): while no pod has capacity, requests
        # are answered with 503 and this body at once instead of being held.
        self.failure: bytes | None = rev.failure.encode() + b"\n" if rev.failure else None

    def enqueue(self) -> None:
        """A request starts waiting for capacity."""
        self.queued += 1
        if self.queued == 1:
            self.backends.set_demand(True)
        on_held = self.act.on_held
        if on_held is not None:
            on_held(self.key, self.queued)

    def unqueue(self) -> None:
        """A waiting request was granted, answered or went away."""
        self.queued -= 1
        if self.queued == 0:
            self.backends.set_demand(False)
        on_held = self.act.on_held
        if on_held is not None:
            on_held(self.key, self.queued)

    def route(self, dest: str) -> PodRoute:
        r = self.routes.get(dest)
        if r is None:
            host, _, port = dest.rpartition(":")
            tls = self.act.upstream_tls  # internal TLS: the pod's TLS port, our namespace's SAN
            p = UpstreamPool(
                host.strip("[]"),
                int(port) if tls is None else tls.port,
                max_idle=self.act.max_idle_per_host,
                loop=self.act.loop,
                tls=None if tls is None else tls.for_namespace(self.rev.namespace),
            )
            r = self.routes[dest] = PodRoute(p, dest.encode())
        return r

    def _healthy(self, dests: list[str]) -> None:
        # Pools of pods that left: idle connections closed, busy ones finish their exchange.
        keep = set(dests)
        if self.throttler.cluster is not None:
            keep.add(self.throttler.cluster)
        for dest in list(self.routes):
            if dest not in keep:
                self.routes.pop(dest).pool.close()
        self.throttler.update_backends(dests)

    def _cluster(self, dest: str | None, ready: int) -> None:
        # The ClusterIP fallback (activator/backends.py): through the private service, or not.
        old = self.throttler.cluster
        if old is not None and old != dest and old in self.routes:
            self.routes.pop(old).pool.close()
        self.throttler.update_cluster(dest, ready)

    def close(self) -> None:
        self.backends.close()
        for r in self.routes.values():
            r.pool.close()
        self.routes.clear()


class Revisions:
    """The revisions this activator knows, kept current by the platform's events."""

    def __init__(self, act: Activator) -> None:
        self.act = act
        self.revisions: dict[RevisionKey, RevisionState] = {}
        # The platform's host names (lower case, without a port) -> their revision.
        self.hosts: dict[bytes, RevisionState] = {}
        # Revision names as the Knative-Serving-Revision header spells them -> a revision of
        # that name (the request path checks its namespace; a name in two namespaces is found
        # by ``revisions`` for the one not here).
        self.by_name: dict[bytes, RevisionState] = {}
        self._pending_eps: dict[RevisionKey, Endpoints] = {}
        self._pending_acts: dict[RevisionKey, tuple[int, int]] = {}

    # -- platform events -------------------------------------------------------------------
    def revision_updated(self, rev: Revision) -> None:
        rs = self.revisions.get(rev.key)
        if rs is None:
            rs = self.revisions[rev.key] = RevisionState(self.act, rev)
            eps = self._pending_eps.pop(rev.key, None)
            if eps is not None:
                rs.backends.update(eps)
            acts = self._pending_acts.pop(rev.key, None)
            if acts is not None:
                rs.throttler.update_activators(*acts)
        else:
            if rev.container_concurrency != rs.rev.container_concurrency:
                log.warning(
                    "containerConcurrency of %s/%s changed; it applies to new revisions only",
                    rev.namespace,
                    rev.name,
                )
            rs.configure(rev)
        if rs.failure is not None and rs.throttler.capacity == 0:
            self.fail_waiting(rev.key, rs.failure)
        self._reindex_hosts()

    def fail_waiting(self, key: RevisionKey, body: bytes) -> int:
        """Answer every request held for ``key`` with 503 ``body`` (its pods cannot start);
        returns how many were answered."""
        rs = self.revisions.get(key)
        if rs is None:
            return 0
        n = 0
        for waiter in rs.throttler.cancel_waiting():
            if isinstance(waiter, HeldRequest):
                waiter.fail(body)
                n += 1
        return n

    def revision_deleted(self, key: RevisionKey) -> None:
        rs = self.revisions.pop(key, None)
        if rs is not None:
            rs.deleted = True
            rs.close()
        self._pending_eps.pop(key, None)
        self._reindex_hosts()

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None:
        rs = self.revisions.get(key)
        if rs is None:
            self._pending_eps[key] = eps
        else:
            rs.backends.update(eps)

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None:
        rs = self.revisions.get(key)
        if rs is None:
            self._pending_acts[key] = (index, count)
        else:
            rs.throttler.update_activators(index, count)

    def _reindex_hosts(self) -> None:
        # A name with upper case or a port is left out: the request path lowers a Host and
        # drops its port before it looks one up, so such a name could never match, and the
        # index can be tried with a Host exactly as sent first.
        self.hosts = {
            b: rs
            for rs in self.revisions.values()
            for b in (h.encode() for h in rs.rev.hosts)
            if b == b.lower() and b.rfind(b":") <= b.rfind(b"]")
        }
        self.by_name = {
            rs.rev.name.encode(): rs
            for rs in self.revisions.values()
            if rs.rev.name.isascii() and rs.rev.namespace.isascii()  # (namespace_bytes exact)
        }

    def gauges(self) -> list[tuple[tuple[str, str], int, int]]:
        """(labels, queued, active) per revision."""
        return [(rs.labels, rs.queued, rs.active) for rs in self.revisions.values()]

    def close(self) -> None:
        for rs in self.revisions.values():
            rs.close()

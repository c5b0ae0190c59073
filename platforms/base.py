"""The platform interface: what the activator and the autoscaler need to know and do.

A platform reports revisions (with the settings the data plane needs), each revision's
endpoints (the ready and not-ready addresses of its pods' queue-proxies) and, when several
activators share the work, this activator's index among them. Events are pushed to a
:class:`PlatformEvents` receiver; the current state is replayed on ``start``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "Endpoints",
    "Platform",
    "PlatformEvents",
    "Revision",
    "RevisionKey",
]

RevisionKey = tuple[str, str]  # (namespace, name)

#: A revision's request timeout when none is given (Knative's ``revision-timeout-seconds``).
DEFAULT_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Revision:
    """A revision as the data plane sees it (Knative's Revision spec, the parts that matter)."""

    namespace: str
    name: str
    container_concurrency: int = 0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    response_start_timeout_seconds: float = 0.0
    idle_timeout_seconds: float = 0.0
    protocol: str = "http1"  # "http1" or "h2c"
    # Host names routed to this revision when no ingress adds the Knative-Serving-* headers
    # (plain Kubernetes, local processes); Knative's <rev>.<ns>.svc.<domain> always works.
    hosts: tuple[str, ...] = ()
    # How long a request may wait for capacity at the activator before 503 + Retry-After
    # (None: until the request timeout, as Knative).
    queue_wait_seconds: float | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    # Why the revision cannot start (its app exits before it is ready, or no pod got ready
    # within the progress deadline), in words for the 503 body; empty while it can. While no
    # pod is ready the activator answers held and new requests with 503 and this text at
    # once (Knative holds them until their timeout). The platform clears it when a pod is
    # ready.
    failure: str = ""

    @property
    def key(self) -> RevisionKey:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Addresses (``ip:port``) of a revision's queue-proxies."""

    ready: tuple[str, ...] = ()
    not_ready: tuple[str, ...] = ()
    # The revision's private service (``clusterIP:port``), for the activator's fallback when
    # its pods cannot be probed one by one (a mesh in the way); "" when unknown.
    cluster: str = ""

    @property
    def all(self) -> frozenset[str]:
        return frozenset(self.ready) | frozenset(self.not_ready)


class PlatformEvents(Protocol):
    """Receiver of platform changes (the activator implements it)."""

    def revision_updated(self, rev: Revision) -> None: ...

    def revision_deleted(self, key: RevisionKey) -> None: ...

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None: ...

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None: ...


class Platform(Protocol):
    """A source of revisions and endpoints (and, for the autoscaler, a way to scale)."""

    async def start(self, events: PlatformEvents) -> None:
        """Replay the current state into ``events``, then keep reporting changes."""
        ...

    async def close(self) -> None: ...

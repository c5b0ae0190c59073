"""The autoscaler's parts as every process that runs one wires them: ``knd-autoscaler``
(:mod:`autoscaler.standalone`, Deployments on Kubernetes) and ``knd run`` (:mod:`knd.runner`,
local pods, with the activator in the same process)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from dataplane.envconfig import ConfigError
from dataplane.metrics import Labels, add_autoscaler_metrics, knative_labels
from dataplane.promtext import Registry
from platforms.base import Endpoints, PlatformEvents, Revision, RevisionKey

from .config import AutoscalerConfig
from .multiscaler import Autoscaler, ScaleEvent

__all__ = ["AutoscalerFeed", "ScaledPlatform", "new_autoscaler"]


class ScaledPlatform(Protocol):
    """What the autoscaler reads from its platform: ready pods and the pods to scrape."""

    def ready_count(self, key: RevisionKey) -> int: ...

    def scrape_targets(self, key: RevisionKey) -> list[str]: ...


def new_autoscaler(
    loop: asyncio.AbstractEventLoop,
    config: AutoscalerConfig,
    platform: ScaledPlatform,
    *,
    scale: Callable[[RevisionKey, int], Awaitable[None]],
    on_scale: Callable[[ScaleEvent], None],
    on_error: Callable[[RevisionKey, BaseException], None],
    registry: Registry,
    labels: Labels = knative_labels,
) -> Autoscaler:
    """The KPA over ``platform``'s pods, its per-revision state in ``registry`` under
    Knative's autoscaler metric names (``kn_revision_pods_desired``, ...)."""
    autoscaler = Autoscaler(
        loop=loop,
        config=config,
        scale=scale,
        ready=platform.ready_count,
        on_scale=on_scale,
        on_error=on_error,
    )
    add_autoscaler_metrics(registry, autoscaler.status, platform.ready_count, labels)
    return autoscaler


class AutoscalerFeed:
    """Platform events to the autoscaler and then, when there is one, to the activator that
    routes in the same process (``knd run``). A revision whose scaling settings the autoscaler
    refuses goes to ``invalid`` and no further: not scaled, so not routed either."""

    def __init__(
        self,
        autoscaler: Autoscaler,
        invalid: Callable[[Revision, ConfigError], None],
        *,
        added: Callable[[RevisionKey], None] | None = None,
        router: PlatformEvents | None = None,
    ) -> None:
        self.autoscaler = autoscaler
        self.invalid = invalid
        self.added = added  # after a revision was taken (knd-autoscaler: read its replicas)
        self.router = router

    def revision_updated(self, rev: Revision) -> None:
        try:
            self.autoscaler.revision_updated(rev)
        except ConfigError as e:
            self.invalid(rev, e)
            return
        if self.added is not None:
            self.added(rev.key)
        if self.router is not None:
            self.router.revision_updated(rev)

    def revision_deleted(self, key: RevisionKey) -> None:
        self.autoscaler.revision_deleted(key)
        if self.router is not None:
            self.router.revision_deleted(key)

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None:
        # the autoscaler reads ready pods and scrape targets from the platform itself
        if self.router is not None:
            self.router.endpoints_updated(key, eps)

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None:
        if self.router is not None:
            self.router.activators_updated(key, index, count)

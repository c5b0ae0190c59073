"""autoscaler.compose: the autoscaler as knd-autoscaler and knd run wire it."""

from __future__ import annotations

import asyncio

from autoscaler.compose import AutoscalerFeed, new_autoscaler
from autoscaler.config import AutoscalerConfig
from autoscaler.multiscaler import Autoscaler
from dataplane.envconfig import ConfigError
from dataplane.promtext import Registry
from platforms.base import Endpoints, Revision, RevisionKey

GOOD = Revision("default", "good-1")
BAD = Revision("default", "bad-1", annotations={"autoscaling.knative.dev/target": "lots"})


class Pods:
    def ready_count(self, key: RevisionKey) -> int:
        return 2

    def scrape_targets(self, key: RevisionKey) -> list[str]:
        return []


class Router:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def revision_updated(self, rev: Revision) -> None:
        self.calls.append(("updated", rev.key))

    def revision_deleted(self, key: RevisionKey) -> None:
        self.calls.append(("deleted", key))

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None:
        self.calls.append(("endpoints", key))

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None:
        self.calls.append(("activators", (index, count)))


async def _scale(key: RevisionKey, n: int) -> None:
    pass


def _autoscaler(registry: Registry) -> Autoscaler:
    return new_autoscaler(
        asyncio.get_running_loop(),
        AutoscalerConfig(),
        Pods(),
        scale=_scale,
        on_scale=lambda ev: None,
        on_error=lambda key, e: None,
        registry=registry,
    )


async def test_feed_scales_then_routes_and_stops_a_refused_revision() -> None:
    registry = Registry()
    autoscaler = _autoscaler(registry)
    refused: list[tuple[RevisionKey, str]] = []
    added: list[RevisionKey] = []
    router = Router()

    def invalid(rev: Revision, e: ConfigError) -> None:
        refused.append((rev.key, str(e)))

    feed = AutoscalerFeed(autoscaler, invalid, added=added.append, router=router)
    feed.revision_updated(GOOD)
    feed.revision_updated(BAD)
    assert list(autoscaler.revisions) == [GOOD.key]
    assert added == [GOOD.key]
    assert router.calls == [("updated", GOOD.key)]  # the refused one is not routed either
    assert [k for k, _ in refused] == [BAD.key] and "target" in refused[0][1]
    feed.endpoints_updated(GOOD.key, Endpoints(ready=()))
    feed.activators_updated(GOOD.key, 0, 2)
    feed.revision_deleted(GOOD.key)
    assert autoscaler.revisions == {}
    assert router.calls[1:] == [
        ("endpoints", GOOD.key),
        ("activators", (0, 2)),
        ("deleted", GOOD.key),
    ]
    # Knative's autoscaler metric names, read from the autoscaler at scrape time
    assert b"kn_revision_pods_desired" in registry.render()


async def test_feed_without_a_router_only_scales() -> None:
    autoscaler = _autoscaler(Registry())
    feed = AutoscalerFeed(autoscaler, lambda rev, e: None)
    feed.revision_updated(GOOD)
    feed.endpoints_updated(GOOD.key, Endpoints(ready=()))
    feed.activators_updated(GOOD.key, 0, 1)
    assert list(autoscaler.revisions) == [GOOD.key]
    autoscaler.stop()

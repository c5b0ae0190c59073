"""An in-process platform: state set by code (tests, embedding), pushed to the receiver."""

from __future__ import annotations

from .base import Endpoints, PlatformEvents, Revision, RevisionKey

__all__ = ["MemoryPlatform"]


class MemoryPlatform:
    """Holds revisions and endpoints; every change is forwarded to the started receiver."""

    def __init__(self) -> None:
        self.revisions: dict[RevisionKey, Revision] = {}
        self.endpoints: dict[RevisionKey, Endpoints] = {}
        self.activators: dict[RevisionKey, tuple[int, int]] = {}
        self._events: PlatformEvents | None = None

    async def start(self, events: PlatformEvents) -> None:
        self._events = events
        for rev in self.revisions.values():
            events.revision_updated(rev)
        for key, eps in self.endpoints.items():
            events.endpoints_updated(key, eps)
        for key, (index, count) in self.activators.items():
            events.activators_updated(key, index, count)

    async def close(self) -> None:
        self._events = None

    def set_revision(self, rev: Revision) -> None:
        self.revisions[rev.key] = rev
        if self._events is not None:
            self._events.revision_updated(rev)

    def delete_revision(self, key: RevisionKey) -> None:
        self.revisions.pop(key, None)
        self.endpoints.pop(key, None)
        if self._events is not None:
            self._events.revision_deleted(key)

    def set_endpoints(self, key: RevisionKey, eps: Endpoints) -> None:
        self.endpoints[key] = eps
        if self._events is not None:
            self._events.endpoints_updated(key, eps)

    def set_activators(self, key: RevisionKey, index: int, count: int) -> None:
        self.activators[key] = (index, count)
        if self._events is not None:
            self._events.activators_updated(key, index, count)

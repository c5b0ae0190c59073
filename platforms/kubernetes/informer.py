"""An informer: a local cache of one resource kept current by list + watch.

- list (paged), then watch from the list's resourceVersion with bookmarks and a server-side
  timeout (5 to 10 minutes by default, jittered); a watch that ends is re-opened from the last
  resourceVersion seen (events, bookmarks), so nothing is lost;
- ``410 Gone`` (the resourceVersion fell out of the server's history): re-list, diff against
  the cache, and emit exactly the missing events (adds, updates, deletes);
- any other failure: back off (exponential, jittered) and retry; the error is kept in
  ``last_error`` with a message naming the verb, resource and namespace;
- ``synced`` turns true after the first complete list has been delivered to the handler.

Events go to ``handler(type, obj, old)`` with ``type`` one of ``ADDED``, ``MODIFIED``,
``DELETED`` (``old`` is the cached object for MODIFIED and DELETED). Sleep, clock and random are
injectable so the retry logic is tested without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections.abc import Awaitable, Callable

from platforms.base import PlatformEvents

from .api import KubeAPI, KubeError, KubeForbidden, KubeGone, KubeUnauthorized, Obj, Resource

__all__ = ["Backoff", "Handler", "Informer", "InformerPlatform", "object_key"]

log = logging.getLogger("platforms.kubernetes")

Handler = Callable[[str, Obj, Obj | None], None]
Key = tuple[str, str]


def object_key(obj: Obj) -> Key:
    md = obj.get("metadata") or {}
    return (str(md.get("namespace") or ""), str(md.get("name") or ""))


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Backoff:
    """Exponential back-off with jitter: ``initial * factor**n`` capped at ``maximum``, times
    ``1 + jitter * random()``."""

    def __init__(
        self,
        initial: float = 0.5,
        factor: float = 2.0,
        maximum: float = 30.0,
        jitter: float = 0.5,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.jitter = jitter
        self.random = random
        self.attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return base * (1.0 + self.jitter * self.random())

    def reset(self) -> None:
        self.attempt = 0


class Informer:
    """List + watch of one resource (optionally one namespace and selectors)."""

    def __init__(
        self,
        api: KubeAPI,
        resource: Resource,
        handler: Handler,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        timeout_jitter: float = 1.0,
        page_size: int = 500,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        min_watch_seconds: float = 1.0,
    ) -> None:
        self.api = api
        self.resource = resource
        self.handler = handler
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.timeout_seconds = timeout_seconds
        self.timeout_jitter = timeout_jitter
        self.page_size = page_size
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.clock = clock
        self.min_watch_seconds = min_watch_seconds
        self.store: dict[Key, Obj] = {}
        self.resource_version = ""
        self.last_error: KubeError | None = None
        self.lists = 0  # completed lists (1 + re-lists)
        self.watches = 0  # watch streams opened
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._short_watches = 0

    # ------------------------------------------------------------------ public
    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def description(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "all namespaces"
        sel = f" ({self.label_selector})" if self.label_selector else ""
        return f"{self.resource.display} in {where}{sel}"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """True once synced; False if ``timeout`` passes first."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # ------------------------------------------------------------------ loop
    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    async def _run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    self.backoff.reset()
                await self._watch()
            except KubeGone as e:
                log.info("%s: %s; re-listing", self.description, e)
                need_list = True
                continue
            except KubeError as e:
                self._failed(e)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug or a malformed object: keep the informer alive
                log.exception("%s: unexpected error", self.description)
                self._failed(
                    KubeError(
                        f"{self.description}: unexpected error: {e!r}",
                        verb="watch",
                        resource=self.resource.display,
                        namespace=self.namespace,
                    )
                )
                need_list = True
            else:
                continue
            delay = self.backoff.next()
            await self.sleep(delay)

    def _failed(self, e: KubeError) -> None:
        self.last_error = e
        if isinstance(e, KubeForbidden | KubeUnauthorized):
            log.error("%s (retrying with back-off)", e)
        else:
            log.warning("%s (retrying with back-off)", e)

    async def _list(self) -> None:
        items: list[Obj] = []
        token: str | None = None
        rv = ""
        while True:
            page = await self.api.list(
                self.resource,
                namespace=self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                limit=self.page_size,
                continue_token=token,
            )
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            meta = page.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                break
        self.lists += 1
        self.last_error = None
        self._replace(items)
        self.resource_version = rv
        if not self._synced.is_set():
            log.info("%s: synced (%d objects)", self.description, len(self.store))
            self._synced.set()

    def _replace(self, items: list[Obj]) -> None:
        """Make the cache equal to ``items``, emitting the differences."""
        new = {object_key(o): o for o in items}
        old = self.store
        self.store = dict(old)
        for key, obj in new.items():
            prev = old.get(key)
            self.store[key] = obj
            if prev is None:
                self._emit("ADDED", obj, None)
            elif _rv(prev) != _rv(obj) or not _rv(obj):
                self._emit("MODIFIED", obj, prev)
        for key in old.keys() - new.keys():
            prev = self.store.pop(key)
            self._emit("DELETED", prev, prev)

    async def _watch(self) -> None:
        started = self._now()
        seen = 0
        self.watches += 1
        async for ev in self.api.watch(
            self.resource,
            resource_version=self.resource_version,
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            # as client-go: between timeout and (1 + jitter) x timeout, so that many informers
            # started together do not re-watch together
            timeout_seconds=int(
                self.timeout_seconds * (1.0 + self.timeout_jitter * self.backoff.random())
            ),
        ):
            seen += 1
            self._apply(str(ev.get("type")), ev["object"])
        # The stream ended cleanly: re-watch at once, unless the server keeps ending watches
        # immediately (then back off, rather than spin).
        if seen == 0 and self._now() - started < self.min_watch_seconds:
            self._short_watches += 1
            if self._short_watches >= 3:
                await self.sleep(self.backoff.next())
        else:
            self._short_watches = 0
            self.backoff.reset()
            self.last_error = None

    def _apply(self, type_: str, obj: Obj) -> None:
        rv = _rv(obj)
        if type_ == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        key = object_key(obj)
        if type_ in ("ADDED", "MODIFIED"):
            prev = self.store.get(key)
            self.store[key] = obj
            self._emit("ADDED" if prev is None else "MODIFIED", obj, prev)
        elif type_ == "DELETED":
            prev = self.store.pop(key, None)
            if prev is not None:
                self._emit("DELETED", obj, prev)
        else:
            log.debug("%s: ignoring watch event of type %r", self.description, type_)
            return
        if rv:
            self.resource_version = rv

    def _emit(self, type_: str, obj: Obj, old: Obj | None) -> None:
        try:
            self.handler(type_, obj, old)
        except Exception:
            log.exception("%s: handler failed on %s %s", self.description, type_, object_key(obj))


class InformerPlatform:
    """What the Kubernetes platforms share: readiness from their informers, the informers'
    last errors, and closing them (and the API client when the platform owns it)."""

    api: KubeAPI
    owns_api: bool
    informers: list[Informer]
    _events: PlatformEvents | None

    @property
    def synced(self) -> bool:
        return bool(self.informers) and all(i.synced for i in self.informers)

    async def wait_synced(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(i.wait_synced() for i in self.informers)), timeout
            )
        except TimeoutError:
            return False
        return self.synced

    @property
    def errors(self) -> list[KubeError]:
        return [i.last_error for i in self.informers if i.last_error is not None]

    async def close(self) -> None:
        for inf in self.informers:
            await inf.close()
        self._events = None
        if self.owns_api:
            await self.api.close()

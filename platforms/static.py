"""A platform read from a JSON file, re-read when the file changes.

For running an activator without Kubernetes (and for its tests): the file lists revisions, each
with its endpoints, and optionally this activator's index among several::

    {"revisions": [
       {"namespace": "default", "name": "hello-00001", "containerConcurrency": 10,
        "timeoutSeconds": 300, "responseStartTimeoutSeconds": 0, "idleTimeoutSeconds": 0,
        "queueWaitSeconds": 30, "hosts": ["hello.default.example.com"],
        "annotations": {},
        "endpoints": {"ready": ["127.0.0.1:8012"], "notReady": [], "cluster": ""},
        "activators": {"index": 0, "count": 1}}]}

Write the new content to a temporary file and rename it over the old one so a reader never
sees half a file; changes are picked up within ``poll_interval`` (100 ms by default).
``cluster`` is the revision's private service (``ip:port``) for the activator's ClusterIP
fallback (activator/backends.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from dataplane.envconfig import ConfigError

from .base import DEFAULT_TIMEOUT_SECONDS, Endpoints, PlatformEvents, Revision, RevisionKey

__all__ = ["StaticPlatform", "parse_platform_file"]

log = logging.getLogger("platforms.static")

State = tuple[
    dict[RevisionKey, Revision], dict[RevisionKey, Endpoints], dict[RevisionKey, tuple[int, int]]
]


def _addr_list(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise ConfigError(f'{where}: expected a list of "ip:port" strings')
    for a in v:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f'{where}: {a!r} is not "ip:port"')
    return tuple(v)


def _num(obj: Mapping[str, Any], key: str, where: str, default: float) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise ConfigError(f"{where}.{key}: expected a number >= 0, got {v!r}")
    return float(v)


def parse_platform_file(text: str, path: str) -> State:
    """Parse the file's content; raises ConfigError naming the file and the field."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("revisions", []), list):
        raise ConfigError(f'{path}: expected an object with a "revisions" list')
    revs: dict[RevisionKey, Revision] = {}
    eps: dict[RevisionKey, Endpoints] = {}
    acts: dict[RevisionKey, tuple[int, int]] = {}
    for i, r in enumerate(doc.get("revisions", [])):
        where = f"{path}: revisions[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: expected an object")
        ns, name = r.get("namespace", "default"), r.get("name")
        if not isinstance(name, str) or not name or not isinstance(ns, str) or not ns:
            raise ConfigError(f'{where}: "name" and "namespace" must be non-empty strings')
        cc = r.get("containerConcurrency", 0)
        if isinstance(cc, bool) or not isinstance(cc, int) or cc < 0:
            raise ConfigError(f"{where}.containerConcurrency: expected an integer >= 0")
        hosts = r.get("hosts", [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ConfigError(f"{where}.hosts: expected a list of host names")
        qw = r.get("queueWaitSeconds")
        ann = r.get("annotations", {})
        if not isinstance(ann, dict):
            raise ConfigError(f"{where}.annotations: expected an object")
        protocol = r.get("protocol", "http1")
        if protocol not in ("http1", "h2c"):
            raise ConfigError(f'{where}.protocol: expected "http1" or "h2c"')
        rev = Revision(
            namespace=ns,
            name=name,
            container_concurrency=cc,
            timeout_seconds=_num(r, "timeoutSeconds", where, DEFAULT_TIMEOUT_SECONDS),
            response_start_timeout_seconds=_num(r, "responseStartTimeoutSeconds", where, 0.0),
            idle_timeout_seconds=_num(r, "idleTimeoutSeconds", where, 0.0),
            protocol=protocol,
            hosts=tuple(h.lower() for h in hosts),
            queue_wait_seconds=None if qw is None else _num(r, "queueWaitSeconds", where, 0.0),
            annotations={str(k): str(v) for k, v in ann.items()},
        )
        if rev.key in revs:
            raise ConfigError(f"{where}: duplicate revision {ns}/{name}")
        revs[rev.key] = rev
        ep = r.get("endpoints", {}) or {}
        if not isinstance(ep, dict):
            raise ConfigError(f"{where}.endpoints: expected an object")
        cluster = ep.get("cluster") or ""
        if cluster:
            (cluster,) = _addr_list([cluster], f"{where}.endpoints.cluster")
        eps[rev.key] = Endpoints(
            ready=_addr_list(ep.get("ready"), f"{where}.endpoints.ready"),
            not_ready=_addr_list(ep.get("notReady"), f"{where}.endpoints.notReady"),
            cluster=cluster,
        )
        a = r.get("activators")
        if a is not None:
            idx, cnt = (a.get("index"), a.get("count")) if isinstance(a, dict) else (None, None)
            if not isinstance(idx, int) or not isinstance(cnt, int) or cnt < 0 or idx < -1:
                raise ConfigError(f'{where}.activators: expected {{"index": n, "count": m}}')
            acts[rev.key] = (idx, cnt)
    return revs, eps, acts


class StaticPlatform:
    """Revisions and endpoints from a JSON file, polled for changes."""

    def __init__(self, path: str, *, poll_interval: float = 0.1) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._events: PlatformEvents | None = None
        self._state: State = ({}, {}, {})
        self._stamp: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> State | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: platform file not found") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return None
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        state = parse_platform_file(text, self.path)
        self._stamp = stamp
        return state

    async def start(self, events: PlatformEvents) -> None:
        state = self._read()  # errors here are fatal: a clear message at start-up
        assert state is not None
        self._events = events
        self._apply(state)
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                state = self._read()
            except (ConfigError, OSError) as e:
                log.error("platform file not reloaded: %s", e)  # keep the last good state
                continue
            if state is not None:
                self._apply(state)

    def _apply(self, new: State) -> None:
        ev = self._events
        assert ev is not None
        old_revs, old_eps, old_acts = self._state
        revs, eps, acts = new
        for key, rev in revs.items():
            if old_revs.get(key) != rev:
                ev.revision_updated(rev)
        for key, e in eps.items():
            if old_eps.get(key) != e:
                ev.endpoints_updated(key, e)
        for key, a in acts.items():
            if old_acts.get(key) != a:
                ev.activators_updated(key, *a)
        for key in old_revs.keys() - revs.keys():
            ev.revision_deleted(key)
        self._state = new

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

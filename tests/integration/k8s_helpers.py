"""Helpers for the Kubernetes platform tests: the fake API server, a KubeAPI on the real
kubernetes-asyncio client, a manual sleep for back-off, an event recorder, object builders."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio.client import ApiClient

from platforms.base import Endpoints, Revision, RevisionKey
from platforms.kubernetes.api import KubeAPI
from tests.fakekube import FakeKube

Obj = dict[str, Any]


async def kube_and_api(**fake: Any) -> AsyncIterator[tuple[FakeKube, KubeAPI]]:
    async with FakeKube(**fake) as kube:
        api = KubeAPI(ApiClient(kube.configuration()), request_timeout=5.0)
        try:
            yield kube, api
        finally:
            await api.close()


class ManualSleep:
    """Injected sleep: records each delay; returns at once (``auto``) or when released."""

    def __init__(self, *, auto: bool = False) -> None:
        self.auto = auto
        self.delays: list[float] = []
        self._waiters: list[asyncio.Future[None]] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.auto:
            await asyncio.sleep(0)
            return
        f = asyncio.get_running_loop().create_future()
        self._waiters.append(f)
        await f

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def release(self) -> None:
        for f in self._waiters:
            if not f.done():
                f.set_result(None)
        self._waiters.clear()


class Recorder:
    """A PlatformEvents receiver that keeps the latest state and every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.revisions: dict[RevisionKey, Revision] = {}
        self.endpoints: dict[RevisionKey, Endpoints] = {}
        self.activators: dict[RevisionKey, tuple[int, int]] = {}

    def revision_updated(self, rev: Revision) -> None:
        self.calls.append(("revision", rev.key))
        self.revisions[rev.key] = rev

    def revision_deleted(self, key: RevisionKey) -> None:
        self.calls.append(("deleted", key))
        self.revisions.pop(key, None)

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None:
        self.calls.append(("endpoints", key, eps))
        self.endpoints[key] = eps

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None:
        self.calls.append(("activators", key, index, count))
        self.activators[key] = (index, count)


def pod(name: str, ns: str = "default", **labels: str) -> Obj:
    return {"metadata": {"name": name, "namespace": ns, "labels": dict(labels)}}


def revision(
    name: str,
    ns: str = "default",
    *,
    cc: int = 0,
    timeout: int = 300,
    h2c: bool = False,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Obj:
    port: Obj = {"containerPort": 8080}
    if h2c:
        port["name"] = "h2c"
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "serving.knative.dev/service": name.rsplit("-", 1)[0],
                "serving.knative.dev/configuration": name.rsplit("-", 1)[0],
                "serving.knative.dev/revision": name,
            },
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "containerConcurrency": cc,
            "timeoutSeconds": timeout,
            "containers": [{"image": "example.com/app", "ports": [port]}],
            **spec,
        },
    }


def _svc_labels(rev: str, kind: str, svc: str) -> dict[str, str]:
    return {
        "serving.knative.dev/revision": rev,
        "serving.knative.dev/revisionUID": f"uid-{rev}",
        "networking.internal.knative.dev/serviceType": kind,
        "kubernetes.io/service-name": svc,
    }


def endpoint_slice(
    rev: str,
    ready: list[str],
    not_ready: list[str] | None = None,
    *,
    ns: str = "default",
    kind: str = "Private",
    suffix: str = "abcde",
    port: int = 8012,
    port_name: str = "http",
    terminating: list[str] | None = None,
) -> Obj:
    """An EndpointSlice of a revision's private (or public) service; addresses are IPs."""
    svc = f"{rev}-private" if kind == "Private" else rev
    eps: list[Obj] = []
    for ip in ready:
        eps.append({"addresses": [ip], "conditions": {"ready": True}})
    for ip in not_ready or []:
        eps.append({"addresses": [ip], "conditions": {"ready": False}})
    for ip in terminating or []:
        eps.append(
            {
                "addresses": [ip],
                "conditions": {"ready": False, "serving": True, "terminating": True},
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-{suffix}",
            "namespace": ns,
            "labels": _svc_labels(rev, kind, svc),
        },
        "addressType": "IPv4",
        "ports": [
            {"name": port_name, "port": port, "protocol": "TCP"},
            {"name": "http-queueadm", "port": 8022, "protocol": "TCP"},
        ],
        "endpoints": eps,
    }


def endpoints_object(
    rev: str,
    ready: list[str],
    not_ready: list[str] | None = None,
    *,
    ns: str = "default",
    kind: str = "Private",
    port: int = 8012,
    port_name: str = "http",
) -> Obj:
    """A core/v1 Endpoints of a revision's private (or public) service."""
    svc = f"{rev}-private" if kind == "Private" else rev
    subset: Obj = {
        "ports": [
            {"name": port_name, "port": port, "protocol": "TCP"},
            {"name": "http-queueadm", "port": 8022, "protocol": "TCP"},
        ]
    }
    if ready:
        subset["addresses"] = [{"ip": ip} for ip in ready]
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": svc, "namespace": ns, "labels": _svc_labels(rev, kind, svc)},
        "subsets": [subset],
    }

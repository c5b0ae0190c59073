"""Helpers for the Kubernetes platform tests: the fake API server, a KubeAPI on the real
kubernetes-asyncio client, a manual sleep for back-off, an event recorder, object builders,
and pods in network namespaces of their own (addresses a real API server accepts)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from platforms.base import Endpoints, Revision, RevisionKey
from platforms.kubernetes.api import KubeAPI
from tests.apps import upstream
from tests.fakekube import FakeKube

from .activator_helpers import TimedApp, qp_env
from .helpers import QP_BIN, QueueProxy, knative_env
from .netns import NetNS, NetnsFactory

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


# --------------------------------------------------------------------------- pods in namespaces
QP_PORT, QP_ADMIN_PORT, USER_PORT = 8012, 8022, 8080


@dataclass
class NetnsPod:
    """A pod with a network namespace of its own, as the kubelet runs one: the app on the
    pod's loopback (127.0.0.1:8080, in the test's event loop), a real queue-proxy process on
    the pod address (``ip``:8012, Knative's port); the activator reaches it through the veth
    pair."""

    ns: NetNS
    qp: QueueProxy
    app: TimedApp

    @property
    def ip(self) -> str:
        return self.ns.ip

    @property
    def dest(self) -> str:
        return f"{self.ns.ip}:{QP_PORT}"


async def start_app_in(ns: NetNS, port: int = USER_PORT) -> TimedApp:
    """The test upstream app (``tests.apps.upstream``) listening on the namespace's loopback,
    recording each request's arrival time."""
    state = upstream.AppState()
    app = upstream.make_app(state)
    arrivals: list[float] = []

    @web.middleware
    async def arrival(request: web.Request, handler: Any) -> Any:
        if request.path != "/ready":
            arrivals.append(asyncio.get_running_loop().time())
        return await handler(request)

    app.middlewares.append(arrival)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.SockSite(runner, ns.listen(port, "127.0.0.1")).start()
    at = asyncio.get_running_loop().time()
    return TimedApp(upstream.RunningApp(runner, port, state), at, arrivals)


class NetnsPods:
    """Starts :class:`NetnsPod` s and removes them (processes, apps, namespaces) at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.namespaces = NetnsFactory()
        self.pods: list[NetnsPod] = []

    async def start(self, **qp_extra: str | None) -> NetnsPod:
        ns = self.namespaces.new()
        app = await start_app_in(ns)
        env = knative_env(
            serving=QP_PORT,
            tls=8112,
            admin=QP_ADMIN_PORT,
            metrics=9090,
            user_metrics=9091,
            user_port=USER_PORT,
        )
        env["SERVING_POD_IP"] = ns.ip
        for k, v in qp_env(**qp_extra).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        n = len(self.pods)
        out, err = self.tmp_path / f"nsqp{n}.stdout", self.tmp_path / f"nsqp{n}.stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                ns.command([QP_BIN]), env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL
            )
        pod = NetnsPod(ns, QueueProxy(proc, env, out, err), app)
        self.pods.append(pod)
        for port in (QP_PORT, QP_ADMIN_PORT):
            await ns.wait_listening(port)
        return pod

    async def close(self) -> None:
        for pod in self.pods:
            pod.qp.kill()
            await pod.app.close()
            if pod.qp.proc.returncode not in (0, -9):
                print(f"--- queue-proxy in {pod.ns.name} rc={pod.qp.proc.returncode} ---")
                print("\n".join(pod.qp.stderr().splitlines()[-40:]))
        self.namespaces.close()

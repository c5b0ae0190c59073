"""Standalone mode's platform against the fake API server (real kubernetes-asyncio client):
annotated Deployments become revisions, their Services' EndpointSlices their endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from platforms.base import Endpoints, Revision, RevisionKey
from platforms.kubernetes.api import KubeAPI
from platforms.kubernetes.standalone import StandalonePlatform, app_from_deployment
from tests.fakekube import FakeKube

KEY = ("apps", "web")


def deployment(
    name: str = "web", ns: str = "apps", replicas: int = 0, **annotations: str
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {"knd.dev/enabled": "true", **annotations},
        },
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
    }


def endpoint_slice(
    name: str,
    service: str,
    ns: str = "apps",
    ready: tuple[str, ...] = (),
    not_ready: tuple[str, ...] = (),
    terminating: tuple[str, ...] = (),
    port: int = 8012,
) -> dict[str, Any]:
    eps = [{"addresses": [ip], "conditions": {"ready": True}} for ip in ready]
    eps += [{"addresses": [ip], "conditions": {"ready": False}} for ip in not_ready]
    eps += [
        {"addresses": [ip], "conditions": {"ready": False, "terminating": True}}
        for ip in terminating
    ]
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": port, "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "protocol": "TCP"},
        ],
        "endpoints": eps,
    }


class Recorder:
    def __init__(self) -> None:
        self.revisions: dict[RevisionKey, Revision] = {}
        self.endpoints: dict[RevisionKey, Endpoints] = {}
        self.log: list[str] = []
        self.acts: dict[RevisionKey, tuple[int, int]] = {}

    def revision_updated(self, rev: Revision) -> None:
        self.revisions[rev.key] = rev
        self.log.append(f"rev {rev.name}")

    def revision_deleted(self, key: RevisionKey) -> None:
        self.revisions.pop(key, None)
        self.endpoints.pop(key, None)
        self.log.append(f"del {key[1]}")

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None:
        self.endpoints[key] = eps

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None:
        self.acts[key] = (index, count)

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll ``cond`` (platform state changes without an event too) within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            assert loop.time() < deadline, "condition not met in time"
            await asyncio.sleep(0.005)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        yield k


@pytest.fixture
async def platform(kube: FakeKube) -> AsyncIterator[StandalonePlatform]:
    api = KubeAPI(ApiClient(kube.configuration()))
    p = StandalonePlatform(api, owns_api=True, api_wait=5)
    yield p
    await p.close()


def test_annotations_to_revision() -> None:
    d = deployment(replicas=2)
    d["metadata"]["annotations"].update(
        {
            "knd.dev/container-concurrency": "10",
            "knd.dev/timeout-seconds": "60",
            "autoscaling.knative.dev/target": "7",
        }
    )
    app = app_from_deployment(d, "example.internal")
    assert app is not None
    rev = app.revision
    assert (rev.namespace, rev.name, rev.container_concurrency) == ("apps", "web", 10)
    assert rev.timeout_seconds == 60
    assert rev.hosts == ("web.apps.svc.example.internal", "web.apps")
    assert rev.annotations["autoscaling.knative.dev/target"] == "7"
    assert (app.service, app.replicas, app.metrics_port, app.port_name) == ("web", 2, 9090, "http")


def test_opt_in_defaults_and_errors() -> None:
    from dataplane.envconfig import ConfigError

    plain = deployment()
    plain["metadata"]["annotations"] = {}
    assert app_from_deployment(plain) is None
    off = deployment()
    off["metadata"]["annotations"]["knd.dev/enabled"] = "false"
    assert app_from_deployment(off) is None
    d = deployment()
    d["metadata"]["annotations"].update(
        {"knd.dev/service": "web-pods", "knd.dev/hosts": " Web.Example.com, web.internal:80 ,"}
    )
    del d["spec"]["replicas"]  # absent: the API server's default, 1
    app = app_from_deployment(d)
    assert app is not None and app.service == "web-pods" and app.replicas == 1
    assert app.revision.hosts == ("web.example.com", "web.internal")  # ports never match
    assert app.revision.name == "web"
    for ann, value in (
        ("knd.dev/container-concurrency", "ten"),
        ("knd.dev/container-concurrency", "-1"),
        ("knd.dev/metrics-port", "70000"),
        ("knd.dev/service", "Not_A_Service"),
        ("knd.dev/hosts", "http://x.example.com/"),
        ("knd.dev/hosts", "x.example.com:http"),
    ):
        bad = deployment()
        bad["metadata"]["annotations"][ann] = value
        with pytest.raises(ConfigError, match=ann):
            app_from_deployment(bad)


async def test_revisions_and_endpoints_from_deployments_and_slices(
    kube: FakeKube, platform: StandalonePlatform
) -> None:
    kube.create("deployments", deployment())
    kube.create("deployments", deployment("other"))
    plain = deployment("plain")
    plain["metadata"]["annotations"] = {}
    kube.create("deployments", plain)
    kube.create(
        "endpointslices",
        endpoint_slice(
            "web-a", "web", ready=("10.0.0.1",), not_ready=("10.0.0.2",), terminating=("10.0.0.3",)
        ),
    )
    kube.create("endpointslices", endpoint_slice("unrelated-a", "unrelated", ready=("10.9.9.9",)))
    rec = Recorder()
    await platform.start(rec)
    assert await platform.wait_synced(5)
    await rec.until(lambda: KEY in rec.endpoints)
    assert set(rec.revisions) == {KEY, ("apps", "other")}
    assert rec.endpoints[KEY] == Endpoints(ready=("10.0.0.1:8012",), not_ready=("10.0.0.2:8012",))
    assert platform.ready_count(KEY) == 1
    assert platform.scrape_targets(KEY) == ["10.0.0.1:9090"]
    assert platform.replicas(KEY) == 0

    # a second slice of the same Service, then a pod turning ready in the first
    kube.create("endpointslices", endpoint_slice("web-b", "web", ready=("10.0.1.1",)))
    await rec.until(lambda: len(rec.endpoints[KEY].ready) == 2)
    kube.update("endpointslices", endpoint_slice("web-a", "web", ready=("10.0.0.1", "10.0.0.2")))
    await rec.until(lambda: len(rec.endpoints[KEY].ready) == 3)
    assert rec.endpoints[KEY].not_ready == ()
    # an EndpointSlice update removes a pod; deleting a slice removes its pods
    kube.update("endpointslices", endpoint_slice("web-a", "web", ready=("10.0.0.2",)))
    await rec.until(lambda: "10.0.0.1:8012" not in rec.endpoints[KEY].ready)
    kube.delete("endpointslices", "apps", "web-b")
    await rec.until(lambda: rec.endpoints[KEY].ready == ("10.0.0.2:8012",))

    # scaling is seen as spec.replicas; a changed annotation updates the revision
    kube.patch("deployments", "apps", "web", {"spec": {"replicas": 3}})
    await rec.until(lambda: platform.replicas(KEY) == 3)
    kube.patch(
        "deployments",
        "apps",
        "web",
        {"metadata": {"annotations": {"knd.dev/container-concurrency": "5"}}},
    )
    await rec.until(lambda: rec.revisions[KEY].container_concurrency == 5)

    # opting out (or deleting) removes it
    kube.patch(
        "deployments", "apps", "web", {"metadata": {"annotations": {"knd.dev/enabled": None}}}
    )
    await rec.until(lambda: KEY not in rec.revisions)
    assert platform.ready_count(KEY) == 0 and platform.scrape_targets(KEY) == []
    kube.delete("deployments", "apps", "other")
    await rec.until(lambda: not rec.revisions)
    assert rec.log.count("del web") == 1 and rec.log.count("del other") == 1
    assert rec.acts == {}  # no POD_IP / activator Service given: no subsetting


async def test_service_annotation_and_bad_annotations(
    kube: FakeKube, platform: StandalonePlatform
) -> None:
    d = deployment()
    d["metadata"]["annotations"]["knd.dev/service"] = "web-pods"
    kube.create("deployments", d)
    kube.create("endpointslices", endpoint_slice("web-x", "web", ready=("10.0.0.9",)))
    kube.create("endpointslices", endpoint_slice("web-pods-x", "web-pods", ready=("10.0.0.1",)))
    rec = Recorder()
    await platform.start(rec)
    await rec.until(lambda: bool(rec.endpoints.get(KEY, Endpoints()).ready))
    assert rec.endpoints[KEY].ready == ("10.0.0.1:8012",)  # web-pods', not web's
    assert rec.revisions[KEY].hosts == ("web-pods.apps.svc.cluster.local", "web-pods.apps")

    # a malformed annotation takes the Deployment out, with the reason; fixing brings it back
    kube.patch(
        "deployments",
        "apps",
        "web",
        {"metadata": {"annotations": {"knd.dev/container-concurrency": "lots"}}},
    )
    await rec.until(lambda: KEY not in rec.revisions)
    assert "knd.dev/container-concurrency" in platform.invalid[KEY]
    kube.patch(
        "deployments",
        "apps",
        "web",
        {"metadata": {"annotations": {"knd.dev/container-concurrency": "2"}}},
    )
    await rec.until(lambda: KEY in rec.revisions and KEY in rec.endpoints)
    assert KEY not in platform.invalid
    assert rec.endpoints[KEY].ready == ("10.0.0.1:8012",)


async def test_forbidden_list_is_reported_and_not_synced(
    kube: FakeKube, platform: StandalonePlatform
) -> None:
    kube.forbid("list", "deployments")
    platform.informer_options = {"sleep": lambda _d: asyncio.sleep(0.01)}
    rec = Recorder()
    await platform.start(rec)
    assert not await platform.wait_synced(0.5)
    errs = [str(e) for e in platform.errors]
    assert any("forbidden: cannot list deployments.apps in all namespaces" in e for e in errs)
    kube.allow("list", "deployments")
    assert await platform.wait_synced(5)


async def test_activator_subsetting_from_the_activator_service(kube: FakeKube) -> None:
    def activators(*ips: str) -> dict[str, Any]:
        return endpoint_slice("knd-activator-x", "knd-activator", ns="knd-system", ready=ips)

    kube.create("deployments", deployment())
    kube.create("endpointslices", activators("10.1.0.3", "10.1.0.2", "10.1.0.1"))
    api = KubeAPI(ApiClient(kube.configuration()))
    p = StandalonePlatform(
        api,
        owns_api=True,
        api_wait=5,
        pod_ip="10.1.0.2",
        activator_service=("knd-system", "knd-activator"),
    )
    rec = Recorder()
    try:
        await p.start(rec)
        assert await p.wait_synced(5)
        await rec.until(lambda: rec.acts.get(KEY) == (1, 3))
        # a Deployment opting in later gets the current subset at once
        kube.create("deployments", deployment("late"))
        await rec.until(lambda: rec.acts.get(("apps", "late")) == (1, 3))
        kube.update("endpointslices", activators("10.1.0.3", "10.1.0.2"))
        await rec.until(lambda: rec.acts.get(KEY) == (0, 2))
        # an update that does not list this activator (it is not ready) is ignored
        kube.update("endpointslices", activators("10.1.0.3"))
        kube.create("deployments", deployment("later"))
        await rec.until(lambda: ("apps", "later") in rec.revisions)
        assert rec.acts[KEY] == (0, 2) and rec.acts[("apps", "later")] == (0, 2)
        # the activator Service's slices are not an app's endpoints
        assert rec.endpoints[KEY] == Endpoints()
    finally:
        await p.close()

"""Patching deployments/scale against the fake API server with the real client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient

from platforms.kubernetes.api import KubeAPI, KubeForbidden, KubeNotFound
from platforms.kubernetes.scale import EVENTS, DeploymentScaler, EventRecorder
from tests.fakekube import FakeKube


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        k.create(
            "deployments",
            {
                "metadata": {"name": "web", "namespace": "apps"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}},
            },
        )
        yield k


@pytest.fixture
async def scaler(kube: FakeKube) -> AsyncIterator[DeploymentScaler]:
    api = KubeAPI(ApiClient(kube.configuration()))
    yield DeploymentScaler(api)
    await api.close()


async def test_patch_sets_replicas_with_the_field_manager(
    kube: FakeKube, scaler: DeploymentScaler
) -> None:
    assert await scaler.scale("apps", "web", 3) == 3
    assert kube.get("deployments", "apps", "web")["spec"]["replicas"] == 3
    [req] = kube.requests_for("patch", "deployments/scale")
    assert req.method == "PATCH" and req.namespace == "apps" and req.name == "web"
    assert req.query.get("fieldManager") == "knd-autoscaler"
    assert req.content_type.startswith("application/merge-patch+json")
    assert req.body == {"spec": {"replicas": 3}}
    managers = [
        m.get("manager")
        for m in kube.get("deployments", "apps", "web")["metadata"].get("managedFields", [])
    ]
    assert "knd-autoscaler" in managers
    assert await scaler.get("apps", "web") == 3
    assert await scaler.scale("apps", "web", 0) == 0
    assert kube.get("deployments", "apps", "web")["spec"]["replicas"] == 0


async def test_rbac_403_names_verb_and_resource(kube: FakeKube, scaler: DeploymentScaler) -> None:
    kube.forbid("patch", "deployments/scale", namespace="apps")
    with pytest.raises(KubeForbidden) as e:
        await scaler.scale("apps", "web", 1)
    msg = str(e.value)
    assert e.value.status == 403 and e.value.verb == "patch"
    assert "forbidden: cannot patch deployments.apps/scale in namespace apps" in msg
    assert kube.get("deployments", "apps", "web")["spec"]["replicas"] == 0


async def test_missing_deployment_and_bad_input(kube: FakeKube, scaler: DeploymentScaler) -> None:
    with pytest.raises(KubeNotFound, match=r"patch deployments\.apps/scale in namespace apps: 404"):
        await scaler.scale("apps", "nope", 1)
    with pytest.raises(ValueError):
        await scaler.scale("apps", "web", -1)
    assert not kube.requests_for("patch", "deployments/scale")[1:]


async def test_events_are_found_the_way_kubectl_describe_looks_for_them(
    kube: FakeKube,
) -> None:
    """``kubectl describe deployment`` lists Events by involvedObject kind, name, namespace and
    uid: an Event without the uid never shows (a real API server accepts it all the same)."""
    api = KubeAPI(ApiClient(kube.configuration()))
    try:
        rec = EventRecorder(api, instance="autoscaler-0")
        await rec.deployment_event("apps", "web", "ScaledUp", "Scaled from 0 to 1 replicas")
        uid = kube.get("deployments", "apps", "web")["metadata"]["uid"]
        described = await api.list(
            EVENTS,
            namespace="apps",
            field_selector=(
                "involvedObject.kind=Deployment,involvedObject.name=web,"
                f"involvedObject.namespace=apps,involvedObject.uid={uid}"
            ),
        )
        [ev] = described["items"]
        assert ev["reason"] == "ScaledUp" and ev["involvedObject"]["uid"] == uid
        assert ev["firstTimestamp"] == ev["lastTimestamp"] and ev["count"] == 1
        # a Deployment that is gone: the Event is still recorded (without a uid), no error
        await rec.deployment_event("apps", "gone", "ScaleFailed", "x", warning=True)
        [gone] = [e for e in kube.list("events", "apps") if e["involvedObject"]["name"] == "gone"]
        assert "uid" not in gone["involvedObject"] and gone["type"] == "Warning"
    finally:
        await api.close()

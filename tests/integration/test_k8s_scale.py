"""Patching deployments/scale against the fake API server with the real client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient

from platforms.kubernetes.api import KubeAPI, KubeForbidden, KubeNotFound
from platforms.kubernetes.scale import DeploymentScaler
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

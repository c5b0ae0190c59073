"""deploy/'s Deployments applied to the fake API server as kubectl does, with the ownership
rules of the real one: a client-side apply followed by a server-side apply, and a re-apply after
knd-autoscaler has scaled (issue: both used to conflict, and a client-side re-apply reset the
replicas the autoscaler had chosen)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient

from platforms.kubernetes.api import DEPLOYMENTS, KubeAPI
from platforms.kubernetes.scale import DeploymentScaler
from tests.fakekube import FakeKube
from tests.unit.test_deploy_manifests import DOCS, Obj

APPLY = "application/apply-patch+yaml"


def deployments(under: str) -> list[Obj]:
    return [
        d for p, d in DOCS if d["kind"] == "Deployment" and p.parent.name == under and "spec" in d
    ]


@pytest.fixture
async def kube_api() -> AsyncIterator[tuple[FakeKube, KubeAPI]]:
    async with FakeKube() as kube:
        api = KubeAPI(ApiClient(kube.configuration()), request_timeout=5.0)
        try:
            yield kube, api
        finally:
            await api.close()


@pytest.mark.parametrize("doc", deployments("standalone"), ids=lambda d: d["metadata"]["name"])
async def test_server_side_apply_after_client_side_apply(
    kube_api: tuple[FakeKube, KubeAPI], doc: Obj
) -> None:
    """`kubectl apply -f` then `kubectl apply --server-side -f` of the same manifest: no
    conflict (fieldRef is atomic and defaulted, so it must name its apiVersion)."""
    _, api = kube_api
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    await api.create(DEPLOYMENTS, ns, copy.deepcopy(doc), fieldManager="kubectl-client-side-apply")
    await api.patch(
        DEPLOYMENTS, ns, name, copy.deepcopy(doc), content_type=APPLY, fieldManager="kubectl"
    )


async def test_reapplying_the_example_keeps_the_autoscalers_replicas(
    kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = kube_api
    [hello] = [d for d in deployments("standalone") if d["metadata"]["name"] == "hello"]
    await api.patch(
        DEPLOYMENTS, "default", "hello", hello, content_type=APPLY, fieldManager="kubectl"
    )
    assert await DeploymentScaler(api).scale("default", "hello", 3) == 3  # knd-autoscaler
    await api.patch(
        DEPLOYMENTS, "default", "hello", hello, content_type=APPLY, fieldManager="kubectl"
    )
    assert kube.get("deployments", "default", "hello")["spec"]["replicas"] == 3

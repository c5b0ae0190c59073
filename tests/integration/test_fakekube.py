"""The fake API server (tests/fakekube.py) driven by the real kubernetes_asyncio client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient, ApiException

from tests.fakekube import FakeKube, meta
from tests.fakekube import KubeError as FakeKubeError


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        yield k


@pytest.fixture
async def api(kube: FakeKube) -> AsyncIterator[ApiClient]:
    async with ApiClient(kube.configuration()) as a:
        yield a


async def watch_lines(api: ApiClient, path: str, **query: str) -> list[dict[str, Any]]:
    r = await api.call_api(
        path,
        "GET",
        query_params=[("watch", "1"), *query.items()],
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=5,
    )
    assert r.status == 200
    return [json.loads(line) async for line in r.content]


async def test_list_get_create_conflict_and_not_found(kube: FakeKube, api: ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    await v1.create_namespaced_pod("default", {"metadata": {"name": "a", "labels": {"x": "1"}}})
    kube.create("pods", {"metadata": {"name": "b", "namespace": "default"}})
    pods = await v1.list_namespaced_pod("default", label_selector="x=1")
    assert [p.metadata.name for p in pods.items] == ["a"]
    assert int(pods.metadata.resource_version) == kube.rv
    with pytest.raises(ApiException) as e:
        await v1.create_namespaced_pod("default", {"metadata": {"name": "a"}})
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as e:
        await v1.read_namespaced_pod("zz", "default")
    assert e.value.status == 404 and json.loads(e.value.body)["kind"] == "Status"
    stale = kube.get("pods", "default", "a")
    kube.patch("pods", "default", "a", {"metadata": {"labels": {"y": "2"}}})
    with pytest.raises(ApiException) as e:
        await v1.replace_namespaced_pod("a", "default", stale)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"


async def test_watch_replays_from_resource_version_and_times_out(
    kube: FakeKube, api: ApiClient
) -> None:
    kube.create("pods", {"metadata": {"name": "a", "namespace": "default"}})
    rv = str(kube.rv)
    kube.create("pods", {"metadata": {"name": "b", "namespace": "default", "labels": {"k": "v"}}})
    kube.patch("pods", "default", "a", {"metadata": {"labels": {"k": "v"}}})
    kube.delete("pods", "default", "b")
    evs = await watch_lines(
        api, "/api/v1/namespaces/default/pods", resourceVersion=rv, timeoutSeconds="0.2"
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    # a selector turns a label change into ADDED for the watch
    evs = await watch_lines(
        api,
        "/api/v1/pods",
        resourceVersion=rv,
        labelSelector="k=v",
        timeoutSeconds="0.2",
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [
        ("ADDED", "b"),
        ("ADDED", "a"),
        ("DELETED", "b"),
    ]


async def test_compacted_history_gives_410(kube: FakeKube, api: ApiClient) -> None:
    kube.create("pods", {"metadata": {"name": "a", "namespace": "default"}})
    rv = str(kube.rv)
    kube.create("pods", {"metadata": {"name": "b", "namespace": "default"}})
    kube.compact()
    evs = await watch_lines(api, "/api/v1/pods", resourceVersion=rv)
    assert evs[0]["type"] == "ERROR"
    assert evs[0]["object"]["code"] == 410 and evs[0]["object"]["reason"] == "Expired"


async def test_bookmarks_and_closed_watches(kube: FakeKube, api: ApiClient) -> None:
    kube.create("leases", {"metadata": {"name": "l", "namespace": "default"}})
    r = await api.call_api(
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        "GET",
        query_params=[("watch", "1"), ("resourceVersion", str(kube.rv))],
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    await kube.wait_watchers("leases")
    kube.bookmark()  # not allowed on this watch: ignored
    kube.create("leases", {"metadata": {"name": "m", "namespace": "default"}})
    assert await kube.close_watches("leases") == 1
    lines = [json.loads(x) async for x in r.content]
    assert [e["type"] for e in lines] == ["ADDED"]
    r = await api.call_api(
        "/apis/coordination.k8s.io/v1/leases",
        "GET",
        query_params=[("watch", "1"), ("allowWatchBookmarks", "true")],
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    await kube.wait_watchers("leases")
    kube.bookmark()
    await kube.close_watches()
    lines = [json.loads(x) async for x in r.content]
    assert [e["type"] for e in lines] == ["ADDED", "ADDED", "BOOKMARK"]
    assert lines[-1]["object"]["metadata"]["resourceVersion"] == str(kube.rv)


async def test_scale_subresource_and_field_manager(kube: FakeKube, api: ApiClient) -> None:
    kube.create(
        "deployments",
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}},
        },
    )
    apps = client.AppsV1Api(api)
    s = await apps.read_namespaced_deployment_scale("web", "default")
    assert s.spec.replicas == 0 and s.status.selector == "app=web"
    s = await apps.patch_namespaced_deployment_scale(
        "web", "default", {"spec": {"replicas": 2}}, field_manager="knd-autoscaler"
    )
    assert s.spec.replicas == 2
    dep = kube.get("deployments", "default", "web")
    assert dep["spec"]["replicas"] == 2
    assert [m["manager"] for m in dep["metadata"]["managedFields"]] == ["knd-autoscaler"]
    kube.forbid("patch", "deployments/scale", namespace="default")
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 1}})
    body = json.loads(e.value.body)
    assert e.value.status == 403 and body["reason"] == "Forbidden"
    assert 'cannot patch resource "deployments/scale"' in body["message"]


async def test_apply_patch_creates_and_discovery(kube: FakeKube, api: ApiClient) -> None:
    co = client.CustomObjectsApi(api)
    rev = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {"name": "hello-00001", "namespace": "default"},
        "spec": {"containerConcurrency": 3},
    }
    await co.create_namespaced_custom_object(
        "serving.knative.dev", "v1", "default", "revisions", rev
    )
    got = await co.get_namespaced_custom_object(
        "serving.knative.dev", "v1", "default", "revisions", "hello-00001"
    )
    assert got["spec"]["containerConcurrency"] == 3
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "spec": {"holderIdentity": "a"},
    }
    await client.CoordinationV1Api(api).patch_namespaced_lease(
        "lock", "default", lease, field_manager="me", _content_type="application/apply-patch+yaml"
    )
    assert kube.get("leases", "default", "lock")["spec"]["holderIdentity"] == "a"
    kube.remove_resource("endpointslices")
    with pytest.raises(ApiException) as e:
        await client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces()
    assert e.value.status == 404
    groups = await client.ApisApi(api).get_api_versions()
    assert "discovery.k8s.io" not in {g.name for g in groups.groups}


async def test_wrong_token_is_401(kube: FakeKube) -> None:
    cfg = kube.configuration()
    cfg.api_key = {"BearerToken": "nope"}
    async with ApiClient(cfg) as a:
        with pytest.raises(ApiException) as e:
            await client.CoreV1Api(a).list_namespaced_pod("default")
    assert e.value.status == 401


def _slice(addresses: list[str], address_type: str = "IPv4") -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": address_type,
        "ports": [{"name": "http", "port": 8012, "protocol": "TCP"}],
        "endpoints": [{"addresses": addresses, "conditions": {"ready": True}}],
    }


@pytest.mark.parametrize(
    ("address", "address_type", "why"),
    [
        ("127.0.0.1", "IPv4", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        ("127.200.0.9", "IPv4", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        ("::1", "IPv6", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        ("0.0.0.0", "IPv4", "may not be unspecified (0.0.0.0, ::)"),
        ("169.254.3.4", "IPv4", "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
        ("fe80::1", "IPv6", "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
        ("224.0.0.251", "IPv4", "may not be in the link-local multicast range"),
        ("fd00::1", "IPv4", "must be a valid IPv4 address"),
        ("pod-a", "IPv4", "must be a valid IP address"),
    ],
)
async def test_endpoint_addresses_the_real_server_refuses(
    kube: FakeKube, api: ApiClient, address: str, address_type: str, why: str
) -> None:
    disc = client.DiscoveryV1Api(api)
    with pytest.raises(ApiException) as e:
        await disc.create_namespaced_endpoint_slice("default", _slice([address], address_type))
    st = json.loads(e.value.body)
    assert e.value.status == 422 and st["reason"] == "Invalid"
    assert st["message"].startswith(
        f'EndpointSlice.discovery.k8s.io "s" is invalid: endpoints[0].addresses[0]: '
        f'Invalid value: "{address}": {why}'
    )
    assert st["details"]["causes"][0]["field"] == "endpoints[0].addresses[0]"
    with pytest.raises(FakeKubeError) as fe:  # the test-side store methods check it too
        kube.create("endpointslices", {**_slice([address], address_type), "metadata": meta("s")})
    assert fe.value.code == 422


async def test_endpoint_addresses_the_real_server_accepts(kube: FakeKube, api: ApiClient) -> None:
    disc = client.DiscoveryV1Api(api)
    await disc.create_namespaced_endpoint_slice("default", _slice(["10.0.0.1", "198.18.0.2"]))
    s6 = _slice(["fd00::1"], "IPv6")
    s6["metadata"]["name"] = "s6"
    await disc.create_namespaced_endpoint_slice("default", s6)
    # an update to a loopback address is refused too, and so is one in core/v1 Endpoints
    with pytest.raises(ApiException) as e:
        await disc.patch_namespaced_endpoint_slice(
            "s", "default", {"endpoints": [{"addresses": ["127.0.0.1"]}]}
        )
    assert e.value.status == 422
    with pytest.raises(ApiException) as e:
        await client.CoreV1Api(api).create_namespaced_endpoints(
            "default",
            {"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}]}]},
        )
    assert e.value.status == 422
    assert "subsets[0].addresses[0].ip" in json.loads(e.value.body)["message"]


def _deployment(replicas: int | None = None, api_version: bool = False) -> dict[str, Any]:
    ref: dict[str, str] = {"fieldPath": "metadata.name"}
    if api_version:
        ref = {"apiVersion": "v1", **ref}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "example.com/app:1",
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": ref}}],
                    }
                ]
            },
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }


APPLY = "application/apply-patch+yaml"


async def test_server_side_apply_conflicts_with_the_owner_of_a_field(
    kube: FakeKube, api: ApiClient
) -> None:
    """kubectl apply --server-side of a manifest with spec.replicas, after the autoscaler
    scaled through deployments/scale: 409 naming knd-autoscaler, as kube-apiserver does."""
    apps = client.AppsV1Api(api)
    await apps.patch_namespaced_deployment(
        "web", "default", _deployment(replicas=0), field_manager="kubectl", _content_type=APPLY
    )
    await apps.patch_namespaced_deployment_scale(
        "web", "default", {"spec": {"replicas": 3}}, field_manager="knd-autoscaler"
    )
    mf = {
        (m["manager"], m["operation"], m.get("subresource", "")): m["fieldsV1"]
        for m in kube.get("deployments", "default", "web")["metadata"]["managedFields"]
    }
    assert mf[("knd-autoscaler", "Update", "scale")] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in mf[("kubectl", "Apply", "")]["f:spec"]
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment(
            "web", "default", _deployment(replicas=0), field_manager="kubectl", _content_type=APPLY
        )
    st = json.loads(e.value.body)
    assert e.value.status == 409 and st["reason"] == "Conflict"
    assert st["message"] == (
        'Apply failed with 1 conflict: conflict with "knd-autoscaler" with subresource "scale" '
        "using apps/v1: .spec.replicas"
    )
    assert st["details"]["causes"][0]["field"] == ".spec.replicas"
    assert kube.get("deployments", "default", "web")["spec"]["replicas"] == 3
    # the same value is no conflict; leaving the field out is none either
    await apps.patch_namespaced_deployment(
        "web", "default", _deployment(replicas=3), field_manager="kubectl", _content_type=APPLY
    )
    await apps.patch_namespaced_deployment(
        "web", "default", _deployment(), field_manager="kubectl", _content_type=APPLY
    )
    assert kube.get("deployments", "default", "web")["spec"]["replicas"] == 3
    # --force-conflicts takes the field over
    await apps.patch_namespaced_deployment(
        "web",
        "default",
        _deployment(replicas=1),
        field_manager="kubectl",
        force=True,
        _content_type=APPLY,
    )
    dep = kube.get("deployments", "default", "web")
    assert dep["spec"]["replicas"] == 1
    assert {m["manager"] for m in dep["metadata"]["managedFields"]} == {"kubectl"}


async def test_field_ref_is_defaulted_and_atomic(kube: FakeKube, api: ApiClient) -> None:
    """The server fills in fieldRef.apiVersion; since fieldRef is atomic, a server-side apply
    of a fieldRef without it conflicts with the manager that wrote it first."""
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(
        "default", _deployment(), field_manager="kubectl-client-side-apply"
    )
    dep = kube.get("deployments", "default", "web")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"][0]
    assert env["valueFrom"]["fieldRef"] == {"apiVersion": "v1", "fieldPath": "metadata.name"}
    assert dep["spec"]["replicas"] == 1  # defaulted too
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment(
            "web", "default", _deployment(), field_manager="kubectl", _content_type=APPLY
        )
    assert e.value.status == 409
    assert json.loads(e.value.body)["message"].endswith(
        '.spec.template.spec.containers[name="app"].env[name="POD_NAME"].valueFrom.fieldRef'
    )
    await apps.patch_namespaced_deployment(
        "web",
        "default",
        _deployment(api_version=True),
        field_manager="kubectl",
        _content_type=APPLY,
    )


async def test_watch_list_streams_the_current_objects_then_the_end_bookmark(
    kube: FakeKube, api: ApiClient
) -> None:
    """client-go's WatchListClient: sendInitialEvents=true replaces the LIST before a watch."""
    kube.create("secrets", {"metadata": {"name": "a", "namespace": "knative-serving"}})
    kube.create("secrets", {"metadata": {"name": "b", "namespace": "knative-serving"}})
    kube.create("secrets", {"metadata": {"name": "c", "namespace": "default"}})
    at = str(kube.rv)
    r = await api.call_api(
        "/api/v1/namespaces/knative-serving/secrets",
        "GET",
        query_params=[
            ("watch", "true"),
            ("sendInitialEvents", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
        ],
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=5,
    )
    await kube.wait_watchers("secrets")
    kube.create("secrets", {"metadata": {"name": "d", "namespace": "knative-serving"}})
    await kube.close_watches("secrets")
    lines = [json.loads(x) async for x in r.content]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in lines] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("BOOKMARK", None),
        ("ADDED", "d"),
    ]
    end = lines[2]["object"]
    assert end["kind"] == "Secret" and end["apiVersion"] == "v1"
    assert end["metadata"]["resourceVersion"] == at
    assert end["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    # Without bookmarks (or without resourceVersionMatch=NotOlderThan) the server refuses it.
    with pytest.raises(ApiException) as e:
        await api.call_api(
            "/api/v1/secrets",
            "GET",
            query_params=[("watch", "true"), ("sendInitialEvents", "true")],
            auth_settings=["BearerToken"],
            _request_timeout=5,
        )
    assert e.value.status == 422 and json.loads(e.value.body)["reason"] == "Invalid"


async def test_secrets_are_a_resource(kube: FakeKube, api: ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    await v1.create_namespaced_secret(
        "knative-serving", {"metadata": {"name": "s"}, "data": {"k": "dg=="}}
    )
    got = await v1.read_namespaced_secret("s", "knative-serving")
    assert got.data == {"k": "dg=="}
    found = {r.name: r.singular_name for r in (await v1.get_api_resources()).resources}
    assert found["secrets"] == "secret"


async def test_version_is_configurable() -> None:
    async with FakeKube(version="v1.29.3") as kube, ApiClient(kube.configuration()) as a:
        r = await client.VersionApi(a).get_code()
        assert (r.major, r.minor, r.git_version) == ("1", "29", "v1.29.3")
        assert r.platform == "linux/amd64"


async def test_listens_on_the_given_host() -> None:
    """A non-loopback local address (here 127.0.0.2, still this machine) serves as well."""
    async with FakeKube() as default:
        assert default.url == f"http://127.0.0.1:{default.port}"
    kube = await FakeKube().start(host="127.0.0.2")
    try:
        assert kube.url == f"http://127.0.0.2:{kube.port}"
        async with ApiClient(kube.configuration()) as a:
            r = await client.VersionApi(a).get_code()
            assert (r.major, r.minor, r.git_version) == ("1", "34", "v1.34.0")
    finally:
        await kube.close()

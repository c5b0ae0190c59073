"""Knative mode (platforms/kubernetes/knative.py) against the fake API server with the real
kubernetes-asyncio client: Revisions and private-service endpoints become platform events
(EndpointSlices, or Endpoints where the API has no EndpointSlices), public endpoints give the
activator's subset; then the activator process in Knative mode routes requests to real
queue-proxies found through the API (pods in network namespaces of their own: EndpointSlices
refuse loopback addresses)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dataplane.metrics import revision_labels
from platforms.base import Endpoints
from platforms.kubernetes.api import KubeAPI, KubeForbidden
from platforms.kubernetes.knative import KnativePlatform
from tests.apps.autoscaler_stub import RunningStub
from tests.fakekube import FakeKube

from .activator_helpers import PlatformFile, StartActivator, rev_headers
from .conftest import make_client
from .helpers import eventually, free_ports
from .k8s_helpers import (
    QP_PORT,
    ManualSleep,
    NetnsPods,
    Recorder,
    endpoint_slice,
    endpoints_object,
    kube_and_api,
    revision,
)

REV = "hello-00001"
KEY = ("default", REV)


@pytest.fixture
async def kube_api() -> AsyncIterator[tuple[FakeKube, KubeAPI]]:
    async for pair in kube_and_api():
        yield pair


async def start_platform(
    api: KubeAPI, rec: Recorder, *, sleep: ManualSleep | None = None, pod_ip: str = ""
) -> KnativePlatform:
    p = KnativePlatform(
        api, pod_ip=pod_ip, informer_options={"sleep": sleep or ManualSleep(auto=True)}
    )
    await p.start(rec)
    return p


async def test_revision_and_endpoint_slices_become_platform_events(
    kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = kube_api
    kube.create(
        "revisions",
        revision(
            REV,
            cc=5,
            timeout=120,
            responseStartTimeoutSeconds=10,
            idleTimeoutSeconds=30,
            annotations={"autoscaling.knative.dev/target": "7"},
        ),
    )
    kube.create("endpointslices", endpoint_slice(REV, ["10.0.0.1", "10.0.0.2"], ["10.0.0.3"]))
    # the public service's slice carries the activators, not the pods
    kube.create("endpointslices", endpoint_slice(REV, ["10.1.0.9"], kind="Public"))
    # a slice of some other service is not selected
    other = endpoint_slice("other-00001", ["10.9.9.9"])
    del other["metadata"]["labels"]["networking.internal.knative.dev/serviceType"]
    kube.create("endpointslices", other)
    rec = Recorder()
    p = await start_platform(api, rec)
    try:
        assert await p.wait_synced(5)
        rev = rec.revisions[KEY]
        assert (rev.container_concurrency, rev.timeout_seconds) == (5, 120.0)
        assert (rev.response_start_timeout_seconds, rev.idle_timeout_seconds) == (10.0, 30.0)
        assert rev.protocol == "http1"
        assert rev.annotations["autoscaling.knative.dev/target"] == "7"
        # the service and configuration labels reach the metrics (kn_service_name, ...)
        assert revision_labels(KEY, rev.annotations) == ("default", "hello", "hello", REV)
        assert rec.endpoints[KEY] == Endpoints(
            ready=("10.0.0.1:8012", "10.0.0.2:8012"), not_ready=("10.0.0.3:8012",)
        )
        assert set(rec.endpoints) == {KEY}
        assert rec.activators == {}  # no POD_IP: no subsetting
        # a pod becomes ready, another leaves, a third is terminating (neither ready nor not)
        kube.apply(
            "endpointslices",
            endpoint_slice(REV, ["10.0.0.1", "10.0.0.3"], terminating=["10.0.0.2"]),
        )
        want = Endpoints(ready=("10.0.0.1:8012", "10.0.0.3:8012"))
        await eventually(lambda: rec.endpoints[KEY] == want, what="slice update")
        # a second slice of the same service adds to the first
        kube.create("endpointslices", endpoint_slice(REV, [], ["10.0.0.4"], suffix="fghij"))
        want = Endpoints(ready=("10.0.0.1:8012", "10.0.0.3:8012"), not_ready=("10.0.0.4:8012",))
        await eventually(lambda: rec.endpoints[KEY] == want, what="second slice")
        kube.delete("endpointslices", "default", f"{REV}-private-abcde")
        kube.delete("endpointslices", "default", f"{REV}-private-fghij")
        await eventually(lambda: rec.endpoints[KEY] == Endpoints(), what="slices deleted")
        # a changed revision is sent again; an unchanged status write is not
        n = len(rec.calls)
        kube.patch("revisions", "default", REV, {"status": {"observedGeneration": 1}})
        kube.patch("revisions", "default", REV, {"spec": {"timeoutSeconds": 60}})
        await eventually(lambda: rec.revisions[KEY].timeout_seconds == 60, what="revision update")
        assert rec.calls[n:] == [("revision", KEY)]
        kube.delete("revisions", "default", REV)
        await eventually(lambda: KEY not in rec.revisions, what="revision deleted")
        assert rec.calls[-1] == ("deleted", KEY)
    finally:
        await p.close()


async def test_h2c_revision_uses_the_http2_port(kube_api: tuple[FakeKube, KubeAPI]) -> None:
    kube, api = kube_api
    s = endpoint_slice(REV, ["10.0.0.1"])
    s["ports"].append({"name": "http2", "port": 8013, "protocol": "TCP"})
    kube.create("endpointslices", s)
    rec = Recorder()
    p = await start_platform(api, rec)
    try:
        assert await p.wait_synced(5)
        kube.create("revisions", revision(REV, h2c=True))
        await eventually(lambda: KEY in rec.revisions, what="revision")
        assert rec.revisions[KEY].protocol == "h2c"
        await eventually(
            lambda: rec.endpoints.get(KEY) == Endpoints(ready=("10.0.0.1:8013",)),
            what="endpoints on the h2c port",
        )
    finally:
        await p.close()


async def test_endpoints_fallback_without_endpoint_slices(
    kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = kube_api
    kube.remove_resource("endpointslices")
    kube.create("revisions", revision(REV, cc=1))
    kube.create("endpoints", endpoints_object(REV, ["10.0.0.1"], ["10.0.0.2"]))
    rec = Recorder()
    p = await start_platform(api, rec, pod_ip="10.1.0.2")
    try:
        assert await p.wait_synced(5)
        assert p.informers[1].resource.plural == "endpoints"
        assert rec.endpoints[KEY] == Endpoints(
            ready=("10.0.0.1:8012",), not_ready=("10.0.0.2:8012",)
        )
        kube.apply("endpoints", endpoints_object(REV, ["10.0.0.1", "10.0.0.2"]))
        want = Endpoints(ready=("10.0.0.1:8012", "10.0.0.2:8012"))
        await eventually(lambda: rec.endpoints[KEY] == want, what="endpoints update")
        kube.create("endpoints", endpoints_object(REV, ["10.1.0.2", "10.1.0.10"], kind="Public"))
        # lexical order, as Knative: "10.1.0.10" < "10.1.0.2"
        await eventually(lambda: rec.activators.get(KEY) == (1, 2), what="subset")
        assert not kube.requests_for("list", "endpointslices")
    finally:
        await p.close()


async def test_subsetting_from_public_endpoints(kube_api: tuple[FakeKube, KubeAPI]) -> None:
    kube, api = kube_api
    kube.create("revisions", revision(REV, cc=10))
    kube.create(
        "endpointslices",
        endpoint_slice(REV, ["10.1.0.1", "10.1.0.3", "10.1.0.2"], kind="Public", port=8012),
    )
    rec = Recorder()
    p = await start_platform(api, rec, pod_ip="10.1.0.2")
    try:
        assert await p.wait_synced(5)
        assert rec.activators[KEY] == (1, 3)
        kube.apply("endpointslices", endpoint_slice(REV, ["10.1.0.2", "10.1.0.3"], kind="Public"))
        await eventually(lambda: rec.activators[KEY] == (0, 2), what="subset shrinks")
        # a public endpoints update without this activator is ignored (as Knative)
        kube.apply("endpointslices", endpoint_slice(REV, ["10.1.0.3"], kind="Public"))
        kube.apply("endpointslices", endpoint_slice(REV, ["10.0.0.1"]))  # a later event
        await eventually(lambda: KEY in rec.endpoints and rec.endpoints[KEY].ready, what="eps")
        assert rec.activators[KEY] == (0, 2)
    finally:
        await p.close()


async def test_forbidden_revisions_keep_the_platform_unsynced(
    kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = kube_api
    kube.forbid("list", "revisions")
    sleep = ManualSleep()
    rec = Recorder()
    p = await start_platform(api, rec, sleep=sleep)
    try:
        await eventually(lambda: sleep.waiting >= 1 and p.informers[1].synced, what="sync try")
        assert not p.synced
        (err,) = p.errors
        assert isinstance(err, KubeForbidden)
        assert "cannot list revisions.serving.knative.dev in all namespaces" in str(err)
        kube.allow("list", "revisions")
        sleep.release()
        assert await p.wait_synced(5)
    finally:
        await p.close()


# --------------------------------------------------------------------------- the activator


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        yield k


@pytest.fixture
async def npods(tmp_path: Path) -> AsyncIterator[NetnsPods]:
    p = NetnsPods(tmp_path)
    yield p
    await p.close()


# This activator's POD_IP, and another activator's: subsetting only compares them with the
# public endpoints, nothing connects to them.
MY_IP, OTHER_IP = "10.0.0.2", "10.0.0.1"


def knative_env(kube: FakeKube, tmp_path: Path) -> dict[str, str]:
    return {
        "ACTIVATOR_PLATFORM_FILE": "",  # KND_PLATFORM defaults to knative
        "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        "POD_IP": MY_IP,
    }


async def test_activator_routes_through_the_kubernetes_api(
    kube: FakeKube,
    stub: RunningStub,
    start_activator: StartActivator,
    npods: NetnsPods,
    tmp_path: Path,
) -> None:
    a, b = await npods.start(), await npods.start()
    kube.create("revisions", revision(REV, cc=0))
    for pod, suffix in ((a, "aaaaa"), (b, "bbbbb")):
        kube.create("endpointslices", endpoint_slice(REV, [pod.ip], port=QP_PORT, suffix=suffix))
    act = await start_activator(
        PlatformFile(tmp_path / "unused.json"), stub.url, **knative_env(kube, tmp_path)
    )
    assert kube.requests_for("list", "revisions") and kube.requests_for("list", "endpointslices")
    assert a.app is not None and b.app is not None
    async with make_client(act.url(), timeout=10.0) as c:
        r = await c.get("/hello", headers=rev_headers(REV))
        assert r.status_code == 200, r.text
        # <rev>.<ns>.svc.<domain> routes too
        r = await c.get("/hello", headers={"Host": f"{REV}.default.svc.cluster.local"})
        assert r.status_code == 200, r.text

        async def both_used() -> bool:
            await c.get("/hello", headers=rev_headers(REV))
            return bool(a.app and b.app and a.app.arrivals and b.app.arrivals)

        await eventually(both_used, timeout=10, what="both pods get traffic")

        # the Revision's service and configuration labels reach the metrics
        async def labelled() -> bool:
            samples = (await act.metrics()).get("kn_revision_request_concurrency", [])
            return any(
                (lb.get("kn_service_name"), lb.get("kn_configuration_name")) == ("hello", "hello")
                for lb, _ in samples
            )

        await eventually(labelled, timeout=10, what="kn_service_name in the activator's metrics")
        # an EndpointSlice update removes pod b
        kube.delete("endpointslices", "default", f"{REV}-private-bbbbb")

        async def only_a() -> bool:
            assert b.app is not None
            seen_b = len(b.app.arrivals)
            for _ in range(10):
                r = await c.get("/hello", headers=rev_headers(REV))
                assert r.status_code == 200
            return len(b.app.arrivals) == seen_b

        await eventually(only_a, timeout=10, what="pod b no longer used")
        # unknown revisions are 404 (nothing in the API for them)
        r = await c.get("/hello", headers=rev_headers("nope-00001"))
        assert r.status_code == 404


async def test_activator_not_ready_until_synced(
    kube: FakeKube, stub: RunningStub, start_activator: StartActivator, tmp_path: Path
) -> None:
    kube.forbid("list", "revisions")
    act = await start_activator(
        PlatformFile(tmp_path / "unused.json"),
        stub.url,
        wait_connected=False,
        **knative_env(kube, tmp_path),
    )
    await eventually(lambda: stub.state.active(), what="stats websocket connected")
    await eventually(lambda: len(kube.requests_for("list", "revisions")) >= 2, what="retries")
    r = await act.health()
    assert r.status_code == 500
    assert r.text.strip() == "platform caches not synced"  # not the autoscaler connection's text
    assert "forbidden: cannot list revisions.serving.knative.dev in all namespaces" in act.stderr()
    kube.allow("list", "revisions")

    async def ready() -> bool:
        return (await act.health()).status_code == 200

    await eventually(ready, timeout=10, what="ready once synced")


async def test_activator_exits_when_the_api_server_is_unreachable(
    start_activator: StartActivator, stub: RunningStub, tmp_path: Path
) -> None:
    kube = FakeKube()
    (kube.port,) = free_ports(1)  # nothing listens there
    env = knative_env(kube, tmp_path)
    with pytest.raises(AssertionError) as e:
        await start_activator(
            PlatformFile(tmp_path / "unused.json"),
            stub.url,
            KND_KUBE_API_WAIT_SECONDS="0",
            **env,
        )
    msg = str(e.value)
    assert "exited with 1" in msg
    assert (
        "Kubernetes API server not available after 0s: cannot reach the Kubernetes API server "
        f"at http://127.0.0.1:{kube.port}"
    ) in msg


async def test_activator_takes_its_subset_of_pods(
    kube: FakeKube,
    stub: RunningStub,
    start_activator: StartActivator,
    npods: NetnsPods,
    tmp_path: Path,
) -> None:
    """SPEC §2.10: with two activators in the revision's public endpoints, this one (POD_IP
    10.0.0.2, index 1 of ["10.0.0.1", "10.0.0.2"]) uses the second of the pods sorted by
    address; alone, it uses both."""
    p1, p2 = await npods.start(), await npods.start()
    mine, other = sorted((p1, p2), key=lambda p: p.dest)[::-1]
    kube.create("revisions", revision(REV, cc=10))
    for pod, suffix in ((p1, "aaaaa"), (p2, "bbbbb")):
        kube.create("endpointslices", endpoint_slice(REV, [pod.ip], port=QP_PORT, suffix=suffix))
    kube.create("endpointslices", endpoint_slice(REV, [MY_IP, OTHER_IP], kind="Public"))
    act = await start_activator(
        PlatformFile(tmp_path / "unused.json"), stub.url, **knative_env(kube, tmp_path)
    )
    assert mine.app is not None and other.app is not None
    async with make_client(act.url(), timeout=10.0) as c:
        for _ in range(20):
            r = await c.get("/hello", headers=rev_headers(REV))
            assert r.status_code == 200, r.text
        assert len(mine.app.arrivals) == 20 and not other.app.arrivals
        kube.apply("endpointslices", endpoint_slice(REV, [MY_IP], kind="Public"))

        async def both_used() -> bool:
            await c.get("/hello", headers=rev_headers(REV))
            return bool(other.app and other.app.arrivals)

        await eventually(both_used, timeout=10, what="alone, the activator uses every pod")


async def test_failed_revision_is_answered_503_at_once_and_recovers(
    kube: FakeKube,
    stub: RunningStub,
    start_activator: StartActivator,
    npods: NetnsPods,
    tmp_path: Path,
) -> None:
    """A Revision whose Ready condition is False (Knative: the container exits at start, or the
    progress deadline passed) has its requests answered 503 with Knative's reason and message at
    once, not held until their timeout (300 s); when a pod is ready they are served again."""
    failed = revision(REV, cc=0)
    failed["status"] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ExitCode3",
                "message": "Container failed with: boom: DATABASE_URL is not set",
            }
        ]
    }
    kube.create("revisions", failed)
    act = await start_activator(
        PlatformFile(tmp_path / "unused.json"), stub.url, **knative_env(kube, tmp_path)
    )
    async with make_client(act.url(), timeout=10.0) as c:

        async def failed_at_once() -> bool:
            r = await c.get("/hello", headers=rev_headers(REV))
            return r.status_code == 503 and "ExitCode3" in r.text

        await eventually(failed_at_once, timeout=10, what="503 for the failed revision")
        r = await c.get("/hello", headers=rev_headers(REV))
        assert r.text == (
            "revision default/hello-00001 cannot start: ExitCode3: "
            "Container failed with: boom: DATABASE_URL is not set\n"
        )
        # The revision recovers: Ready again and a pod behind it.
        pod = await npods.start()
        fixed = kube.get("revisions", "default", REV)
        fixed["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
        kube.update("revisions", fixed)
        kube.create("endpointslices", endpoint_slice(REV, [pod.ip], port=QP_PORT, suffix="aaaaa"))

        async def served() -> bool:
            return (await c.get("/hello", headers=rev_headers(REV))).status_code == 200

        await eventually(served, timeout=10, what="served once the revision is ready")


def private_service(rev: str, cluster_ip: str, ns: str = "default") -> dict[str, object]:
    """Knative's private Service of a revision (ports as Knative's controller makes them)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{rev}-private",
            "namespace": ns,
            "labels": {
                "serving.knative.dev/revision": rev,
                "networking.internal.knative.dev/serviceType": "Private",
            },
        },
        "spec": {
            "clusterIP": cluster_ip,
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8012},
                {"name": "http2", "port": 81, "targetPort": 8013},
            ],
        },
    }


async def test_private_service_cluster_ip_is_reported_for_the_fallback(
    kube_api: tuple[FakeKube, KubeAPI],
) -> None:
    kube, api = kube_api
    kube.create("revisions", revision(REV))
    kube.create("endpointslices", endpoint_slice(REV, ["10.0.0.1"]))
    public = private_service(REV, "10.96.0.9")
    public["metadata"]["labels"]["networking.internal.knative.dev/serviceType"] = "Public"  # type: ignore[index]
    public["metadata"]["name"] = REV  # type: ignore[index]
    kube.create("services", public)  # the public service is not the fallback
    rec = Recorder()
    p = await start_platform(api, rec)
    try:
        assert await p.wait_synced(5)
        await eventually(lambda: KEY in rec.endpoints, what="endpoints")
        assert rec.endpoints[KEY].cluster == ""
        kube.create("services", private_service(REV, "10.96.0.7"))
        want = Endpoints(ready=("10.0.0.1:8012",), cluster="10.96.0.7:80")
        await eventually(lambda: rec.endpoints[KEY] == want, what="the ClusterIP")
        kube.delete("services", "default", f"{REV}-private")
        await eventually(lambda: rec.endpoints[KEY].cluster == "", what="the ClusterIP gone")
    finally:
        await p.close()

"""The activator process in standalone mode (KND_PLATFORM=standalone) against the fake API
server: it routes by Host to a real queue-proxy found through an annotated Deployment and its
Service's EndpointSlice, reports the revision's stats, and drops a pod removed from the slice.
The pods have network namespaces of their own (EndpointSlices refuse loopback addresses)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from activator.env import parse_env
from tests.apps.autoscaler_stub import RunningStub
from tests.fakekube import FakeKube

from .activator_helpers import PlatformFile, StartActivator, stub_stats
from .conftest import make_client
from .helpers import eventually
from .k8s_helpers import QP_PORT, NetnsPods


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        yield k


@pytest.fixture
async def npods(tmp_path: Path) -> AsyncIterator[NetnsPods]:
    p = NetnsPods(tmp_path)
    yield p
    await p.close()


def slice_for(name: str, service: str, ip: str, port: int = QP_PORT) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
    }


def test_standalone_env() -> None:
    e = parse_env(
        {
            "POD_NAME": "a",
            "POD_IP": "",
            "KND_PLATFORM": "standalone",
            "SYSTEM_NAMESPACE": "knd-system",
        }
    )
    assert e.platform == "standalone"
    assert e.autoscaler_url == "ws://knd-autoscaler.knd-system.svc.cluster.local:8080"
    e = parse_env(
        {"POD_NAME": "a", "POD_IP": "", "KND_PLATFORM": "standalone", "AUTOSCALER_URL": "ws://x:1"}
    )
    assert e.autoscaler_url == "ws://x:1"
    e = parse_env({"POD_NAME": "a", "POD_IP": ""})
    assert e.autoscaler_url == "ws://autoscaler.knative-serving.svc.cluster.local:8080"


async def test_activator_routes_annotated_deployments_by_host(
    kube: FakeKube,
    stub: RunningStub,
    start_activator: StartActivator,
    npods: NetnsPods,
    tmp_path: Path,
) -> None:
    a, b = await npods.start(), await npods.start()
    kube.create(
        "deployments",
        {
            "metadata": {
                "name": "hello",
                "namespace": "default",
                "annotations": {
                    "knd.dev/enabled": "true",
                    "knd.dev/service": "hello-pods",
                    "knd.dev/hosts": "hello.example.com",
                },
            },
            "spec": {"replicas": 2},
        },
    )
    # a second Deployment with default hosts: its Service's <svc>.<ns>.svc.<domain> routes to
    # it although the names differ
    kube.create(
        "deployments",
        {
            "metadata": {
                "name": "web",
                "namespace": "default",
                "annotations": {"knd.dev/enabled": "true", "knd.dev/service": "web-pods"},
            },
            "spec": {"replicas": 1},
        },
    )
    kube.create("endpointslices", slice_for("web-pods-a", "web-pods", a.ip))
    kube.create("endpointslices", slice_for("hello-pods-a", "hello-pods", a.ip))
    kube.create("endpointslices", slice_for("hello-pods-b", "hello-pods", b.ip))
    act = await start_activator(
        PlatformFile(tmp_path / "unused.json"),
        stub.url,
        ACTIVATOR_PLATFORM_FILE="",
        KND_PLATFORM="standalone",
        KUBECONFIG=str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
    )
    assert kube.requests_for("list", "deployments") and kube.requests_for("list", "endpointslices")
    assert a.app is not None and b.app is not None
    async with make_client(act.url(), timeout=10.0) as c:
        r = await c.get("/hello", headers={"Host": "hello.example.com"})
        assert r.status_code == 200, r.text
        # the Deployment's own name routes too: <deployment>.<namespace>.svc.<domain>
        r = await c.get("/hello", headers={"Host": "hello.default.svc.cluster.local"})
        assert r.status_code == 200, r.text
        for host in ("web-pods.default.svc.cluster.local", "web-pods.default:80"):
            r = await c.get("/hello", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        r = await c.get("/hello", headers={"Host": "nobody.example.com"})
        assert r.status_code == 404

        async def both_used() -> bool:
            await c.get("/hello", headers={"Host": "hello.example.com"})
            return bool(a.app and b.app and a.app.arrivals and b.app.arrivals)

        await eventually(both_used, timeout=10, what="both pods get traffic")
        # stats for the Deployment go to the autoscaler, keyed (namespace, deployment)
        await eventually(lambda: bool(stub_stats(stub, "hello")), what="stats for default/hello")
        # the slice of pod b goes away: b gets no more requests
        kube.delete("endpointslices", "default", "hello-pods-b")

        async def only_a() -> bool:
            assert b.app is not None
            seen_b = len(b.app.arrivals)
            for _ in range(10):
                r = await c.get("/hello", headers={"Host": "hello.example.com"})
                assert r.status_code == 200
            return len(b.app.arrivals) == seen_b

        await eventually(only_a, timeout=10, what="pod b no longer used")
        # opting out removes the route
        kube.patch(
            "deployments",
            "default",
            "hello",
            {"metadata": {"annotations": {"knd.dev/enabled": None}}},
        )

        async def gone() -> bool:
            r = await c.get("/hello", headers={"Host": "hello.example.com"})
            return r.status_code == 404

        await eventually(gone, timeout=10, what="route removed")

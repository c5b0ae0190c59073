"""knd-autoscaler in process against the fake API server (real kubernetes-asyncio client):
a request held by a real activator (standalone platform) signals demand over the stats
websocket, the autoscaler patches deployments/scale from zero, the "pod" appears in the
EndpointSlice, the request is answered, and once idle the Deployment goes back to zero.
Also: a standby refuses stat websockets and takes over when the leader shuts down, and no
replica change is made without metrics except to honour min-scale."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from activator.handler import Activator
from activator.statsink import StatSink
from autoscaler.standalone import AutoscalerProcess, parse_env
from dataplane.proxy import HTTPServer, ServerConfig
from dataplane.statpb import Stat, WireStatMessage, encode_stat, encode_wire_stat_messages
from platforms.kubernetes.api import KubeAPI
from platforms.kubernetes.standalone import StandalonePlatform
from tests.fakekube import FakeKube

from .netns import NetNS, netns_or_skip

pytestmark = pytest.mark.timeout(60)

NS = "default"
KEY = (NS, "hello")


def env(pod: str, **extra: str) -> dict[str, str]:
    return {
        "POD_NAME": pod,
        "POD_NAMESPACE": "knd-system",
        "KND_STAT_PORT": "0",
        "KND_METRICS_PORT": "0",
        "KND_BIND_ADDRESS": "127.0.0.1",
        "KND_LEASE_DURATION": "3s",
        "KND_LEASE_RENEW_DEADLINE": "2s",
        "KND_LEASE_RETRY_PERIOD": "100ms",
        "KND_KUBE_API_WAIT_SECONDS": "5",
        **extra,
    }


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.01)


def hello_deployment(metrics_port: int, replicas: int = 0, **ann: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "hello",
            "namespace": NS,
            "annotations": {
                "knd.dev/enabled": "true",
                "knd.dev/container-concurrency": "1",
                "knd.dev/service": "hello-pods",
                "knd.dev/hosts": "hello.example.com",
                "knd.dev/metrics-port": str(metrics_port),
                "autoscaling.knative.dev/target-utilization-percentage": "100",
                **ann,
            },
        },
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "hello"}}},
    }


def hello_slice(ip: str, port: int, ready: bool) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "hello-pods-x1",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": "hello-pods"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}] if ready else [],
    }


class FakePod:
    """A queue-proxy stand-in in a network namespace of its own (its address goes in the
    EndpointSlice, which refuses loopback ones): answers the activator's probe and requests,
    and serves a protobuf Stat on its metrics port, which the autoscaler scrapes."""

    def __init__(self, ns: NetNS) -> None:
        self.ns = ns
        self.ip = ns.ip
        self.concurrency = 0.0
        self.requests = 0
        self.runners: list[web.AppRunner] = []
        self.port = 0
        self.metrics_port = 0

    async def _serve(self, request: web.Request) -> web.Response:
        if request.headers.get("K-Network-Probe") == "queue":
            return web.Response(text="queue")
        self.requests += 1
        return web.Response(text=f"hello from the pod ({request.headers.get('K-Original-Host')})")

    async def _metrics(self, request: web.Request) -> web.Response:
        stat = Stat(pod_name="hello-pod", average_concurrent_requests=self.concurrency)
        return web.Response(
            body=encode_stat(stat), headers={"Content-Type": "application/protobuf"}
        )

    async def start(self) -> None:
        for handler in (self._serve, self._metrics):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            sock = self.ns.listen()
            port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            if handler == self._serve:
                self.port = port
            else:
                self.metrics_port = port
            self.runners.append(runner)

    async def close(self) -> None:
        for r in self.runners:
            await r.cleanup()


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        yield k


@pytest.fixture
async def pod() -> AsyncIterator[FakePod]:
    ns = netns_or_skip()
    try:
        p = FakePod(ns)
        await p.start()
        yield p
        await p.close()
    finally:
        ns.close()


class Procs:
    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.procs: list[AutoscalerProcess] = []

    async def start(self, pod_name: str, **extra: str) -> AutoscalerProcess:
        api = KubeAPI(ApiClient(self.kube.configuration()))
        proc = AutoscalerProcess(parse_env(env(pod_name, **extra)), api, asyncio.get_running_loop())
        self.procs.append(proc)
        await proc.start()
        return proc

    async def close(self) -> None:
        for p in self.procs:
            await p.stop()
            await p.api.close()


@pytest.fixture
async def procs(kube: FakeKube) -> AsyncIterator[Procs]:
    ps = Procs(kube)
    yield ps
    await ps.close()


def scale_patches(kube: FakeKube) -> list[int]:
    return [r.body["spec"]["replicas"] for r in kube.requests_for("patch", "deployments/scale")]


async def test_scale_from_zero_on_a_held_request_and_back_to_zero(
    kube: FakeKube, pod: FakePod, procs: Procs
) -> None:
    kube.create("deployments", hello_deployment(pod.metrics_port))
    kube.create("endpointslices", hello_slice(pod.ip, pod.port, ready=False))
    proc = await procs.start(
        "autoscaler-0",
        KND_AUTOSCALER_STABLE_WINDOW="6s",
        KND_AUTOSCALER_SCALE_TO_ZERO_GRACE_PERIOD="1s",
    )
    await until(lambda: proc.elector.is_leader and proc.platform.synced, what="leader, synced")
    assert KEY in proc.autoscaler.revisions

    # the activator: standalone platform, stats to the autoscaler's websocket
    loop = asyncio.get_running_loop()
    sink = StatSink(f"ws://127.0.0.1:{proc.stat_port}/")
    act = Activator(
        loop=loop, pod_name="activator-0", send_stats=sink.send, connected=lambda: sink.connected
    )
    act_platform = StandalonePlatform(
        KubeAPI(ApiClient(kube.configuration())), owns_api=True, api_wait=5
    )
    server = HTTPServer(act, ServerConfig(timeout_body=b"activator request timeout"), loop=loop)
    await act_platform.start(act.registry)
    await sink.start()
    act.start()
    sock = socket.create_server(("127.0.0.1", 0))  # asyncio's loop needs a socket.socket
    sock.setblocking(False)
    await server.start("127.0.0.1", 0, sock=sock)
    try:
        await until(lambda: sink.connected and act_platform.synced, what="activator ready")
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.port}/"
            request = asyncio.create_task(
                http.get(
                    url, headers={"Host": "hello.example.com"}, timeout=aiohttp.ClientTimeout(20)
                )
            )
            # demand at zero: the activator's stat pokes the autoscaler, which patches the scale
            await until(
                lambda: kube.get("deployments", NS, "hello")["spec"]["replicas"] == 1,
                what="scaled from zero",
            )
            assert not request.done()  # held at the activator: no pod yet
            [patch] = kube.requests_for("patch", "deployments/scale")
            assert patch.query["fieldManager"] == "knd-autoscaler" and patch.body == {
                "spec": {"replicas": 1}
            }
            # the Deployment controller's part: the pod turns ready in the EndpointSlice
            kube.update("endpointslices", hello_slice(pod.ip, pod.port, ready=True))
            resp = await asyncio.wait_for(request, 10)
            assert resp.status == 200
            assert await resp.text() == "hello from the pod (hello.example.com)"
            assert pod.requests == 1
            # scraped as ready, the pod counts; idle, the Deployment goes back to zero
            await until(lambda: proc.platform.ready_count(KEY) == 1, what="ready pod seen")
            await until(
                lambda: kube.get("deployments", NS, "hello")["spec"]["replicas"] == 0,
                timeout=25,
                what="scaled to zero when idle",
            )
            assert scale_patches(kube) == [1, 0]
            # each change is an Event on the Deployment (kubectl describe shows it)
            await until(lambda: len(kube.list("events", NS)) == 2, what="two events")
            events = sorted(kube.list("events", NS), key=lambda e: e["reason"])
            assert [e["reason"] for e in events] == ["ScaledDown", "ScaledUp"]
            assert events[1]["involvedObject"] == {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "hello",
                "namespace": NS,
                "uid": kube.get("deployments", NS, "hello")["metadata"]["uid"],
            }
            assert events[1]["message"].startswith("Scaled from 0 to 1 replicas (stable")
            assert events[1]["source"]["component"] == "knd-autoscaler"
            # metrics and health
            base = f"http://127.0.0.1:{proc.metrics_port}"
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            assert "knd_autoscaler_leader 1" in text
            assert (
                'knd_autoscaler_scale_changes_total{namespace="default",deployment="hello"} 2'
                in text
            )
            async with http.get(base + "/readyz") as r:
                assert r.status == 200 and "leader" in await r.text()
    finally:
        await server.shutdown(timeout=1)
        act.stop()
        await sink.close()
        await act_platform.close()


async def test_standby_refuses_stats_and_takes_over_on_release(
    kube: FakeKube, pod: FakePod, procs: Procs
) -> None:
    kube.create("deployments", hello_deployment(pod.metrics_port))
    a = await procs.start("autoscaler-a", KND_LEASE_DURATION="30s", KND_LEASE_RENEW_DEADLINE="20s")
    await until(lambda: a.elector.is_leader, what="a leads")
    b = await procs.start("autoscaler-b", KND_LEASE_DURATION="30s", KND_LEASE_RENEW_DEADLINE="20s")
    await until(lambda: b.platform.synced and b.elector.leader == "autoscaler-a", what="b sees a")
    assert not b.elector.is_leader
    frame = encode_wire_stat_messages(
        [WireStatMessage(NS, "hello", Stat(pod_name="act", average_concurrent_requests=1.0))]
    )
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(f"ws://127.0.0.1:{b.stat_port}/")
        assert e.value.status == 503
        async with http.get(f"http://127.0.0.1:{b.metrics_port}/readyz") as r:
            assert r.status == 200 and "standby" in await r.text()
        async with http.get(f"http://127.0.0.1:{b.metrics_port}/metrics") as r:
            assert "knd_autoscaler_leader 0" in await r.text()
        # demand reaching the standby by other means never scales: only the leader patches
        b.autoscaler.record_wire(
            [WireStatMessage(NS, "hello", Stat(average_concurrent_requests=1))]
        )
        b.autoscaler.tick(KEY)
        await asyncio.gather(*b.autoscaler._tasks)
        assert not kube.requests_for("patch", "deployments/scale")
        # the leader shuts down: it releases the Lease and b takes over at its next retry,
        # long before the 30 s lease duration
        ws = await http.ws_connect(f"ws://127.0.0.1:{a.stat_port}/")
        await a.stop()
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
        await until(lambda: b.elector.is_leader, timeout=5, what="b takes over")
        ws = await http.ws_connect(f"ws://127.0.0.1:{b.stat_port}/")
        await ws.send_bytes(frame)
        await until(
            lambda: kube.get("deployments", NS, "hello")["spec"]["replicas"] >= 1,
            what="b scales from zero",
        )
        await ws.close()
    lease = kube.get("leases", "knd-system", "knd-autoscaler")
    assert lease["spec"]["holderIdentity"] == "autoscaler-b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert len(scale_patches(kube)) == 1  # b's patch; nothing while it stood by


async def test_no_change_without_metrics_except_min_scale(
    kube: FakeKube, pod: FakePod, procs: Procs
) -> None:
    # running at 2 with no metrics yet (a takeover, a fresh install): left alone
    kube.create("deployments", hello_deployment(pod.metrics_port, replicas=2))
    floor = hello_deployment(
        pod.metrics_port, replicas=0, **{"autoscaling.knative.dev/min-scale": "2"}
    )
    floor["metadata"]["name"] = "floor"
    kube.create("deployments", floor)
    proc = await procs.start("autoscaler-0")
    await until(lambda: proc.elector.is_leader and len(proc.autoscaler.revisions) == 2)
    await until(
        lambda: kube.get("deployments", NS, "floor")["spec"]["replicas"] == 2,
        what="min-scale honoured",
    )
    for _ in range(3):
        proc.autoscaler.tick(KEY)
        proc.autoscaler.tick((NS, "floor"))
        await asyncio.gather(*proc.autoscaler._tasks)
    assert kube.get("deployments", NS, "hello")["spec"]["replicas"] == 2
    assert [r.name for r in kube.requests_for("patch", "deployments/scale")] == ["floor"]
    # a forbidden patch is reported with verb and resource, and retried later
    kube.forbid("patch", "deployments/scale")
    kube.patch("deployments", NS, "floor", {"spec": {"replicas": 0}})
    await until(lambda: proc.platform.replicas((NS, "floor")) == 0)
    proc.autoscaler.tick((NS, "floor"))
    await until(lambda: proc.scale_errors.values.get((NS, "floor"), 0) >= 1, what="error counted")
    assert proc.autoscaler.revisions[(NS, "floor")].replicas == 0  # retried on the next tick
    kube.allow("patch", "deployments/scale")
    proc.autoscaler.tick((NS, "floor"))
    await until(lambda: kube.get("deployments", NS, "floor")["spec"]["replicas"] == 2)

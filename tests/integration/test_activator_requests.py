"""Activator request handling with real processes (SPEC §2.2, §2.3, §2.5, §2.6): health and
network probes, revision resolution, headers, errors, timeouts, the queue limits."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest

from tests.apps.autoscaler_stub import RunningStub

from .activator_helpers import (
    KUBELET,
    ActivatorProc,
    PlatformFile,
    Pods,
    RawPod,
    StartActivator,
    apply,
    head_lines,
    rev_headers,
)
from .conftest import make_client
from .helpers import eventually, free_ports

REV = "hello-00001"


@pytest.fixture
async def raw_pod() -> AsyncIterator[RawPod]:
    p = await RawPod().start()
    yield p
    await p.close()


async def timed(coro: object) -> tuple[httpx.Response, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await coro  # type: ignore[misc]
    return r, loop.time() - t0


async def wait_queued(act: ActivatorProc, rev: str, n: int, timeout: float = 5.0) -> None:
    async def check() -> bool:
        return await act.queued(rev) == n

    await eventually(check, timeout=timeout, what=f"{n} requests queued for {rev}")


def error_body(message: str) -> bytes:
    return message.encode() + b"\n"


async def test_health_probes_and_revision_resolution(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, raw_pod: RawPod
) -> None:
    platform.revision(REV, cc=0, ready=[raw_pod.dest], hosts=["hello.default.example.com"])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url()) as c:
        # Kubelet probes, any path: 200, empty body.
        for path, headers in (
            ("/", KUBELET),
            ("/any/path", KUBELET),
            ("/", {"K-Kubelet-Probe": "queue"}),
        ):
            r = await c.get(path, headers=headers)
            assert (r.status_code, r.content) == (200, b""), (path, headers)
        # Network probes.
        r = await c.get("/", headers={"K-Network-Probe": "probe", "K-Network-Hash": "h42"})
        assert r.status_code == 200
        assert r.headers["k-network-hash"] == "h42"
        r = await c.get("/", headers={"K-Network-Probe": "probe"})
        assert r.status_code == 400
        assert r.content == error_body(
            'a probe request must contain a non-empty "K-Network-Hash" header'
        )
        r = await c.get("/", headers={"K-Network-Probe": "activator"})
        assert (r.status_code, r.content) == (200, b"activator")
        r = await c.get("/", headers={"K-Network-Probe": "queue"})
        assert r.status_code == 400
        assert r.content == error_body('unexpected probe header value: "queue"')
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        r = await c.get("/", headers={"K-Network-Probe": "<script>"})
        assert r.content == error_body('unexpected probe header value: "&lt;script&gt;"')
        assert raw_pod.heads == []  # none of these reached a pod

        # Revision resolution: the Knative headers, a host listed in the platform file.
        for headers in (
            rev_headers(REV),
            {"Host": "hello.default.example.com"},
            {"Host": "Hello.Default.Example.com:80"},
        ):
            r = await c.get("/x", headers=headers)
            assert r.status_code == 200, headers
        assert len(raw_pod.heads) == 3
        # Unknown revisions and hosts: 404.
        for headers in (
            rev_headers("nope-00001"),
            rev_headers(REV, ns="other"),
            {"Host": "nope-00001.default.svc.cluster.local"},
            {"Host": "unknown.example.com"},
            {"Host": f"{REV}.default.svc.other.domain"},
        ):
            r = await c.get("/x", headers=headers)
            assert r.status_code == 404, headers
            assert r.content.startswith(b"Error getting active endpoint: "), r.content
            assert r.content.endswith(b"\n")
        r = await c.get("/x", headers=rev_headers("nope-00001"))
        assert r.content == error_body(
            'Error getting active endpoint: revision.serving.knative.dev "nope-00001" not found'
        )
        assert len(raw_pod.heads) == 3


async def test_cluster_local_host_resolves_the_revision(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, raw_pod: RawPod
) -> None:
    """Without the Knative-Serving-* headers the revision comes from a Host of the form
    <rev>.<ns>.svc.<cluster domain> (the port stripped, SPEC §2.3)."""
    platform.revision(REV, cc=0, ready=[raw_pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url()) as c:
        for host in (f"{REV}.default.svc.cluster.local", f"{REV}.default.svc.cluster.local:80"):
            r = await c.get("/x", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
            values = dict((k.lower(), v) for k, v in head_lines(raw_pod.heads[-1]))
            assert values["k-original-host"] == host


async def test_forwarded_request_headers(
    platform: PlatformFile,
    stub: RunningStub,
    start_activator: StartActivator,
    raw_pod: RawPod,
    pods: Pods,
) -> None:
    """What the activator sends a pod (seen raw), and what the app behind a real queue-proxy
    gets: the original Host back, K-Proxy-Request: activator, no Knative-Serving-* headers."""
    pod = await pods.start()
    assert pod.app is not None
    platform.revision(REV, cc=0, ready=[raw_pod.dest])
    platform.revision("real-00001", cc=0, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    sent = {
        **rev_headers(REV),
        "Host": "hello.default.example.com",
        "X-Custom": "kept",
        "K-Network-Hash": "stale",
    }
    async with make_client(act.url()) as c:
        r = await c.get("/path?q=1", headers=sent)
        assert r.status_code == 200
        head = raw_pod.heads[-1]
        assert head.startswith(b"GET /path?q=1 HTTP/1.1\r\n")
        lines = head_lines(head)
        names = [k.lower() for k, _ in lines]
        values = {k.lower(): v for k, v in lines}
        assert values["host"] == raw_pod.dest  # the pod's address, not the original host
        assert values["k-original-host"] == "hello.default.example.com"
        assert values["k-proxy-request"] == "activator"
        assert values["x-custom"] == "kept"
        assert "knative-serving-revision" not in names
        assert "knative-serving-namespace" not in names
        assert "k-network-hash" not in names  # dropped unless it is a network probe
        for name in ("host", "k-original-host", "k-proxy-request"):
            assert names.count(name) == 1, (name, lines)

        # A K-Original-Host set by an earlier hop is kept.
        r = await c.get("/", headers={**sent, "K-Original-Host": "first.example.com"})
        assert r.status_code == 200
        values = dict((k.lower(), v) for k, v in head_lines(raw_pod.heads[-1]))
        assert values["k-original-host"] == "first.example.com"
        assert values["host"] == raw_pod.dest

        # Through a real queue-proxy: the app sees the original Host again.
        r = await c.get("/headers", headers={**sent, **rev_headers("real-00001")})
        assert r.status_code == 200
        got = r.json()["headers"]
        got_names = [k.lower() for k, _ in got]
        got_values = {k.lower(): v for k, v in got}
        assert got_values["host"] == "hello.default.example.com"
        assert got_values["k-proxy-request"] == "activator"
        assert got_values["x-custom"] == "kept"
        assert "k-original-host" not in got_names
        assert "knative-serving-revision" not in got_names
        assert "knative-serving-namespace" not in got_names
        # The app's answer comes back as it is.
        r = await c.get(
            "/status", params={"code": "418", "body": "teapot"}, headers=rev_headers("real-00001")
        )
        assert (r.status_code, r.text) == (418, "teapot")
        r = await c.get("/hop", headers=rev_headers("real-00001"))
        assert (r.status_code, r.headers["x-resp-end2end"]) == (200, "kept")


async def test_client_proxy_header_is_replaced(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, raw_pod: RawPod
) -> None:
    platform.revision(REV, cc=0, ready=[raw_pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url()) as c:
        r = await c.get("/", headers={**rev_headers(REV), "K-Proxy-Request": "someone"})
    assert r.status_code == 200
    proxy = [v for k, v in head_lines(raw_pod.heads[-1]) if k.lower() == "k-proxy-request"]
    assert proxy == ["activator"]


async def test_queue_wait_limit_answers_503_with_retry_after(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """The per-revision limit (platform file), the default from the environment, a request
    timeout shorter than the limit, and a limit that does not apply once a request runs."""
    pod = await pods.start()
    platform.revision("own-00001", queueWaitSeconds=0.2)  # no pods
    platform.revision("env-00001")  # no pods, the environment's limit
    platform.revision("short-00001", timeoutSeconds=0.4, queueWaitSeconds=5)  # no pods
    platform.revision("running-00001", queueWaitSeconds=0.2, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url, ACTIVATOR_QUEUE_WAIT_SECONDS="0.7")
    async with make_client(act.url()) as c:
        (own, t_own), (env, t_env), (short, t_short), (running, _) = await asyncio.gather(
            timed(c.get("/", headers=rev_headers("own-00001"))),
            timed(c.get("/", headers=rev_headers("env-00001"))),
            timed(c.get("/", headers=rev_headers("short-00001"))),
            timed(c.get("/sleep", params={"ms": "500"}, headers=rev_headers("running-00001"))),
        )
        for r in (own, env):
            assert r.status_code == 503
            assert r.headers["retry-after"]
            assert int(r.headers["retry-after"]) >= 1
        assert 0.15 <= t_own < 0.6, t_own
        assert 0.65 <= t_env < 1.5, t_env
        # The request timeout comes first: 504, as Knative.
        assert short.status_code == 504
        assert short.content == b"activator request timeout"
        assert 0.35 <= t_short < 1.5, t_short
        # A request that got capacity at once is not cut by the queue-wait limit.
        assert (running.status_code, running.text) == (200, "slept")
        assert "knd-activator-wait-ms" not in running.headers
        for rev in ("own-00001", "env-00001", "short-00001"):
            assert await act.queued(rev) == 0
        # Nothing is left over: the revision still takes requests once a pod comes.
        platform.endpoints("own-00001", ready=[pod.dest])
        await apply(platform, act)
        r = await c.get("/hello", headers=rev_headers("own-00001"))
        assert (r.status_code, r.text) == (200, "hello")


async def test_waiting_request_gets_the_wait_header(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    pod = await pods.start()
    assert pod.app is not None
    platform.revision(REV, cc=1, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url()) as c:
        first = asyncio.create_task(c.get("/gate", headers=rev_headers(REV)))
        second = asyncio.create_task(c.get("/hello", headers=rev_headers(REV)))
        try:
            await pod.app.state.wait_for(lambda s: s.in_flight == 1)
            await wait_queued(act, REV, 1)
            loop = asyncio.get_running_loop()
            t_queued = loop.time()
            assert pod.app.state.max_in_flight == 1
            pod.app.state.gate.set()
            r1, r2 = await asyncio.wait_for(asyncio.gather(first, second), 5)
            t_done = loop.time()
        finally:
            pod.app.state.gate.set()
            await asyncio.gather(first, second, return_exceptions=True)
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert "knd-activator-wait-ms" not in r1.headers
    waited = int(r2.headers["knd-activator-wait-ms"])
    assert waited >= 1
    assert waited <= (t_done - t_queued) * 1000 + 5000
    assert pod.app.state.max_in_flight == 1
    wait_count = await act.metric("knd_activator_request_wait_seconds_count", kn_revision_name=REV)
    assert wait_count == 1


async def test_full_queue_answers_503(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    platform.revision(REV, cc=1)
    platform.write()
    act = await start_activator(platform, stub.url, ACTIVATOR_QUEUE_DEPTH="3")
    async with make_client(act.url()) as c:
        held = [asyncio.create_task(c.get("/hello", headers=rev_headers(REV))) for _ in range(3)]
        try:
            await wait_queued(act, REV, 3)
            r, took = await timed(c.get("/hello", headers=rev_headers(REV)))
            assert r.status_code == 503
            assert r.content == b"pending request queue full\n"
            assert took < 1.0
            assert not any(t.done() for t in held)
            pod = await pods.start()
            platform.endpoints(REV, ready=[pod.dest])
            platform.write()
            done = await asyncio.wait_for(asyncio.gather(*held), 10)
        finally:
            for t in held:
                t.cancel()
            await asyncio.gather(*held, return_exceptions=True)
    assert [(x.status_code, x.text) for x in done] == [(200, "hello")] * 3


async def test_revision_timeouts_answer_504(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """The revision's timeout while proxying and while waiting for a pod; the response-start
    timeout; 504 `activator request timeout` each time."""
    pod = await pods.start()
    platform.revision(REV, timeoutSeconds=0.5, ready=[pod.dest])
    platform.revision("cold-00001", timeoutSeconds=0.5)
    platform.revision("start-00001", responseStartTimeoutSeconds=0.3, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url()) as c:
        results = await asyncio.gather(
            timed(c.get("/hang", headers=rev_headers(REV))),
            timed(c.get("/hang", headers=rev_headers("cold-00001"))),
            timed(c.get("/slowstart", params={"ms": "3000"}, headers=rev_headers("start-00001"))),
        )
        for (r, took), limit in zip(results, (0.5, 0.5, 0.3), strict=True):
            assert r.status_code == 504
            assert r.content == b"activator request timeout"
            assert limit - 0.05 <= took < limit + 1.0, (took, limit)
        # The slot of the timed-out request is free again (CC 0 here, but the pod must still
        # serve) and nothing is left queued.
        assert await act.queued("cold-00001") == 0
        r = await c.get("/hello", headers=rev_headers(REV))
        assert r.status_code == 200


async def test_unreachable_app_and_dead_pod_answer_502(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """A pod whose queue-proxy passes probes but whose app refuses connections: the queue-
    proxy's 502 is passed through, promptly, every time (no retry loop, no leaked slot). A
    queue-proxy that dies after passing its probe: the activator's own dial error, 502."""
    (closed,) = free_ports(1)
    refusing = await pods.start(app=False, user_port=closed)
    doomed = await pods.start()
    platform.revision(REV, cc=1, ready=[refusing.dest])
    platform.revision("doomed-00001", cc=1, ready=[doomed.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url()) as c:
        for _ in range(3):  # CC 1: a leaked slot would make the next one wait
            r, took = await timed(c.get("/hello", headers=rev_headers(REV)))
            assert r.status_code == 502
            assert r.text == f"dial tcp 127.0.0.1:{closed}: connect: connection refused\n"
            assert took < 2.0
        r = await c.get("/hello", headers=rev_headers("doomed-00001"))
        assert r.status_code == 200
        doomed.qp.kill()
        for _ in range(3):
            r, took = await timed(c.get("/hello", headers=rev_headers("doomed-00001")))
            assert r.status_code == 502
            assert r.text == f"dial tcp {doomed.dest}: connect: connection refused\n"
            assert took < 2.0
        assert (await act.health()).status_code == 200


async def test_platform_file_changes(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Revisions come and go with the file; a broken file keeps the last good state."""
    pod = await pods.start()
    platform.revision(REV, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url()) as c:
        r = await c.get("/hello", headers=rev_headers("later-00001"))
        assert r.status_code == 404
        platform.revision("later-00001", ready=[pod.dest], hosts=["later.example.com"])
        await apply(platform, act)
        r = await c.get("/hello", headers={"Host": "later.example.com"})
        assert (r.status_code, r.text) == (200, "hello")
        platform.path.write_text("{not json")
        r = await c.get("/hello", headers=rev_headers(REV))
        assert r.status_code == 200

        async def logged() -> bool:
            return "platform file not reloaded" in act.stderr()

        await eventually(logged, timeout=3, what="the reload error logged")
        r = await c.get("/hello", headers={"Host": "later.example.com"})
        assert r.status_code == 200
        platform.remove("later-00001")
        await apply(platform, act)
        r = await c.get("/hello", headers={"Host": "later.example.com"})
        assert r.status_code == 404
        r = await c.get("/hello", headers=rev_headers(REV))
        assert r.status_code == 200
    assert act.running()


async def test_client_gone_while_waiting_frees_its_place(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Clients that give up while their requests wait: their places in the queue are freed and
    the requests never reach a pod."""
    platform.revision(REV, cc=1)
    platform.write()
    act = await start_activator(platform, stub.url, ACTIVATOR_QUEUE_DEPTH="2")
    async with make_client(act.url(), timeout=0.3) as impatient:
        for _ in range(2):
            with pytest.raises(httpx.ReadTimeout):
                await asyncio.gather(
                    *(impatient.get("/hello", headers=rev_headers(REV)) for _ in range(2))
                )
    await wait_queued(act, REV, 0)
    async with make_client(act.url()) as c:
        held = [asyncio.create_task(c.get("/sleep", headers=rev_headers(REV))) for _ in range(2)]
        try:
            await wait_queued(act, REV, 2)  # room for two again: no 503
            pod = await pods.start()
            assert pod.app is not None
            platform.endpoints(REV, ready=[pod.dest])
            platform.write()
            done = await asyncio.wait_for(asyncio.gather(*held), 5)
        finally:
            for t in held:
                t.cancel()
            await asyncio.gather(*held, return_exceptions=True)
    assert [(r.status_code, r.text) for r in done] == [(200, "slept")] * 2
    assert pod.app.state.total == 2
    assert pod.app.state.paths == ["/sleep", "/sleep"]


async def test_request_bodies_wait_with_their_requests(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Requests with bodies (Content-Length and chunked, small and 2 MiB) wait for a pod and
    arrive whole."""
    platform.revision(REV, cc=2)
    platform.write()
    act = await start_activator(platform, stub.url)
    big = bytes(range(256)) * (8 * 1024)  # 2 MiB

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 100_000):
            yield big[i : i + 100_000]

    async with make_client(act.url(), timeout=15.0) as c:
        h = rev_headers(REV)
        tasks = [
            asyncio.create_task(c.post("/sha256", content=b"small body", headers=h)),
            asyncio.create_task(c.post("/sha256", content=big, headers=h)),
            asyncio.create_task(c.post("/sha256", content=chunks(), headers=h)),
        ]
        try:
            await wait_queued(act, REV, 3)
            pod = await pods.start()
            platform.endpoints(REV, ready=[pod.dest])
            platform.write()
            small, large, chunked = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert small.json()["sha256"] == hashlib.sha256(b"small body").hexdigest()
    for r in (large, chunked):
        assert r.status_code == 200
        assert r.json()["sha256"] == hashlib.sha256(big).hexdigest()
        assert r.json()["length"] == len(big)
    assert chunked.json()["transfer_encoding"] == "chunked"


async def test_websocket_through_the_activator(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """An upgrade waits for a pod like any request, then the tunnel works both ways."""
    platform.revision(REV, cc=1)
    platform.write()
    act = await start_activator(platform, stub.url)
    async with aiohttp.ClientSession() as session:
        connecting = asyncio.create_task(
            session.ws_connect(
                act.url("/ws"),
                headers=rev_headers(REV),
                timeout=aiohttp.ClientWSTimeout(ws_close=2),
            )
        )
        try:
            await wait_queued(act, REV, 1)
            pod = await pods.start()
            platform.endpoints(REV, ready=[pod.dest])
            platform.write()
            ws = await asyncio.wait_for(connecting, 5)
        finally:
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
        async with ws:
            await ws.send_str("hi")
            assert (await ws.receive(timeout=5)).data == "echo: hi"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive(timeout=5)).data == b"\x00\x01"
            labels = {"kn_revision_name": REV}
            assert await act.metric("kn_revision_request_active", **labels) == 1
        # The tunnel held the pod's only slot; it is free again once the socket closes.
    async with make_client(act.url()) as c:
        r = await c.get("/hello", headers=rev_headers(REV))
    assert (r.status_code, r.text) == (200, "hello")


async def test_held_upgrade_answer_carries_the_wait_header(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """The 101 to an upgrade held for a pod says how long it waited, like any held request."""
    platform.revision(REV, cc=1)
    platform.write()
    act = await start_activator(platform, stub.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
    try:
        head = [b"GET /ws HTTP/1.1", b"Host: x", b"Connection: Upgrade", b"Upgrade: websocket"]
        head += [b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
        head += [b"%s: %s" % (k.encode(), v.encode()) for k, v in rev_headers(REV).items()]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        await wait_queued(act, REV, 1)
        pod = await pods.start()
        platform.endpoints(REV, ready=[pod.dest])
        platform.write()
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    lines = got.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    waits = [v for k, _, v in (x.partition(b": ") for x in lines) if k == b"Knd-Activator-Wait-Ms"]
    assert len(waits) == 1 and int(waits[0]) >= 0, got


async def test_cluster_ip_fallback_when_pods_cannot_be_probed(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Knative's ClusterIP fallback (mesh-compatibility-mode auto): the pods listed as ready do
    not answer the activator's probes (as behind a mesh: nothing at their address), the private
    service's address does (here a real queue-proxy and app stand in for it): requests go
    there, with CC per K8s-ready pod as capacity."""
    behind = await pods.start()
    unreachable = [f"127.0.0.1:{p}" for p in free_ports(2)]  # nothing listens: no response
    platform.revision(REV, cc=1, ready=unreachable)
    platform.revisions[("default", REV)]["endpoints"]["cluster"] = behind.dest
    platform.write()
    act = await start_activator(platform, stub.url)
    async with make_client(act.url(), timeout=10.0) as c:
        rs = await asyncio.gather(*(c.get("/hello", headers=rev_headers(REV)) for _ in range(4)))
    assert [r.status_code for r in rs] == [200] * 4
    assert behind.app is not None and len(behind.app.arrivals) == 4
    assert "using the ClusterIP" in act.stderr()

"""Faults survived (issue 7): real processes on loopback, every wait bounded.

- the app crashes mid-response (``knd run``): a cleanly truncated response, nothing left held,
  the next request served by the replacement pod;
- the app hangs: 504 at the revision timeout, the upstream request aborted, the breaker queue
  keeps moving;
- clients leave while queued at the activator and while served: every activator reservation and
  queue-proxy breaker slot is released (the counters go back to zero), the app's request is
  aborted;
- SIGTERM to a queue-proxy under steady load behind the activator: zero failed requests. The
  control plane is modelled honestly: a kubelet-like prober sees the pod's readiness fail and
  moves it to ``notReady`` in the endpoints, in-flight requests finish, the drain ends;
- SIGTERM to one of two activators under steady load: a load balancer that stops sending to an
  activator once its health check fails (as Kubernetes endpoints do) sees zero failures;
- a pod whose queue-proxy passes probes but whose app refuses connections: every request is
  answered at once, 502 or 200 from the other pod, and none is retried in a loop.

Covered elsewhere: autoscaler loss and return
(``test_activator_lifecycle.py::test_health_follows_the_autoscaler_connection``), scale-down
under load (``test_local_platform.py``, ``test_knd.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps.autoscaler_stub import RunningStub
from tests.apps.upstream import RunningApp

from .activator_helpers import (
    KUBELET,
    ActivatorProc,
    PlatformFile,
    Pod,
    Pods,
    StartActivator,
    rev_headers,
)
from .conftest import make_client
from .helpers import QueueProxy, RawConn, eventually
from .knd_helpers import Knd, free_ports, knd_env

REV = "hello-00001"
PROM = '{"requestMetrics":{"protocol":"prometheus"}}'
QP_PROBE = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}


async def queue_depth(qp: QueueProxy) -> float:
    """The queue-proxy's breaker in-flight count (``kn_serving_queue_depth``)."""
    async with make_client(f"http://127.0.0.1:{qp.user_metrics_port}") as c:
        r = await c.get("/metrics")
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == "kn_serving_queue_depth":
                return float(s.value)
    raise AssertionError("kn_serving_queue_depth not exported:\n" + r.text)


async def activator_counts(act: ActivatorProc, rev: str = REV) -> tuple[float, float]:
    """(queued, active) of a revision at the activator."""
    m = await act.metrics()

    def one(name: str) -> float:
        for labels, value in m.get(name, []):
            if labels.get("kn_revision_name") == rev:
                return value
        return 0.0

    return one("kn_revision_request_queued"), one("kn_revision_request_active")


class Load:
    """``workers`` clients each sending requests back to back until stopped; ``pick`` chooses
    the base URL of each request. Every outcome is recorded (status or exception)."""

    def __init__(self, pick: Callable[[], str], path: str, headers: dict[str, str]) -> None:
        self.pick = pick
        self.path = path
        self.headers = headers
        self.results: list[tuple[str, int | str]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: dict[str, httpx.AsyncClient] = {}

    def start(self, workers: int) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(workers)]

    async def _work(self) -> None:
        while not self._stop.is_set():
            base = self.pick()
            c = self._clients.get(base)
            if c is None:
                c = self._clients[base] = make_client(base, timeout=10.0)
            try:
                r = await c.get(self.path, headers=self.headers)
                self.results.append((base, r.status_code))
            except httpx.HTTPError as e:
                self.results.append((base, repr(e)))

    async def until(self, n: int, what: str, timeout: float = 10.0) -> None:
        await eventually(lambda: len(self.results) >= n, timeout=timeout, interval=0.01, what=what)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 15)
        for c in self._clients.values():
            await c.aclose()

    def failures(self) -> list[tuple[str, int | str]]:
        return [r for r in self.results if r[1] != 200]


# --------------------------------------------------------------------------- app crash (knd)

CRASHY_APP = r"""
import asyncio, json, os

PID = os.getpid()


async def handle(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split()[1].decode()
            if path.startswith("/crash"):
                # Half a response, then the process dies (no clean close of anything).
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                await writer.drain()
                os._exit(3)
            data = json.dumps({"pid": PID}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(data), data)
            )
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


@pytest.fixture
async def knd_crashy(tmp_path: Path) -> AsyncIterator[Knd]:
    app = tmp_path / "crashy.py"
    app.write_text(CRASHY_APP)
    records = tmp_path / "records"
    records.mkdir()
    port, admin = free_ports(2)
    args = [
        "--port", str(port), "--admin-port", str(admin), "--name", "crashy",
        "--concurrency", "1", "--drain-quiet-period", "0.2", "--", "python", str(app),
    ]  # fmt: skip
    k = Knd(args, test_dir=records, port=port, admin_port=admin, env=knd_env(records))
    try:
        yield k
    finally:
        if k.proc.poll() is None:
            try:
                await k.interrupt(timeout=15)
            except AssertionError:
                pass
        else:
            k.kill()
        print(k.output())


async def test_app_crash_mid_response_truncates_frees_and_is_replaced(knd_crashy: Knd) -> None:
    k = knd_crashy
    await k.wait_line(r"crashy-00001-deployment-\w+: ready after")
    async with make_client(f"http://127.0.0.1:{k.port}", timeout=15.0) as c:
        first = (await c.get("/")).json()["pid"]
        mark = len(k.stdout)
        # The response started (200, Content-Length 100000) and then the app died: the client
        # sees the connection end after the bytes that were sent, never a complete body.
        conn = await RawConn.open(k.port)
        try:
            await conn.send(b"GET /crash HTTP/1.1\r\nHost: crashy.localhost\r\n\r\n")
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nContent-Length: 100000\r\n" in head
            rest = await asyncio.wait_for(conn.reader.read(), 10)  # until the close
            assert len(rest) == 1000
        finally:
            await conn.close()
        await k.wait_line(
            r"crashy-00001-deployment-\w+: crashed: app exited with status 3", after=mark
        )
        # Nothing stays held at the activator (CC 1: a leaked slot would block the next one).
        await k.wait_status(
            lambda s: s["crashy"]["in_flight"] == 0 and s["crashy"]["queued"] == 0,
            "the crashed request released",
            timeout=5,
        )
        # The next request waits for the replacement pod and succeeds there.
        r = await c.get("/")
        assert r.status_code == 200
        assert r.json()["pid"] != first
        rs = await asyncio.gather(*(c.get("/") for _ in range(3)))
        assert [x.status_code for x in rs] == [200] * 3


# --------------------------------------------------------------------------- app hangs (QP)


@pytest.mark.qp_env(
    CONTAINER_CONCURRENCY="1", REVISION_TIMEOUT_SECONDS="1", OBSERVABILITY_CONFIG=PROM
)
async def test_hanging_app_is_504_and_the_queue_keeps_moving(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    """CC 1: a request that hangs holds the only slot until its timeout; the one queued behind
    it is served as soon as the hung one got its 504, well within its own timeout."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    hung = asyncio.create_task(client.get("/hang"))
    await app.state.wait_for(lambda s: s.in_flight == 1)
    behind = asyncio.create_task(client.get("/hello"))
    try:

        async def queued() -> bool:
            return await queue_depth(qp) == 2

        await eventually(queued, what="the second request queued behind the hung one")
        r = await asyncio.wait_for(hung, 5)
        took = loop.time() - t0
        assert (r.status_code, r.content) == (504, b"request timeout")
        assert 0.9 <= took < 2.0, took
        r2 = await asyncio.wait_for(behind, 5)
        assert (r2.status_code, r2.text) == (200, "hello")
    finally:
        await asyncio.gather(hung, behind, return_exceptions=True)
    # The hung upstream request was aborted, and the breaker is empty again.
    await app.state.wait_for(lambda s: s.disconnects == 1 and s.in_flight == 0)

    async def empty() -> bool:
        return await queue_depth(qp) == 0

    await eventually(empty, what="breaker back to zero")


# --------------------------------------------------------------------------- client disconnects


async def test_clients_leaving_release_every_slot(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Activator in front of a CC 1 pod: one client is being served, two wait at the activator.
    All three leave: the activator's queued/active counts and the queue-proxy's breaker return
    to zero, the app's request is aborted, and the next requests are served one at a time."""
    pod = await pods.start(CONTAINER_CONCURRENCY="1", OBSERVABILITY_CONFIG=PROM)
    assert pod.app is not None
    platform.revision(REV, cc=1, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    conns: list[RawConn] = []
    try:
        req = b"GET /gate HTTP/1.1\r\nHost: h\r\nKnative-Serving-Namespace: default\r\n"
        req += b"Knative-Serving-Revision: " + REV.encode() + b"\r\n\r\n"
        for _ in range(3):
            c = await RawConn.open(act.port)
            await c.send(req)
            conns.append(c)
            if len(conns) == 1:
                await pod.app.state.wait_for(lambda s: s.in_flight == 1)

        async def counts(want: tuple[float, float]) -> bool:
            return await activator_counts(act) == want

        await eventually(lambda: counts((2.0, 1.0)), what="1 served and 2 queued")
        assert await queue_depth(pod.qp) == 1
        # The waiting ones leave first (if the served one left first, a waiting request could
        # be granted the slot before its own client's close is read, and reach the app).
        for c in conns[1:]:
            await c.close()
        await eventually(lambda: counts((0.0, 1.0)), what="the queued places freed")
        await conns[0].close()
        conns.clear()
        await eventually(lambda: counts((0.0, 0.0)), what="activator counts back to zero")
        await pod.app.state.wait_for(lambda s: s.disconnects == 1 and s.in_flight == 0)

        async def qp_empty() -> bool:
            return await queue_depth(pod.qp) == 0

        await eventually(qp_empty, what="queue-proxy breaker back to zero")
    finally:
        for c in conns:
            await c.close()
    # Capacity is whole again: three more requests, served one at a time, all succeed.
    async with make_client(act.url()) as client:
        pod.app.state.gate.set()
        rs = await asyncio.gather(
            *(client.get("/gate", headers=rev_headers(REV)) for _ in range(3))
        )
    assert [r.status_code for r in rs] == [200] * 3
    assert pod.app.state.max_in_flight == 1
    assert pod.app.state.total == 4  # the abandoned waiting requests never reached the app


# --------------------------------------------------------------------------- SIGTERM under load


async def kubelet(
    platform: PlatformFile, pods: list[Pod], stop: asyncio.Event, interval: float = 0.02
) -> list[str]:
    """Probe each pod's queue-proxy like the kubelet and keep the revision's endpoints in step
    (ready while the probe answers 200, notReady after); returns the dests it moved."""
    moved: list[str] = []
    ready = [p.dest for p in pods]
    async with make_client("http://127.0.0.1", timeout=2.0) as c:
        while not stop.is_set():
            for p in pods:
                if p.dest not in ready:
                    continue
                try:
                    r = await c.get(f"http://{p.dest}/", headers=QP_PROBE)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if not ok:
                    ready.remove(p.dest)
                    moved.append(p.dest)
                    platform.endpoints(REV, ready=ready, not_ready=moved)
                    platform.write()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
    return moved


async def test_sigterm_to_a_queue_proxy_under_load_loses_nothing(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Two pods behind the activator, 4 clients sending back to back. SIGTERM one queue-proxy
    (1 s drain quiet period): its readiness fails at once, the "kubelet" moves it to notReady,
    the activator stops sending to it, in-flight requests finish, it exits 0 once quiet.
    Zero failed requests throughout; the survivor takes the load."""
    victim, survivor = await pods.start(), await pods.start()
    assert victim.app is not None and survivor.app is not None
    platform.revision(REV, cc=0, ready=[victim.dest, survivor.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    stop = asyncio.Event()
    prober = asyncio.create_task(kubelet(platform, [victim, survivor], stop))
    load = Load(lambda: act.url(), "/sleep?ms=20", rev_headers(REV))
    load.start(4)
    try:
        await victim.app.state.wait_for(lambda s: s.total >= 10)
        await survivor.app.state.wait_for(lambda s: s.total >= 10)
        victim.qp.signal(signal.SIGTERM)
        rc = await victim.qp.wait_exit(timeout=15)
        n = len(load.results)
        await load.until(n + 40, "requests after the victim exited")
    finally:
        await load.stop()
        stop.set()
        moved = await asyncio.wait_for(prober, 5)
    assert rc == 0
    assert moved == [victim.dest]
    assert load.failures() == [], load.failures()[:5]
    # No request was cut at the victim: everything it had started, it finished.
    assert victim.app.state.in_flight == 0 and victim.app.state.disconnects == 0
    assert survivor.app.state.disconnects == 0
    assert "Traceback" not in victim.qp.stderr()


async def test_sigterm_to_one_of_two_activators_under_load_loses_nothing(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Two activators in front of one pod, a load balancer that sends each request to one of
    the activators whose health check passes (polled every 20 ms, like endpoints following
    readiness). SIGTERM one activator (1 s quiet period): its health fails at once, the load
    balancer stops sending new requests to it, its in-flight requests finish, it exits 0."""
    pod = await pods.start()
    assert pod.app is not None
    platform.revision(REV, cc=0, ready=[pod.dest])
    platform.write()
    a1 = await start_activator(platform, stub.url, DRAIN_QUIET_PERIOD_SECONDS="1")
    a2 = await start_activator(platform, stub.url, POD_NAME="activator-test-1")
    healthy = [a1.url(), a2.url()]
    rr = itertools.count()
    load = Load(lambda: healthy[next(rr) % len(healthy)], "/sleep?ms=20", rev_headers(REV))
    stop = asyncio.Event()

    async def health_checks() -> None:
        async with make_client("http://127.0.0.1", timeout=2.0) as c:
            while not stop.is_set():
                for a in (a1, a2):
                    if a.url() not in healthy:
                        continue
                    try:
                        ok = (await c.get(a.url("/"), headers=KUBELET)).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if not ok:
                        healthy.remove(a.url())
                try:
                    await asyncio.wait_for(stop.wait(), 0.02)
                except TimeoutError:
                    pass

    checker = asyncio.create_task(health_checks())
    load.start(4)
    try:
        await load.until(40, "load through both activators")
        a1.signal(signal.SIGTERM)
        rc = await a1.wait_exit(timeout=15)
        n = len(load.results)
        await load.until(n + 40, "requests after the activator exited")
    finally:
        await load.stop()
        stop.set()
        await asyncio.wait_for(checker, 5)
    assert rc == 0
    assert healthy == [a2.url()]
    assert load.failures() == [], load.failures()[:5]
    by_act = {u: sum(1 for b, _ in load.results if b == u) for u in (a1.url(), a2.url())}
    assert by_act[a1.url()] >= 10 and by_act[a2.url()] >= 40, by_act
    assert "Traceback" not in a1.stderr()


# --------------------------------------------------------------------------- app refuses


async def test_app_refusing_connections_is_never_retried_in_a_loop(
    platform: PlatformFile, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    """Two pods (CC 1), one whose queue-proxy answers probes while its app port refuses
    connections. 20 concurrent requests: each is answered once and promptly, with the refusing
    pod's 502 (Knative does not retry) or the other pod's 200; the app saw exactly the 200s;
    nothing is left queued or active."""
    (closed,) = free_ports(1)
    refusing = await pods.start(app=False, user_port=closed)
    good = await pods.start()
    assert good.app is not None
    platform.revision(REV, cc=1, ready=[refusing.dest, good.dest])
    platform.write()
    act = await start_activator(platform, stub.url)
    loop = asyncio.get_running_loop()
    async with make_client(act.url()) as c:

        async def one() -> tuple[int, bytes, float]:
            t0 = loop.time()
            r = await c.get("/sleep?ms=20", headers=rev_headers(REV))
            return r.status_code, r.content, loop.time() - t0

        t0 = loop.time()
        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(20))), 20)
        total = loop.time() - t0
    refused = f"dial tcp 127.0.0.1:{closed}: connect: connection refused\n".encode()
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 502}, codes
    assert all(body == refused for code, body, _ in results if code == 502)
    assert codes.count(200) == good.app.state.total
    assert codes.count(502) >= 1, codes  # the refusing pod did get traffic
    assert total < 10, total  # 20 requests at CC 1 per pod: ~20 x 20 ms, not a retry loop
    assert await activator_counts(act) == (0.0, 0.0)

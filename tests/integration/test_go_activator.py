"""Knative's Go activator against tests.fakekube, routing to our queue-proxy.

This checks that the fake API server is enough for the real client-go informers (the benchmark
``python -m benchmarks proxy --go-activator PATH`` relies on it): the Go activator starts, finds
the revision and its pod through the API, probes the pod and proxies a request through our
queue-proxy to the app. It needs a Go activator binary you built: ``KND_GO_ACTIVATOR=PATH``;
without it the test is skipped. Root and iproute2 too (its ports are fixed: it runs in a network
namespace, see benchmarks/_go_activator.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from benchmarks import _go_activator as goa
from tests.apps import upstream
from tests.fakekube import FakeKube

from .helpers import QP_BIN, free_ports, knative_env
from .netns import NetNS, NetnsFactory

BINARY = os.environ.get(goa.ENV_VAR, "")
pytestmark = pytest.mark.skipif(
    not BINARY, reason=f"{goa.ENV_VAR} (a Knative activator binary you built) is not set"
)
REV = "hello-00001"
ROOT = str(Path(__file__).resolve().parents[2])


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.namespaces = NetnsFactory()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.hosts_dir: Path | None = None

    def start(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)
        if self.hosts_dir is not None:
            shutil.rmtree(self.hosts_dir, ignore_errors=True)
        self.namespaces.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


async def wait_tcp(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            assert proc.poll() is None, f"exited with {proc.returncode}"
            assert loop.time() < deadline, f"nothing listens on {host}:{port}"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("cc", [0, 10])
async def test_go_activator_routes_through_our_queue_proxy(cluster: Cluster, cc: int) -> None:
    """cc=0: an infinite breaker; cc=10: per-pod breakers, its share of the pods found through
    the public Endpoints listing it as the only activator."""
    ns: NetNS = cluster.namespaces.new()
    # The pod: the app and our queue-proxy on this side of the veth pair (the Go activator's
    # namespace reaches only ns.host_ip here).
    app = await upstream.start()
    qp_port, tls, admin, metrics, user_metrics = free_ports(5)
    env = knative_env(
        serving=qp_port,
        tls=tls,
        admin=admin,
        metrics=metrics,
        user_metrics=user_metrics,
        user_port=app.port,
    )
    env["SERVING_POD_IP"] = ns.host_ip
    qp = cluster.start([QP_BIN], env, "queue-proxy")
    # No token: the Go activator sent no kubeconfig token to this plain-HTTP server (401s).
    kube = await FakeKube(token=None).start(host=ns.host_ip)
    try:
        await wait_tcp(ns.host_ip, qp_port, qp, 10.0)
        for resource, obj in goa.config_maps() + goa.revision_objects(
            REV, cc, ns.host_ip, qp_port, ns.ip
        ):
            kube.create(resource, obj)
        cluster.hosts_dir = Path("/etc/netns") / ns.name
        cluster.hosts_dir.mkdir(parents=True, exist_ok=True)
        (cluster.hosts_dir / "hosts").write_text(goa.hosts_file(ns.ip))
        sink_argv = [sys.executable, "-m", "benchmarks.autoscaler_sink", "--host", ns.ip]
        sink_argv += ["--port", str(goa.AUTOSCALER_PORT)]
        sink = cluster.start(ns.command(sink_argv), dict(os.environ, PYTHONPATH=ROOT), "sink")
        await wait_tcp(ns.ip, goa.AUTOSCALER_PORT, sink, 10.0)
        kubeconfig = kube.write_kubeconfig(cluster.tmp / "kubeconfig")
        go = cluster.start(
            ns.command(goa.go_activator_argv(BINARY, kubeconfig)),
            goa.go_activator_env(ns.ip),
            "go-activator",
        )
        try:
            await wait_tcp(ns.ip, goa.HTTP_PORT, go, 20.0)
        except AssertionError as e:
            raise AssertionError(f"{e}: {cluster.log('go-activator')[-3000:]}") from None
        url = f"http://{ns.ip}:{goa.HTTP_PORT}"
        async with httpx.AsyncClient(timeout=5.0) as client:
            # The first request waits in its throttler until the pod's probe succeeded; retried
            # in case it came before the informers had synced.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20.0
            while True:
                r = await client.get(f"{url}/hello", headers={"Host": goa.host_header(REV)})
                if r.status_code == 200 or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert (r.status_code, r.text) == (200, "hello"), cluster.log("go-activator")[-3000:]
            # The routing headers select a revision as well as the Host does.
            r = await client.get(
                f"{url}/hello",
                headers={"Knative-Serving-Revision": REV, "Knative-Serving-Namespace": "default"},
            )
            assert (r.status_code, r.text) == (200, "hello")
            # A revision the API does not list: the Go activator's own 404.
            r = await client.get(f"{url}/hello", headers={"Host": goa.host_header("nope-00001")})
            assert r.status_code == 404 and "Error getting active endpoint" in r.text
            # Its health (kubelet probes) follows its stats websocket to the autoscaler, which
            # it found by the cluster DNS name the namespace's hosts file resolves.
            while True:
                r = await client.get(url, headers={"User-Agent": "kube-probe/1.34"})
                if r.status_code == 200 or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, cluster.log("go-activator")[-3000:]
        if cc:
            assert "This activator index is 0/1" in cluster.log("go-activator")
        # It used the API as a Knative cluster's activator does.
        watched = {q.resource for q in kube.requests if q.verb == "watch"}
        assert {"revisions", "endpoints", "services", "configmaps"} <= watched
        got = {(q.resource, q.name) for q in kube.requests if q.verb == "get"}
        assert ("configmaps", "config-network") in got
    finally:
        await kube.close()
        await app.close()

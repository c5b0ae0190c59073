"""Running Knative's Go activator beside ours: the cluster it expects, on this machine.

The Go activator is a Kubernetes client (client-go): at start it checks the API server's
version, reads ``config-network`` and watches revisions, the revisions' private services and
their Endpoints, ConfigMaps and Secrets of ``SYSTEM_NAMESPACE``; it routes a request by its
``Host`` (``<revision>.<namespace>.svc.cluster.local``) or the ``Knative-Serving-Revision`` /
``-Namespace`` headers, probes each pod address of the revision's Endpoints (port named
``http``) before it sends traffic there, and streams stats to the autoscaler at
``ws://autoscaler.<SYSTEM_NAMESPACE>.svc.cluster.local:8080``. Here the API server is
``tests.fakekube`` (real HTTP, the JSON and watch protocol), the autoscaler the benchmark's
stand-in sink.

Its ports are fixed (8012 HTTP/1, 8013 h2c, 8008 profiling), so it runs in a network namespace
of its own, joined to this one by a veth pair: the fake API server listens on this side's
address, its pods (our queue-proxy) too, and the autoscaler name resolves through the
namespace's ``/etc/netns/<name>/hosts`` (``ip netns exec`` mounts it over ``/etc/hosts``).
Making the namespace needs root and iproute2.

Nothing of Knative's is in this repository: pass the path of a Knative activator binary you
built (``--go-activator PATH``; the integration test reads ``KND_GO_ACTIVATOR``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._procs import BenchError, ProcessSet, StartError, log_tail

if TYPE_CHECKING:
    import subprocess

    from tests.fakekube import FakeKube
    from tests.integration.netns import NetNS

ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "KND_GO_ACTIVATOR"  # tests/integration/test_go_activator.py
SYSTEM_NAMESPACE = "knative-serving"
NAMESPACE = "default"
HTTP_PORT = 8012  # Knative's networking.BackendHTTPPort: where the Go activator serves HTTP/1
AUTOSCALER_HOST = f"autoscaler.{SYSTEM_NAMESPACE}.svc.cluster.local"
AUTOSCALER_PORT = 8080
METRICS_PORT = 9090  # ours in a namespace: its /metrics port there
CONFIG_MAPS = ("config-network", "config-logging", "config-observability")

Obj = dict[str, Any]


def go_activator_path(option: str | None) -> str | None:
    """``--go-activator``: an executable file (resolved), or None when not given (skipped)."""
    if not option:
        return None
    path = Path(option).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BenchError(f"--go-activator {option}: not an executable file")
    return str(path.resolve())


def go_activator_argv(binary: str, kubeconfig: Path) -> list[str]:
    return [binary, "--kubeconfig", str(kubeconfig)]


def go_activator_env(pod_ip: str, pod_name: str = "go-activator") -> dict[str, str]:
    """The environment its envconfig requires (POD_NAME, POD_IP) and ``system.Namespace()``
    reads; nothing of ours leaks in (no PYTHONPATH, no MALLOC_* tuning)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "POD_NAME": pod_name,
        "POD_IP": pod_ip,
        "SYSTEM_NAMESPACE": SYSTEM_NAMESPACE,
    }


def host_header(revision: str, namespace: str = NAMESPACE) -> str:
    """The Host by which the Go activator finds a revision (no routing headers needed)."""
    return f"{revision}.{namespace}.svc.cluster.local"


def hosts_file(autoscaler_ip: str) -> str:
    return f"127.0.0.1 localhost\n{autoscaler_ip} {AUTOSCALER_HOST}\n"


def config_maps() -> list[tuple[str, Obj]]:
    """The ConfigMaps it reads at start (empty: Knative's defaults)."""
    return [
        ("configmaps", {"metadata": {"name": name, "namespace": SYSTEM_NAMESPACE}, "data": {}})
        for name in CONFIG_MAPS
    ]


def revision_objects(
    name: str, cc: int, pod_ip: str, pod_port: int, activator_ip: str, namespace: str = NAMESPACE
) -> list[tuple[str, Obj]]:
    """A Revision, its private Service with Endpoints listing one ready pod at
    ``pod_ip:pod_port``, and its public Endpoints listing the activator (``activator_ip``), as
    Knative's reconcilers write them with the activator in the path: the private Endpoints are
    what the activator probes and sends to (port named ``http``, labels ``revisionUID`` and
    ``serviceType: Private``, which its informer filters on), the public ones tell it that it is
    1 of 1 activators (with containerConcurrency > 0 it serves only its share of the pods)."""
    service = name.rsplit("-", 1)[0]
    labels = {
        "serving.knative.dev/service": service,
        "serving.knative.dev/configuration": service,
        "serving.knative.dev/revision": name,
    }

    def svc_labels(kind: str) -> dict[str, str]:
        return {
            **labels,
            "serving.knative.dev/revisionUID": f"uid-{name}",
            "networking.internal.knative.dev/serviceType": kind,
        }

    def endpoints(svc: str, kind: str, ip: str, port: int) -> Obj:
        return {
            "metadata": {"name": svc, "namespace": namespace, "labels": svc_labels(kind)},
            "subsets": [
                {
                    "addresses": [{"ip": ip}],
                    "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                }
            ],
        }

    private = f"{name}-private"
    ports = [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8012},
        {"name": "http-queueadm", "port": 8022, "protocol": "TCP", "targetPort": 8022},
    ]
    return [
        (
            "revisions",
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {
                    "containerConcurrency": cc,
                    "timeoutSeconds": 300,
                    "containers": [{"image": "bench", "ports": [{"containerPort": 8080}]}],
                },
            },
        ),
        (
            "services",
            {
                "metadata": {
                    "name": private,
                    "namespace": namespace,
                    "labels": svc_labels("Private"),
                },
                # An address nothing answers on: the activator must use the pod address (it
                # falls back to the ClusterIP only when no pod can be probed).
                "spec": {"clusterIP": "198.19.255.254", "ports": ports},
            },
        ),
        ("endpoints", endpoints(private, "Private", pod_ip, pod_port)),
        ("endpoints", endpoints(name, "Public", activator_ip, HTTP_PORT)),
    ]


def wait_tcp(
    host: str,
    port: int,
    proc: subprocess.Popen[bytes] | None,
    timeout: float,
    log_path: Path | None = None,
) -> None:
    """Until ``host:port`` accepts a connection; StartError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise StartError(f"exited with status {proc.returncode}{log_tail(log_path)}")
        if time.monotonic() >= deadline:
            raise StartError(f"nothing listens on {host}:{port}{log_tail(log_path)}")
        time.sleep(0.02)


class _KubeThread:
    """A FakeKube served by an event loop on a thread of this (synchronous) process."""

    def __init__(self, host: str, objects: Sequence[tuple[str, Obj]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.kube: FakeKube | None = None
        asyncio.run_coroutine_threadsafe(self._start(host, objects), self.loop).result(10)

    async def _start(self, host: str, objects: Sequence[tuple[str, Obj]]) -> None:
        from tests.fakekube import FakeKube

        kube = FakeKube(
            token=None
        )  # the Go activator sent no kubeconfig token to this plain-HTTP server (401s)
        await kube.start(host=host)
        for resource, obj in objects:
            kube.create(resource, obj)
        self.kube = kube

    def close(self) -> None:
        if self.kube is not None:
            asyncio.run_coroutine_threadsafe(self.kube.close(), self.loop).result(10)
            self.kube = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ActivatorNamespace:
    """A network namespace for an activator in the benchmark: a stand-in autoscaler inside it
    (on port 8080, also under the autoscaler's cluster DNS name), the activator's pod (a
    queue-proxy the caller runs in this namespace) reached at ``host_ip``. The Go activator
    (:meth:`start_go`) finds its revision through a fake API server on ``host_ip``; ours
    (:meth:`start`) runs the same way with its platform file, so both cross the same veth pair.
    """

    def __init__(self, procs: ProcessSet, tmp: Path) -> None:
        self.procs, self.tmp = procs, tmp
        self.ns: NetNS | None = None
        self.kube: _KubeThread | None = None
        self.hosts_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.sink: subprocess.Popen[bytes] | None = None

    @property
    def ip(self) -> str:
        """The activator's address (wrk sends load there)."""
        assert self.ns is not None
        return self.ns.ip

    @property
    def host_ip(self) -> str:
        """This side's address on the veth pair: where its pods must listen."""
        assert self.ns is not None
        return self.ns.host_ip

    def create(self) -> None:
        """The namespace, its hosts file and the stand-in autoscaler."""
        from tests.integration.netns import NetNS, NetnsUnavailable

        try:
            self.ns = ns = NetNS.create()
        except NetnsUnavailable as exc:
            raise StartError(f"cannot make a network namespace: {exc}") from exc
        self.hosts_dir = Path("/etc/netns") / ns.name
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        (self.hosts_dir / "hosts").write_text(hosts_file("127.0.0.1"))
        sink_log = self.tmp / f"{ns.name}-autoscaler.log"
        sink_argv = [sys.executable, "-m", "benchmarks.autoscaler_sink", "--host", "0.0.0.0"]
        sink_argv += ["--port", str(AUTOSCALER_PORT)]
        self.sink = self.procs.start(
            ns.command(sink_argv),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            log_path=sink_log,
            cwd=ROOT,
        )
        wait_tcp(ns.ip, AUTOSCALER_PORT, self.sink, 10.0, sink_log)

    def start(
        self,
        prefix: Sequence[str],
        argv: Sequence[str],
        env: dict[str, str],
        port: int,
        log_path: Path,
    ) -> subprocess.Popen[bytes]:
        """Run ``argv`` in the namespace behind ``prefix`` (e.g. a taskset command); return its
        process once it listens on ``ip:port``."""
        assert self.ns is not None
        cmd = [*prefix, *self.ns.command(argv)]
        self.proc = self.procs.start(cmd, env=env, log_path=log_path)
        wait_tcp(self.ns.ip, port, self.proc, 20.0, log_path)
        return self.proc

    def start_go(
        self,
        binary: str,
        revision: str,
        cc: int,
        pod_port: int,
        prefix: Sequence[str],
        log_path: Path,
    ) -> subprocess.Popen[bytes]:
        """Knative's Go activator, ``prefix`` (e.g. taskset) first, with a fake API server
        listing ``revision`` and its pod ``host_ip:pod_port``."""
        ns = self.ns
        assert ns is not None
        objects = config_maps() + revision_objects(revision, cc, ns.host_ip, pod_port, ns.ip)
        self.kube = _KubeThread(ns.host_ip, objects)
        assert self.kube.kube is not None
        kubeconfig = self.kube.kube.write_kubeconfig(self.tmp / f"{ns.name}.kubeconfig")
        argv = go_activator_argv(binary, kubeconfig)
        return self.start(prefix, argv, go_activator_env(ns.ip), HTTP_PORT, log_path)

    def close(self) -> None:
        """Stop the processes started here and the API server; remove the namespace."""
        for proc in (self.proc, self.sink):
            if proc is not None:
                self.procs.stop(proc, graceful=False)
        self.proc = self.sink = None
        if self.kube is not None:
            self.kube.close()
            self.kube = None
        if self.hosts_dir is not None:
            shutil.rmtree(self.hosts_dir, ignore_errors=True)
            self.hosts_dir = None
        if self.ns is not None:
            self.ns.close()
            self.ns = None

"""Sans-I/O parts of the Kubernetes platform: object parsing, error messages, the activator's
platform selection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from activator.env import parse_env
from dataplane.envconfig import ConfigError
from platforms.kubernetes.api import (
    ENDPOINT_SLICES,
    REVISIONS,
    KubeAPIError,
    KubeForbidden,
    KubeGone,
    status_error,
)
from platforms.kubernetes.knative import endpoint_addresses, revision_from_object

BASE = {"POD_NAME": "activator-0", "POD_IP": "10.0.0.5"}


def test_revision_defaults_and_fields() -> None:
    rev = revision_from_object({"metadata": {"name": "r-1", "namespace": "ns"}, "spec": {}})
    assert (rev.namespace, rev.name, rev.container_concurrency) == ("ns", "r-1", 0)
    assert (rev.timeout_seconds, rev.response_start_timeout_seconds) == (300.0, 0.0)
    assert rev.protocol == "http1" and rev.hosts == () and rev.annotations == {}
    rev = revision_from_object(
        {
            "metadata": {"name": "r-2", "namespace": "ns", "annotations": {"a": "b"}},
            "spec": {
                "containerConcurrency": 4,
                "timeoutSeconds": 30,
                "idleTimeoutSeconds": 5,
                "containers": [
                    {"name": "sidecar"},
                    {"name": "user", "ports": [{"name": "h2c", "containerPort": 9000}]},
                ],
            },
        }
    )
    assert (rev.container_concurrency, rev.timeout_seconds, rev.idle_timeout_seconds) == (
        4,
        30.0,
        5.0,
    )
    assert rev.protocol == "h2c" and rev.annotations == {"a": "b"}
    # nonsense values fall back to the defaults instead of breaking the informer
    rev = revision_from_object(
        {"metadata": {"name": "r"}, "spec": {"containerConcurrency": -1, "timeoutSeconds": "x"}}
    )
    assert (rev.container_concurrency, rev.timeout_seconds) == (0, 300.0)


def test_endpoint_slice_addresses() -> None:
    s = {
        "ports": [{"name": "http", "port": 8012}, {"name": "http2", "port": 8013}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"]},  # no conditions: ready
            {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.4"], "conditions": {"ready": False, "terminating": True}},
            {"addresses": ["fd00::1"], "conditions": {"ready": True}},
        ],
    }
    assert endpoint_addresses(s, "http", slice_=True) == (
        ["10.0.0.1:8012", "10.0.0.2:8012", "[fd00::1]:8012"],
        ["10.0.0.3:8012"],
    )
    assert endpoint_addresses(s, "http2", slice_=True)[0][0] == "10.0.0.1:8013"
    assert endpoint_addresses(s, "grpc", slice_=True) == ([], [])
    # a single unnamed port is used as is
    s["ports"] = [{"port": 80}]
    assert endpoint_addresses(s, "http", slice_=True)[0][0] == "10.0.0.1:80"


def test_endpoints_addresses() -> None:
    e = {
        "subsets": [
            {
                "ports": [{"name": "http", "port": 8012}],
                "addresses": [{"ip": "10.0.0.1"}],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
            },
            {"ports": [{"name": "other", "port": 1}], "addresses": [{"ip": "10.0.0.9"}]},
        ]
    }
    assert endpoint_addresses(e, "http", slice_=False) == (["10.0.0.1:8012"], ["10.0.0.2:8012"])


def test_status_errors_name_the_verb_resource_and_namespace() -> None:
    body = {
        "kind": "Status",
        "code": 403,
        "reason": "Forbidden",
        "message": 'endpointslices.discovery.k8s.io is forbidden: User "x" cannot watch',
    }
    e = status_error(body, verb="watch", resource=ENDPOINT_SLICES.display, namespace="x")
    assert isinstance(e, KubeForbidden) and e.status == 403
    assert str(e).startswith(
        "forbidden: cannot watch endpointslices.discovery.k8s.io in namespace x"
    )
    assert 'User "x" cannot watch' in str(e)
    gone = status_error(
        {"code": 410, "reason": "Expired", "message": "too old"},
        verb="watch",
        resource=REVISIONS.display,
        namespace=None,
    )
    assert isinstance(gone, KubeGone)
    assert (
        str(gone) == "watch revisions.serving.knative.dev in all namespaces: 410 Expired: too old"
    )
    other = status_error(
        "<html>bad gateway</html>", verb="list", resource="pods", namespace=None, http_status=502
    )
    assert type(other) is KubeAPIError and other.status == 502
    assert "list pods in all namespaces: 502" in str(other)


def test_resource_paths() -> None:
    assert REVISIONS.path("ns", "r") == "/apis/serving.knative.dev/v1/namespaces/ns/revisions/r"
    assert ENDPOINT_SLICES.path() == "/apis/discovery.k8s.io/v1/endpointslices"


def test_activator_platform_selection() -> None:
    assert parse_env(BASE).platform == "knative"
    e = parse_env({**BASE, "ACTIVATOR_PLATFORM_FILE": "/p.json"})
    assert (e.platform, e.platform_file) == ("static", "/p.json")
    e = parse_env(
        {
            **BASE,
            "KND_PLATFORM": "Knative",
            "KUBECONFIG": "/kc",
            "KND_WATCH_NAMESPACE": "apps",
            "KND_KUBE_API_WAIT_SECONDS": "5",
            "SYSTEM_NAMESPACE": "kn",
            "CLUSTER_DOMAIN": "example.org",
        }
    )
    assert (e.platform, e.kubeconfig, e.watch_namespace, e.api_wait) == (
        "knative",
        "/kc",
        "apps",
        5,
    )
    assert e.autoscaler_url == "ws://autoscaler.kn.svc.example.org:8080"
    with pytest.raises(
        ConfigError, match="ACTIVATOR_PLATFORM_FILE: required with KND_PLATFORM=static"
    ):
        parse_env({**BASE, "KND_PLATFORM": "static"})
    with pytest.raises(ConfigError, match="KND_PLATFORM: 'nomad' is not"):
        parse_env({**BASE, "KND_PLATFORM": "nomad"})


def test_kubernetes_client_is_imported_only_by_the_kubernetes_platform() -> None:
    """The sidecar never loads kubernetes-asyncio; the activator only in Knative mode."""
    code = (
        "import sys, queueproxy.main, activator.main, platforms.static\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('kubernetes_asyncio', "
        "'platforms.kubernetes')))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_revision_failure_from_the_ready_condition() -> None:
    from platforms.kubernetes.knative import revision_failure

    def rev(*conditions: dict[str, str]) -> dict[str, object]:
        return {
            "metadata": {"name": "r-00001", "namespace": "ns"},
            "status": {"conditions": list(conditions)},
        }

    assert revision_failure(rev()) == ""
    assert revision_failure({"metadata": {}}) == ""
    assert revision_failure(rev({"type": "Ready", "status": "Unknown"})) == ""
    assert revision_failure(rev({"type": "Ready", "status": "True"})) == ""
    bad = {"type": "Ready", "status": "False", "reason": "ProgressDeadlineExceeded"}
    assert (
        revision_failure(rev(bad)) == "revision ns/r-00001 cannot start: ProgressDeadlineExceeded"
    )
    bad["message"] = "Initial scale was never achieved"
    assert revision_failure(rev({"type": "Active", "status": "False"}, bad)).endswith(
        ": ProgressDeadlineExceeded: Initial scale was never achieved"
    )
    assert revision_failure(rev({"type": "Ready", "status": "False"})) == (
        "revision ns/r-00001 cannot start"
    )


def test_deployment_failure_from_its_conditions() -> None:
    from platforms.kubernetes.standalone import deployment_failure

    def dep(*conditions: dict[str, str]) -> dict[str, object]:
        return {
            "metadata": {"name": "hello", "namespace": "default"},
            "status": {"conditions": list(conditions)},
        }

    progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    assert deployment_failure(dep(progressing)) == ""
    assert deployment_failure(dep({"type": "Available", "status": "False"})) == ""
    stuck = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "hello-5d9" has timed out progressing.',
    }
    assert deployment_failure(dep(stuck)) == (
        "deployment default/hello cannot start: ProgressDeadlineExceeded: "
        'ReplicaSet "hello-5d9" has timed out progressing.'
    )
    quota = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}
    assert deployment_failure(dep(progressing, quota)) == (
        "deployment default/hello cannot start: FailedCreate"
    )

"""deploy/: every manifest parses and names itself; what our containers are told matches the
code: commands are console scripts, env variables are ones the code reads (and their values
parse), ports line up with the env and the Services, probes hit declared ports, security
contexts are hardened, annotations are the ones standalone mode reads, RBAC covers the calls."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE = "ghcr.io/knative-dataplane/knd"
Obj = dict[str, Any]


def documents() -> list[tuple[Path, Obj]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


DOCS = documents()


def ours(doc: Obj) -> Iterator[Obj]:
    """Containers of a workload that run our image."""
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for c in spec.get("containers", []) or []:
        if str(c.get("image", "")).startswith(IMAGE):
            yield c


def workloads() -> list[tuple[Path, Obj]]:
    return [(p, d) for p, d in DOCS if d.get("kind") == "Deployment"]


def code_env_names() -> set[str]:
    """Every string literal that looks like an environment variable in the packages."""
    names: set[str] = set()
    for pkg in ("dataplane", "queueproxy", "activator", "autoscaler", "platforms"):
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", node.value)
                ):
                    names.add(node.value)
    return names


def scripts() -> dict[str, str]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def env_values(c: Obj) -> dict[str, str]:
    """The container's env with downward-API values filled in as a pod would see them."""
    fake = {
        "metadata.name": "pod-abc",
        "metadata.namespace": "knd-system",
        "status.podIP": "10.0.0.7",
    }
    out = {}
    for e in c.get("env", []) or []:
        if "value" in e:
            out[e["name"]] = str(e["value"])
        else:
            out[e["name"]] = fake[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def test_there_are_manifests() -> None:
    files = {p.relative_to(DEPLOY).as_posix() for p, _ in DOCS}
    for f in (
        "standalone/rbac.yaml",
        "standalone/activator.yaml",
        "standalone/autoscaler.yaml",
        "standalone/example-app.yaml",
        "standalone/httproute.yaml",
        "knative/activator-patch.yaml",
        "knative/config-deployment-patch.yaml",
        "knative/rbac.yaml",
    ):
        assert f in files


@pytest.mark.parametrize(("path", "doc"), DOCS, ids=lambda x: getattr(x, "name", ""))
def test_every_document_names_itself(path: Path, doc: Obj) -> None:
    assert isinstance(doc, dict), path
    assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path
    assert isinstance(doc.get("kind"), str) and doc["kind"], path
    name = (doc.get("metadata") or {}).get("name")
    assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), path


def test_kustomizations_list_existing_files() -> None:
    for path, doc in DOCS:
        if doc["kind"] != "Kustomization":
            continue
        for r in doc.get("resources", []):
            assert r.startswith("https://") or (path.parent / r).is_file(), (path, r)
        for p in doc.get("patches", []):
            assert (path.parent / p["path"]).is_file(), (path, p)


def test_commands_are_console_scripts() -> None:
    known = scripts()
    found = 0
    for path, doc in workloads():
        for c in ours(doc):
            found += 1
            cmd = c.get("command")
            if cmd is None:  # the image's entry point: the queue-proxy
                assert c["name"] == "queue-proxy", (path, c["name"])
                continue
            assert Path(cmd[0]).name in known, (path, cmd)
            assert cmd[0].startswith("/opt/knd/bin/"), (path, cmd)  # where the Dockerfile puts it
    assert found >= 4


def test_env_names_are_read_by_the_code() -> None:
    known = code_env_names()
    from autoscaler.config import AutoscalerConfig
    from autoscaler.standalone import CONFIG_PREFIX

    config_keys = {f.replace("_", "-") for f in AutoscalerConfig.__dataclass_fields__}
    for path, doc in workloads():
        for c in ours(doc):
            for name in env_values(c):
                if name.startswith(CONFIG_PREFIX):
                    key = name[len(CONFIG_PREFIX) :].lower().replace("_", "-")
                    assert key in config_keys, (path, name)
                else:
                    assert name in known, f"{path.name}: {c['name']}: {name} is read by no code"


def _container(path: str, kind_name: str, container: str) -> Obj:
    for p, d in workloads():
        if p.relative_to(DEPLOY).as_posix() == path and d["metadata"]["name"] == kind_name:
            for c in d["spec"]["template"]["spec"]["containers"]:
                if c["name"] == container:
                    return c
    raise AssertionError(f"{path}: no container {container} in {kind_name}")


def test_env_values_parse_as_the_components_read_them(tmp_path: Path) -> None:
    from activator.env import parse_env as activator_env
    from autoscaler.standalone import parse_env as autoscaler_env
    from queueproxy.env import parse_env as qp_env

    qp = qp_env(env_values(_container("standalone/example-app.yaml", "hello", "queue-proxy")))
    assert (qp.serving_port, qp.admin_port, qp.metrics_port) == (8012, 8022, 9090)
    assert qp.container_concurrency == 10
    act = activator_env(
        env_values(_container("standalone/activator.yaml", "knd-activator", "activator"))
    )
    assert act.platform == "standalone"
    # subsetting: the activators are the endpoints of this Service, on its "http" port
    [svc] = [
        d
        for _, d in DOCS
        if d["kind"] == "Service" and d["metadata"]["name"] == act.activator_service
    ]
    assert svc["metadata"]["namespace"] == act.system_namespace
    assert "http" in {p["name"] for p in svc["spec"]["ports"]}
    assert act.autoscaler_url == "ws://knd-autoscaler.knd-system.svc.cluster.local:8080"
    kn = activator_env(
        env_values(_container("knative/activator-patch.yaml", "activator", "activator"))
    )
    assert kn.platform == "knative" and kn.h2c_port == 8013
    # the autoscaler with its ConfigMap mounted as files
    c = _container("standalone/autoscaler.yaml", "knd-autoscaler", "autoscaler")
    env = env_values(c)
    [cm] = [
        d
        for _, d in DOCS
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "knd-config-autoscaler"
    ]
    for k, v in cm["data"].items():
        (tmp_path / k).write_text(v)
    env["KND_CONFIG_DIR"] = str(tmp_path)
    a = autoscaler_env(env)
    assert (a.stat_port, a.metrics_port, a.lease_namespace) == (8080, 9090, "knd-system")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[env_values(c)["KND_CONFIG_DIR"]] == "config"


PORT_VARS = (
    "ACTIVATOR_PORT",
    "ACTIVATOR_METRICS_PORT",
    "ACTIVATOR_H2C_PORT",
    "KND_STAT_PORT",
    "KND_METRICS_PORT",
    "QUEUE_SERVING_PORT",
    "QUEUE_METRICS_PORT",
)


def test_ports_probes_and_services_line_up() -> None:
    for path, doc in workloads():
        if doc["metadata"]["namespace"] == "knative-serving":
            continue  # a patch: Knative's Deployment declares 8012, 8013 and 9090 itself
        pod = doc["spec"]["template"]["spec"]
        declared = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        named = {
            p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])
        }
        for c in ours(doc):
            env = env_values(c)
            for var in PORT_VARS:
                if var in env and var != "ACTIVATOR_H2C_PORT":
                    assert int(env[var]) in declared, (path, var)
        for c in pod["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                get = (c.get(probe) or {}).get("httpGet")
                if get:
                    port = get["port"]
                    assert (named.get(port) if isinstance(port, str) else port) in declared
            pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("httpGet")
            if pre:  # the queue-proxy's admin port
                assert pre == {"path": "/wait-for-drain", "port": 8022}
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        for p, svc in DOCS:
            if svc["kind"] != "Service" or p != path or svc["spec"].get("type") == "ExternalName":
                continue
            sel = svc["spec"].get("selector") or {}
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                for port in svc["spec"]["ports"]:
                    t = port.get("targetPort", port["port"])
                    assert (named.get(t) if isinstance(t, str) else t) in declared, (p, port)


def test_hardened_security_contexts() -> None:
    for path, doc in workloads():
        if doc["metadata"]["namespace"] == "knative-serving":
            continue  # a patch: Knative's pod spec keeps its own settings beside ours
        pod = doc["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, path
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", path
        assert int(psc.get("runAsUser", 0)) != 0, path
    for path, doc in workloads():
        for c in doc["spec"]["template"]["spec"]["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, (path, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (path, c["name"])
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], (path, c["name"])


def test_example_annotations_are_the_ones_standalone_mode_reads() -> None:
    from platforms.kubernetes import standalone

    known = {v for k, v in vars(standalone).items() if k.startswith("ANNOTATION_")}
    [hello] = [d for p, d in workloads() if d["metadata"]["name"] == "hello"]
    ann = hello["metadata"]["annotations"]
    assert ann["knd.dev/enabled"] == "true"
    for k in ann:
        assert k in known or k.startswith("autoscaling.knative.dev/"), k
    app = standalone.app_from_deployment(hello)
    assert app is not None and app.service == "hello-pods"
    # the Service named by knd.dev/service selects the pods on the queue-proxy port
    [svc] = [d for _, d in DOCS if d["kind"] == "Service" and d["metadata"]["name"] == app.service]
    [port] = [p for p in svc["spec"]["ports"] if p["name"] == app.port_name]
    assert port["targetPort"] == 8012
    from autoscaler.config import AutoscalerConfig, resolve_scaling

    resolve_scaling(AutoscalerConfig(), app.revision.container_concurrency, ann)


def _rules(name: str) -> list[Obj]:
    return [
        r
        for _, d in DOCS
        if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] == name
        for r in d["rules"]
    ]


def _allows(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


def test_rbac_covers_what_the_code_calls() -> None:
    auto = _rules("knd-autoscaler") + _rules("knd-autoscaler-leader-election")
    for group, resource, verbs in (
        ("apps", "deployments", ("list", "watch")),
        ("apps", "deployments/scale", ("patch",)),
        ("discovery.k8s.io", "endpointslices", ("list", "watch")),
        ("coordination.k8s.io", "leases", ("get", "create", "update")),
    ):
        for v in verbs:
            assert _allows(auto, group, resource, v), (resource, v)
    assert not _allows(auto, "apps", "deployments", "patch")  # only the scale subresource
    act = _rules("knd-activator")
    for group, resource in (("apps", "deployments"), ("discovery.k8s.io", "endpointslices")):
        assert _allows(act, group, resource, "watch")
    assert not any(v in r["verbs"] for r in act for v in ("create", "update", "patch", "delete"))
    kn = _rules("knd-activator-knative")
    for group, resource in (
        ("serving.knative.dev", "revisions"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "endpoints"),
    ):
        assert _allows(kn, group, resource, "list") and _allows(kn, group, resource, "watch")
    # the service accounts the workloads use exist and are bound
    sas = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for _, d in DOCS
        if d["kind"] == "ServiceAccount"
    }
    for _, doc in workloads():
        sa = doc["spec"]["template"]["spec"].get("serviceAccountName")
        if sa:
            assert (doc["metadata"]["namespace"], sa) in sas


def test_knative_patch_swaps_in_our_images() -> None:
    [cm] = [
        d
        for _, d in DOCS
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "config-deployment"
    ]
    assert cm["metadata"]["namespace"] == "knative-serving"
    assert cm["data"]["queue-sidecar-image"].startswith(IMAGE + ":")
    c = _container("knative/activator-patch.yaml", "activator", "activator")
    assert c["image"].startswith(IMAGE + ":") and c["command"] == ["/opt/knd/bin/activator"]


def _autoscaled() -> list[tuple[Path, Obj]]:
    """Deployments whose replicas something else owns: an HPA's target, or an annotated
    Deployment that knd-autoscaler scales."""
    targets = {
        (d["metadata"].get("namespace"), d["spec"]["scaleTargetRef"]["name"])
        for _, d in DOCS
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    out = []
    for p, d in workloads():
        md = d["metadata"]
        ann = md.get("annotations") or {}
        if (md.get("namespace"), md["name"]) in targets or ann.get("knd.dev/enabled") == "true":
            out.append((p, d))
    return out


def test_autoscaled_workloads_leave_replicas_out() -> None:
    """A replicas value in the manifest is put back by every `kubectl apply` (resetting the
    autoscaler's choice) and conflicts with `kubectl apply --server-side`: Knative and KEDA
    document leaving it out."""
    found = _autoscaled()
    assert {d["metadata"]["name"] for _, d in found} >= {"knd-activator", "hello"}
    for path, doc in found:
        assert "replicas" not in doc["spec"], (path.name, doc["metadata"]["name"])


def _field_refs(o: Any) -> Iterator[Obj]:
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "fieldRef":
                yield v
            else:
                yield from _field_refs(v)
    elif isinstance(o, list):
        for v in o:
            yield from _field_refs(v)


def test_field_refs_name_their_api_version() -> None:
    """The API server fills in fieldRef.apiVersion, and fieldRef is atomic: without it in the
    manifest, a server-side apply after a client-side one conflicts on every fieldRef."""
    refs = [(p, r) for p, d in DOCS for r in _field_refs(d)]
    assert len(refs) >= 8
    for path, ref in refs:
        assert ref.get("apiVersion") == "v1", (path.name, ref)


def test_httproute_sends_a_host_to_the_activator() -> None:
    """deploy/standalone/httproute.yaml: a Gateway API v1 HTTPRoute whose hosts are routes of
    the example Deployment and whose backend is the knd-activator Service's HTTP port, in the
    route's own namespace (no ReferenceGrant needed)."""
    from platforms.kubernetes.standalone import app_from_deployment

    [(path, route)] = [(p, d) for p, d in DOCS if d["kind"] == "HTTPRoute"]
    assert path.relative_to(DEPLOY).as_posix() == "standalone/httproute.yaml"
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    ns = route["metadata"]["namespace"]
    spec = route["spec"]
    assert spec["parentRefs"] and all(r.get("name") for r in spec["parentRefs"])
    [hello] = [d for _, d in workloads() if d["metadata"]["name"] == "hello"]
    app = app_from_deployment(hello)
    assert app is not None
    for host in spec["hostnames"]:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", host), host  # no port, no scheme
        assert host in app.revision.hosts, host
    [rule] = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    [backend] = rule["backendRefs"]
    assert backend.get("kind", "Service") == "Service" and backend.get("group", "") == ""
    assert backend.get("namespace", ns) == ns
    [svc] = [
        d
        for _, d in DOCS
        if d["kind"] == "Service"
        and d["metadata"]["name"] == backend["name"]
        and d["metadata"]["namespace"] == ns
    ]
    [port] = [p for p in svc["spec"]["ports"] if p["port"] == backend["port"]]
    assert port["name"] == "http"
    # ... which is the activator's HTTP port
    act = _container("standalone/activator.yaml", "knd-activator", "activator")
    assert port["targetPort"] == int(env_values(act)["ACTIVATOR_PORT"])


def test_one_image_name_everywhere() -> None:
    """Every container of ours, the queue-sidecar-image and the kustomizations' `images:` name
    the same image and tag; docs/kubernetes.md and the Dockerfile say how to build and push that
    name."""
    refs = {c["image"] for _, d in workloads() for c in ours(d)}
    refs |= {
        d["data"]["queue-sidecar-image"]
        for _, d in DOCS
        if d["kind"] == "ConfigMap" and "queue-sidecar-image" in d.get("data", {})
    }
    assert len(refs) == 1, refs
    [ref] = refs
    name, _, tag = ref.rpartition(":")
    assert name == IMAGE and tag
    kustomized = [d for _, d in DOCS if d["kind"] == "Kustomization"]
    assert len(kustomized) == 2
    for k in kustomized:
        assert k["images"] == [{"name": IMAGE, "newTag": tag}]
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    assert f"docker build -t {ref} ." in doc and f"docker push {ref}" in doc
    assert "kustomize edit set image" in doc
    assert f"-t {ref} ." in (ROOT / "Dockerfile").read_text()

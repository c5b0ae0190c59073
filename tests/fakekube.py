"""A fake Kubernetes API server on a real loopback socket, for driving real clients over HTTP.

It speaks the Kubernetes JSON and watch protocol, generically over registered resources
(core/v1 pods, services, endpoints, configmaps, secrets, events; discovery.k8s.io/v1
endpointslices; apps/v1 deployments with the ``scale`` subresource; coordination.k8s.io/v1 leases;
serving.knative.dev/v1 revisions), so the real ``kubernetes_asyncio`` client can be pointed at it.

Usage::

    from tests.fakekube import FakeKube

    async with FakeKube() as kube:            # or: await FakeKube().start() ... await close()
                                              # FakeKube(ssl_context=...): HTTPS
        cfg = kube.configuration()            # a kubernetes_asyncio Configuration (host + token)
        path = kube.write_kubeconfig(tmp_path / "kubeconfig")   # or a kubeconfig file
        kube.create("pods", {"metadata": {"name": "p", "namespace": "default"}, ...})
        kube.patch("deployments", "default", "web", {"spec": {"replicas": 2}})
        kube.delete("pods", "default", "p")
        kube.forbid("watch", "endpointslices", namespace="x")  # 403 Forbidden (RBAC)
        kube.fail("list", "pods", status=500, times=2)          # inject server errors
        kube.compact()                         # drop event history: older resourceVersions -> 410
        await kube.close_watches("pods")       # end open watch streams (clients re-watch)
        await kube.wait_watchers("pods", 1)    # until a client watches pods
        kube.bookmark()                        # send a BOOKMARK on every watch that allows them
        kube.requests                          # every request seen (KubeRequest)

Resources are named by their plural (``"endpointslices"``) or ``plural.group``
(``"revisions.serving.knative.dev"``); subresources as ``"deployments/scale"`` in ``forbid`` and
``fail``. Store methods (``create``/``get``/``update``/``patch``/``delete``/``list``, and
``apply`` = create or replace) act as an API client would (resourceVersion bump, events to
watchers; no event for a no-op write) and return the stored object (a copy); errors raise
``KubeError`` (``.code``, ``.reason``). No controllers run: a Deployment's ``status`` (and so a
Scale's ``status.replicas``) changes only when a test patches it; ``requests_for(verb,
resource)`` lists what clients asked, e.g. ``requests_for("patch", "deployments/scale")`` with
``.query["fieldManager"]`` and ``.body``.

Protocol notes (what real clients rely on):
- one global resourceVersion counter, as etcd's; list ``metadata.resourceVersion`` is the
  current one; ``limit``/``continue`` paging over a snapshot;
- ``?watch=1&resourceVersion=R``: events after R; R unset or "0": synthetic ADDED for the current
  objects first; ``allowWatchBookmarks=true``: BOOKMARK events (on :meth:`bookmark` and every
  ``bookmark_interval`` seconds); ``timeoutSeconds``: the stream ends after it;
- watch lists (client-go's WatchListClient, on by default in recent client-go):
  ``sendInitialEvents=true`` with ``allowWatchBookmarks=true`` and
  ``resourceVersionMatch=NotOlderThan``: ADDED for the current objects, then a BOOKMARK annotated
  ``k8s.io/initial-events-end: "true"``, then the stream goes on as a watch (422 Invalid without
  the two other parameters, as the real server answers);
- a watch from a resourceVersion older than the retained history (``history`` events, or
  :meth:`compact`) gets an ``ERROR`` event holding a ``Status`` with code 410, reason Expired
  (as kube-apiserver's watch cache does); with ``gone_as_http=True`` a plain HTTP 410 instead;
- label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``) and field
  selectors on dotted paths (``metadata.name``, ``involvedObject.uid`` as ``kubectl describe``
  lists Events; the real server allows a fixed set per resource); an object that stops
  (starts) matching a watch's selector is sent as DELETED (ADDED);
- PATCH: ``application/merge-patch+json``, ``application/strategic-merge-patch+json`` (treated as
  a merge patch), ``application/json-patch+json``, ``application/apply-patch+yaml`` (server-side
  apply as a merge; creates when absent; needs ``fieldManager``; ``force=true``);
- field ownership, as ``metadata.managedFields`` shows it (one entry per manager, operation and
  subresource, with ``fieldsV1``): an Update (PUT, merge/json patch, the scale subresource) owns
  the fields it changed and takes them from the others; an Apply owns what it applied, and gets
  409 Conflict (``Apply failed with 1 conflict: conflict with "knd-autoscaler" with subresource
  "scale" using apps/v1: .spec.replicas``) when it would change a value another manager owns,
  unless ``force=true``. Lists of named items (containers, env, ports) are keyed by name; the
  maps the real schema marks atomic (``fieldRef``, ``selector``, ...) are one field. Writes
  without a ``fieldManager`` are not tracked; fields dropped from an apply configuration stay;
- what the real server refuses, where our code depends on it: EndpointSlice and Endpoints
  addresses that are not IPs of the slice's family, unspecified, loopback (127.0.0.0/8, ::1),
  link-local or link-local multicast (422 Invalid, the real message and ``causes``); ``""`` or a
  malformed RFC 3339 value in a Time / MicroTime field (Lease ``acquireTime``/``renewTime``,
  Event timestamps, ``metadata.creationTimestamp``; 400 BadRequest ``parsing time ""``);
- the real server's defaulting that tests see: ``fieldRef.apiVersion: v1``, a Deployment's
  ``spec.replicas: 1``;
- errors are ``Status`` bodies: 404 NotFound, 409 AlreadyExists / Conflict (stale
  resourceVersion on update, server-side apply conflicts), 403 Forbidden, 401 Unauthorized
  (wrong bearer token), 422 Invalid, 410 Expired, 500 InternalError;
- :meth:`hang`: requests of a verb on a resource get no answer until :meth:`unhang`;
- discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>/<version>``, ``/version``
  (``gitVersion`` from ``FakeKube(version=...)``, default ``v1.34.0``);
  :meth:`remove_resource` makes a resource unknown (404s, absent from discovery), e.g. a cluster
  without EndpointSlices.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import json
import re
import ssl
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

__all__ = ["FakeKube", "KubeRequest", "ResourceType", "merge_patch"]

Obj = dict[str, Any]
TOKEN = "fake-token"


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for core
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ("status",)
    builtin: bool = True  # list items carry no kind/apiVersion (CRDs' do)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """``plural`` for core resources, ``plural.group`` otherwise."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEFAULT_RESOURCES = (
    ResourceType("", "v1", "pods", "Pod"),
    ResourceType("", "v1", "services", "Service"),
    ResourceType("", "v1", "endpoints", "Endpoints", subresources=()),
    ResourceType("", "v1", "configmaps", "ConfigMap", subresources=()),
    ResourceType("", "v1", "secrets", "Secret", subresources=()),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceType("", "v1", "events", "Event", subresources=()),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", subresources=()),
    ResourceType("apps", "v1", "deployments", "Deployment", subresources=("status", "scale")),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", subresources=()),
    ResourceType("serving.knative.dev", "v1", "revisions", "Revision", builtin=False),
)


@dataclass
class KubeRequest:
    """One request as the server understood it (``resource`` includes ``/subresource``)."""

    method: str
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    query: dict[str, str]
    content_type: str = ""
    body: Any = None


@dataclass
class _Event:
    rv: int
    rt: ResourceType
    type: str
    obj: Obj
    old: Obj | None


@dataclass
class _Watch:
    rt: ResourceType
    namespace: str | None
    selector: Callable[[Obj], bool]
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)


class KubeError(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        st: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            st["details"] = self.details
        return st


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _json_patch(doc: Any, ops: list[Any]) -> Any:
    """RFC 6902 (add, remove, replace, test; enough for tests)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1] if parts else ""
        kind = op["op"]
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise KubeError(422, "Invalid", f"test operation failed at {op['path']}")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        else:
            raise KubeError(422, "Invalid", f"unsupported json patch op {kind!r}")
    return doc


def parse_label_selector(sel: str) -> Callable[[dict[str, str]], bool]:
    """Kubernetes label selector syntax -> predicate over a label dict."""
    reqs: list[Callable[[dict[str, str]], bool]] = []
    # split on commas outside parentheses
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for raw in parts:
        p = raw.strip()
        if not p:
            continue
        words = p.split()
        if len(words) >= 3 and words[1] in ("in", "notin"):
            key, op = words[0], words[1]
            vals = {v.strip() for v in p.split("(", 1)[1].rstrip(")").split(",") if v.strip()}
            if op == "in":
                reqs.append(lambda lb, k=key, vs=vals: lb.get(k) in vs)
            else:
                reqs.append(lambda lb, k=key, vs=vals: lb.get(k) not in vs)
        elif "!=" in p:
            k, v = (s.strip() for s in p.split("!=", 1))
            reqs.append(lambda lb, k=k, v=v: lb.get(k) != v)
        elif "==" in p or "=" in p:
            k, v = (s.strip() for s in p.replace("==", "=").split("=", 1))
            reqs.append(lambda lb, k=k, v=v: lb.get(k) == v)
        elif p.startswith("!"):
            neg_key = p[1:].strip()
            reqs.append(lambda lb, k=neg_key: k not in lb)
        else:
            reqs.append(lambda lb, k=p: k in lb)
    return lambda labels: all(r(labels) for r in reqs)


def _parse_field_selector(sel: str) -> Callable[[Obj], bool]:
    reqs: list[Callable[[Obj], bool]] = []
    for raw in sel.split(","):
        p = raw.strip()
        if not p:
            continue
        neg = "!=" in p
        k, v = (s.strip() for s in p.replace("!=", "=").replace("==", "=").split("=", 1))
        path = k.split(".")

        def get(o: Obj, path: list[str] = path) -> Any:
            cur: Any = o
            for s in path:
                cur = cur.get(s) if isinstance(cur, dict) else None
            return cur

        if neg:
            reqs.append(lambda o, g=get, v=v: g(o) != v)
        else:
            reqs.append(lambda o, g=get, v=v: g(o) == v)
    return lambda o: all(r(o) for r in reqs)


# ------------------------------------------------------------------ what the real server checks
# metav1.Time is RFC 3339 (a fraction is accepted when parsing); metav1.MicroTime is RFC 3339
# with exactly six fraction digits. Both decode JSON null as "unset" and refuse "" (400: the
# body cannot be decoded), as kube-apiserver does.
_TIME_LAYOUT = "2006-01-02T15:04:05Z07:00"
_MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_MICRO_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})")
# kind -> (path, micro) of its time fields ("*": every kind)
_TIME_FIELDS: dict[str, tuple[tuple[tuple[str, ...], bool], ...]] = {
    "*": ((("metadata", "creationTimestamp"), False), (("metadata", "deletionTimestamp"), False)),
    "Lease": ((("spec", "acquireTime"), True), (("spec", "renewTime"), True)),
    "Event": (
        (("firstTimestamp",), False),
        (("lastTimestamp",), False),
        (("eventTime",), True),
        (("series", "lastObservedTime"), True),
    ),
}


def _dig(o: Any, path: Iterable[str]) -> Any:
    for k in path:
        if not isinstance(o, dict):
            return None
        o = o.get(k)
    return o


def _check_times(rt: ResourceType, obj: Obj) -> None:
    for path, micro in _TIME_FIELDS["*"] + _TIME_FIELDS.get(rt.kind, ()):
        v = _dig(obj, path)
        if v is None:
            continue  # absent or null: the zero time
        layout = _MICRO_LAYOUT if micro else _TIME_LAYOUT
        ok = isinstance(v, str) and (_MICRO_RE if micro else _TIME_RE).fullmatch(v) is not None
        if ok:
            try:
                datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                ok = False
        if not ok:
            what = f'parsing time "{v}" as "{layout}"' if isinstance(v, str) else "not a string"
            raise KubeError(
                400,
                "BadRequest",
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {what}: '
                f'cannot parse "{v}" as a time ({".".join(path)})',
            )


def _endpoint_ip_error(ip: Any, family: int | None) -> str | None:
    """Why kube-apiserver refuses ``ip`` as an endpoint address (None: it accepts it)."""
    try:
        a = ipaddress.ip_address(ip) if isinstance(ip, str) else None
    except ValueError:
        a = None
    if a is None:
        return "must be a valid IP address"
    if family is not None and a.version != family:
        return f"must be a valid IPv{family} address"
    if a.is_unspecified:
        return "may not be unspecified (0.0.0.0, ::)"
    if a.is_loopback:
        return "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    if a.is_link_local:
        return "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
    if a in ipaddress.ip_network("224.0.0.0/24") or (
        a.version == 6 and a in ipaddress.ip_network("ff02::/16")
    ):
        return "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
    return None


def _endpoint_errors(rt: ResourceType, obj: Obj) -> list[tuple[str, Any, str]]:
    """(field, value, why) for each address of an EndpointSlice or Endpoints the real server
    refuses (its endpoint IP validation)."""
    errs: list[tuple[str, Any, str]] = []
    if rt.kind == "EndpointSlice":
        kind = obj.get("addressType")
        if kind == "FQDN":
            return errs
        family = {"IPv4": 4, "IPv6": 6}.get(str(kind))
        for i, ep in enumerate(obj.get("endpoints") or []):
            for j, ip in enumerate((ep or {}).get("addresses") or []):
                why = _endpoint_ip_error(ip, family)
                if why:
                    errs.append((f"endpoints[{i}].addresses[{j}]", ip, why))
    elif rt.kind == "Endpoints":
        for i, sub in enumerate(obj.get("subsets") or []):
            for key in ("addresses", "notReadyAddresses"):
                for j, a in enumerate((sub or {}).get(key) or []):
                    why = _endpoint_ip_error((a or {}).get("ip"), None)
                    if why:
                        errs.append((f"subsets[{i}].{key}[{j}].ip", (a or {}).get("ip"), why))
    return errs


def _invalid(rt: ResourceType, name: str, errs: list[tuple[str, Any, str]]) -> KubeError:
    """422 Invalid, with the message and causes kube-apiserver writes."""
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    parts = [f"{f}: Invalid value: {json.dumps(v)}: {why}" for f, v, why in errs]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return KubeError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {joined}',
        {
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": f"Invalid value: {json.dumps(v)}: {why}",
                    "field": f,
                }
                for f, v, why in errs
            ],
        },
    )


def _default(rt: ResourceType, obj: Obj) -> None:
    """The server's defaulting that our tests can see: ``fieldRef.apiVersion`` (v1) anywhere in
    a pod spec, a Deployment's ``spec.replicas`` (1)."""

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            ref = o.get("fieldRef")
            if isinstance(ref, dict) and "apiVersion" not in ref:
                ref["apiVersion"] = "v1"
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(obj.get("spec"))
    if rt.kind == "Deployment":
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict) and spec.get("replicas") is None:
            spec["replicas"] = 1


# ------------------------------------------------------------------ field ownership
# Server-side apply's field sets, simplified: a field is a path of "f:<key>" steps, and
# 'k:{"name":...}' for an item of a list whose items all have distinct names (containers, env,
# ports, volumes: what our manifests use); other lists, and the maps the real schema marks
# atomic, are one field as a whole. Writes without a fieldManager are not tracked.
_ATOMIC = frozenset({"fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef", "selector"})
_SERVER_META = frozenset(
    {
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "generation",
        "managedFields",
        "name",
        "namespace",
        "selfLink",
    }
)
Path_ = tuple[str, ...]


def _fields(o: Any, prefix: Path_ = ()) -> dict[Path_, Any]:
    """Leaf field paths of an object (or apply configuration) and their values."""
    out: dict[Path_, Any] = {}
    if not isinstance(o, dict):
        return out
    for k, v in o.items():
        if not prefix and k in ("apiVersion", "kind"):
            continue
        if prefix == ("f:metadata",) and k in _SERVER_META:
            continue
        p = (*prefix, f"f:{k}")
        names = [i.get("name") for i in v if isinstance(i, dict)] if isinstance(v, list) else []
        if isinstance(v, dict) and v and k not in _ATOMIC:
            out.update(_fields(v, p))
        elif (
            isinstance(v, list)
            and v
            and len(names) == len(v)
            and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)
        ):
            for item in v:
                key = "k:" + json.dumps({"name": item["name"]}, separators=(",", ":"))
                out.update(_fields(item, (*p, key)))
        else:
            out[p] = v
    return out


def _dotted(path: Path_) -> str:
    """``.spec.template.spec.containers[name="app"].env[name="X"]``, as conflicts name them."""
    out = ""
    for step in path:
        if step.startswith("f:"):
            out += "." + step[2:]
        else:
            key = json.loads(step[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]"
    return out


def _fields_v1(paths: Iterable[Path_]) -> Obj:
    tree: Obj = {}
    for p in sorted(paths):
        node = tree
        for step in p:
            node = node.setdefault(step, {})
    return tree


_MISSING = object()


@dataclass
class _Owner:
    manager: str
    operation: str  # Apply | Update
    subresource: str
    api_version: str
    paths: set[Path_] = field(default_factory=set)
    time: str = ""


def _same(a: Obj, b: Obj) -> bool:
    """Equal apart from resourceVersion and managedFields."""

    def strip(o: Obj) -> Obj:
        c = dict(o)
        c["metadata"] = {
            k: v
            for k, v in o.get("metadata", {}).items()
            if k not in ("resourceVersion", "managedFields")
        }
        return c

    return strip(a) == strip(b)


def _labels(o: Obj) -> dict[str, str]:
    return o.get("metadata", {}).get("labels") or {}


class FakeKube:
    """The fake API server; see the module docstring."""

    def __init__(
        self,
        *,
        history: int = 1000,
        bookmark_interval: float | None = None,
        gone_as_http: bool = False,
        token: str | None = TOKEN,
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
        ssl_context: ssl.SSLContext | None = None,
        version: str = "v1.34.0",
    ) -> None:
        self.ssl_context = ssl_context  # HTTPS (as a real API server) when given
        self.version = version  # /version's gitVersion (clients may require a minimum)
        self.history_size = history
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self.token = token
        self.types: dict[str, ResourceType] = {}
        for rt in resources:
            self.add_resource(rt)
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self.rv = 1
        self.history: deque[_Event] = deque()
        self.floor = 0  # events with rv > floor are retained
        self.watches: list[_Watch] = []
        self.requests: list[KubeRequest] = []
        self.forbidden: set[tuple[str, str, str | None]] = set()
        self.failures: dict[tuple[str, str], list[int]] = {}
        self.hung: dict[tuple[str, str], asyncio.Event] = {}
        # (resource, namespace, name) -> field owners, as metadata.managedFields shows them
        self.owners: dict[tuple[str, str, str], list[_Owner]] = {}
        self.user = "system:serviceaccount:knative-serving:activator"
        self._snapshots: dict[str, tuple[int, list[Obj]]] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.host = "127.0.0.1"
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> FakeKube:
        """Listen on ``host:port`` (port 0: any free one), e.g. the host side of a network
        namespace's veth pair for a client running inside the namespace."""
        self.host = host
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        self.unhang()
        await self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKube:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def configuration(self) -> Any:
        """A ``kubernetes_asyncio.client.Configuration`` for this server."""
        from kubernetes_asyncio.client import Configuration

        cfg = Configuration(host=self.url)
        if self.token:
            cfg.api_key = {"BearerToken": self.token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cfg

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        p = Path(path)
        p.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        return p

    # ------------------------------------------------------------------ resource types
    def add_resource(self, rt: ResourceType) -> None:
        self.types[rt.name] = rt
        if rt.plural not in self.types:
            self.types[rt.plural] = rt

    def remove_resource(self, name: str) -> None:
        """Make a resource unknown to the server (404, absent from discovery)."""
        rt = self._rt(name)
        for k in [k for k, v in self.types.items() if v == rt]:
            del self.types[k]

    def _rt(self, name: str) -> ResourceType:
        rt = self.types.get(name)
        if rt is None:
            raise KeyError(f"unknown resource {name!r}")
        return rt

    def _lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        for rt in self.types.values():
            if rt.group == group and rt.version == version and rt.plural == plural:
                return rt
        return None

    # ------------------------------------------------------------------ hooks
    def forbid(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """Answer ``verb`` on ``resource`` (e.g. ``"deployments/scale"``) with 403; in one
        namespace, or everywhere when ``namespace`` is None. ``verb="*"``: every verb."""
        self.forbidden.add((verb, resource, namespace))

    def allow(self, verb: str, resource: str, namespace: str | None = None) -> None:
        self.forbidden.discard((verb, resource, namespace))

    def fail(self, verb: str, resource: str, status: int = 500, times: int = 1) -> None:
        """The next ``times`` requests of ``verb`` on ``resource`` get ``status``."""
        self.failures.setdefault((verb, resource), []).extend([status] * times)

    def hang(self, verb: str, resource: str) -> None:
        """Requests of ``verb`` on ``resource`` get no answer until :meth:`unhang` (an API
        server that accepts connections but is stuck, e.g. on etcd)."""
        self.hung.setdefault((verb, resource), asyncio.Event())

    def unhang(self) -> None:
        for ev in self.hung.values():
            ev.set()
        self.hung.clear()

    def compact(self) -> None:
        """Forget the event history: watches from any older resourceVersion get 410."""
        self.history.clear()
        self.floor = self.rv
        self._snapshots.clear()

    def bookmark(self) -> None:
        """Queue a BOOKMARK (at the current resourceVersion) on every watch allowing them."""
        for w in self.watches:
            if w.bookmarks:
                w.queue.put_nowait(("BOOKMARK", self.rv))

    async def close_watches(self, resource: str | None = None, *, abort: bool = False) -> int:
        """End open watch streams (cleanly, or by resetting the connection with ``abort``);
        returns how many were closed."""
        rt = self._rt(resource) if resource is not None else None
        n = 0
        for w in list(self.watches):
            if rt is None or w.rt == rt:
                w.queue.put_nowait(("ABORT" if abort else "CLOSE", None))
                n += 1
        return n

    def watchers(self, resource: str) -> int:
        rt = self._rt(resource)
        return sum(1 for w in self.watches if w.rt == rt)

    async def wait_watchers(self, resource: str, n: int = 1, timeout: float = 5.0) -> None:
        """Until at least ``n`` watches of ``resource`` are open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.watchers(resource) < n:
            if loop.time() > deadline:
                raise AssertionError(
                    f"{n} watches of {resource} not open within {timeout}s "
                    f"(open: {self.watchers(resource)})"
                )
            await asyncio.sleep(0.005)

    def requests_for(self, verb: str, resource: str) -> list[KubeRequest]:
        return [r for r in self.requests if r.verb == verb and r.resource == resource]

    # ------------------------------------------------------------------ store
    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], Obj]:
        return self.objects.setdefault(rt.name, {})

    def _record(self, rt: ResourceType, type_: str, obj: Obj, old: Obj | None) -> None:
        ev = _Event(self.rv, rt, type_, copy.deepcopy(obj), old)
        self.history.append(ev)
        while len(self.history) > self.history_size:
            self.floor = self.history.popleft().rv
        for w in self.watches:
            if w.rt == rt:
                out = self._translate(w, ev)
                if out is not None:
                    w.queue.put_nowait(("EVENT", out))

    def _translate(self, w: _Watch, ev: _Event) -> tuple[str, Obj] | None:
        ns = ev.obj["metadata"].get("namespace")
        if w.namespace is not None and ns != w.namespace:
            return None
        new_match = w.selector(ev.obj)
        old_match = ev.old is not None and w.selector(ev.old)
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if new_match else None
        if ev.type == "ADDED":
            return ("ADDED", ev.obj) if new_match else None
        if new_match and old_match:
            return ("MODIFIED", ev.obj)
        if new_match:
            return ("ADDED", ev.obj)
        if old_match:
            return ("DELETED", ev.obj)
        return None

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def create(self, resource: str, obj: Obj, namespace: str | None = None) -> Obj:
        return copy.deepcopy(self._create(self._rt(resource), obj, namespace, None))

    def _create(
        self,
        rt: ResourceType,
        obj: Obj,
        namespace: str | None,
        manager: str | None,
        operation: str = "Update",
    ) -> Obj:
        _check_times(rt, obj)
        requested = set(_fields(obj))
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        ns = namespace if namespace is not None else md.get("namespace")
        if rt.namespaced:
            ns = ns or "default"
            if md.get("namespace") not in (None, ns):
                raise KubeError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace "
                    "sent on the request",
                )
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
            ns = ""
        if not md.get("name"):
            if md.get("generateName"):
                md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise KubeError(
                    422,
                    "Invalid",
                    f'{rt.kind} "" is invalid: metadata.name: Required value: name or '
                    "generateName is required",
                    {"kind": rt.plural, "group": rt.group},
                )
        key = (ns or "", md["name"])
        bucket = self._bucket(rt)
        if key in bucket:
            raise KubeError(
                409,
                "AlreadyExists",
                f'{rt.name} "{md["name"]}" already exists',
                {"name": md["name"], "group": rt.group, "kind": rt.plural},
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        _default(rt, obj)
        errs = _endpoint_errors(rt, obj)
        if errs:
            raise _invalid(rt, md["name"], errs)
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = _now()
        md["generation"] = 1
        md["resourceVersion"] = self._bump()
        okey = (rt.name, key[0], key[1])
        self.owners.pop(okey, None)
        if manager:
            owner = _Owner(manager, operation, "", rt.api_version, requested, _now())
            self.owners[okey] = [owner]
            self._render_owners(okey, md)
        bucket[key] = obj
        self._record(rt, "ADDED", obj, None)
        return obj

    def _render_owners(self, okey: tuple[str, str, str], md: Obj) -> None:
        mf: list[Obj] = []
        for o in self.owners.get(okey, []):
            entry: Obj = {
                "manager": o.manager,
                "operation": o.operation,
                "apiVersion": o.api_version,
                "time": o.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": _fields_v1(o.paths),
            }
            if o.subresource:
                entry["subresource"] = o.subresource
            mf.append(entry)
        if mf:
            md["managedFields"] = mf
        else:
            md.pop("managedFields", None)

    def _own(
        self,
        rt: ResourceType,
        okey: tuple[str, str, str],
        old: Obj,
        new: Obj,
        manager: str | None,
        operation: str,
        subresource: str,
        applied: set[Path_] | None,
    ) -> None:
        """Field ownership after a write: an Update takes the fields it changed from everyone
        else; an Apply owns exactly what it applied (shared with managers of equal values);
        fields that no longer exist are nobody's."""
        old_f, new_f = _fields(old), _fields(new)
        owners = self.owners.setdefault(okey, [])
        if manager:
            if applied is None:
                changed = {
                    p
                    for p in old_f.keys() | new_f.keys()
                    if old_f.get(p, _MISSING) != new_f.get(p, _MISSING)
                }
                for o in owners:
                    o.paths -= changed
                mine = changed
            else:
                mine = applied
            entry = next(
                (
                    o
                    for o in owners
                    if (o.manager, o.operation, o.subresource) == (manager, operation, subresource)
                ),
                None,
            )
            if entry is None:
                entry = _Owner(manager, operation, subresource, rt.api_version)
                owners.append(entry)
            entry.paths = set(mine) if applied is not None else entry.paths | mine
            entry.time = _now()
        for o in owners:
            o.paths &= new_f.keys()
        owners[:] = [o for o in owners if o.paths]
        self._render_owners(okey, new["metadata"])

    def get(self, resource: str, namespace: str | None, name: str) -> Obj:
        return copy.deepcopy(self._get(self._rt(resource), namespace, name))

    def _get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._bucket(rt).get(((namespace or "") if rt.namespaced else "", name))
        if obj is None:
            raise KubeError(
                404,
                "NotFound",
                f'{rt.name} "{name}" not found',
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        return obj

    def list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        rt = self._rt(resource)
        return [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self._bucket(rt).items())
            if namespace is None or ns == namespace
        ]

    def update(self, resource: str, obj: Obj, namespace: str | None = None) -> Obj:
        """Replace an object (a stale ``metadata.resourceVersion`` gives a Conflict)."""
        rt = self._rt(resource)
        md = obj.get("metadata", {})
        ns = namespace if namespace is not None else md.get("namespace")
        return copy.deepcopy(self._update(rt, ns, md["name"], obj, None, "Update"))

    def _update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        obj: Obj,
        manager: str | None,
        operation: str,
        *,
        subresource: str = "",
        applied: set[Path_] | None = None,
    ) -> Obj:
        _check_times(rt, obj)
        old = self._get(rt, namespace, name)
        new = copy.deepcopy(obj)
        md = new.setdefault("metadata", {})
        want_rv = md.get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise KubeError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rt.name} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        if md.get("name", name) != name:
            raise KubeError(400, "BadRequest", "the name of the object does not match the URL")
        if subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status")
            new, md = merged, merged["metadata"]
        keep = ("uid", "creationTimestamp", "namespace", "name", "generation", "managedFields")
        for k in keep:
            if k in old["metadata"]:
                md[k] = old["metadata"][k]
            else:
                md.pop(k, None)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        _default(rt, new)
        errs = _endpoint_errors(rt, new)
        if errs:
            raise _invalid(rt, name, errs)
        if new.get("spec") != old.get("spec"):
            md["generation"] = int(old["metadata"].get("generation", 1)) + 1
        okey = (rt.name, old["metadata"].get("namespace", ""), name)
        self._own(rt, okey, old, new, manager, operation, subresource, applied)
        if _same(new, old):
            # no-op: no new resourceVersion, no event (as the real server); ownership may move
            self._render_owners(okey, old["metadata"])
            return old
        md["resourceVersion"] = self._bump()
        key = (old["metadata"].get("namespace", ""), name)
        self._bucket(rt)[key] = new
        self._record(rt, "MODIFIED", new, old)
        return new

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = "application/merge-patch+json",
        field_manager: str | None = None,
        force: bool = False,
    ) -> Obj:
        rt = self._rt(resource)
        return copy.deepcopy(
            self._patch(rt, namespace, name, patch, content_type, field_manager, "", force)
        )

    def _patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        manager: str | None,
        subresource: str,
        force: bool = False,
    ) -> Obj:
        ct = content_type.split(";")[0].strip()
        applied: set[Path_] | None = None
        if ct == "application/apply-patch+yaml":
            if not manager:
                raise KubeError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                    "is required for apply patch",
                )
            if not isinstance(patch, dict):
                raise KubeError(400, "BadRequest", "an apply configuration must be an object")
            try:
                old = self._get(rt, namespace, name)
            except KubeError:
                body = copy.deepcopy(patch)
                body.setdefault("metadata", {})["name"] = name
                return self._create(rt, body, namespace, manager, "Apply")
            applied = set(self._apply_conflicts(rt, old, patch, manager, force))
            new = merge_patch(old, patch)
            op = "Apply"
        elif ct in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            old = self._get(rt, namespace, name)
            new = merge_patch(old, patch)
            op = "Update"
        elif ct == "application/json-patch+json":
            old = self._get(rt, namespace, name)
            new = _json_patch(old, patch)
            op = "Update"
        else:
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({ct}) - accepted media types "
                "include: application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml",
            )
        # A patch carries no resourceVersion precondition unless it sets one.
        patch_rv = (
            (patch.get("metadata") or {}).get("resourceVersion")
            if isinstance(patch, dict)
            else None
        )
        new.setdefault("metadata", {})["resourceVersion"] = (
            patch_rv or old["metadata"]["resourceVersion"]
        )
        return self._update(
            rt, namespace, name, new, manager, op, subresource=subresource, applied=applied
        )

    def _apply_conflicts(
        self, rt: ResourceType, old: Obj, patch: Obj, manager: str, force: bool
    ) -> dict[Path_, Any]:
        """The applied fields; 409 when one would change a value another manager owns (with
        ``force``, the applier takes it over instead)."""
        applied = _fields(patch)
        live = _fields(old)
        md = old["metadata"]
        owners = self.owners.get((rt.name, md.get("namespace", ""), md["name"]), [])
        conflicts: list[tuple[_Owner, Path_]] = []
        for p, v in applied.items():
            if live.get(p, _MISSING) == v:
                continue
            conflicts += [(o, p) for o in owners if o.manager != manager and p in o.paths]
        if conflicts and force:
            for o, p in conflicts:
                o.paths.discard(p)
        elif conflicts:
            by: dict[str, list[str]] = {}
            for o, p in conflicts:
                who = f'"{o.manager}"' + (
                    f' with subresource "{o.subresource}"' if o.subresource else ""
                )
                by.setdefault(f"{who} using {o.api_version}", []).append(_dotted(p))
            parts = [
                f"conflict with {w}: {ps[0]}"
                if len(ps) == 1
                else f"conflicts with {w}:\n" + "\n".join(f"- {x}" for x in ps)
                for w, ps in by.items()
            ]
            n = len(conflicts)
            raise KubeError(
                409,
                "Conflict",
                f"Apply failed with {n} conflict{'s' if n > 1 else ''}: " + "\n".join(parts),
                {
                    "causes": [
                        {
                            "reason": "FieldManagerConflict",
                            "message": f'conflict with "{o.manager}" using {o.api_version}',
                            "field": _dotted(p),
                        }
                        for o, p in conflicts
                    ]
                },
            )
        return applied

    def delete(self, resource: str, namespace: str | None, name: str) -> Obj:
        return copy.deepcopy(self._delete(self._rt(resource), namespace, name))

    def _delete(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        old = self._get(rt, namespace, name)
        key = (old["metadata"].get("namespace", ""), name)
        del self._bucket(rt)[key]
        self.owners.pop((rt.name, key[0], name), None)
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._bump()
        self._record(rt, "DELETED", gone, old)
        return gone

    def apply(self, resource: str, obj: Obj, namespace: str | None = None) -> Obj:
        """Create or replace (test convenience; no conflict check)."""
        rt = self._rt(resource)
        md = obj.get("metadata", {})
        ns = namespace if namespace is not None else md.get("namespace", "default")
        try:
            self._get(rt, ns, md["name"])
        except KubeError:
            return self.create(resource, obj, ns)
        body = copy.deepcopy(obj)
        body["metadata"].pop("resourceVersion", None)
        return copy.deepcopy(self._update(rt, ns, md["name"], body, None, "Update"))

    # ------------------------------------------------------------------ scale subresource
    def _scale(self, rt: ResourceType, obj: Obj) -> Obj:
        md = obj["metadata"]
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": md["name"],
                "namespace": md.get("namespace"),
                "uid": md["uid"],
                "resourceVersion": md["resourceVersion"],
                "creationTimestamp": md["creationTimestamp"],
            },
            "spec": {"replicas": int(spec.get("replicas", 1))},
            "status": {
                "replicas": int(status.get("replicas", 0)),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(sel.items())),
            },
        }

    def _write_scale(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        scale: Obj,
        manager: str | None,
        operation: str,
    ) -> Obj:
        obj = self._get(rt, ns, name)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise KubeError(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{replicas!r}: must be greater than or equal to 0",
            )
        new = copy.deepcopy(obj)
        new.setdefault("spec", {})["replicas"] = replicas
        new["metadata"]["resourceVersion"] = (scale.get("metadata") or {}).get(
            "resourceVersion"
        ) or obj["metadata"]["resourceVersion"]
        return self._scale(
            rt, self._update(rt, ns, name, new, manager, operation, subresource="scale")
        )

    # ------------------------------------------------------------------ HTTP
    def _forbidden(self, verb: str, resource: str, ns: str | None) -> bool:
        for v in (verb, "*"):
            if (v, resource, None) in self.forbidden or (v, resource, ns) in self.forbidden:
                return True
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except KubeError as e:
            return web.json_response(e.status(), status=e.code)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise KubeError(401, "Unauthorized", "Unauthorized")
        parts = [p for p in request.path.split("/") if p]
        q = dict(request.query)
        # discovery
        if parts == ["version"]:
            return web.json_response(self._version_info())
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            return web.json_response(self._group_list())
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural, name, sub = (
            rest[0],
            rest[1] if len(rest) > 1 else None,
            rest[2] if len(rest) > 2 else "",
        )
        rt = self._lookup(group, version, plural)
        if rt is None or len(rest) > 3 or (sub and sub not in rt.subresources):
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if rt.namespaced is False:
            ns = None
        method = request.method
        watch = q.get("watch") in ("1", "true", "True")
        verb = {
            "GET": "get" if name else ("watch" if watch else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }.get(method)
        if verb is None:
            raise KubeError(405, "MethodNotAllowed", f"method {method} not allowed")
        resource = rt.plural + (f"/{sub}" if sub else "")
        ctype = request.headers.get("Content-Type", "")
        body: Any = None
        if method in ("POST", "PUT", "PATCH"):
            raw = await request.read()
            try:
                if ctype.startswith("application/apply-patch+yaml"):
                    body = yaml.safe_load(raw)
                else:
                    body = json.loads(raw) if raw else None
            except (ValueError, yaml.YAMLError) as e:
                raise KubeError(400, "BadRequest", f"invalid body: {e}") from None
        self.requests.append(KubeRequest(method, verb, resource, ns, name, q, ctype, body))
        if self._forbidden(verb, resource, ns):
            raise self._forbid_error(rt, verb, resource, ns, name)
        stuck = self.hung.get((verb, resource))
        if stuck is not None:
            await stuck.wait()
        fails = self.failures.get((verb, resource))
        if fails:
            code = fails.pop(0)
            raise KubeError(
                code,
                "InternalError" if code >= 500 else "BadRequest",
                f"Internal error occurred: injected failure ({code})",
            )
        manager = q.get("fieldManager")
        if name is None:
            if method == "GET":
                if watch:
                    return await self._watch(request, rt, ns, q)
                return web.json_response(self._list(rt, ns, q))
            if method == "POST":
                if not isinstance(body, dict):
                    raise KubeError(400, "BadRequest", "expected an object body")
                return web.json_response(self._create(rt, body, ns, manager), status=201)
            raise KubeError(405, "MethodNotAllowed", f"method {method} not allowed")
        if sub == "scale":
            obj = self._get(rt, ns, name)
            if method == "GET":
                return web.json_response(self._scale(rt, obj))
            if method == "PUT":
                return web.json_response(self._write_scale(rt, ns, name, body, manager, "Update"))
            if method == "PATCH":
                cur = self._scale(rt, obj)
                if ctype.startswith("application/json-patch+json"):
                    new = _json_patch(cur, body)
                else:
                    new = merge_patch(cur, body)
                op = "Apply" if ctype.startswith("application/apply-patch") else "Update"
                return web.json_response(self._write_scale(rt, ns, name, new, manager, op))
            raise KubeError(405, "MethodNotAllowed", f"method {method} not allowed")
        if method == "GET":
            return web.json_response(self._get(rt, ns, name))
        if method == "PUT":
            if not isinstance(body, dict):
                raise KubeError(400, "BadRequest", "expected an object body")
            return web.json_response(
                self._update(rt, ns, name, body, manager, "Update", subresource=sub)
            )
        if method == "PATCH":
            force = q.get("force") in ("true", "1", "True")
            return web.json_response(self._patch(rt, ns, name, body, ctype, manager, sub, force))
        if method == "DELETE":
            return web.json_response(self._delete(rt, ns, name))
        raise KubeError(405, "MethodNotAllowed", f"method {method} not allowed")

    def _forbid_error(
        self, rt: ResourceType, verb: str, resource: str, ns: str | None, name: str | None
    ) -> KubeError:
        what = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
        if name:
            what += f' "{name}"'
        where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        return KubeError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" '
            f'in API group "{rt.group}" {where}',
            {"name": name or "", "group": rt.group, "kind": rt.plural},
        )

    def _version_info(self) -> Obj:
        m = re.match(r"v?(\d+)\.(\d+)", self.version)
        major, minor = m.groups() if m else ("", "")
        return {
            "major": major,
            "minor": minor,
            "gitVersion": self.version,
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _group_list(self) -> Obj:
        groups: dict[str, list[str]] = {}
        for rt in self.types.values():
            if rt.group:
                vs = groups.setdefault(rt.group, [])
                if rt.version not in vs:
                    vs.append(rt.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in sorted(groups.items())
            ],
        }

    def _resource_list(self, group: str, version: str) -> Obj:
        rts = {rt for rt in self.types.values() if rt.group == group and rt.version == version}
        if not rts:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources: list[Obj] = []
        for rt in sorted(rts, key=lambda r: r.plural):
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.kind.lower(),
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": verbs,
                }
            )
            for sub in rt.subresources:
                kind = "Scale" if sub == "scale" else rt.kind
                resources.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _selector(self, q: dict[str, str]) -> Callable[[Obj], bool]:
        label = parse_label_selector(q.get("labelSelector", ""))
        fields = _parse_field_selector(q.get("fieldSelector", ""))
        return lambda o: label(_labels(o)) and fields(o)

    def _list(self, rt: ResourceType, ns: str | None, q: dict[str, str]) -> Obj:
        rv = q.get("resourceVersion", "")
        if q.get("resourceVersionMatch") == "Exact" and rv and int(rv) < self.floor:
            raise self._gone(int(rv))
        token = q.get("continue")
        if token:
            snap = self._snapshots.get(token)
            if snap is None:
                raise KubeError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                )
            list_rv, items = snap
        else:
            sel = self._selector(q)
            list_rv = self.rv
            items = [
                o
                for (ons, _), o in sorted(self._bucket(rt).items())
                if (ns is None or ons == ns) and sel(o)
            ]
        limit = int(q.get("limit", "0") or 0)
        meta: Obj = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            nxt = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
            self._snapshots[nxt] = (list_rv, items[limit:])
            while len(self._snapshots) > 64:
                self._snapshots.pop(next(iter(self._snapshots)))
            meta["continue"] = nxt
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        out_items = []
        for o in items:
            c = copy.deepcopy(o)
            if rt.builtin:
                c.pop("kind", None)
                c.pop("apiVersion", None)
            out_items.append(c)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": out_items,
        }

    def _gone(self, rv: int) -> KubeError:
        return KubeError(410, "Expired", f"too old resource version: {rv} ({self.floor + 1})")

    async def _watch(
        self, request: web.Request, rt: ResourceType, ns: str | None, q: dict[str, str]
    ) -> web.StreamResponse:
        rv_s = q.get("resourceVersion", "")
        sel = self._selector(q)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1", "True")
        initial: list[tuple[str, Obj]] = []
        gone: KubeError | None = None
        w = _Watch(rt, ns, sel, bookmarks)
        # A "watch list" (client-go's WatchListClient): the current objects as ADDED events,
        # then a BOOKMARK annotated k8s.io/initial-events-end, instead of a LIST first.
        stream_initial = q.get("sendInitialEvents") in ("true", "1", "True")
        if stream_initial:
            if not bookmarks or q.get("resourceVersionMatch") != "NotOlderThan":
                raise KubeError(
                    422,
                    "Invalid",
                    "sendInitialEvents is allowed only with allowWatchBookmarks=true and "
                    "resourceVersionMatch=NotOlderThan",
                )
            if rv_s not in ("", "0"):
                try:
                    if int(rv_s) < self.floor:
                        raise self._gone(int(rv_s))
                except ValueError:
                    raise KubeError(
                        400, "BadRequest", f"invalid resourceVersion {rv_s!r}"
                    ) from None
        if rv_s in ("", "0") or stream_initial:
            for (ons, _), o in sorted(self._bucket(rt).items()):
                if (ns is None or ons == ns) and sel(o):
                    initial.append(("ADDED", copy.deepcopy(o)))
        else:
            try:
                rv = int(rv_s)
            except ValueError:
                raise KubeError(400, "BadRequest", f"invalid resourceVersion {rv_s!r}") from None
            if rv < self.floor:
                gone = self._gone(rv)
                if self.gone_as_http:
                    raise gone
            else:
                for ev in self.history:
                    if ev.rv > rv and ev.rt == rt:
                        out = self._translate(w, ev)
                        if out is not None:
                            initial.append(out)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if gone is not None:
            await resp.write(self._line("ERROR", gone.status()))
            await resp.write_eof()
            return resp
        # Registered only after the awaits above would miss events: register first, then
        # replay (nothing can run between the snapshot and the registration).
        self.watches.append(w)
        try:
            for t, o in initial:
                await resp.write(self._line(t, o))
            if stream_initial:
                await resp.write(self._line("BOOKMARK", self._initial_events_end(rt)))
            loop = asyncio.get_running_loop()
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
            deadline = loop.time() + timeout if timeout else None
            while True:
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                if self.bookmark_interval is not None and bookmarks:
                    wait = (
                        self.bookmark_interval
                        if wait is None
                        else min(wait, self.bookmark_interval)
                    )
                try:
                    kind, item = await asyncio.wait_for(w.queue.get(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    kind, item = "BOOKMARK", self.rv
                if kind == "EVENT":
                    await resp.write(self._line(*item))
                elif kind == "BOOKMARK":
                    await resp.write(
                        self._line(
                            "BOOKMARK",
                            {
                                "kind": rt.kind,
                                "apiVersion": rt.api_version,
                                "metadata": {"resourceVersion": str(item)},
                            },
                        )
                    )
                elif kind == "CLOSE":
                    break
                elif kind == "ABORT":
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
        except ConnectionResetError:
            return resp
        finally:
            if w in self.watches:
                self.watches.remove(w)
        try:
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp

    def _initial_events_end(self, rt: ResourceType) -> Obj:
        return {
            "kind": rt.kind,
            "apiVersion": rt.api_version,
            "metadata": {
                "resourceVersion": str(self.rv),
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        }

    @staticmethod
    def _line(type_: str, obj: Obj) -> bytes:
        return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"


# convenience for tests building objects
def meta(name: str, namespace: str = "default", **labels: str) -> Obj:
    return {"name": name, "namespace": namespace, "labels": dict(labels)}

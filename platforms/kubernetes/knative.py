"""Knative mode: revisions and their endpoints from a cluster where Knative Serving runs.

- Revisions: ``serving.knative.dev/v1`` Revision objects (containerConcurrency, timeoutSeconds,
  responseStartTimeoutSeconds, idleTimeoutSeconds, annotations; protocol ``h2c`` when the
  serving container's port is named ``h2c``).
- Endpoints (SPEC §2.4): the *private* service of each revision, selected by the labels
  ``serving.knative.dev/revision`` and ``networking.internal.knative.dev/serviceType=Private``
  (the EndpointSlice and Endpoints controllers copy the Service's labels). Addresses on the port
  named ``http`` (``http2`` for h2c revisions); ready and not-ready ones. EndpointSlices are used
  when the API server serves ``discovery.k8s.io/v1``, else core/v1 Endpoints.
- Subsetting (SPEC §2.10, layer B): the revision's *public* endpoints
  (``serviceType=Public``) list the activators serving it; when this activator's ``POD_IP`` is
  among them, its index in the lexically sorted IPs and their count are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from platforms.base import (
    DEFAULT_TIMEOUT_SECONDS,
    Endpoints,
    PlatformEvents,
    Revision,
    RevisionKey,
)

from .api import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    REVISIONS,
    SERVICES,
    KubeAPI,
    KubeError,
    KubeNotFound,
    Obj,
)
from .config import wait_for_api
from .informer import Informer, InformerPlatform, object_key

__all__ = [
    "REVISION_LABEL",
    "SERVICE_TYPE_LABEL",
    "KnativePlatform",
    "endpoint_addresses",
    "revision_failure",
    "revision_from_object",
]

log = logging.getLogger("platforms.kubernetes")

REVISION_LABEL = "serving.knative.dev/revision"
# Labels Knative's controller puts on every Revision, passed through with its annotations: the
# metrics' service and configuration names (dataplane.metrics.revision_labels) read them there.
PASSED_LABELS = ("serving.knative.dev/service", "serving.knative.dev/configuration")
SERVICE_TYPE_LABEL = "networking.internal.knative.dev/serviceType"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ENDPOINTS_SELECTOR = f"{REVISION_LABEL},{SERVICE_TYPE_LABEL} in (Private,Public)"
PRIVATE_SERVICE_SELECTOR = f"{REVISION_LABEL},{SERVICE_TYPE_LABEL}=Private"


def _num(v: Any, default: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        return default
    return float(v)


def revision_failure(obj: Obj) -> str:
    """Why a Revision cannot start, from its ``Ready`` condition: Knative sets it ``False`` when
    the revision failed (a container that exits, ``ProgressDeadlineExceeded``, an image that
    cannot be pulled), with a reason and a message; "" otherwise (also while ``Unknown``)."""
    md = obj.get("metadata") or {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "False":
            why = ": ".join(str(c[k]) for k in ("reason", "message") if c.get(k))
            name = f"{md.get('namespace') or ''}/{md.get('name') or ''}"
            return f"revision {name} cannot start" + (f": {why}" if why else "")
    return ""


def revision_from_object(obj: Obj) -> Revision:
    """A :class:`Revision` from a ``serving.knative.dev/v1`` Revision object."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    cc = spec.get("containerConcurrency", 0)
    if isinstance(cc, bool) or not isinstance(cc, int) or cc < 0:
        cc = 0
    protocol = "http1"
    for c in spec.get("containers") or []:
        ports = (c or {}).get("ports") or []
        if ports:
            if str((ports[0] or {}).get("name") or "").lower() == "h2c":
                protocol = "h2c"
            break
    ann = {str(k): str(v) for k, v in (md.get("annotations") or {}).items()}
    labels = md.get("labels") or {}
    for name in PASSED_LABELS:
        if labels.get(name) and name not in ann:
            ann[name] = str(labels[name])
    return Revision(
        namespace=str(md.get("namespace") or ""),
        name=str(md.get("name") or ""),
        container_concurrency=cc,
        timeout_seconds=_num(spec.get("timeoutSeconds"), DEFAULT_TIMEOUT_SECONDS),
        response_start_timeout_seconds=_num(spec.get("responseStartTimeoutSeconds"), 0.0),
        idle_timeout_seconds=_num(spec.get("idleTimeoutSeconds"), 0.0),
        protocol=protocol,
        annotations=ann,
        failure=revision_failure(obj),
    )


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _port(ports: Any, name: str) -> int | None:
    ports = [p for p in ports or [] if isinstance(p, dict)]
    for p in ports:
        if p.get("name") == name and isinstance(p.get("port"), int):
            return int(p["port"])
    if len(ports) == 1 and not ports[0].get("name") and isinstance(ports[0].get("port"), int):
        return int(ports[0]["port"])
    return None


def endpoint_addresses(obj: Obj, port_name: str, *, slice_: bool) -> tuple[list[str], list[str]]:
    """(ready, not ready) ``ip:port`` of an EndpointSlice (``slice_``) or an Endpoints object,
    on the port named ``port_name``. Terminating endpoints of a slice count as neither (the
    Endpoints controller drops them too)."""
    ready: list[str] = []
    not_ready: list[str] = []
    if slice_:
        port = _port(obj.get("ports"), port_name)
        if port is None:
            return ready, not_ready
        for ep in obj.get("endpoints") or []:
            if not isinstance(ep, dict):
                continue
            cond = ep.get("conditions") or {}
            is_ready = cond.get("ready") is not False  # nil means ready
            if cond.get("terminating") is True:
                continue
            for ip in ep.get("addresses") or []:
                (ready if is_ready else not_ready).append(_hostport(str(ip), port))
        return ready, not_ready
    for subset in obj.get("subsets") or []:
        if not isinstance(subset, dict):
            continue
        port = _port(subset.get("ports"), port_name)
        if port is None:
            continue
        for a in subset.get("addresses") or []:
            if isinstance(a, dict) and a.get("ip"):
                ready.append(_hostport(str(a["ip"]), port))
        for a in subset.get("notReadyAddresses") or []:
            if isinstance(a, dict) and a.get("ip"):
                not_ready.append(_hostport(str(a["ip"]), port))
    return ready, not_ready


def _ip(hostport: str) -> str:
    host = hostport.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


class KnativePlatform(InformerPlatform):
    """The Platform interface over Knative Serving's objects (see the module docstring)."""

    def __init__(
        self,
        api: KubeAPI,
        *,
        pod_ip: str = "",
        namespace: str | None = None,
        endpoints_source: str = "auto",
        owns_api: bool = False,
        api_wait: float = 60.0,
        informer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if endpoints_source not in ("auto", "endpointslices", "endpoints"):
            raise ValueError(f"endpoints_source: {endpoints_source!r}")
        self.api = api
        self.pod_ip = pod_ip
        self.namespace = namespace or None
        self.endpoints_source = endpoints_source
        self.owns_api = owns_api
        self.api_wait = api_wait
        self.informer_options = dict(informer_options or {})
        self.informers: list[Informer] = []
        self._events: PlatformEvents | None = None
        self._revisions: dict[RevisionKey, Revision] = {}
        # revision -> endpoint object name -> object (several slices per service)
        self._private: dict[RevisionKey, dict[str, Obj]] = {}
        self._public: dict[RevisionKey, dict[str, Obj]] = {}
        self._services: dict[RevisionKey, Obj] = {}  # private Services: the ClusterIP fallback
        self._sent_eps: dict[RevisionKey, Endpoints] = {}
        self._sent_acts: dict[RevisionKey, tuple[int, int]] = {}
        self._slices = True

    # ------------------------------------------------------------------ lifecycle
    async def start(self, events: PlatformEvents) -> None:
        """Wait for the API server (ConfigError after ``api_wait`` seconds), pick the endpoints
        source, start the informers; their initial lists replay the state into ``events``."""
        self._events = events
        await wait_for_api(self.api, timeout=self.api_wait)
        self._slices = await self._use_slices()
        log.info(
            "knative platform: revisions and %s from %s",
            "EndpointSlices" if self._slices else "Endpoints",
            self.api.host,
        )
        opts = self.informer_options
        self.informers = [
            Informer(self.api, REVISIONS, self._on_revision, namespace=self.namespace, **opts),
            Informer(
                self.api,
                ENDPOINT_SLICES if self._slices else ENDPOINTS,
                self._on_endpoints,
                namespace=self.namespace,
                label_selector=ENDPOINTS_SELECTOR,
                **opts,
            ),
            Informer(
                self.api,
                SERVICES,
                self._on_service,
                namespace=self.namespace,
                label_selector=PRIVATE_SERVICE_SELECTOR,
                **opts,
            ),
        ]
        for inf in self.informers:
            inf.start()

    async def _use_slices(self) -> bool:
        if self.endpoints_source != "auto":
            return self.endpoints_source == "endpointslices"
        try:
            doc = await self.api.get_path(
                f"/apis/{ENDPOINT_SLICES.group_version}", ENDPOINT_SLICES.group_version
            )
        except KubeNotFound:
            return False
        except KubeError as e:
            log.warning("cannot discover %s (%s); assuming EndpointSlices", ENDPOINT_SLICES, e)
            return True
        names = {r.get("name") for r in doc.get("resources") or [] if isinstance(r, dict)}
        return ENDPOINT_SLICES.plural in names

    # ------------------------------------------------------------------ revisions
    def _on_revision(self, type_: str, obj: Obj, old: Obj | None) -> None:
        ev = self._events
        if ev is None:
            return
        key = object_key(obj)
        if type_ == "DELETED":
            if self._revisions.pop(key, None) is not None:
                self._sent_eps.pop(key, None)
                self._sent_acts.pop(key, None)
                ev.revision_deleted(key)
            return
        rev = revision_from_object(obj)
        prev = self._revisions.get(key)
        if prev == rev:
            return
        self._revisions[key] = rev
        ev.revision_updated(rev)
        if prev is None or prev.protocol != rev.protocol:
            self._push(key)

    # ------------------------------------------------------------------ endpoints
    def _on_endpoints(self, type_: str, obj: Obj, old: Obj | None) -> None:
        ns, name = object_key(obj)
        for o in (old, obj):
            if o is None:
                continue
            labels = (o.get("metadata") or {}).get("labels") or {}
            rev = labels.get(REVISION_LABEL)
            if not rev:
                continue
            key = (ns, str(rev))
            table = {"Private": self._private, "Public": self._public}.get(
                str(labels.get(SERVICE_TYPE_LABEL))
            )
            if o is old:  # forget where it was (labels may have changed)
                for t in (self._private, self._public):
                    t.get(key, {}).pop(name, None)
            elif table is not None and type_ != "DELETED":
                table.setdefault(key, {})[name] = obj
            self._push(key)

    def _on_service(self, type_: str, obj: Obj, old: Obj | None) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        rev = labels.get(REVISION_LABEL)
        if not rev:
            return
        key = (object_key(obj)[0], str(rev))
        if type_ == "DELETED":
            self._services.pop(key, None)
        else:
            self._services[key] = obj
        self._push(key)

    def _cluster(self, key: RevisionKey, port_name: str) -> str:
        """``clusterIP:port`` of the revision's private Service (its port named ``http``, or
        ``http2`` for h2c revisions), or "" (no Service, headless, no such port)."""
        spec = (self._services.get(key) or {}).get("spec") or {}
        ip = str(spec.get("clusterIP") or "")
        if not ip or ip == "None":
            return ""
        port = _port(spec.get("ports"), port_name)
        return "" if port is None else _hostport(ip, port)

    def _port_name(self, key: RevisionKey) -> str:
        rev = self._revisions.get(key)
        return "http2" if rev is not None and rev.protocol == "h2c" else "http"

    def _push(self, key: RevisionKey) -> None:
        ev = self._events
        if ev is None:
            return
        port_name = self._port_name(key)
        ready: set[str] = set()
        not_ready: set[str] = set()
        for o in self._private.get(key, {}).values():
            r, n = endpoint_addresses(o, port_name, slice_=self._slices)
            ready.update(r)
            not_ready.update(n)
        eps = Endpoints(
            ready=tuple(sorted(ready)),
            not_ready=tuple(sorted(not_ready - ready)),
            cluster=self._cluster(key, port_name),
        )
        if not self._private.get(key):
            self._private.pop(key, None)
        if self._sent_eps.get(key) != eps:
            self._sent_eps[key] = eps
            ev.endpoints_updated(key, eps)
        if not self.pod_ip:
            return
        ips: set[str] = set()
        for o in self._public.get(key, {}).values():
            r, _ = endpoint_addresses(o, port_name, slice_=self._slices)
            ips.update(_ip(a) for a in r)
        if not self._public.get(key):
            self._public.pop(key, None)
        if self.pod_ip not in ips:
            return  # as Knative: an update without this activator is ignored
        order = sorted(ips)
        acts = (order.index(self.pod_ip), len(order))
        if self._sent_acts.get(key) != acts:
            self._sent_acts[key] = acts
            ev.activators_updated(key, *acts)

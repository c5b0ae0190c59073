"""Standalone mode: scale-to-zero for ordinary Deployments, without Knative.

A Deployment opts in with annotations (on the Deployment's own metadata):

==================================  ==================================================  =========
``knd.dev/enabled``                 ``"true"`` opts the Deployment in                   (off)
``knd.dev/container-concurrency``   requests per pod at once (containerConcurrency)      ``0``
``knd.dev/service``                 the Service selecting its pods (queue-proxy port)    its name
``knd.dev/hosts``                   comma-separated Host names the activator routes      see below
``knd.dev/timeout-seconds``         request timeout at the activator                     ``300``
``knd.dev/port-name``               the Service port of the queue-proxy                  ``http``
``knd.dev/metrics-port``            the queue-proxy's metrics port (scraped)             ``9090``
``autoscaling.knative.dev/*``       Knative's scaling annotations, same meaning          Knative's
==================================  ==================================================  =========

Each such Deployment is a :class:`~platforms.base.Revision` named after it; its hosts default to
``<service>.<namespace>.svc.<cluster domain>`` and ``<service>.<namespace>`` (the activator also
routes ``<deployment>.<namespace>.svc.<cluster domain>`` by itself). Its endpoints are the
addresses on the queue-proxy port in the EndpointSlices of its Service (label
``kubernetes.io/service-name``); ready ones are also the autoscaler's scrape targets (on the
metrics port). A Deployment with a bad annotation is left out, with one error naming the
annotation (``invalid``); when it is fixed, it comes back.

For the activator (given its ``pod_ip`` and its Service), the ready endpoints of that Service
are the activators sharing the work: this one's index among their sorted IPs and their count
go to ``activators_updated`` for every Deployment, so that several activators split each
Deployment's pods and capacity as Knative's do (SPEC §2.10).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dataplane.envconfig import ConfigError
from platforms.base import (
    DEFAULT_TIMEOUT_SECONDS,
    Endpoints,
    PlatformEvents,
    Revision,
    RevisionKey,
)

from .api import DEPLOYMENTS, ENDPOINT_SLICES, KubeAPI, Obj
from .config import wait_for_api
from .informer import Informer, InformerPlatform, object_key
from .knative import endpoint_addresses

__all__ = [
    "ANNOTATION_CONTAINER_CONCURRENCY",
    "ANNOTATION_ENABLED",
    "ANNOTATION_HOSTS",
    "ANNOTATION_METRICS_PORT",
    "ANNOTATION_PORT_NAME",
    "ANNOTATION_SERVICE",
    "ANNOTATION_TIMEOUT",
    "App",
    "StandalonePlatform",
    "app_from_deployment",
    "deployment_failure",
]

log = logging.getLogger("platforms.kubernetes")

ANNOTATION_ENABLED = "knd.dev/enabled"
ANNOTATION_CONTAINER_CONCURRENCY = "knd.dev/container-concurrency"
ANNOTATION_SERVICE = "knd.dev/service"
ANNOTATION_HOSTS = "knd.dev/hosts"
ANNOTATION_TIMEOUT = "knd.dev/timeout-seconds"
ANNOTATION_PORT_NAME = "knd.dev/port-name"
ANNOTATION_METRICS_PORT = "knd.dev/metrics-port"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class App:
    """An opted-in Deployment as the data plane sees it."""

    revision: Revision
    service: str
    port_name: str = "http"
    metrics_port: int = 9090
    replicas: int = 0  # spec.replicas

    @property
    def key(self) -> RevisionKey:
        return self.revision.key


def _int_annotation(ann: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = ann.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        v = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not an integer") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{name}: {v} is outside [{lo}, {hi}]")
    return v


def _dns_label(name: str, what: str) -> str:
    ok = 0 < len(name) <= 63 and all(c.isalnum() or c == "-" for c in name)
    if not ok or name[0] == "-" or name[-1] == "-" or name.lower() != name:
        raise ConfigError(f"{what}: {name!r} is not a valid Service name")
    return name


def deployment_failure(obj: Obj) -> str:
    """Why a Deployment's pods cannot start, from its conditions: ``Progressing`` ``False``
    (``ProgressDeadlineExceeded``: no new pod became available within
    ``progressDeadlineSeconds``) or ``ReplicaFailure`` ``True`` (pods cannot be created); ""
    otherwise."""
    md = obj.get("metadata") or {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if not isinstance(c, dict):
            continue
        failed = (c.get("type") == "Progressing" and c.get("status") == "False") or (
            c.get("type") == "ReplicaFailure" and c.get("status") == "True"
        )
        if failed:
            why = ": ".join(str(c[k]) for k in ("reason", "message") if c.get(k))
            name = f"{md.get('namespace') or 'default'}/{md.get('name') or ''}"
            return f"deployment {name} cannot start" + (f": {why}" if why else "")
    return ""


def app_from_deployment(obj: Obj, cluster_domain: str = "cluster.local") -> App | None:
    """The :class:`App` of a Deployment object, or None when it has not opted in.

    Raises ConfigError naming the annotation when one is malformed."""
    md = obj.get("metadata") or {}
    raw_ann = md.get("annotations") or {}
    ann = {str(k): str(v) for k, v in raw_ann.items()}
    enabled = ann.get(ANNOTATION_ENABLED, "").strip().lower()
    if enabled not in ("true", "1", "yes"):
        return None
    ns = str(md.get("namespace") or "default")
    name = str(md.get("name") or "")
    cc = _int_annotation(ann, ANNOTATION_CONTAINER_CONCURRENCY, 0, 0, 1000)
    timeout = _int_annotation(ann, ANNOTATION_TIMEOUT, int(DEFAULT_TIMEOUT_SECONDS), 1, 3600)
    metrics_port = _int_annotation(ann, ANNOTATION_METRICS_PORT, 9090, 1, 65535)
    service = _dns_label(ann.get(ANNOTATION_SERVICE, "").strip() or name, ANNOTATION_SERVICE)
    port_name = ann.get(ANNOTATION_PORT_NAME, "").strip() or "http"
    raw_hosts = ann.get(ANNOTATION_HOSTS)
    if raw_hosts is not None and raw_hosts.strip():
        hosts = []
        for h in raw_hosts.split(","):
            h = h.strip().lower()
            if not h:
                continue
            host, _, port = h.rpartition(":") if ":" in h else (h, "", "")
            if port and not port.isdigit():
                raise ConfigError(f"{ANNOTATION_HOSTS}: {h!r} is not a host name")
            # the activator matches the Host header without its port
            if not host or any(c in host for c in "/ @:[]") or host[0] == "." or host[-1] == ".":
                raise ConfigError(f"{ANNOTATION_HOSTS}: {h!r} is not a host name")
            hosts.append(host)
    else:
        hosts = [f"{service}.{ns}.svc.{cluster_domain}", f"{service}.{ns}"]
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas", 1)  # the API server defaults an absent field to 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        replicas = 0
    rev = Revision(
        namespace=ns,
        name=name,
        container_concurrency=cc,
        timeout_seconds=float(timeout),
        hosts=tuple(dict.fromkeys(hosts)),
        annotations=ann,
        failure=deployment_failure(obj),
    )
    return App(rev, service, port_name, metrics_port, replicas)


class StandalonePlatform(InformerPlatform):
    """The Platform interface over annotated Deployments and their Services' EndpointSlices.

    The activator uses it to route; the autoscaler also reads ``ready_count``,
    ``scrape_targets`` and ``replicas`` (``spec.replicas`` as last seen), and may register
    ``on_app`` to hear about every change of an App (None: gone).
    """

    def __init__(
        self,
        api: KubeAPI,
        *,
        namespace: str | None = None,
        cluster_domain: str = "cluster.local",
        owns_api: bool = False,
        api_wait: float = 60.0,
        informer_options: Mapping[str, Any] | None = None,
        on_app: Callable[[RevisionKey, App | None], None] | None = None,
        pod_ip: str = "",
        activator_service: tuple[str, str] | None = None,
    ) -> None:
        self.api = api
        self.pod_ip = pod_ip
        self.activator_service = activator_service
        self.namespace = namespace or None
        self.cluster_domain = cluster_domain
        self.owns_api = owns_api
        self.api_wait = api_wait
        self.informer_options = dict(informer_options or {})
        self.on_app = on_app
        self.informers: list[Informer] = []
        self.apps: dict[RevisionKey, App] = {}
        self.invalid: dict[RevisionKey, str] = {}  # Deployments left out, and why
        self._events: PlatformEvents | None = None
        # (namespace, service) -> slice name -> EndpointSlice
        self._slices: dict[tuple[str, str], dict[str, Obj]] = {}
        self._by_service: dict[tuple[str, str], set[RevisionKey]] = {}
        self._sent: dict[RevisionKey, Endpoints] = {}
        self._activator_slices: dict[str, Obj] = {}
        self._acts: tuple[int, int] | None = None  # this activator's (index, count)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, events: PlatformEvents) -> None:
        """Wait for the API server (ConfigError after ``api_wait`` seconds), then start the
        informers; their initial lists replay the state into ``events``."""
        self._events = events
        await wait_for_api(self.api, timeout=self.api_wait)
        log.info(
            "standalone platform: Deployments annotated %s=true in %s, from %s",
            ANNOTATION_ENABLED,
            f"namespace {self.namespace}" if self.namespace else "all namespaces",
            self.api.host,
        )
        opts = self.informer_options
        self.informers = [
            Informer(self.api, DEPLOYMENTS, self._on_deployment, namespace=self.namespace, **opts),
            Informer(
                self.api,
                ENDPOINT_SLICES,
                self._on_slice,
                namespace=self.namespace,
                label_selector=SERVICE_NAME_LABEL,
                **opts,
            ),
        ]
        if self.pod_ip and self.activator_service is not None:
            # Subsetting (SPEC §2.10): the activators are the ready endpoints of their Service
            ns, svc = self.activator_service
            self.informers.append(
                Informer(
                    self.api,
                    ENDPOINT_SLICES,
                    self._on_activator_slice,
                    namespace=ns,
                    label_selector=f"{SERVICE_NAME_LABEL}={svc}",
                    **opts,
                )
            )
        for inf in self.informers:
            inf.start()

    # ------------------------------------------------------------------ queries
    def ready_count(self, key: RevisionKey) -> int:
        eps = self._sent.get(key)
        return 0 if eps is None else len(eps.ready)

    def replicas(self, key: RevisionKey) -> int | None:
        app = self.apps.get(key)
        return None if app is None else app.replicas

    def scrape_targets(self, key: RevisionKey) -> list[str]:
        """``ip:metrics-port`` of the ready pods (``http://<addr>/metrics``)."""
        app = self.apps.get(key)
        eps = self._sent.get(key)
        if app is None or eps is None:
            return []
        out = []
        for a in eps.ready:
            host = a.rpartition(":")[0]
            out.append(f"{host}:{app.metrics_port}")
        return out

    # ------------------------------------------------------------------ deployments
    def _on_deployment(self, type_: str, obj: Obj, old: Obj | None) -> None:
        key = object_key(obj)
        app: App | None = None
        if type_ != "DELETED":
            try:
                app = app_from_deployment(obj, self.cluster_domain)
            except ConfigError as e:
                if self.invalid.get(key) != str(e):
                    log.error("deployment %s/%s left out: %s", key[0], key[1], e)
                self.invalid[key] = str(e)
            else:
                self.invalid.pop(key, None)
        else:
            self.invalid.pop(key, None)
        prev = self.apps.get(key)
        if app == prev:
            return
        if prev is not None:
            self._by_service.get((key[0], prev.service), set()).discard(key)
        ev = self._events
        if app is None:
            self.apps.pop(key, None)
            self._sent.pop(key, None)
            if prev is not None and ev is not None:
                ev.revision_deleted(key)
        else:
            self.apps[key] = app
            self._by_service.setdefault((key[0], app.service), set()).add(key)
            if ev is not None and (prev is None or prev.revision != app.revision):
                ev.revision_updated(app.revision)
                if prev is None and self._acts is not None:
                    ev.activators_updated(key, *self._acts)
        if self.on_app is not None:
            self.on_app(key, app)
        if app is not None:
            self._push(key)

    # ------------------------------------------------------------------ endpoints
    def _on_slice(self, type_: str, obj: Obj, old: Obj | None) -> None:
        ns, name = object_key(obj)
        touched: set[tuple[str, str]] = set()
        for o in (old, obj):
            if o is None:
                continue
            labels = (o.get("metadata") or {}).get("labels") or {}
            svc = labels.get(SERVICE_NAME_LABEL)
            if not svc:
                continue
            skey = (ns, str(svc))
            if o is old:
                self._slices.get(skey, {}).pop(name, None)
            elif type_ != "DELETED":
                self._slices.setdefault(skey, {})[name] = obj
            touched.add(skey)
        for skey in touched:
            if not self._slices.get(skey):
                self._slices.pop(skey, None)
            for key in list(self._by_service.get(skey, ())):
                self._push(key)

    def _push(self, key: RevisionKey) -> None:
        app = self.apps.get(key)
        if app is None:
            return
        ready: set[str] = set()
        not_ready: set[str] = set()
        for o in self._slices.get((key[0], app.service), {}).values():
            r, n = endpoint_addresses(o, app.port_name, slice_=True)
            ready.update(r)
            not_ready.update(n)
        eps = Endpoints(ready=tuple(sorted(ready)), not_ready=tuple(sorted(not_ready - ready)))
        if self._sent.get(key) != eps:
            self._sent[key] = eps
            if self._events is not None:
                self._events.endpoints_updated(key, eps)

    # ------------------------------------------------------------------ activators
    def _on_activator_slice(self, type_: str, obj: Obj, old: Obj | None) -> None:
        name = object_key(obj)[1]
        if type_ == "DELETED":
            self._activator_slices.pop(name, None)
        else:
            self._activator_slices[name] = obj
        ips: set[str] = set()
        for o in self._activator_slices.values():
            ready, _ = endpoint_addresses(o, "http", slice_=True)
            ips.update(a.rpartition(":")[0].strip("[]") for a in ready)
        if self.pod_ip not in ips:
            return  # as Knative: an update without this activator is ignored
        order = sorted(ips)
        acts = (order.index(self.pod_ip), len(order))
        if acts == self._acts:
            return
        self._acts = acts
        if self._events is not None:
            for key in self.apps:
                self._events.activators_updated(key, *acts)

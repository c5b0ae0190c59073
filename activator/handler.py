"""The activator's request path and its view of the platform (Knative SPEC §2.2 to §2.8).

Per request: health and network probes, revision resolution (Knative headers, the
``<rev>.<ns>.svc.<domain>`` host, or a platform-provided host), the demand signal (an immediate
stat on a revision's first request), the revision timeouts, then the throttler: a lease on a
pod's capacity at once, or a ticket that waits (holding no task; the request body stays in the
kernel because nothing reads it until the request is forwarded). A granted request is proxied to
the pod's queue-proxy with ``K-Proxy-Request: activator`` and ``K-Original-Host``.

Beyond Knative: a per-revision queue-wait limit (503 + ``Retry-After``), the waited time in the
``Knd-Activator-Wait-Ms`` response header, and a histogram of waits.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from dataplane.handle import RequestHandle
from dataplane.proxy import ServerConfig
from dataplane.request import Request
from dataplane.tracing import set_upstream_traceparent
from platforms.base import RevisionKey

from .backends import ProbeFn, probe_queue_proxy
from .reporter import ConcurrencyReporter, ReportTicker
from .revisions import HeldRequest, Revisions, RevisionState
from .throttler import Lease, QueueFullError, Ticket

if TYPE_CHECKING:
    from dataplane.promtext import Histogram
    from dataplane.statpb import WireStatMessage
    from dataplane.tls import ClientTLS
    from dataplane.tracing import RequestSpans, Tracer

__all__ = [
    "INDEXED_HEADERS",
    "STRIPPED_HEADERS",
    "WAIT_HEADER",
    "Activator",
    "server_config",
]

log = logging.getLogger("activator")

WAIT_HEADER: Final = b"Knd-Activator-Wait-Ms"
# The request headers this handler (and its tracer) reads, declared to the engine in the
# server's config (ServerConfig(index_headers=..., strip_headers=...)).
INDEXED_HEADERS: Final = (
    b"user-agent",
    b"k-network-probe",
    b"k-network-hash",
    b"k-kubelet-probe",
    b"k-proxy-request",
    b"traceparent",
)
# Routing headers consumed here: the activator sets its own K-Original-Host upstream.
STRIPPED_HEADERS: Final = (
    b"knative-serving-revision",
    b"knative-serving-namespace",
    b"k-original-host",
)


def server_config(**limits: Any) -> ServerConfig:
    """The config of a server running the activator's handler: its timeout body and headers."""
    limits.setdefault("timeout_body", b"activator request timeout")
    return ServerConfig(index_headers=INDEXED_HEADERS, strip_headers=STRIPPED_HEADERS, **limits)


_TEXT: Final = b"Content-Type: text/plain; charset=utf-8\r\n"
_PROXY_HEADERS: Final = b"K-Proxy-Request: activator\r\nK-Original-Host: "
_FAILED_HEADERS: Final = _TEXT + b"X-Content-Type-Options: nosniff\r\n"


class _Request(HeldRequest):
    """Per-request state of a proxied request (``Request.ctx``)."""

    __slots__ = ("ex", "lease", "rs", "spans", "ticket", "wait_start", "wait_timer")

    def __init__(self, rs: RevisionState, ex: RequestHandle) -> None:
        self.rs = rs
        self.ex = ex
        self.spans: RequestSpans | None = None
        self.lease: Lease | None = None
        self.ticket: Ticket | None = None
        self.wait_start = 0.0
        self.wait_timer: asyncio.TimerHandle | None = None

    def __call__(self, lease: Lease) -> None:
        """The throttler gave this waiting request a pod (a :class:`HeldRequest`)."""
        rs = self.rs
        self.ticket = None
        rs.unqueue()
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        ex = self.ex
        if ex.done:
            lease.release()
            return
        if self.spans is not None:
            self.spans.end_wait()
        waited = rs.act.loop.time() - self.wait_start
        rs.act.observe_wait(rs, waited, lease.dest)
        ex.resp_extra = WAIT_HEADER + b": %d\r\n" % round(waited * 1000)
        self.forward(lease)

    def forward(self, lease: Lease) -> None:
        self.lease = lease
        rs = self.rs
        rs.active += 1
        ex = self.ex
        orig = ex.hdr.get(b"k-original-host") or ex.hdr.get(b"host") or b""
        if self.spans is not None:
            set_upstream_traceparent(ex, self.spans.start_inner("activator_proxy"))
        route = rs.route(lease.dest)
        ex.proxy(route.pool, host=route.host, extra_headers=_PROXY_HEADERS + orig + b"\r\n")

    def wait_expired(self) -> None:
        """The queue-wait limit passed before capacity appeared: 503 + Retry-After."""
        self.wait_timer = None
        t = self.ticket
        if t is None or not t.cancel():
            return
        self.fail(b"timed out waiting for capacity\n", b"Retry-After: 1\r\n")

    def fail(self, body: bytes, extra: bytes = b"") -> None:
        """Answer a request whose ticket was cancelled with 503 and ``body``."""
        self.ticket = None
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        rs = self.rs
        rs.unqueue()
        self.ex.respond(503, body, _FAILED_HEADERS + extra)


class Activator:
    """The request path of one activator process, and its stats tick; the revisions it knows
    are in ``registry`` (activator/revisions.py), which the platform's events update."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        pod_name: str,
        send_stats: Callable[[list[WireStatMessage]], None],
        connected: Callable[[], bool],
        cluster_domain: str = "cluster.local",
        queue_depth: int = 10_000,
        queue_wait: float | None = None,
        probe: ProbeFn = probe_queue_proxy,
        probe_frequency: float = 0.2,
        probe_timeout: float = 0.3,
        mesh_mode: str = "auto",
        max_idle_per_host: int = 100,
        wait_histogram: Histogram | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.loop = loop
        self.send_stats = send_stats
        self.connected = connected
        self.cluster_domain = cluster_domain.lower().encode()
        self.queue_depth = queue_depth
        self.queue_wait = queue_wait
        self.probe = probe
        self.probe_frequency = probe_frequency
        self.probe_timeout = probe_timeout
        self.mesh_mode = mesh_mode
        self.max_idle_per_host = max_idle_per_host
        self.wait_histogram = wait_histogram
        self.tracer = tracer
        self.upstream_tls: ClientTLS | None = None  # set by main with system-internal-tls
        self.reporter = ConcurrencyReporter(pod_name, loop.time())
        # The platform-event receiver: pass ``registry`` to a platform's ``start``.
        self.registry = Revisions(self)
        self.sigterm = False
        self.ticker = ReportTicker(loop, self.reporter, send_stats)  # stats every second
        # Requests whose Host names no revision go here when set (knd run with one service).
        self.default_key: RevisionKey | None = None
        # Called with (revision, milliseconds, pod address) whenever a request waited for
        # capacity and got it.
        self.on_wait: Callable[[RevisionKey, float, str], None] | None = None
        # Called with (revision, requests waiting) whenever that count changes (knd run's
        # in-process autoscaler scales from zero to the held demand in one step).
        self.on_held: Callable[[RevisionKey, int], None] | None = None
        # Why kubelet probes fail while ``connected()`` is False (default: Knative's text).
        self.unready_reason: Callable[[], str] | None = None
        self._on_done = self._done  # bound once, not per request

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.ticker.start()

    def stop(self) -> None:
        self.ticker.stop()
        self.registry.close()

    def observe_wait(self, rs: RevisionState, waited: float, dest: str) -> None:
        h = self.wait_histogram
        if h is not None:
            h.observe(waited, rs.labels)
        if self.on_wait is not None:
            self.on_wait(rs.key, waited * 1000, dest)

    # -- requests --------------------------------------------------------------------------
    def handler_for(self, key: RevisionKey) -> Callable[[Request], None]:
        """A request handler that sends every request to revision ``key``, whatever its Host
        (``knd run``: a service's own port)."""

        def handle(ex: Request) -> None:
            self(ex, key)

        return handle

    def __call__(self, request: Request, key: RevisionKey | None = None) -> None:
        """Serve one request, for revision ``key`` or (None) the one it names."""
        # Every request the engine passes derives from RequestHandle (HTTP/1.1's Exchange,
        # HTTP/2's H2Stream). Typed so, the compiled handler reads its fields and calls its
        # methods directly; through the Request Protocol, mypyc goes through Python's attribute
        # lookup and keyword parsing (measured: 2,700 of 80,600 instructions per request). The
        # compiled cast checks the type.
        ex = cast(RequestHandle, request)
        hdr = ex.hdr
        ua = hdr.get(b"user-agent")
        if (ua is not None and ua.startswith(b"kube-probe/")) or b"k-kubelet-probe" in hdr:
            if self.sigterm:
                ex.error(500, "received SIGTERM from kubelet")
            elif not self.connected():
                why = self.unready_reason
                ex.error(
                    500, why() if why is not None else "connection has not yet been established"
                )
            else:
                ex.respond(200)
            return
        np = hdr.get(b"k-network-probe")
        if np:
            self._network_probe(ex, np)
            return
        if b"k-network-hash" in hdr:
            ex.drop_header(b"k-network-hash")
        if b"k-proxy-request" in hdr:
            ex.drop_header(b"k-proxy-request")  # only ours may reach the queue-proxy
        spans: RequestSpans | None = None
        tr = self.tracer
        if tr is not None and tr.sampler.sample(hdr.get(b"traceparent")):
            # Knative's server span ("handle") also covers resolution: a 404 is traced.
            spans = tr.start_request(ex, "handle", "", "throttler_try", ex.start, self.loop.time())
            spans.attach(ex)
        rs = self._resolve(ex) if key is None else self._bound(ex, key)
        if rs is None:
            return
        msgs = self.reporter.request_in(rs.stat_key, ex.start)
        if msgs:
            self.send_stats(msgs)
        req = _Request(rs, ex)
        ex.ctx = req
        if spans is None:
            ex.on_done = self._on_done
        else:
            req.spans = spans
            spans.inner_done = self._on_done  # runs before the spans end
            spans.start_wait()
        ex.set_timeouts(rs.timeouts)
        if rs.failure is not None and rs.throttler.capacity == 0:
            # The revision cannot start: say so now rather than hold the request.
            if req.spans is not None:
                req.spans.end_wait("revision cannot start")
            ex.respond(503, rs.failure, _FAILED_HEADERS)
            return
        try:
            got = rs.throttler.try_acquire(req)
        except QueueFullError:
            if req.spans is not None:
                req.spans.end_wait("pending request queue full")
            ex.error(503, "pending request queue full")
            return
        if isinstance(got, Lease):
            if req.spans is not None:
                req.spans.end_wait()
            req.forward(got)
            return
        req.ticket = got
        req.wait_start = ex.start
        rs.enqueue()
        qw = rs.queue_wait
        if qw is not None and (not rs.timeouts.total or qw < rs.timeouts.total):
            req.wait_timer = self.loop.call_at(ex.start + qw, req.wait_expired)

    def _network_probe(self, ex: RequestHandle, np: bytes) -> None:
        if np == b"probe":
            h = ex.hdr.get(b"k-network-hash")
            if not h:
                ex.error(400, 'a probe request must contain a non-empty "K-Network-Hash" header')
            else:
                ex.respond(200, b"", b"K-Network-Hash: " + h + b"\r\n")
        elif np == b"activator":
            ex.respond(200, b"activator", _TEXT)
        else:
            value = html.escape(np.decode("latin-1"), quote=True)
            ex.error(400, f'unexpected probe header value: "{value}"')

    def _resolve(self, ex: RequestHandle) -> RevisionState | None:
        hdr = ex.hdr
        ns = hdr.get(b"knative-serving-namespace")
        name = hdr.get(b"knative-serving-revision")
        key: RevisionKey | None = None
        if ns and name:
            # (by the name's bytes first: no strings nor tuple to build, hash and free)
            rs = self.registry.by_name.get(name)
            if rs is not None and rs.namespace_bytes == ns:
                return rs
            key = (ns.decode("latin-1"), name.decode("latin-1"))
        else:
            # A platform's own host names first (standalone mode routes a Service's
            # <svc>.<ns>.svc.<domain> to a Deployment of another name), then Knative's rule.
            # The index holds lower-case names without a port: a Host sent that way (the
            # usual case) is found as it is, without normalising it first.
            hosts = self.registry.hosts
            raw = hdr.get(b"host") or b""
            rs = hosts.get(raw)
            if rs is not None:
                return rs
            host = raw.lower()
            h = host.rpartition(b":")[0] if host.rfind(b":") > host.rfind(b"]") else host
            rs = hosts.get(h)
            if rs is not None:
                return rs
            parts = h.split(b".", 3)  # Go's SplitN(host, ".", 4): the domain may have dots
            if len(parts) == 4 and parts[2] == b"svc" and parts[3] == self.cluster_domain:
                key = (parts[1].decode("latin-1"), parts[0].decode("latin-1"))
            else:
                key = self.default_key
                if key is None:
                    ex.error(
                        404,
                        f"Error getting active endpoint: no revision for host "
                        f"{h.decode('latin-1')!r}",
                    )
                    return None
        rs = self.registry.revisions.get(key)
        if rs is None:
            ex.error(
                404,
                f'Error getting active endpoint: revision.serving.knative.dev "{key[1]}" not found',
            )
        return rs

    def _bound(self, ex: RequestHandle, key: RevisionKey) -> RevisionState | None:
        rs = self.registry.revisions.get(key)
        if rs is None:
            ex.error(
                404,
                f'Error getting active endpoint: revision.serving.knative.dev "{key[1]}" not found',
            )
        return rs

    def _done(self, request: Request) -> None:
        ex = cast(RequestHandle, request)  # as in __call__
        req: _Request = ex.ctx
        # The request and its state point at each other: unlinked here, both go with their
        # last reference instead of waiting for the cycle collector (measured: a collection
        # every few hundred requests, 5 % of the warm path's instructions).
        ex.ctx = None
        rs = req.rs
        if req.wait_timer is not None:
            req.wait_timer.cancel()
            req.wait_timer = None
        lease = req.lease
        if lease is not None:
            req.lease = None
            rs.active -= 1
            lease.release()
        elif req.ticket is not None:
            if req.ticket.cancel():
                rs.unqueue()
            req.ticket = None
        self.reporter.request_out(rs.stat_key, self.loop.time())

    # -- introspection (metrics) -----------------------------------------------------------
    @property
    def revisions(self) -> dict[RevisionKey, RevisionState]:
        """The revisions known (read-only view for status and metrics; see ``registry``)."""
        return self.registry.revisions

    def fail_waiting(self, key: RevisionKey, body: bytes) -> int:
        """Answer every request held for ``key`` with 503 ``body``; how many were answered."""
        return self.registry.fail_waiting(key, body)

    def gauges(self) -> list[tuple[tuple[str, str], int, int]]:
        """(labels, queued, active) per revision."""
        return self.registry.gauges()

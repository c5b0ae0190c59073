"""The queue-proxy's request path (Knative SPEC §1.3), as one handler on the proxy engine.

Order of Knative's chain, flattened: request log (outermost, via ``on_done``) -> drainer and
probe answers -> timeouts -> kubelet-probe bypass -> stats in -> breaker -> proxy -> (on the
way out) stats out, breaker release, metrics, request log. Everything per request is a few
attribute reads and integer updates; a request waiting in the breaker costs one small object.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from dataplane.breaker import Breaker, QueueFullError, Waiter
from dataplane.handle import RequestHandle
from dataplane.proxy import ServerConfig
from dataplane.request import Request
from dataplane.stats import RequestStats
from dataplane.timeouts import TimeoutPolicy
from dataplane.upstream import UpstreamPool

from .drain import Drainer
from .readiness import ReadinessProber

if TYPE_CHECKING:
    from dataplane.promtext import Histogram
    from dataplane.reqlog import RequestLogTemplate
    from dataplane.tracing import RequestSpans, Tracer

__all__ = [
    "INDEXED_HEADERS",
    "ORIGINAL_HOST",
    "STRIPPED_HEADERS",
    "QueueProxyHandler",
    "server_config",
]

log = logging.getLogger("queueproxy")

# The request headers this handler (and its tracer and request log) reads, declared to the
# engine in the server's config (ServerConfig(index_headers=..., strip_headers=...)).
INDEXED_HEADERS: Final = (
    b"user-agent",
    b"k-network-probe",
    b"k-network-hash",
    b"k-kubelet-probe",
    b"k-proxy-request",
    b"traceparent",
    b"x-b3-traceid",
    b"referer",
)
# Knative's routing headers end at the queue-proxy (never reach the user container).
STRIPPED_HEADERS: Final = (b"knative-serving-revision", b"knative-serving-namespace")
# Set by the activator/ingress: the Host the user container must see (ServerConfig.host_from).
ORIGINAL_HOST: Final = b"k-original-host"


def server_config(**limits: Any) -> ServerConfig:
    """The config of a server running this handler: the headers above, K-Original-Host as the
    upstream Host, and ``limits`` (any other :class:`~dataplane.proxy.ServerConfig` field)."""
    return ServerConfig(
        host_from=ORIGINAL_HOST,
        index_headers=INDEXED_HEADERS,
        strip_headers=STRIPPED_HEADERS,
        **limits,
    )


_HEALTH_UAS: Final = (b"kube-probe/", b"Knative-Activator-Probe", b"Knative-Autoscaling-Probe")
_TEXT: Final = b"Content-Type: text/plain; charset=utf-8\r\n"

# ctx codes of an exchange on the fast path
_DIRECT: Final = 0
_PROXIED: Final = 1
_SLOT: Final = 2  # holds a breaker slot
_PROBE: Final = (
    4  # a probe (any K-Network-Probe value): proxied and counted, but not logged/measured
)


class _Queued:
    """A request waiting in the breaker."""

    __slots__ = ("ex", "granted", "handler", "probe", "proxied", "spans", "waiter")

    def __init__(
        self, handler: QueueProxyHandler, ex: RequestHandle, proxied: bool, probe: bool
    ) -> None:
        self.handler = handler
        self.ex = ex
        self.proxied = proxied
        self.probe = probe
        self.granted = False
        self.waiter: Waiter | None = None
        self.spans: RequestSpans | None = None

    def grant(self) -> None:
        self.granted = True
        if self.spans is not None:
            self.spans.end_wait()
        ex = self.ex
        if not ex.done:
            ex.proxy(self.handler.pool)


class QueueProxyHandler:
    """Handles every request on the main port."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        pool: UpstreamPool,
        breaker: Breaker | None,
        stats: RequestStats,
        prober: ReadinessProber,
        drainer: Drainer,
        timeouts: TimeoutPolicy,
        duration: Histogram | None = None,
        request_log: RequestLogTemplate | None = None,
        log_probes: bool = False,
        log_fields: dict[str, str] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.breaker = breaker
        self.stats = stats
        self.prober = prober
        self.drainer = drainer
        self.timeouts = timeouts
        self.duration = duration
        self.request_log = request_log
        self.log_probes = log_probes
        self.log_fields = log_fields or {}
        self.tracer = tracer
        self._status_labels: dict[int, tuple[str, ...]] = {}
        self._needs_done = duration is not None or request_log is not None
        self._write_log: Callable[[str], None] = _stdout_writer()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_done: Callable[[Request], None] = self._done  # bound once, not per request
        self._on_done_queued: Callable[[Request], None] = self._done_queued

    # -- entry -----------------------------------------------------------------------------
    def __call__(self, request: Request) -> None:
        # Every request the engine passes derives from RequestHandle (HTTP/1.1's Exchange,
        # HTTP/2's H2Stream). Typed so, the compiled handler reads its fields and calls its
        # methods directly instead of through Python's attribute lookup (the activator's
        # handler does the same). The compiled cast checks the type.
        ex = cast(RequestHandle, request)
        hdr = ex.hdr
        ua = hdr.get(b"user-agent")
        netprobe = hdr.get(b"k-network-probe")
        # (the probes' User-Agents begin with k or K: others skip the method call, which
        # mypyc would pass a new tuple)
        if ua and (ua[0] | 0x20) == 0x6B and ua.startswith(_HEALTH_UAS):
            if self.request_log is not None and self.log_probes:
                ex.on_done = self._log_only
            self._health(ex, netprobe)
            return
        if netprobe == b"probe":
            if self.request_log is not None and self.log_probes:
                ex.on_done = self._log_only
            self._network_probe(ex)
            return
        self.drainer.request_seen()
        ex.set_timeouts(self.timeouts)
        if b"k-kubelet-probe" in hdr:
            # Kubelet probe marker: straight to the app, bypassing stats and the breaker.
            if self.request_log is not None and self.log_probes:
                ex.on_done = self._log_only
            ex.proxy(self.pool)
            return
        proxied = hdr.get(b"k-proxy-request") == b"activator"
        if proxied:
            self.stats.proxied_in(ex.start)
            code = _PROXIED
        else:
            self.stats.req_in(ex.start)
            code = _DIRECT
        if netprobe:
            # Knative's IsProbe: excluded from the request log and request metrics only.
            code |= _PROBE
        spans: RequestSpans | None = None
        tr = self.tracer
        if tr is not None and not netprobe and tr.sampler.sample(hdr.get(b"traceparent")):
            spans = tr.start_request(
                ex, "queue", "kn.queueproxy.proxy", "kn.queueproxy.wait", ex.start, self.loop.time()
            )
        b = self.breaker
        if b is None:
            ex.ctx = code
            ex.on_done = self._on_done
            if spans is not None:
                spans.attach(ex)
            ex.proxy(self.pool)
            return
        if spans is not None:
            spans.start_wait(spans.inner)
        try:
            got = b.try_acquire()
        except QueueFullError:
            ex.ctx = code
            ex.on_done = self._on_done
            if spans is not None:
                spans.end_wait("pending request queue full")
                spans.attach(ex)
            ex.error(503, "pending request queue full")
            return
        if got:
            ex.ctx = code | _SLOT
            ex.on_done = self._on_done
            if spans is not None:
                spans.end_wait()
                spans.attach(ex)
            ex.proxy(self.pool)
            return
        q = _Queued(self, ex, proxied, bool(netprobe))
        ex.ctx = q
        ex.on_done = self._on_done_queued
        if spans is not None:
            q.spans = spans
            spans.attach(ex)
        q.waiter = b.enqueue(q.grant)

    # -- probes ----------------------------------------------------------------------------
    def _health(self, ex: RequestHandle, netprobe: bytes | None) -> None:
        if self.drainer.draining:
            ex.error(503, "shutting down")
        elif netprobe != b"queue":
            value = (netprobe or b"").decode("latin-1")
            ex.error(400, f"unexpected probe header value: {value}")
        elif not self.prober.probes:
            ex.respond(200, b"queue", _TEXT)
        else:
            t = self.loop.create_task(self._run_probe(ex))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _run_probe(self, ex: RequestHandle) -> None:
        try:
            ok = await self.prober.probe()
        except Exception:
            log.exception("readiness probe failed")
            ok = False
        if ex.done:
            return
        if self.drainer.draining:
            ex.error(503, "shutting down")
        elif ok:
            ex.respond(200, b"queue", _TEXT)
        else:
            ex.respond(503)

    def _network_probe(self, ex: RequestHandle) -> None:
        if self.drainer.draining:
            ex.error(503, "shutting down")
            return
        h = ex.hdr.get(b"k-network-hash")
        if not h:
            ex.error(400, 'a probe request must contain a non-empty "K-Network-Hash" header')
            return
        ex.respond(200, b"", b"K-Network-Hash: " + h + b"\r\n")

    # -- completion ------------------------------------------------------------------------
    def _done(self, request: Request) -> None:
        ex = cast(RequestHandle, request)  # as in __call__
        code = ex.ctx
        now = self.loop.time()
        if code & _PROXIED:
            self.stats.proxied_out(now)
        else:
            self.stats.req_out(now)
        if code & _SLOT:
            assert self.breaker is not None
            self.breaker.release()
        if self._needs_done:
            self._observe(ex, now, ex.start, bool(code & _PROBE))

    def _done_queued(self, request: Request) -> None:
        ex = cast(RequestHandle, request)  # as in __call__
        q: _Queued = ex.ctx
        now = self.loop.time()
        if q.proxied:
            self.stats.proxied_out(now)
        else:
            self.stats.req_out(now)
        if q.granted:
            assert self.breaker is not None
            self.breaker.release()
        elif q.waiter is not None:
            q.waiter.cancel()
        if self._needs_done:
            self._observe(ex, now, ex.start, q.probe)

    def _log_only(self, request: Request) -> None:
        if self.request_log is not None:
            self._log_request(cast(RequestHandle, request), self.loop.time())

    def _observe(self, ex: RequestHandle, now: float, start: float, probe: bool) -> None:
        if probe:
            if self.request_log is not None and self.log_probes:
                self._log_request(ex, now)
            return
        d = self.duration
        if d is not None and ex.resp_status:
            labels = self._status_labels.get(ex.resp_status)
            if labels is None:
                labels = self._status_labels[ex.resp_status] = (str(ex.resp_status),)
            d.observe(now - start, labels)
        if self.request_log is not None:
            self._log_request(ex, now)

    def _log_request(self, ex: RequestHandle, now: float) -> None:
        from dataplane.reqlog import (
            LogContext,
            LogRequest,
            LogResponse,
            LogRevision,
            fallback_line,
            trace_id_from_headers,
        )

        assert self.request_log is not None
        hdr = ex.hdr
        clen_raw = hdr.get(b"content-length")
        if ex.req_chunked:
            clen = -1
        elif clen_raw is not None:
            clen = int(clen_raw)
        else:
            clen = 0
        ip = ex.peer.decode()
        remote = f"[{ip}]:{ex.peer_port}" if ":" in ip else f"{ip}:{ex.peer_port}"
        method = ex.method.decode("latin-1")
        uri = ex.target.decode("utf-8", "surrogateescape")
        code = ex.resp_status or 200
        latency = now - ex.start
        f = self.log_fields
        ctx = LogContext(
            Request=LogRequest(
                Method=method,
                RequestURI=uri,
                ContentLength=clen,
                UserAgent=(hdr.get(b"user-agent") or b"").decode("utf-8", "surrogateescape"),
                RemoteAddr=remote,
                Referer=(ex.find_header(b"referer") or b"").decode("utf-8", "surrogateescape"),
                Proto="HTTP/" + ex.version,
                Host=(hdr.get(b"host") or b"").decode("utf-8", "surrogateescape"),
            ),
            Response=LogResponse(Code=code, Size=ex.resp_size, Latency=latency),
            Revision=LogRevision(
                Name=f.get("revision", ""),
                Namespace=f.get("namespace", ""),
                Service=f.get("service", ""),
                Configuration=f.get("configuration", ""),
                PodName=f.get("pod", ""),
                PodIP=f.get("pod_ip", ""),
            ),
            TraceID=trace_id_from_headers(
                ex.find_header(b"traceparent"), ex.find_header(b"x-b3-traceid")
            ),
        )
        try:
            line = self.request_log.render(ctx)
        except Exception:
            line = fallback_line(method, code, latency, uri)
        self._write_log(line)


def _stdout_writer() -> Callable[[str], None]:
    def write(line: str) -> None:
        data = line.encode("utf-8", "surrogateescape")
        try:
            while data:
                n = os.write(1, data)
                data = data[n:]
        except OSError:
            pass

    return write

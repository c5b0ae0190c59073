"""Tracing end to end with real processes (SPEC §1.3, §1.11, §2.9): a trace started by the test
client is continued by the queue-proxy and the activator, spans reach an OTLP/HTTP collector on
loopback with the right parents, and W3C headers pass through unchanged when not sampled or
when tracing is off."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.apps import otlp_collector
from tests.apps.autoscaler_stub import RunningStub
from tests.apps.otlp_collector import RunningCollector, Span
from tests.apps.upstream import RunningApp

from .activator_helpers import (
    PlatformFile,
    Pods,
    RawPod,
    StartActivator,
    head_lines,
    rev_headers,
)
from .conftest import StartQP, make_client
from .helpers import eventually

REV = "hello-00001"
TRACESTATE = "vendor1=abc,vendor2=x:y"
BAGGAGE = "userId=alice,tenant=t%201;prop=1"
SPAN_SERVER = 2  # OTLP SpanKind SERVER


def traceparent(sampled: bool) -> tuple[str, str, str]:
    """(header value, trace id, parent span id) of a fresh client trace."""
    tid, pid = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{tid}-{pid}-{'01' if sampled else '00'}", tid, pid


def tracing_env(
    col: RunningCollector, rate: float = 1.0, *, prometheus: bool = False
) -> dict[str, str]:
    obs: dict[str, object] = {
        "tracing": {"protocol": "http/protobuf", "endpoint": col.endpoint, "samplingRate": rate}
    }
    if prometheus:
        obs["requestMetrics"] = {"protocol": "prometheus"}
    return {
        "OBSERVABILITY_CONFIG": json.dumps(obs),
        "OTEL_BSP_SCHEDULE_DELAY": "20",  # export within ~20 ms instead of 5 s
    }


def seen_headers(r: httpx.Response) -> dict[str, list[str]]:
    """The headers the test app received (``/headers``), by lower-case name."""
    out: dict[str, list[str]] = {}
    for k, v in r.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def by_name(spans: list[Span]) -> dict[str, Span]:
    out: dict[str, Span] = {}
    for s in spans:
        assert s.name not in out, f"two {s.name} spans: {spans}"
        out[s.name] = s
    return out


@pytest.fixture
async def collector() -> AsyncIterator[RunningCollector]:
    c = await otlp_collector.start()
    yield c
    await c.close()


async def test_qp_continues_the_client_trace(
    collector: RunningCollector, app: RunningApp, start_qp: StartQP
) -> None:
    qp = await start_qp(
        {**tracing_env(collector, rate=0.0), "CONTAINER_CONCURRENCY": "2"}, user_port=app.port
    )
    tp, tid, client_span = traceparent(sampled=True)
    async with make_client(qp.url()) as c:
        r = await c.get(
            "/headers?x=1",
            headers={"traceparent": tp, "tracestate": TRACESTATE, "baggage": BAGGAGE},
        )
    assert r.status_code == 200
    h = seen_headers(r)
    assert len(h["traceparent"]) == 1
    version, got_tid, parent, flags = h["traceparent"][0].split("-")
    assert (version, got_tid, flags) == ("00", tid, "01")
    assert parent != client_span
    assert h["tracestate"] == [TRACESTATE]
    assert h["baggage"] == [BAGGAGE]

    spans = await collector.wait_for(lambda s: len([x for x in s if x.trace_id == tid]) >= 3)
    named = by_name(collector.trace(tid))
    assert set(named) == {"queue", "kn.queueproxy.proxy", "kn.queueproxy.wait"}
    server, proxy, wait = named["queue"], named["kn.queueproxy.proxy"], named["kn.queueproxy.wait"]
    assert server.parent_id == client_span
    assert server.kind == SPAN_SERVER
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/headers"
    assert server.attributes["http.response.status_code"] == 200
    assert proxy.parent_id == server.span_id
    assert wait.parent_id == proxy.span_id
    assert parent == proxy.span_id  # the app's parent is the proxy span
    assert {s.scope for s in named.values()} == {"knative.dev/serving/pkg/queue"}
    assert server.service == "hello"
    assert len(spans) == 3  # nothing else was traced


async def test_qp_unsampled_and_probes_pass_through_untraced(
    collector: RunningCollector, app: RunningApp, start_qp: StartQP
) -> None:
    qp = await start_qp(tracing_env(collector, rate=0.0), user_port=app.port)
    unsampled, un_tid, _ = traceparent(sampled=False)
    probe_tp, probe_tid, _ = traceparent(sampled=True)
    last, last_tid, _ = traceparent(sampled=True)
    async with make_client(qp.url()) as c:
        r = await c.get("/headers", headers={"traceparent": unsampled, "baggage": BAGGAGE})
        h = seen_headers(r)
        assert h["traceparent"] == [unsampled]  # byte for byte: no span, no new parent
        assert h["baggage"] == [BAGGAGE]
        # Rate 0 and no traceparent: nothing is added.
        r = await c.get("/headers")
        assert "traceparent" not in seen_headers(r)
        # Probes are never traced, even with a sampled parent.
        r = await c.get("/headers", headers={"traceparent": probe_tp, "K-Network-Probe": "x"})
        assert seen_headers(r)["traceparent"] == [probe_tp]
        r = await c.get("/headers", headers={"traceparent": probe_tp, "K-Kubelet-Probe": "queue"})
        assert seen_headers(r)["traceparent"] == [probe_tp]
        # A sampled request last: once its spans are in, earlier ones would have been too.
        await c.get("/hello", headers={"traceparent": last})
    await collector.wait_for(lambda s: any(x.trace_id == last_tid for x in s))
    seen = {s.trace_id for s in collector.spans}
    assert un_tid not in seen
    assert probe_tid not in seen
    assert seen == {last_tid}


async def test_qp_root_sampling_starts_a_trace(
    collector: RunningCollector, app: RunningApp, start_qp: StartQP
) -> None:
    qp = await start_qp(tracing_env(collector, rate=1.0), user_port=app.port)
    async with make_client(qp.url()) as c:
        r = await c.get("/headers", headers={"tracestate": TRACESTATE})
    h = seen_headers(r)
    _, tid, parent, flags = h["traceparent"][0].split("-")
    assert int(flags, 16) & 1  # sampled (the SDK may also set the W3C "random" flag)
    assert h["tracestate"] == [TRACESTATE]
    await collector.wait_for(lambda s: len([x for x in s if x.trace_id == tid]) >= 2)
    named = by_name(collector.trace(tid))
    assert set(named) == {"queue", "kn.queueproxy.proxy"}  # no breaker: no wait span
    assert named["queue"].parent_id == ""
    assert named["kn.queueproxy.proxy"].span_id == parent


async def test_passthrough_with_tracing_off(app: RunningApp, start_qp: StartQP) -> None:
    qp = await start_qp({"OTEL_TRACES_EXPORTER": "none"}, user_port=app.port)
    for sampled in (True, False):
        tp, _, _ = traceparent(sampled)
        async with make_client(qp.url()) as c:
            r = await c.get(
                "/headers",
                headers={"traceparent": tp, "tracestate": TRACESTATE, "baggage": BAGGAGE},
            )
        h = seen_headers(r)
        assert h["traceparent"] == [tp]
        assert h["tracestate"] == [TRACESTATE]
        assert h["baggage"] == [BAGGAGE]
    async with make_client(qp.url()) as c:
        assert "traceparent" not in seen_headers(await c.get("/headers"))


@pytest.mark.parametrize("config", ['{"tracing": {"protocol": "zipkin"}}', "{"])
async def test_bad_tracing_config_is_one_clear_error(
    config: str, app: RunningApp, start_qp: StartQP
) -> None:
    qp = await start_qp({"OBSERVABILITY_CONFIG": config}, user_port=app.port, wait=False)
    assert await qp.wait_exit() == 1
    err = qp.stderr()
    assert err.startswith("queue-proxy: OBSERVABILITY_CONFIG")
    assert "Traceback" not in err


# --------------------------------------------------------------------------- activator


async def test_activator_and_qp_continue_the_client_trace(
    tmp_path: Path,
    collector: RunningCollector,
    stub: RunningStub,
    start_activator: StartActivator,
    pods: Pods,
) -> None:
    pod = await pods.start(**tracing_env(collector, rate=0.0))
    platform = PlatformFile(tmp_path / "platform.json")
    platform.revision(REV, cc=0, ready=[pod.dest])
    platform.write()
    act = await start_activator(platform, stub.url, **tracing_env(collector, rate=0.0))
    tp, tid, client_span = traceparent(sampled=True)
    unsampled, un_tid, _ = traceparent(sampled=False)
    async with make_client(act.url()) as c:
        r = await c.get(
            "/headers",
            headers={**rev_headers(REV), "traceparent": unsampled, "baggage": BAGGAGE},
        )
        assert seen_headers(r)["traceparent"] == [unsampled]
        r = await c.get(
            "/headers",
            headers={
                **rev_headers(REV),
                "traceparent": tp,
                "tracestate": TRACESTATE,
                "baggage": BAGGAGE,
            },
        )
    assert r.status_code == 200
    h = seen_headers(r)
    _, got_tid, app_parent, flags = h["traceparent"][0].split("-")
    assert (got_tid, flags) == (tid, "01")
    assert h["tracestate"] == [TRACESTATE]
    assert h["baggage"] == [BAGGAGE]

    names = {"handle", "throttler_try", "activator_proxy", "queue", "kn.queueproxy.proxy"}
    await collector.wait_for(lambda s: {x.name for x in s if x.trace_id == tid} >= names)
    named = by_name(collector.trace(tid))
    assert set(named) == names
    handle = named["handle"]
    assert handle.parent_id == client_span
    assert handle.scope == "knative.dev/serving/pkg/activator"
    assert named["throttler_try"].parent_id == handle.span_id
    assert named["activator_proxy"].parent_id == handle.span_id
    assert named["queue"].parent_id == named["activator_proxy"].span_id
    assert named["kn.queueproxy.proxy"].parent_id == named["queue"].span_id
    assert app_parent == named["kn.queueproxy.proxy"].span_id
    assert un_tid not in {s.trace_id for s in collector.spans}


async def test_activator_metrics_parse_and_move_probes_excluded(
    tmp_path: Path, stub: RunningStub, start_activator: StartActivator, pods: Pods
) -> None:
    pod = await pods.start()
    platform = PlatformFile(tmp_path / "platform.json")
    platform.revision(
        REV,
        cc=0,
        ready=[pod.dest],
        annotations={
            "serving.knative.dev/service": "hello",
            "serving.knative.dev/configuration": "hello",
        },
    )
    platform.write()
    act = await start_activator(platform, stub.url)
    rev = {"k8s_namespace_name": "default", "kn_revision_name": REV}
    full = {**rev, "kn_service_name": "hello", "kn_configuration_name": "hello"}
    m = await act.metrics()  # parsed by prometheus_client
    assert m["kn_activator_stats_conn_reachable"] == [({"peer": "autoscaler"}, 1.0)]
    assert "kn_revision_request_concurrency" not in m
    async with make_client(act.url()) as c:
        # Probes are answered by the activator itself and leave no trace in the metrics.
        for h in (
            {"User-Agent": "kube-probe/1.30"},
            {"K-Network-Probe": "activator"},
            {"K-Network-Probe": "probe", "K-Network-Hash": "x"},
        ):
            assert (await c.get("/", headers={**rev_headers(REV), **h})).status_code == 200
        assert "kn_revision_request_concurrency" not in await act.metrics()
        for _ in range(3):
            assert (await c.get("/hello", headers=rev_headers(REV))).status_code == 200

    async def reported() -> bool:
        return await act.metric("kn_revision_request_concurrency", **full) is not None

    await eventually(reported, timeout=5, what="the per-second concurrency gauge")
    assert await act.metric("kn_revision_request_active", **rev) == 0
    assert await act.metric("kn_revision_request_queued", **rev) == 0


async def test_qp_wait_span_covers_the_breaker_queue(
    collector: RunningCollector, app: RunningApp, start_qp: StartQP
) -> None:
    """CC=1: a request that queues gets a wait span that ends when it gets the slot; with the
    queue full (10 x CC) the wait span and the server span are errors (503)."""
    qp = await start_qp(
        {**tracing_env(collector, rate=0.0, prometheus=True), "CONTAINER_CONCURRENCY": "1"},
        user_port=app.port,
    )
    holder, holder_tid, _ = traceparent(sampled=True)
    waiting = [traceparent(sampled=True) for _ in range(10)]
    full, full_tid, _ = traceparent(sampled=True)
    async with make_client(qp.url()) as c:
        first = asyncio.create_task(c.get("/gate", headers={"traceparent": holder}))
        await app.state.wait_for(lambda s: s.in_flight == 1)
        queued = [
            asyncio.create_task(c.get("/gate", headers={"traceparent": tp})) for tp, _, _ in waiting
        ]

        # Wait until all ten are queued in the breaker: then the next one overflows.
        async with make_client(f"http://127.0.0.1:{qp.user_metrics_port}") as m:

            async def all_queued() -> bool:
                text = (await m.get("/metrics")).text
                return "kn_serving_queue_depth 11" in text

            await eventually(all_queued, timeout=5, what="11 requests in the breaker")
        r = await c.get("/hello", headers={"traceparent": full})
        assert r.status_code == 503
        app.state.gate.set()
        assert (await first).status_code == 200
        assert all(r.status_code == 200 for r in await asyncio.gather(*queued))

    tids = [tid for _, tid, _ in waiting]
    await collector.wait_for(
        lambda s: {x.trace_id for x in s if x.name == "queue"} >= {holder_tid, full_tid, *tids}
    )
    rejected = by_name(collector.trace(full_tid))
    assert set(rejected) == {"queue", "kn.queueproxy.proxy", "kn.queueproxy.wait"}
    assert rejected["kn.queueproxy.wait"].status_code == 2  # error
    assert rejected["queue"].status_code == 2
    assert rejected["queue"].attributes["http.response.status_code"] == 503
    for tid in tids:
        named = by_name(collector.trace(tid))
        wait, proxy = named["kn.queueproxy.wait"], named["kn.queueproxy.proxy"]
        assert wait.status_code == 0 and wait.parent_id == proxy.span_id
        assert named["queue"].attributes["http.response.status_code"] == 200


async def test_activator_throttler_try_covers_the_wait_for_a_pod(
    tmp_path: Path,
    collector: RunningCollector,
    stub: RunningStub,
    start_activator: StartActivator,
    pods: Pods,
) -> None:
    """A request held until its revision has a pod: throttler_try ends when the pod is there,
    then activator_proxy; a request whose queue-wait limit passes: throttler_try is an error."""
    pod = await pods.start()
    platform = PlatformFile(tmp_path / "platform.json")
    platform.revision(REV, cc=0)  # no pods yet
    platform.revision("nopods-00001", queueWaitSeconds=0.05)
    platform.write()
    act = await start_activator(platform, stub.url, **tracing_env(collector, rate=0.0))
    held, held_tid, _ = traceparent(sampled=True)
    gone, gone_tid, _ = traceparent(sampled=True)
    unknown, unknown_tid, _ = traceparent(sampled=True)
    async with make_client(act.url()) as c:
        r = await c.get("/", headers={**rev_headers("nope-00001"), "traceparent": unknown})
        assert r.status_code == 404
        r = await c.get("/", headers={**rev_headers("nopods-00001"), "traceparent": gone})
        assert r.status_code == 503
        task = asyncio.create_task(
            c.get("/headers", headers={**rev_headers(REV), "traceparent": held})
        )

        async def queued() -> bool:
            return await act.queued(REV) == 1

        await eventually(queued, timeout=5, what="the request held")
        platform.endpoints(REV, ready=[pod.dest])
        platform.write()
        r = await task
    assert r.status_code == 200
    assert int(r.headers["knd-activator-wait-ms"]) > 0
    await collector.wait_for(
        lambda s: (
            {x.trace_id for x in s if x.name == "activator_proxy"} >= {held_tid}
            and {x.trace_id for x in s if x.name == "handle"} >= {gone_tid}
        )
    )
    named = by_name(collector.trace(held_tid))
    handle, tried = named["handle"], named["throttler_try"]
    assert tried.status_code == 0 and tried.parent_id == handle.span_id
    assert named["activator_proxy"].parent_id == handle.span_id
    await collector.wait_for(lambda s: any(x.trace_id == unknown_tid for x in s))
    notfound = by_name(collector.trace(unknown_tid))
    assert set(notfound) == {"handle"}  # traced, as Knative's server span is
    assert notfound["handle"].attributes["http.response.status_code"] == 404
    failed = by_name(collector.trace(gone_tid))
    assert set(failed) == {"handle", "throttler_try"}  # never proxied
    assert failed["throttler_try"].status_code == 2
    assert failed["handle"].attributes["http.response.status_code"] == 503
    # The stats websocket to the autoscaler (aiohttp client, off the hot path) is traced too.
    ws = [s for s in collector.spans if "aiohttp_client" in s.scope]
    assert ws and ws[0].service == "activator"


async def test_qp_traces_h2c_grpc_streams(collector: RunningCollector, start_qp: StartQP) -> None:
    """An HTTP/2 stream (unary gRPC call) is traced like an HTTP/1 request; the app's metadata
    carries the new parent; an unsampled call's traceparent arrives unchanged."""
    import grpc

    from tests.apps import grpc_app

    gapp = await grpc_app.start()
    try:
        qp = await start_qp(tracing_env(collector, rate=0.0), user_port=gapp.port)
        tp, tid, client_span = traceparent(sampled=True)
        unsampled, un_tid, _ = traceparent(sampled=False)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{qp.port}") as ch:
            call = ch.unary_unary(f"/{grpc_app.SERVICE}/Unary")
            assert (
                await call(b"hi", metadata=(("traceparent", unsampled),), timeout=5) == b"echo:hi"
            )
            assert gapp.metadata[-1]["traceparent"] == unsampled
            md = (("traceparent", tp), ("tracestate", TRACESTATE), ("baggage", BAGGAGE))
            assert await call(b"hi", metadata=md, timeout=5) == b"echo:hi"
        seen = gapp.metadata[-1]
    finally:
        gapp.release.set()
        await gapp.close()
    _, got_tid, parent, flags = seen["traceparent"].split("-")
    assert (got_tid, flags) == (tid, "01")
    assert seen["tracestate"] == TRACESTATE
    assert seen["baggage"] == BAGGAGE
    await collector.wait_for(lambda s: len([x for x in s if x.trace_id == tid]) >= 2)
    named = by_name(collector.trace(tid))
    assert named["queue"].parent_id == client_span
    assert named["queue"].attributes["http.request.method"] == "POST"
    assert named["kn.queueproxy.proxy"].span_id == parent
    assert un_tid not in {s.trace_id for s in collector.spans}


async def test_activator_passes_w3c_headers_unchanged_with_tracing_off(
    tmp_path: Path, stub: RunningStub, start_activator: StartActivator
) -> None:
    """Byte for byte on the wire to the pod, including repeated and odd-cased lines."""
    pod = await RawPod().start()
    try:
        platform = PlatformFile(tmp_path / "platform.json")
        platform.revision(REV, cc=0, ready=[pod.dest])
        platform.write()
        act = await start_activator(platform, stub.url)
        tp, _, _ = traceparent(sampled=True)
        raw = (
            f"GET / HTTP/1.1\r\nHost: x\r\nKnative-Serving-Namespace: default\r\n"
            f"Knative-Serving-Revision: {REV}\r\nTraceParent: {tp}\r\n"
            f"tracestate: {TRACESTATE}\r\ntracestate: v3=z\r\nbaggage: {BAGGAGE}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
        try:
            writer.write(raw)
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 10)
            assert status.startswith(b"HTTP/1.1 200"), status
        finally:
            writer.close()
        lines = head_lines(pod.heads[-1])
        assert ("TraceParent", tp) in lines
        assert [v for k, v in lines if k == "tracestate"] == [TRACESTATE, "v3=z"]
        assert ("baggage", BAGGAGE) in lines
        assert sum(k.lower() == "traceparent" for k, _ in lines) == 1
    finally:
        await pod.close()

"""dataplane.tracing: configuration, the cheap sampler, upstream traceparent rewriting, spans."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dataplane.envconfig import ConfigError
from dataplane.tracing import (
    Sampler,
    TracingConfig,
    set_upstream_traceparent,
    start_tracing,
    tracing_config,
    valid_traceparent,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
PID = "00f067aa0ba902b7"
SAMPLED = f"00-{TID}-{PID}-01".encode()
UNSAMPLED = f"00-{TID}-{PID}-00".encode()


# --------------------------------------------------------------------------- config


def test_off_unless_asked() -> None:
    assert not tracing_config({}).enabled
    assert not tracing_config({"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not tracing_config({}, protocol="none", endpoint="x", rate=1.0).enabled


def test_knative_config_wins() -> None:
    c = tracing_config(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_on"},
        protocol="http/protobuf",
        endpoint="http://c:4318/v1/traces",
        rate=0.25,
        service_name="hello",
        resource={"k8s.pod.name": "p", "kn.service.name": ""},
    )
    assert (c.protocol, c.endpoint, c.sampler, c.rate) == (
        "http/protobuf",
        "http://c:4318/v1/traces",
        "parentbased_traceidratio",
        0.25,
    )
    assert c.service_name == "hello"
    assert c.resource == {"k8s.pod.name": "p"}  # empty attributes are left out


def test_otel_variables() -> None:
    c = tracing_config(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.5",
            "OTEL_SERVICE_NAME": "svc",
        },
        service_name="fallback",
    )
    assert (c.protocol, c.sampler, c.rate, c.service_name) == ("grpc", "traceidratio", 0.5, "svc")
    c = tracing_config({"OTEL_TRACES_EXPORTER": "otlp"})
    assert (c.protocol, c.sampler, c.rate) == ("http/protobuf", "parentbased_always_on", 1.0)
    assert tracing_config({"OTEL_TRACES_EXPORTER": "console"}).protocol == "stdout"
    assert not tracing_config({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}).enabled


@pytest.mark.parametrize(
    ("environ", "kw", "names"),
    [
        ({}, {"protocol": "zipkin"}, "tracing.protocol"),
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, {}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            {},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "x"}, {}, "OTEL_TRACES_SAMPLER"),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "2",
            },
            {},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_bad_settings_name_the_setting(
    environ: dict[str, str], kw: dict[str, Any], names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        tracing_config(environ, **kw)


# --------------------------------------------------------------------------- sampler


@pytest.mark.parametrize(
    ("tp", "ok"),
    [
        (SAMPLED, True),
        (UNSAMPLED, True),
        (f"01-{TID}-{PID}-01-extra".encode(), True),  # a later version may add fields
        (SAMPLED + b"-x", False),  # version 00 has exactly four fields
        (f"ff-{TID}-{PID}-01".encode(), False),
        (f"00-{'0' * 32}-{PID}-01".encode(), False),
        (f"00-{TID}-{'0' * 16}-01".encode(), False),
        (f"00-{TID.upper()}-{PID}-01".encode(), False),
        (SAMPLED[:-1], False),
    ],
)
def test_valid_traceparent(tp: bytes, ok: bool) -> None:
    assert valid_traceparent(tp) is ok


def test_parent_based_follows_the_flag() -> None:
    for sampler in ("parentbased_traceidratio", "parentbased_always_off"):
        s = Sampler(sampler, 0.0)
        assert s.sample(SAMPLED)
        assert s.sample(f"00-{TID}-{PID}-03".encode())
        assert not s.sample(UNSAMPLED)
    s = Sampler("parentbased_always_on", 1.0)
    assert not s.sample(UNSAMPLED)
    assert s.sample(None)
    assert s.sample(b"garbage")  # an invalid parent counts as none
    assert not Sampler("parentbased_always_off", 1.0).sample(None)


def test_ratio_for_new_traces() -> None:
    s = Sampler("parentbased_traceidratio", 0.25)
    n = sum(s.sample(None) for _ in range(20_000))
    assert 4_300 < n < 5_700
    assert not any(Sampler("parentbased_traceidratio", 0.0).sample(None) for _ in range(1000))


def test_traceidratio_uses_the_low_64_bits_of_the_trace_id() -> None:
    s = Sampler("traceidratio", 0.5)
    low = f"00-{'1' * 16}{'0' * 15}1-{PID}-00".encode()
    high = f"00-{'0' * 16}{'f' * 16}-{PID}-01".encode()
    assert s.sample(low)  # the flag does not matter, the id does
    assert not s.sample(high)
    assert Sampler("always_on", 0).sample(UNSAMPLED)
    assert not Sampler("always_off", 1).sample(SAMPLED)


# --------------------------------------------------------------------------- upstream header


class FakeExchange:
    """The parts of dataplane.proxy.Exchange the tracer reads and writes."""

    def __init__(self, headers: list[tuple[bytes, bytes]], target: bytes = b"/p?q=1") -> None:
        self.hdr: dict[bytes, bytes] = {}
        self.hdr_out: list[bytes] = []
        for k, v in headers:
            self.hdr.setdefault(k.lower(), v)
            self.hdr_out += (k, b": ", v, b"\r\n")
        self.method = b"GET"
        self.target = target
        self.version = "1.1"
        self.on_done: Callable[[Any], None] | None = None
        self.resp_status = 0
        self.resp_started = False
        self.aborted = False

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]

    def find_header(self, lname: bytes) -> bytes | None:
        for line in b"".join(self.hdr_out).split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if colon and name.lower() == lname:
                return value.strip()
        return None

    def wire(self) -> bytes:
        return b"".join(self.hdr_out)

    def finish(self, status: int) -> None:
        self.resp_status = status
        self.resp_started = True
        assert self.on_done is not None
        self.on_done(self)


def test_upstream_traceparent_replaced_in_place() -> None:
    ex = FakeExchange([(b"A", b"1"), (b"TraceParent", SAMPLED), (b"B", b"traceparent")])
    set_upstream_traceparent(ex, b"NEW")  # type: ignore[arg-type]
    assert ex.wire() == b"A: 1\r\nTraceParent: NEW\r\nB: traceparent\r\n"
    assert ex.hdr[b"traceparent"] == SAMPLED  # the request log still sees the client's


def test_upstream_traceparent_added() -> None:
    ex = FakeExchange([(b"A", b"1")])
    set_upstream_traceparent(ex, b"NEW")  # type: ignore[arg-type]
    assert ex.wire() == b"A: 1\r\ntraceparent: NEW\r\n"


def test_upstream_traceparent_after_drop_header() -> None:
    # Exchange.drop_header leaves (line, CRLF) pairs instead of 4-part groups.
    ex = FakeExchange([])
    ex.hdr_out = [b"A: 1", b"\r\n", b"traceparent: old", b"\r\n"]
    set_upstream_traceparent(ex, b"NEW")  # type: ignore[arg-type]
    assert ex.wire() == b"A: 1\r\ntraceparent: NEW\r\n"


def test_upstream_traceparent_in_a_run_of_lines() -> None:
    # The quick path of the compiled build passes lines through as runs of the client's bytes.
    ex = FakeExchange([])
    ex.hdr_out = [b"A: 1\r\ntraceparent:old\r\nB: 2\r\n", b"C: 3\r\n"]
    set_upstream_traceparent(ex, b"NEW")  # type: ignore[arg-type]
    assert ex.wire() == b"A: 1\r\ntraceparent: NEW\r\nB: 2\r\nC: 3\r\n"


# --------------------------------------------------------------------------- spans


@pytest.fixture
def memory() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracer(memory: InMemorySpanExporter) -> Any:
    t = start_tracing(
        TracingConfig(protocol="stdout", service_name="svc"), "scope/x", exporter=memory
    )
    assert t is not None
    return t


def test_request_spans_children_of_the_incoming_context(memory: InMemorySpanExporter) -> None:
    t = tracer(memory)
    ex = FakeExchange([(b"traceparent", SAMPLED), (b"tracestate", b"k=v")])
    spans = t.start_request(ex, "queue", "inner", "wait", 10.0, 10.5)
    done: list[int] = []
    ex.on_done = lambda e: done.append(e.resp_status)
    spans.attach(ex)
    spans.start_wait(spans.inner)
    spans.end_wait()
    up = ex.find_header(b"traceparent")
    assert up is not None and up != SAMPLED
    ex.finish(503)
    assert done == [503]  # the handler's own on_done ran first
    got = {s.name: s for s in memory.get_finished_spans()}
    assert set(got) == {"queue", "inner", "wait"}
    server, inner, wait = got["queue"], got["inner"], got["wait"]
    assert server.parent is not None and server.parent.span_id == int(PID, 16)
    assert server.context.trace_id == int(TID, 16)
    assert server.context.trace_state.get("k") == "v"
    assert server.kind == SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["url.path"] == "/p"
    assert server.attributes["url.query"] == "q=1"
    assert server.status.status_code == StatusCode.ERROR
    assert inner.parent is not None and inner.parent.span_id == server.context.span_id
    assert wait.parent is not None and wait.parent.span_id == inner.context.span_id
    assert up == b"00-%s-%016x-01" % (TID.encode(), inner.context.span_id)
    # the server span starts when the request arrived (0.5 s before start_request)
    assert server.start_time is not None and inner.start_time is not None
    assert 0.4e9 < inner.start_time - server.start_time < 0.6e9
    assert server.resource.attributes["service.name"] == "svc"
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "scope/x"


def test_wait_still_open_at_the_end_is_an_error(memory: InMemorySpanExporter) -> None:
    t = tracer(memory)
    ex = FakeExchange([])
    spans = t.start_request(ex, "handle", "", "throttler_try", 1.0, 1.0)
    ex.on_done = None
    spans.attach(ex)
    spans.start_wait()
    assert ex.find_header(b"traceparent") is None  # no inner span yet: nothing upstream
    ex.finish(504)
    got = {s.name: s for s in memory.get_finished_spans()}
    assert set(got) == {"handle", "throttler_try"}
    assert got["handle"].parent is None  # a new trace
    assert got["throttler_try"].status.status_code == StatusCode.ERROR


def test_sdk_not_imported_unless_tracing_is_on() -> None:
    """The queue-proxy's idle footprint: no OpenTelemetry module, and not even this one."""
    code = (
        "import sys, queueproxy.main, activator.handler\n"
        "bad = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not bad, bad\n"
        "import dataplane.tracing\n"
        "from dataplane.tracing import tracing_config\n"
        "tracing_config({'OTEL_TRACES_EXPORTER': 'otlp'})\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code = "import sys, queueproxy.main\nassert 'dataplane.tracing' not in sys.modules\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ("c:4318", "http://c:4318/v1/traces"),
        ("https://c", "https://c/v1/traces"),
    ],
)
def test_otlp_http_endpoint(endpoint: str, url: str) -> None:
    from dataplane.tracing import _exporter

    exp = _exporter(TracingConfig(protocol="http/protobuf", endpoint=endpoint))
    assert exp._endpoint == url


def test_grpc_without_its_exporter_is_a_clear_error() -> None:
    from dataplane.tracing import _exporter

    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
            _exporter(TracingConfig(protocol="grpc", endpoint="c:4317"))
    else:  # pragma: no cover - depends on what is installed
        assert _exporter(TracingConfig(protocol="grpc", endpoint="c:4317")) is not None


def test_invalid_traceparent_starts_a_new_trace(memory: InMemorySpanExporter) -> None:
    t = tracer(memory)
    bad = f"00-{TID.upper()}-{PID}-01".encode()
    ex = FakeExchange([(b"traceparent", bad), (b"tracestate", b"k=v")])
    spans = t.start_request(ex, "queue", "inner", "wait", 1.0, 1.0)
    ex.on_done = None
    spans.attach(ex)
    ex.finish(200)
    got = {s.name: s for s in memory.get_finished_spans()}
    assert got["queue"].parent is None
    assert got["queue"].context.trace_id != int(TID, 16)
    assert ex.find_header(b"traceparent") != bad  # replaced by the new trace's context


@pytest.mark.parametrize("key", ["samplingRate", "samplingrate", "SAMPLINGRATE", "SamplingRate"])
def test_queue_proxy_reads_knatives_sampling_rate_key(key: str) -> None:
    from queueproxy.env import parse_observability

    cfg = parse_observability(json.dumps({"tracing": {"protocol": "grpc", key: 0.5}}))
    assert (cfg.tracing_protocol, cfg.tracing_sampling_rate) == ("grpc", 0.5)

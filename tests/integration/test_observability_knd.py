"""``knd run``'s ``/metrics`` on the admin port: the autoscaler's and the activator's per-revision
view in Prometheus text, moving as a request scales a service from zero."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.apps import otlp_collector

from .knd_helpers import AppRecords, knd_env
from .test_knd import (  # fixtures and helpers of the knd suite
    FAST,
    StartKnd,
    app_file,
    client,
    get,
    hello_cmd,
    records,
    start_knd,
)

__all__ = ["app_file", "records", "start_knd"]  # fixtures used by name

LABELS = {
    "k8s_namespace_name": "default",
    "kn_service_name": "hello",
    "kn_configuration_name": "hello",
    "kn_revision_name": "hello-00001",
}


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **lab: str) -> float:
    [(_, v)] = [(k, v) for k, v in m.get(name, {}).items() if all((x, lab[x]) in k for x in lab)]
    return v


async def test_metrics_follow_a_scale_from_zero(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    k = start_knd(
        "--name", "hello", "--initial-scale", "0", *FAST, *hello_cmd(app_file),
        env=knd_env(records.directory),
    )  # fmt: skip
    await k.wait_up()
    await k.wait_status(lambda s: "hello" in s, "the service")
    async with client() as c:
        admin = f"http://127.0.0.1:{k.admin_port}/metrics"
        r = await c.get(admin)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        before = samples(r.text)
        assert value(before, "kn_revision_pods_requested", **LABELS) == 0
        assert value(before, "kn_revision_pods_count", **LABELS) == 0
        assert value(before, "knd_revision_panic_mode", **LABELS) == 0
        assert value(before, "kn_revision_concurrency_target", **LABELS) > 0
        assert "knd_activator_request_wait_seconds_count" not in before

        r = await get(c, k, "/sleep?ms=0")
        assert r.status_code == 200
        await k.wait_status(lambda s: s["hello"]["ready"] == 1, "one pod ready")
        after = samples((await c.get(admin)).text)
        assert value(after, "kn_revision_pods_requested", **LABELS) == 1
        assert value(after, "kn_revision_pods_count", **LABELS) == 1
        assert value(after, "kn_revision_pods_desired", **LABELS) >= 1
        assert value(after, "kn_revision_concurrency_stable", **LABELS) > 0
        rev = {"k8s_namespace_name": "default", "kn_revision_name": "hello-00001"}
        assert value(after, "knd_activator_request_wait_seconds_count", **rev) == 1
        assert value(after, "knd_activator_request_wait_seconds_sum", **rev) > 0
        assert value(after, "kn_revision_request_queued", **rev) == 0
        assert value(after, "kn_revision_request_active", **rev) == 0
        assert (await c.get(f"http://127.0.0.1:{k.admin_port}/nope")).status_code == 404


async def test_knd_traces_like_knative_with_the_pods_continuing_the_trace(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    # OBSERVABILITY_CONFIG in knd's environment: its activator traces, and the pods' queue-
    # proxies inherit the setting, so one client trace spans activator and queue-proxy.
    collector = await otlp_collector.start()
    try:
        # samplingRate 0: only what the client's traceparent marks as sampled is traced
        tracing = {"protocol": "http/protobuf", "endpoint": collector.endpoint, "samplingRate": 0}
        env = knd_env(
            records.directory,
            OBSERVABILITY_CONFIG=json.dumps({"tracing": tracing}),
            OTEL_BSP_SCHEDULE_DELAY="20",  # export within ~20 ms
        )
        k = start_knd(
            "--name", "traced", "--initial-scale", "0", *FAST, *hello_cmd(app_file), env=env
        )  # fmt: skip
        await k.wait_up()
        tid, client_span = secrets.token_hex(16), secrets.token_hex(8)
        async with client() as c:
            r = await c.get(
                f"http://127.0.0.1:{k.port}/sleep?ms=0",
                headers={"traceparent": f"00-{tid}-{client_span}-01"},
            )
            assert r.status_code == 200
        names = {"handle", "throttler_try", "activator_proxy", "queue", "kn.queueproxy.proxy"}
        await collector.wait_for(lambda s: {x.name for x in s if x.trace_id == tid} >= names)
        spans = {s.name: s for s in collector.trace(tid)}
        assert spans["handle"].parent_id == client_span
        assert spans["handle"].scope == "knative.dev/serving/pkg/activator"
        assert spans["activator_proxy"].parent_id == spans["handle"].span_id
        assert spans["queue"].parent_id == spans["activator_proxy"].span_id
        assert spans["kn.queueproxy.proxy"].parent_id == spans["queue"].span_id
    finally:
        await collector.close()

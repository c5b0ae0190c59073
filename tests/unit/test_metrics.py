"""dataplane.metrics: scrape-time views of the autoscaler and activator in Prometheus text."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from autoscaler.decider import Decision
from dataplane.metrics import (
    add_activator_metrics,
    add_autoscaler_metrics,
    revision_labels,
    wait_histogram,
)
from dataplane.promtext import Registry


@dataclass
class FakeScaling:
    target: float = 10.0


@dataclass
class FakeRev:
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeScaler:
    last: Decision
    replicas: int = 0
    scaling: FakeScaling = field(default_factory=FakeScaling)
    rev: FakeRev = field(default_factory=FakeRev)


def parse(reg: Registry) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(reg.render().decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def decision(desired: int, *, panicking: bool = False) -> Decision:
    return Decision(
        desired=desired,
        excess_burst_capacity=-3,
        num_activators=1,
        panicking=panicking,
        stable_value=2.5,
        panic_value=7.0,
    )


def test_revision_labels() -> None:
    ann = {"serving.knative.dev/service": "s", "serving.knative.dev/configuration": "c"}
    assert revision_labels(("ns", "r-1"), ann) == ("ns", "s", "c", "r-1")
    assert revision_labels(("ns", "r-1")) == ("ns", "", "", "r-1")


def test_autoscaler_metrics_read_live_state() -> None:
    ann = {"serving.knative.dev/service": "svc"}
    revs = {
        ("default", "a-1"): FakeScaler(decision(3, panicking=True), replicas=2, rev=FakeRev(ann)),
        ("default", "b-1"): FakeScaler(decision(-1)),
    }
    ready = {("default", "a-1"): 1}
    reg = Registry()
    add_autoscaler_metrics(reg, lambda: revs, lambda k: ready.get(k, 0))
    m = parse(reg)
    a = {
        "k8s_namespace_name": "default",
        "kn_service_name": "svc",
        "kn_configuration_name": "",
        "kn_revision_name": "a-1",
    }
    assert m["kn_revision_pods_desired"] == [(a, 3.0)]  # b-1 has no decision with data yet
    assert (a, 2.0) in m["kn_revision_pods_requested"]
    assert (a, 1.0) in m["kn_revision_pods_count"]
    assert (a, -3.0) in m["kn_revision_capacity_excess"]
    assert (a, 2.5) in m["kn_revision_concurrency_stable"]
    assert (a, 7.0) in m["kn_revision_concurrency_panic"]
    assert (a, 10.0) in m["kn_revision_concurrency_target"]
    assert (a, 1.0) in m["knd_revision_panic_mode"]
    assert len(m["knd_revision_panic_mode"]) == 2
    # Values are read when scraped: a change shows in the next scrape without any update call.
    revs[("default", "a-1")].last = decision(5)
    ready[("default", "a-1")] = 4
    m = parse(reg)
    assert (a, 5.0) in m["kn_revision_pods_desired"]
    assert (a, 4.0) in m["kn_revision_pods_count"]
    assert (a, 0.0) in m["knd_revision_panic_mode"]
    del revs[("default", "a-1")]
    left = parse(reg).get("kn_revision_pods_count", [])
    assert [lab["kn_revision_name"] for lab, _ in left] == ["b-1"]


def test_activator_metrics_and_wait_histogram() -> None:
    reg = Registry()
    gauges = [(("default", "a-1"), 3, 1)]
    conc = {("default", "a-1"): 1.5}
    add_activator_metrics(reg, lambda: gauges, lambda: conc)
    h = wait_histogram()
    reg.add(h)
    h.observe(0.3, ("default", "a-1"))
    h.observe(12.0, ("default", "a-1"))
    m = parse(reg)
    lab = {"k8s_namespace_name": "default", "kn_revision_name": "a-1"}
    assert m["kn_revision_request_queued"] == [(lab, 3.0)]
    assert m["kn_revision_request_active"] == [(lab, 1.0)]
    assert m["kn_revision_request_concurrency"] == [(lab, 1.5)]
    assert m["knd_activator_request_wait_seconds_count"] == [(lab, 2.0)]
    buckets = {s["le"]: v for s, v in m["knd_activator_request_wait_seconds_bucket"]}
    assert (buckets["0.25"], buckets["0.5"], buckets["10"], buckets["30"]) == (0, 1, 1, 2)

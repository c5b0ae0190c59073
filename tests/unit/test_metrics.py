"""dataplane.metrics: scrape-time views of the autoscaler and activator in Prometheus text."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from autoscaler.decider import Decision
from dataplane.metrics import (
    ACTIVATOR_OTEL_NAMES,
    add_activator_metrics,
    add_autoscaler_metrics,
    revision_labels,
    stats_connection_metrics,
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


@dataclass
class FakeRevisionState:
    rev: FakeRev = field(default_factory=FakeRev)


@dataclass
class FakeReporter:
    last: dict[tuple[str, str], float] = field(default_factory=dict)

    def concurrency(self) -> dict[tuple[str, str], float]:
        return self.last


@dataclass
class FakeActivator:
    revisions: dict[tuple[str, str], FakeRevisionState] = field(default_factory=dict)
    reporter: FakeReporter = field(default_factory=FakeReporter)
    queued_active: list[tuple[tuple[str, str], int, int]] = field(default_factory=list)

    def gauges(self) -> list[tuple[tuple[str, str], int, int]]:
        return self.queued_active


def test_activator_metrics_and_wait_histogram() -> None:
    reg = Registry()
    ann = {"serving.knative.dev/service": "s", "serving.knative.dev/configuration": "c"}
    act = FakeActivator(
        revisions={("default", "a-1"): FakeRevisionState(FakeRev(ann))},
        # ("default", "gone-1") was deleted since the last report: Knative skips it
        reporter=FakeReporter({("default", "a-1"): 1.5, ("default", "gone-1"): 0.5}),
        queued_active=[(("default", "a-1"), 3, 1)],
    )
    add_activator_metrics(reg, act)
    h = wait_histogram()
    reg.add(h)
    h.observe(0.3, ("default", "a-1"))
    h.observe(12.0, ("default", "a-1"))
    m = parse(reg)
    lab = {"k8s_namespace_name": "default", "kn_revision_name": "a-1"}
    full = {**lab, "kn_service_name": "s", "kn_configuration_name": "c"}
    assert m["kn_revision_request_queued"] == [(lab, 3.0)]
    assert m["kn_revision_request_active"] == [(lab, 1.0)]
    assert m["kn_revision_request_concurrency"] == [(full, 1.5)]
    assert m["knd_activator_request_wait_seconds_count"] == [(lab, 2.0)]
    buckets = {s["le"]: v for s, v in m["knd_activator_request_wait_seconds_bucket"]}
    assert (buckets["0.25"], buckets["0.5"], buckets["10"], buckets["30"]) == (0, 1, 1, 2)


def test_activator_metrics_take_the_embedder_labels() -> None:
    """knd run names a revision's service and configuration after the knd service."""
    reg = Registry()
    act = FakeActivator(
        revisions={("default", "a-00001"): FakeRevisionState()},
        reporter=FakeReporter({("default", "a-00001"): 2.0}),
    )
    add_activator_metrics(reg, act, labels=lambda key, rs: (key[0], "a", "a", key[1]))
    m = parse(reg)
    want = {
        "k8s_namespace_name": "default",
        "kn_service_name": "a",
        "kn_configuration_name": "a",
        "kn_revision_name": "a-00001",
    }
    assert m["kn_revision_request_concurrency"] == [(want, 2.0)]


def test_every_activator_metric_has_its_otel_name() -> None:
    reg = Registry()
    add_activator_metrics(reg, FakeActivator())
    reg.add(wait_histogram())
    for metric in stats_connection_metrics():
        reg.add(metric)
    names = {f.name for f in text_string_to_metric_families(reg.render().decode())}
    assert names == set(ACTIVATOR_OTEL_NAMES)

"""Prometheus views of the autoscaler and the activator, read at scrape time.

Names follow Knative's OpenTelemetry instruments through the Prometheus exporter's rules
(dots to underscores, a unit suffix for real units such as ``_seconds``, none for
``{annotation}`` units, ``_total`` on counters): ``kn.revision.pods.desired`` is
``kn_revision_pods_desired``. Nothing here is touched per request: every value is computed from
the live objects when ``/metrics`` is read. Label sets are bounded by the number of revisions.

Knative's autoscaler instruments (scope ``knative.dev/serving/pkg/autoscaler``):
``kn.revision.pods.desired``/``.requested``/``.count``, ``kn.revision.capacity.excess``,
``kn.revision.concurrency.stable``/``.panic``/``.target``. Knative's OpenTelemetry set has no
panic-mode instrument (OpenCensus had ``autoscaler_panic_mode``), so that one is ours:
``knd_revision_panic_mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .promtext import Gauge, Histogram, Registry

__all__ = [
    "REVISION_LABELS",
    "WAIT_BUCKETS",
    "add_activator_metrics",
    "add_autoscaler_metrics",
    "revision_labels",
    "wait_histogram",
]

# OTel attributes k8s.namespace.name, kn.service.name, kn.configuration.name, kn.revision.name
REVISION_LABELS = (
    "k8s_namespace_name",
    "kn_service_name",
    "kn_configuration_name",
    "kn_revision_name",
)

# Seconds a request waited at the activator for capacity: cold starts land in the upper buckets.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

Key = tuple[str, str]
Rows = Iterable[tuple[tuple[str, ...], float]]


def revision_labels(key: Key, annotations: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Label values of a revision: service and configuration from Knative's labels when the
    platform passed them through, else empty (Prometheus treats empty as absent)."""
    a = annotations or {}
    return (
        key[0],
        a.get("serving.knative.dev/service", ""),
        a.get("serving.knative.dev/configuration", ""),
        key[1],
    )


def add_autoscaler_metrics(
    registry: Registry,
    revisions: Callable[[], Mapping[Key, Any]],
    ready: Callable[[Key], int],
    labels: Callable[[Key, Any], tuple[str, ...]] | None = None,
) -> None:
    """Per-revision decider and scale state.

    ``revisions()`` maps keys to objects with ``last`` (a decider ``Decision``: ``desired``,
    ``excess_burst_capacity``, ``panicking``, ``stable_value``, ``panic_value``), ``replicas``
    (what was asked of the platform) and ``scaling.target``; ``ready(key)`` is the ready pods.
    """

    def lab(key: Key, rs: Any) -> tuple[str, ...]:
        if labels is not None:
            return labels(key, rs)
        rev = getattr(rs, "rev", None)
        return revision_labels(key, getattr(rev, "annotations", None))

    def rows(value: Callable[[Key, Any], float | None]) -> Callable[[], Rows]:
        def collect() -> Rows:
            out = []
            for key, rs in sorted(revisions().items()):
                v = value(key, rs)
                if v is not None:
                    out.append((lab(key, rs), float(v)))
            return out

        return collect

    def desired(key: Key, rs: Any) -> float | None:
        d = rs.last.desired
        return None if d < 0 else d  # -1: no decision with data yet

    specs: list[tuple[str, str, Callable[[Key, Any], float | None]]] = [
        ("kn_revision_pods_desired", "Number of pods the autoscaler wants to allocate", desired),
        (
            "kn_revision_pods_requested",
            "Number of pods the autoscaler requested from the platform",
            lambda k, rs: rs.replicas,
        ),
        ("kn_revision_pods_count", "Number of pods that are ready", lambda k, rs: ready(k)),
        (
            "kn_revision_capacity_excess",
            "Excess burst capacity observed over the stable window",
            lambda k, rs: rs.last.excess_burst_capacity,
        ),
        (
            "kn_revision_concurrency_stable",
            "Observed concurrency over the stable window",
            lambda k, rs: rs.last.stable_value,
        ),
        (
            "kn_revision_concurrency_panic",
            "Observed concurrency over the panic window",
            lambda k, rs: rs.last.panic_value,
        ),
        (
            "kn_revision_concurrency_target",
            "The desired concurrent requests for each pod",
            lambda k, rs: rs.scaling.target,
        ),
        (
            "knd_revision_panic_mode",
            "1 while the autoscaler is in panic mode for the revision, else 0",
            lambda k, rs: 1.0 if rs.last.panicking else 0.0,
        ),
    ]
    for name, help_text, value in specs:
        registry.add(Gauge(name, help_text, REVISION_LABELS, fn=rows(value)))


def add_activator_metrics(
    registry: Registry,
    gauges: Callable[[], Iterable[tuple[tuple[str, ...], int, int]]],
    concurrency: Callable[[], Mapping[Key, float]],
    labels: tuple[str, ...] = ("k8s_namespace_name", "kn_revision_name"),
) -> None:
    """The activator's per-revision gauges (SPEC §2.9): ``kn.revision.request.queued`` and
    ``.active`` (``gauges()`` gives (labels, queued, active)) and ``.concurrency``."""
    registry.add(
        Gauge(
            "kn_revision_request_queued",
            "Requests waiting in the activator's throttler",
            labels,
            fn=lambda: [(lv, float(q)) for lv, q, _ in gauges()],
        )
    )
    registry.add(
        Gauge(
            "kn_revision_request_active",
            "Requests the activator is proxying",
            labels,
            fn=lambda: [(lv, float(a)) for lv, _, a in gauges()],
        )
    )
    registry.add(
        Gauge(
            "kn_revision_request_concurrency",
            "Average concurrency per revision through this activator, as last reported",
            labels,
            fn=lambda: [(tuple(k), v) for k, v in sorted(concurrency().items())],
        )
    )


def wait_histogram() -> Histogram:
    """The activator's cold-start / capacity wait histogram (ours; Knative has none),
    labelled by namespace and revision; ``observe`` is a bisect and two additions."""
    return Histogram(
        "knd_activator_request_wait_seconds",
        "Time requests waited at the activator for capacity (cold starts included)",
        WAIT_BUCKETS,
        ("k8s_namespace_name", "kn_revision_name"),
    )

"""The autoscaler's and the activator's metric schemas, declared once (for the activator and
``knd-autoscaler`` binaries and ``knd run``), and their Prometheus views, read at scrape time.

What the views read is typed by structure (:class:`ScalerView`, :class:`ActivatorView`):
``dataplane/`` imports neither ``autoscaler/`` nor ``activator/``.

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
from typing import Protocol

from .otlpmetrics import OTelName
from .promtext import Counter, Gauge, Histogram, Registry

__all__ = [
    "ACTIVATOR_OTEL_NAMES",
    "REVISION_LABELS",
    "WAIT_BUCKETS",
    "ActivatorView",
    "HasRevision",
    "ScalerView",
    "add_activator_metrics",
    "add_autoscaler_metrics",
    "knative_labels",
    "revision_labels",
    "stats_connection_metrics",
    "wait_histogram",
]

# OTel attributes k8s.namespace.name, kn.service.name, kn.configuration.name, kn.revision.name
REVISION_LABELS = (
    "k8s_namespace_name",
    "kn_service_name",
    "kn_configuration_name",
    "kn_revision_name",
)
# k8s.namespace.name, kn.revision.name: the activator's queued/active gauges and wait histogram
NS_REVISION_LABELS = ("k8s_namespace_name", "kn_revision_name")

# Seconds a request waited at the activator for capacity: cold starts land in the upper buckets.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

Key = tuple[str, str]
Rows = Iterable[tuple[tuple[str, ...], float]]


# -- what the views read (structural: dataplane/ imports neither autoscaler/ nor activator/) --
class RevisionView(Protocol):
    @property
    def annotations(self) -> Mapping[str, str]: ...


class HasRevision(Protocol):
    """Per-revision state that keeps its platform ``Revision`` (the activator's and the
    autoscaler's)."""

    @property
    def rev(self) -> RevisionView: ...


class DecisionView(Protocol):
    """The decider's last ``Decision``."""

    @property
    def desired(self) -> int: ...  # -1: no decision with data yet
    @property
    def excess_burst_capacity(self) -> int: ...
    @property
    def panicking(self) -> bool: ...
    @property
    def stable_value(self) -> float: ...
    @property
    def panic_value(self) -> float: ...


class ScalingView(Protocol):
    @property
    def target(self) -> float: ...


class ScalerView(HasRevision, Protocol):
    """One revision of the autoscaler (``autoscaler.multiscaler.RevisionScaler``)."""

    @property
    def last(self) -> DecisionView: ...
    @property
    def replicas(self) -> int: ...  # what was last asked of the platform
    @property
    def scaling(self) -> ScalingView: ...


class ConcurrencySource(Protocol):
    def concurrency(self) -> Mapping[Key, float]: ...


class ActivatorView(Protocol):
    """The activator (``activator.handler.Activator``) as its metrics read it."""

    def gauges(self) -> Iterable[tuple[tuple[str, ...], int, int]]: ...  # labels, queued, active
    @property
    def revisions(self) -> Mapping[Key, HasRevision]: ...
    @property
    def reporter(self) -> ConcurrencySource: ...


Labels = Callable[[Key, HasRevision], tuple[str, ...]]
"""The ``REVISION_LABELS`` values of a revision."""


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


def knative_labels(key: Key, state: HasRevision) -> tuple[str, ...]:
    """:func:`revision_labels` from the revision's annotations (the default :data:`Labels`)."""
    return revision_labels(key, state.rev.annotations)


def add_autoscaler_metrics(
    registry: Registry,
    revisions: Callable[[], Mapping[Key, ScalerView]],
    ready: Callable[[Key], int],
    labels: Labels = knative_labels,
) -> None:
    """Per-revision decider and scale state; ``ready(key)`` is the ready pods."""

    def rows(value: Callable[[Key, ScalerView], float | None]) -> Callable[[], Rows]:
        def collect() -> Rows:
            out = []
            for key, rs in sorted(revisions().items()):
                v = value(key, rs)
                if v is not None:
                    out.append((labels(key, rs), float(v)))
            return out

        return collect

    def desired(key: Key, rs: ScalerView) -> float | None:
        d = rs.last.desired
        return None if d < 0 else d  # -1: no decision with data yet

    specs: list[tuple[str, str, Callable[[Key, ScalerView], float | None]]] = [
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
    registry: Registry, act: ActivatorView, labels: Labels = knative_labels
) -> None:
    """The activator's per-revision gauges (SPEC §2.9): ``kn.revision.request.queued`` and
    ``.active`` by namespace and revision, and ``.concurrency`` (the value last reported) by
    namespace, service, configuration and revision; a revision the activator no longer knows
    is skipped, as Knative skips the gauge when the lookup fails."""

    def concurrency() -> Rows:
        known = act.revisions
        out = []
        for key, v in sorted(act.reporter.concurrency().items()):
            rs = known.get(key)
            if rs is not None:
                out.append((labels(key, rs), v))
        return out

    registry.add(
        Gauge(
            "kn_revision_request_queued",
            "Requests waiting in the activator's throttler",
            NS_REVISION_LABELS,
            fn=lambda: [(lv, float(q)) for lv, q, _ in act.gauges()],
        )
    )
    registry.add(
        Gauge(
            "kn_revision_request_active",
            "Requests the activator is proxying",
            NS_REVISION_LABELS,
            fn=lambda: [(lv, float(a)) for lv, _, a in act.gauges()],
        )
    )
    registry.add(
        Gauge(
            "kn_revision_request_concurrency",
            "Average concurrency per revision through this activator, as last reported",
            REVISION_LABELS,
            fn=concurrency,
        )
    )


def wait_histogram() -> Histogram:
    """The activator's cold-start / capacity wait histogram (ours; Knative has none),
    labelled by namespace and revision; ``observe`` is a bisect and two additions."""
    return Histogram(
        "knd_activator_request_wait_seconds",
        "Time requests waited at the activator for capacity (cold starts included)",
        WAIT_BUCKETS,
        NS_REVISION_LABELS,
    )


def stats_connection_metrics() -> tuple[Gauge, Counter]:
    """The activator's stats websocket to the autoscaler: reachable (1/0, starts at 0) and
    disconnections, labelled ``peer="autoscaler"``."""
    reachable = Gauge(
        "kn_activator_stats_conn_reachable",
        "Whether the autoscaler is reachable over the stats websocket (1) or not (0)",
        ("peer",),
    )
    reachable.set(0, ("autoscaler",))
    errors = Counter(
        "kn_activator_stats_conn_errors",
        "Disconnections of the stats websocket to the autoscaler",
        ("peer",),
    )
    return reachable, errors


# Knative's OpenTelemetry instruments (pkg/activator) for the activator's Prometheus metrics,
# for the OTLP push; the wait histogram is ours (Knative has no such metric) and keeps a knd name.
_NS_REV_ATTRS = ("k8s.namespace.name", "kn.revision.name")
ACTIVATOR_OTEL_NAMES: dict[str, OTelName] = {
    "kn_revision_request_queued": OTelName(
        "kn.revision.request.queued", "{request}", _NS_REV_ATTRS
    ),
    "kn_revision_request_active": OTelName(
        "kn.revision.request.active", "{request}", _NS_REV_ATTRS
    ),
    "kn_revision_request_concurrency": OTelName(
        "kn.revision.request.concurrency",
        "{request}",
        ("k8s.namespace.name", "kn.service.name", "kn.configuration.name", "kn.revision.name"),
    ),
    "kn_activator_stats_conn_reachable": OTelName(
        "kn.activator.stats.conn.reachable", "{reachable}", ("peer",)
    ),
    "kn_activator_stats_conn_errors": OTelName(
        "kn.activator.stats.conn.errors", "{error}", ("peer",)
    ),
    "knd_activator_request_wait_seconds": OTelName(
        "knd.activator.request.wait", "s", _NS_REV_ATTRS
    ),
}

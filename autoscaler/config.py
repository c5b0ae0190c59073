"""Knative's ``config-autoscaler`` settings and their per-revision resolution (SPEC §3.2, §3.3).

:class:`AutoscalerConfig` holds the cluster-wide keys with Knative's defaults and validation;
:func:`resolve_scaling` folds a revision's ``autoscaling.knative.dev/*`` annotations and its
``containerConcurrency`` into a :class:`RevisionScaling`, everything one revision's decider and
scaler need. Every error is a :class:`~dataplane.envconfig.ConfigError` that names the key or
annotation and the bad value. Durations are Go duration strings; values are seconds (floats).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from dataplane.envconfig import ConfigError, parse_duration

__all__ = [
    "ANNOTATION_NAMES",
    "ANNOTATION_PREFIX",
    "CONFIG_KEYS",
    "HPA_CLASS",
    "KPA_CLASS",
    "AutoscalerConfig",
    "ConfigError",
    "RevisionScaling",
    "resolve_scaling",
]

ANNOTATION_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
HPA_CLASS = "hpa.autoscaling.knative.dev"

CONCURRENCY = "concurrency"
RPS = "rps"
LINEAR = "linear"
WEIGHTED_EXPONENTIAL = "weighted-exponential"

TARGET_MIN = 0.01
"""The smallest allowed target (``autoscaling.TargetMin``)."""
WINDOW_MIN = 6.0
WINDOW_MAX = 3600.0
BUCKET_SIZE = 1.0
"""Aggregation bucket width, and the smallest panic window (``config.BucketSize``)."""
PANIC_WINDOW_PERCENTAGE_MIN = 1.0
PANIC_WINDOW_PERCENTAGE_MAX = 100.0
PANIC_THRESHOLD_PERCENTAGE_MIN = 110.0
PANIC_THRESHOLD_PERCENTAGE_MAX = 1000.0
DEFAULT_TARGET_UTILIZATION = 0.7
"""Utilisation for the RPS metric: fixed in Knative (``TargetUtilization``), not a ConfigMap key."""
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    """The ``config-autoscaler`` keys with Knative's defaults; validated on construction."""

    container_concurrency_target_percentage: float = 0.7
    container_concurrency_target_default: float = 100.0
    requests_per_second_target_default: float = 200.0
    target_burst_capacity: float = 211.0
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    enable_scale_to_zero: bool = True
    scale_to_zero_grace_period: float = 30.0
    scale_to_zero_pod_retention_period: float = 0.0
    activator_capacity: float = 100.0
    initial_scale: int = 1
    allow_zero_initial_scale: bool = False
    min_scale: int = 0
    max_scale: int = 0
    max_scale_limit: int = 0
    scale_down_delay: float = 0.0

    def __post_init__(self) -> None:
        _validate_config(self)

    @classmethod
    def from_map(cls, data: Mapping[str, str]) -> AutoscalerConfig:
        """Parse a ``config-autoscaler`` ConfigMap's data; unknown keys are ignored."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            raw = data.get(key)
            if raw is None:
                continue
            if f.type in ("bool", bool):
                kw[f.name] = _parse_bool(key, raw)
            elif f.type in ("int", int):
                kw[f.name] = _parse_int32(key, raw)
            elif f.name in _DURATION_FIELDS:
                kw[f.name] = _parse_duration(key, raw)
            else:
                kw[f.name] = _parse_float(key, raw)
        pct = kw.get("container_concurrency_target_percentage")
        if pct is not None and pct > 1.0:
            # Knative: values in (0, 1] are legacy fractions, larger ones percentages.
            kw["container_concurrency_target_percentage"] = pct / 100.0
        return cls(**kw)


CONFIG_KEYS = frozenset(f.name.replace("_", "-") for f in fields(AutoscalerConfig))
"""The ``config-autoscaler`` keys this autoscaler reads (others are ignored, as Knative does)."""

_DURATION_FIELDS = frozenset(
    {
        "stable_window",
        "scale_to_zero_grace_period",
        "scale_to_zero_pod_retention_period",
        "scale_down_delay",
    }
)


def _validate_config(c: AutoscalerConfig) -> None:
    """Knative's ``validate`` for ``config-autoscaler``, one ConfigError per first problem."""
    for f in fields(c):
        v = getattr(c, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{f.name.replace('_', '-')}: {v!r} is not a finite number")
    if c.scale_to_zero_grace_period <= 0:
        raise ConfigError(
            f"scale-to-zero-grace-period: {_secs(c.scale_to_zero_grace_period)} must be positive"
        )
    if c.scale_down_delay < 0:
        raise ConfigError(f"scale-down-delay: {_secs(c.scale_down_delay)} cannot be negative")
    if not _whole_seconds(c.scale_down_delay):
        raise ConfigError(f"scale-down-delay: {_secs(c.scale_down_delay)} must be whole seconds")
    if c.scale_to_zero_pod_retention_period < 0:
        raise ConfigError(
            "scale-to-zero-pod-retention-period: "
            f"{_secs(c.scale_to_zero_pod_retention_period)} cannot be negative"
        )
    if c.target_burst_capacity < 0 and c.target_burst_capacity != -1:
        raise ConfigError(
            f"target-burst-capacity: {c.target_burst_capacity:g} must be >= 0 or -1 (unlimited)"
        )
    frac = c.container_concurrency_target_percentage
    if frac <= 0 or frac > 1:
        raise ConfigError(
            f"container-concurrency-target-percentage: {frac * 100:g} is outside (0, 100]"
        )
    if frac * c.container_concurrency_target_default < TARGET_MIN:
        raise ConfigError(
            "container-concurrency-target-default: "
            f"{c.container_concurrency_target_default:g} * container-concurrency-target-"
            f"percentage {frac * 100:g}% gives a target below {TARGET_MIN}"
        )
    if c.requests_per_second_target_default < TARGET_MIN:
        raise ConfigError(
            "requests-per-second-target-default: "
            f"{c.requests_per_second_target_default:g} must be at least {TARGET_MIN}"
        )
    if c.activator_capacity < 1:
        raise ConfigError(f"activator-capacity: {c.activator_capacity:g} must be at least 1")
    if c.max_scale_up_rate <= 1:
        raise ConfigError(f"max-scale-up-rate: {c.max_scale_up_rate:g} must be greater than 1")
    if c.max_scale_down_rate <= 1:
        raise ConfigError(f"max-scale-down-rate: {c.max_scale_down_rate:g} must be greater than 1")
    if not WINDOW_MIN <= c.stable_window <= WINDOW_MAX:
        raise ConfigError(f"stable-window: {_secs(c.stable_window)} must be within [6s, 1h]")
    if not _whole_seconds(c.stable_window):
        raise ConfigError(f"stable-window: {_secs(c.stable_window)} must be whole seconds")
    if (
        not PANIC_WINDOW_PERCENTAGE_MIN
        <= c.panic_window_percentage
        <= (PANIC_WINDOW_PERCENTAGE_MAX)
    ):
        raise ConfigError(
            f"panic-window-percentage: {c.panic_window_percentage:g} must be within [1, 100]"
        )
    if c.panic_threshold_percentage <= 0:
        # Knative does not check the ConfigMap value; a non-positive one would always panic.
        raise ConfigError(
            f"panic-threshold-percentage: {c.panic_threshold_percentage:g} must be positive"
        )
    if c.initial_scale < 0 or (c.initial_scale == 0 and not c.allow_zero_initial_scale):
        raise ConfigError(
            f"initial-scale: {c.initial_scale} must be at least 1 "
            "(0 only with allow-zero-initial-scale: true)"
        )
    if c.max_scale_limit < 0:
        raise ConfigError(f"max-scale-limit: {c.max_scale_limit} must be at least 0")
    if c.max_scale_limit > 0 and not 1 <= c.max_scale <= c.max_scale_limit:
        raise ConfigError(
            f"max-scale: {c.max_scale} must be within [1, max-scale-limit {c.max_scale_limit}]"
        )
    if c.max_scale < 0:
        raise ConfigError(f"max-scale: {c.max_scale} must be at least 0 (0 = unlimited)")
    if c.min_scale < 0 or (c.max_scale > 0 and c.min_scale > c.max_scale):
        raise ConfigError(f"min-scale: {c.min_scale} must be within [0, max-scale]")


@dataclass(frozen=True, slots=True)
class RevisionScaling:
    """Everything one revision's decider and scaler need, resolved (Knative's DeciderSpec+)."""

    metric: str
    aggregation: str
    target: float
    total: float
    target_burst_capacity: float
    activator_capacity: float
    panic_threshold: float
    stable_window: float
    panic_window: float
    max_scale_up_rate: float
    max_scale_down_rate: float
    min_scale: int
    max_scale: int
    initial_scale: int
    activation_scale: int
    scale_down_delay: float
    enable_scale_to_zero: bool
    scale_to_zero_grace_period: float
    pod_retention_period: float


# Annotation names; the later spellings are Knative's legacy camelCase aliases (the first one
# present wins, as kmap.KeyPriority does).
_CLASS = ("class",)
_METRIC = ("metric",)
_ALGORITHM = ("metric-aggregation-algorithm", "metricAggregationAlgorithm")
_TARGET = ("target",)
_TARGET_UTILIZATION = ("target-utilization-percentage", "targetUtilizationPercentage")
_TBC = ("target-burst-capacity", "targetBurstCapacity")
_WINDOW = ("window",)
_PANIC_WINDOW_PCT = ("panic-window-percentage", "panicWindowPercentage")
_PANIC_THRESHOLD_PCT = ("panic-threshold-percentage", "panicThresholdPercentage")
_MIN_SCALE = ("min-scale", "minScale")
_MAX_SCALE = ("max-scale", "maxScale")
_INITIAL_SCALE = ("initial-scale", "initialScale")
_ACTIVATION_SCALE = ("activation-scale",)
_SCALE_DOWN_DELAY = ("scale-down-delay", "scaleDownDelay")
_RETENTION = ("scale-to-zero-pod-retention-period", "scaleToZeroPodRetentionPeriod")
ANNOTATION_NAMES = frozenset(
    _CLASS
    + _METRIC
    + _ALGORITHM
    + _TARGET
    + _TARGET_UTILIZATION
    + _TBC
    + _WINDOW
    + _PANIC_WINDOW_PCT
    + _PANIC_THRESHOLD_PCT
    + _MIN_SCALE
    + _MAX_SCALE
    + _INITIAL_SCALE
    + _ACTIVATION_SCALE
    + _SCALE_DOWN_DELAY
    + _RETENTION
)
"""The ``autoscaling.knative.dev/<name>`` annotations this autoscaler reads (with aliases)."""

_ALGORITHMS = {
    "linear": LINEAR,
    "weighted-exponential": WEIGHTED_EXPONENTIAL,
    "weightedExponential": WEIGHTED_EXPONENTIAL,
}


def _lookup(annotations: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        key = ANNOTATION_PREFIX + name
        if key in annotations:
            return key, annotations[key]
    return None


def resolve_scaling(
    config: AutoscalerConfig, container_concurrency: int, annotations: Mapping[str, str]
) -> RevisionScaling:
    """A revision's scaling settings: annotations over ``config``, validated as Knative does.

    Raises :class:`ConfigError` naming the annotation for a malformed or out-of-range value,
    and for a class other than ``kpa.autoscaling.knative.dev`` (this autoscaler is a KPA).
    """
    if container_concurrency < 0:
        raise ConfigError(f"containerConcurrency: {container_concurrency} must be at least 0")
    ann = annotations

    found = _lookup(ann, _CLASS)
    if found is not None and found[1] != KPA_CLASS:
        raise ConfigError(
            f"{found[0]}: {found[1]!r} is not handled by this autoscaler (only {KPA_CLASS})"
        )

    metric = CONCURRENCY
    found = _lookup(ann, _METRIC)
    if found is not None:
        if found[1] not in (CONCURRENCY, RPS):
            raise ConfigError(f"{found[0]}: {found[1]!r} is not one of concurrency, rps")
        metric = found[1]

    aggregation = LINEAR
    found = _lookup(ann, _ALGORITHM)
    if found is not None and found[1] != "":
        if found[1] not in _ALGORITHMS:
            raise ConfigError(
                f"{found[0]}: {found[1]!r} is not one of linear, weighted-exponential"
            )
        aggregation = _ALGORITHMS[found[1]]

    annotation_target = _ann_float(ann, _TARGET, lo=TARGET_MIN, what=f"at least {TARGET_MIN}")
    tu_pct = _ann_float(ann, _TARGET_UTILIZATION, lo=1.0, hi=100.0, what="within [1, 100]")
    tbc = _ann_float(ann, _TBC, what=">= 0 or -1 (unlimited)", check=_valid_tbc)
    pwp = _ann_float(
        ann,
        _PANIC_WINDOW_PCT,
        lo=PANIC_WINDOW_PERCENTAGE_MIN,
        hi=PANIC_WINDOW_PERCENTAGE_MAX,
        what="within [1, 100]",
    )
    ptp = _ann_float(
        ann,
        _PANIC_THRESHOLD_PCT,
        lo=PANIC_THRESHOLD_PERCENTAGE_MIN,
        hi=PANIC_THRESHOLD_PERCENTAGE_MAX,
        what="within [110, 1000]",
    )
    window = _ann_duration(ann, _WINDOW, lo=WINDOW_MIN, hi=WINDOW_MAX, whole=True)
    sdd = _ann_duration(ann, _SCALE_DOWN_DELAY, lo=0.0, hi=WINDOW_MAX, whole=True)
    retention = _ann_duration(ann, _RETENTION, lo=0.0, hi=WINDOW_MAX, whole=False)

    ann_min = _ann_int(ann, _MIN_SCALE, lo=0)
    ann_max = _ann_int(ann, _MAX_SCALE, lo=0)
    if ann_max is not None and ann_max != 0 and ann_max < (ann_min or 0):
        key = _lookup(ann, _MAX_SCALE)
        assert key is not None
        raise ConfigError(f"{key[0]}: {ann_max} is less than min-scale {ann_min}")
    if ann_max is not None and config.max_scale_limit > 0:
        key = _lookup(ann, _MAX_SCALE)
        assert key is not None
        if ann_max == 0 or ann_max > config.max_scale_limit:
            raise ConfigError(
                f"{key[0]}: {ann_max} must be within [1, max-scale-limit "
                f"{config.max_scale_limit}] (0 = unlimited is not allowed)"
            )
    ann_initial = _ann_int(ann, _INITIAL_SCALE, lo=0)
    if ann_initial == 0 and not config.allow_zero_initial_scale:
        key = _lookup(ann, _INITIAL_SCALE)
        assert key is not None
        raise ConfigError(f"{key[0]}: 0 needs allow-zero-initial-scale: true")
    activation = _ann_int(ann, _ACTIVATION_SCALE, lo=1)

    # Target and total (resources/target.go ResolveMetricTarget).
    if metric == RPS:
        total = config.requests_per_second_target_default
        tu = DEFAULT_TARGET_UTILIZATION
    else:
        total = float(container_concurrency or config.container_concurrency_target_default)
        tu = config.container_concurrency_target_percentage
    if annotation_target is not None:
        total = annotation_target
        if metric == CONCURRENCY and container_concurrency > 0:
            total = min(annotation_target, float(container_concurrency))
    if tu_pct is not None:
        tu = tu_pct / 100.0
    target = max(TARGET_MIN, total * tu)

    stable = window if window is not None else config.stable_window
    pct = pwp if pwp is not None else config.panic_window_percentage
    return RevisionScaling(
        metric=metric,
        aggregation=aggregation,
        target=target,
        total=total,
        target_burst_capacity=tbc if tbc is not None else config.target_burst_capacity,
        activator_capacity=config.activator_capacity,
        panic_threshold=(ptp if ptp is not None else config.panic_threshold_percentage) / 100.0,
        stable_window=stable,
        panic_window=panic_window(stable, pct),
        max_scale_up_rate=config.max_scale_up_rate,
        max_scale_down_rate=config.max_scale_down_rate,
        min_scale=ann_min if ann_min is not None else config.min_scale,
        max_scale=ann_max if ann_max is not None else config.max_scale,
        initial_scale=ann_initial if ann_initial is not None else config.initial_scale,
        activation_scale=activation if activation is not None else 1,
        scale_down_delay=sdd if sdd is not None else config.scale_down_delay,
        enable_scale_to_zero=config.enable_scale_to_zero,
        scale_to_zero_grace_period=config.scale_to_zero_grace_period,
        pod_retention_period=(
            retention if retention is not None else config.scale_to_zero_pod_retention_period
        ),
    )


def panic_window(stable_window: float, percentage: float) -> float:
    """``stable * pct / 100`` rounded half-up to whole seconds, at least one bucket (1 s)."""
    return max(BUCKET_SIZE, float(math.floor(stable_window * percentage / 100.0 + 0.5)))


# --- parsing helpers ---------------------------------------------------------------------

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _parse_bool(key: str, raw: str) -> bool:
    s = raw.strip()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ConfigError(f"{key}: {raw!r} is not a boolean (use true or false)")


def _parse_int32(key: str, raw: str) -> int:
    s = raw.strip()
    if not _INT_RE.fullmatch(s):
        raise ConfigError(f"{key}: {raw!r} is not an integer")
    v = int(s)
    if not -_INT32_MAX - 1 <= v <= _INT32_MAX:
        raise ConfigError(f"{key}: {raw!r} is out of the int32 range")
    return v


def _parse_float(key: str, raw: str) -> float:
    s = raw.strip()
    if not _FLOAT_RE.fullmatch(s):
        raise ConfigError(f"{key}: {raw!r} is not a number")
    return float(s)


def _parse_duration(key: str, raw: str) -> float:
    try:
        return parse_duration(raw)
    except ValueError as e:
        raise ConfigError(f"{key}: {raw!r} is not a duration ({e})") from None


def _whole_seconds(v: float) -> bool:
    return abs(v - round(v)) < 1e-9


def _secs(v: float) -> str:
    return f"{v:g}s"


def _valid_tbc(v: float) -> bool:
    return v >= 0 or v == -1


def _ann_float(
    ann: Mapping[str, str],
    names: tuple[str, ...],
    *,
    what: str,
    lo: float | None = None,
    hi: float | None = None,
    check: Callable[[float], bool] | None = None,
) -> float | None:
    found = _lookup(ann, names)
    if found is None:
        return None
    key, raw = found
    v = _parse_float(key, raw)
    ok = (lo is None or v >= lo) and (hi is None or v <= hi) and (check is None or check(v))
    if not ok:
        raise ConfigError(f"{key}: {raw!r} must be {what}")
    return v


def _ann_int(ann: Mapping[str, str], names: tuple[str, ...], *, lo: int) -> int | None:
    found = _lookup(ann, names)
    if found is None:
        return None
    key, raw = found
    v = _parse_int32(key, raw)
    if v < lo:
        raise ConfigError(f"{key}: {raw!r} must be at least {lo}")
    return v


def _ann_duration(
    ann: Mapping[str, str], names: tuple[str, ...], *, lo: float, hi: float, whole: bool
) -> float | None:
    found = _lookup(ann, names)
    if found is None:
        return None
    key, raw = found
    v = _parse_duration(key, raw)
    if not lo <= v <= hi:
        raise ConfigError(f"{key}: {raw!r} must be within [{lo:g}s, {hi:g}s]")
    if whole:
        if not _whole_seconds(v):
            raise ConfigError(f"{key}: {raw!r} must be whole seconds")
        v = float(round(v))
    return v

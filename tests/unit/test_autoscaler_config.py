"""Unit tests for autoscaler.config: config-autoscaler parsing and per-revision resolution."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.config import (
    DEFAULT_TARGET_UTILIZATION,
    AutoscalerConfig,
    ConfigError,
    RevisionScaling,
    panic_window,
    resolve_scaling,
)
from dataplane.envconfig import ConfigError as EnvConfigError

P = "autoscaling.knative.dev/"
DEFAULTS = AutoscalerConfig()


def scaling(cc: int = 0, cfg: AutoscalerConfig = DEFAULTS, /, **ann: str) -> RevisionScaling:
    """Resolve with annotations given as keyword names (``min_scale`` -> ``min-scale``)."""
    return resolve_scaling(cfg, cc, {P + k.replace("_", "-"): v for k, v in ann.items()})


# --- config-autoscaler ----------------------------------------------------------------------


def test_config_error_is_the_shared_one() -> None:
    assert ConfigError is EnvConfigError


def test_defaults_match_knative() -> None:
    c = AutoscalerConfig()
    assert c.container_concurrency_target_percentage == 0.7
    assert c.container_concurrency_target_default == 100
    assert c.requests_per_second_target_default == 200
    assert c.target_burst_capacity == 211
    assert c.stable_window == 60
    assert c.panic_window_percentage == 10
    assert c.panic_threshold_percentage == 200
    assert c.max_scale_up_rate == 1000
    assert c.max_scale_down_rate == 2
    assert c.enable_scale_to_zero is True
    assert c.scale_to_zero_grace_period == 30
    assert c.scale_to_zero_pod_retention_period == 0
    assert c.activator_capacity == 100
    assert (c.initial_scale, c.allow_zero_initial_scale) == (1, False)
    assert (c.min_scale, c.max_scale, c.max_scale_limit) == (0, 0, 0)
    assert c.scale_down_delay == 0
    assert AutoscalerConfig.from_map({}) == c


def test_from_map_reads_every_key() -> None:
    c = AutoscalerConfig.from_map(
        {
            "container-concurrency-target-percentage": "80",
            "container-concurrency-target-default": "50",
            "requests-per-second-target-default": "150.5",
            "target-burst-capacity": "-1",
            "stable-window": "2m",
            "panic-window-percentage": "20.0",
            "panic-threshold-percentage": "150",
            "max-scale-up-rate": "10",
            "max-scale-down-rate": "4",
            "enable-scale-to-zero": "false",
            "scale-to-zero-grace-period": "45s",
            "scale-to-zero-pod-retention-period": "1m30s",
            "activator-capacity": "250",
            "initial-scale": "0",
            "allow-zero-initial-scale": "true",
            "min-scale": "1",
            "max-scale": "8",
            "max-scale-limit": "10",
            "scale-down-delay": "15s",
        }
    )
    assert c == AutoscalerConfig(
        container_concurrency_target_percentage=0.8,
        container_concurrency_target_default=50,
        requests_per_second_target_default=150.5,
        target_burst_capacity=-1,
        stable_window=120,
        panic_window_percentage=20,
        panic_threshold_percentage=150,
        max_scale_up_rate=10,
        max_scale_down_rate=4,
        enable_scale_to_zero=False,
        scale_to_zero_grace_period=45,
        scale_to_zero_pod_retention_period=90,
        activator_capacity=250,
        initial_scale=0,
        allow_zero_initial_scale=True,
        min_scale=1,
        max_scale=8,
        max_scale_limit=10,
        scale_down_delay=15,
    )


@pytest.mark.parametrize(
    ("raw", "fraction"), [("70", 0.7), ("100", 1.0), ("0.5", 0.5), ("1", 1.0), ("1.5", 0.015)]
)
def test_target_percentage_values_up_to_one_are_fractions(raw: str, fraction: float) -> None:
    c = AutoscalerConfig.from_map({"container-concurrency-target-percentage": raw})
    assert c.container_concurrency_target_percentage == pytest.approx(fraction)


def test_unknown_keys_and_knative_only_keys_are_ignored() -> None:
    c = AutoscalerConfig.from_map(
        {"_example": "long text", "pod-autoscaler-class": "kpa", "tick-interval": "zzz"}
    )
    assert c == DEFAULTS


@pytest.mark.parametrize("raw", ["true", "True", "TRUE", "t", "1", " true "])
def test_booleans_take_go_spellings(raw: str) -> None:
    c = AutoscalerConfig.from_map({"allow-zero-initial-scale": raw, "initial-scale": "0"})
    assert c.allow_zero_initial_scale is True


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("enable-scale-to-zero", "yes", "not a boolean"),
        ("initial-scale", "1.5", "not an integer"),
        ("max-scale", "99999999999", "int32"),
        ("max-scale-up-rate", "fast", "not a number"),
        ("max-scale-up-rate", "1_000", "not a number"),
        ("activator-capacity", "nan", "not a number"),
        ("stable-window", "60", "not a duration"),
        ("stable-window", "soon", "not a duration"),
        ("target-burst-capacity", "1e999", "not a finite number"),
        ("scale-to-zero-grace-period", "0s", "must be positive"),
        ("scale-to-zero-grace-period", "-5s", "must be positive"),
        ("scale-down-delay", "-1s", "cannot be negative"),
        ("scale-down-delay", "1500ms", "whole seconds"),
        ("scale-to-zero-pod-retention-period", "-1s", "cannot be negative"),
        ("target-burst-capacity", "-2", ">= 0 or -1"),
        ("container-concurrency-target-percentage", "0", "outside (0, 100]"),
        ("container-concurrency-target-percentage", "101", "outside (0, 100]"),
        ("container-concurrency-target-percentage", "-10", "outside (0, 100]"),
        ("requests-per-second-target-default", "0.001", "at least 0.01"),
        ("activator-capacity", "0.5", "at least 1"),
        ("max-scale-up-rate", "1", "greater than 1"),
        ("max-scale-down-rate", "1.0", "greater than 1"),
        ("stable-window", "5s", "within [6s, 1h]"),
        ("stable-window", "61m", "within [6s, 1h]"),
        ("stable-window", "6500ms", "whole seconds"),
        ("panic-window-percentage", "0.5", "within [1, 100]"),
        ("panic-window-percentage", "101", "within [1, 100]"),
        ("panic-threshold-percentage", "0", "must be positive"),
        ("initial-scale", "0", "allow-zero-initial-scale"),
        ("initial-scale", "-1", "at least 1"),
        ("max-scale", "-1", "at least 0"),
        ("max-scale-limit", "-1", "at least 0"),
        ("min-scale", "-1", "within [0, max-scale]"),
    ],
)
def test_config_errors_name_key_and_value(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as ei:
        AutoscalerConfig.from_map({key: value})
    msg = str(ei.value)
    assert msg.startswith(key + ":"), msg
    assert fragment in msg, msg


def test_config_target_product_must_reach_target_min() -> None:
    with pytest.raises(ConfigError, match=r"^container-concurrency-target-default: 0\.01 "):
        AutoscalerConfig.from_map(
            {
                "container-concurrency-target-default": "0.01",
                "container-concurrency-target-percentage": "50",
            }
        )


def test_max_scale_limit_rules() -> None:
    assert AutoscalerConfig.from_map({"max-scale": "5", "max-scale-limit": "10"}).max_scale == 5
    with pytest.raises(ConfigError, match=r"^max-scale: 0 must be within \[1, max-scale-limit"):
        AutoscalerConfig.from_map({"max-scale-limit": "10"})
    with pytest.raises(ConfigError, match=r"^max-scale: 11 "):
        AutoscalerConfig.from_map({"max-scale": "11", "max-scale-limit": "10"})
    with pytest.raises(ConfigError, match=r"^min-scale: 4 "):
        AutoscalerConfig.from_map({"min-scale": "4", "max-scale": "3"})


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"^stable-window"):
        AutoscalerConfig(stable_window=3.0)
    with pytest.raises(ConfigError, match=r"^container-concurrency-target-percentage"):
        AutoscalerConfig(container_concurrency_target_percentage=70)


# --- targets (SPEC §3.3) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cc", "ann", "total", "target"),
    [
        (0, {}, 100, 70),  # CC 0: soft default target
        (10, {}, 10, 7),  # CC 10: CC x 0.7
        (1, {}, 1, 0.7),
        (10, {"target": "50"}, 10, 7),  # annotation capped at CC
        (10, {"target": "5"}, 5, 3.5),
        (0, {"target": "50"}, 50, 35),  # no CC: annotation is the total
        (10, {"target-utilization-percentage": "50"}, 10, 5),
        (0, {"target": "0.01", "target-utilization-percentage": "1"}, 0.01, 0.01),  # >= 0.01
        (0, {"metric": "rps"}, 200, 140),
        (10, {"metric": "rps", "target": "50"}, 50, 35),  # RPS is not capped at CC
        (0, {"metric": "rps", "target-utilization-percentage": "100"}, 200, 200),
    ],
)
def test_target_and_total(cc: int, ann: dict[str, str], total: float, target: float) -> None:
    s = scaling(cc, **{k.replace("-", "_"): v for k, v in ann.items()})
    assert s.total == pytest.approx(total)
    assert s.target == pytest.approx(target)


def test_rps_utilization_is_knatives_fixed_default_not_the_cc_percentage() -> None:
    cfg = AutoscalerConfig.from_map({"container-concurrency-target-percentage": "50"})
    assert scaling(0, cfg).target == 50
    assert scaling(0, cfg, metric="rps").target == 200 * DEFAULT_TARGET_UTILIZATION


def test_config_defaults_flow_into_revision_settings() -> None:
    s = scaling()
    assert s == RevisionScaling(
        metric="concurrency",
        aggregation="linear",
        target=70.0,
        total=100.0,
        target_burst_capacity=211.0,
        activator_capacity=100.0,
        panic_threshold=2.0,
        stable_window=60.0,
        panic_window=6.0,
        max_scale_up_rate=1000.0,
        max_scale_down_rate=2.0,
        min_scale=0,
        max_scale=0,
        initial_scale=1,
        activation_scale=1,
        scale_down_delay=0.0,
        enable_scale_to_zero=True,
        scale_to_zero_grace_period=30.0,
        pod_retention_period=0.0,
    )


def test_annotations_override_config() -> None:
    cfg = AutoscalerConfig(min_scale=1, max_scale=9, scale_down_delay=4, initial_scale=2)
    s = scaling(
        4,
        cfg,
        target_burst_capacity="-1",
        window="2m",
        panic_window_percentage="5",
        panic_threshold_percentage="150",
        min_scale="2",
        max_scale="6",
        initial_scale="3",
        activation_scale="4",
        scale_down_delay="20s",
        scale_to_zero_pod_retention_period="90s",
        metric_aggregation_algorithm="weighted-exponential",
    )
    assert s.target_burst_capacity == -1
    assert (s.stable_window, s.panic_window, s.panic_threshold) == (120, 6, 1.5)
    assert (s.min_scale, s.max_scale, s.initial_scale, s.activation_scale) == (2, 6, 3, 4)
    assert (s.scale_down_delay, s.pod_retention_period) == (20, 90)
    assert s.aggregation == "weighted-exponential"
    plain = scaling(4, cfg)
    assert (plain.min_scale, plain.max_scale, plain.initial_scale) == (1, 9, 2)
    assert plain.scale_down_delay == 4


@pytest.mark.parametrize(
    ("stable", "pct", "panic"),
    [(60, 10, 6), (25, 10, 3), (6, 1, 1), (3600, 1, 36), (60, 100, 60), (7, 50, 4), (15, 10, 2)],
)
def test_panic_window_rounds_half_up_with_one_second_floor(
    stable: float, pct: float, panic: float
) -> None:
    assert panic_window(stable, pct) == panic


def test_window_annotation_drives_panic_window() -> None:
    assert scaling(window="25s").panic_window == 3  # 2.5 s rounds up, as Go's Duration.Round
    assert scaling(window="6s", panic_window_percentage="1").panic_window == 1


def test_legacy_camel_case_annotations_are_accepted_kebab_case_wins() -> None:
    s = resolve_scaling(
        DEFAULTS,
        0,
        {
            P + "minScale": "2",
            P + "maxScale": "7",
            P + "initialScale": "3",
            P + "targetUtilizationPercentage": "50",
            P + "metricAggregationAlgorithm": "weightedExponential",
        },
    )
    assert (s.min_scale, s.max_scale, s.initial_scale, s.target) == (2, 7, 3, 50)
    assert s.aggregation == "weighted-exponential"
    both = resolve_scaling(DEFAULTS, 0, {P + "min-scale": "4", P + "minScale": "2"})
    assert both.min_scale == 4


def test_initial_scale_zero_needs_allow_zero() -> None:
    with pytest.raises(ConfigError, match=r"^autoscaling.knative.dev/initial-scale: 0 needs"):
        scaling(initial_scale="0")
    cfg = AutoscalerConfig(allow_zero_initial_scale=True)
    assert scaling(0, cfg, initial_scale="0").initial_scale == 0


def test_max_scale_limit_caps_the_annotation() -> None:
    cfg = AutoscalerConfig(max_scale=5, max_scale_limit=10)
    assert scaling(0, cfg).max_scale == 5
    assert scaling(0, cfg, max_scale="10").max_scale == 10
    with pytest.raises(ConfigError, match=r"^autoscaling.knative.dev/max-scale: 11 "):
        scaling(0, cfg, max_scale="11")
    with pytest.raises(ConfigError, match=r"^autoscaling.knative.dev/max-scale: 0 "):
        scaling(0, cfg, max_scale="0")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("class", "hpa.autoscaling.knative.dev", "not handled"),
        ("class", "foo.autoscaling.knative.dev", "not handled"),
        ("metric", "cpu", "concurrency, rps"),
        ("metric-aggregation-algorithm", "median", "linear, weighted-exponential"),
        ("target", "0", "at least 0.01"),
        ("target", "lots", "not a number"),
        ("target-utilization-percentage", "0.5", "within [1, 100]"),
        ("target-utilization-percentage", "101", "within [1, 100]"),
        ("target-burst-capacity", "-2", ">= 0 or -1"),
        ("target-burst-capacity", "x", "not a number"),
        ("window", "5s", "within [6s, 3600s]"),
        ("window", "2h", "within [6s, 3600s]"),
        ("window", "6500ms", "whole seconds"),
        ("window", "60", "not a duration"),
        ("panic-window-percentage", "0", "within [1, 100]"),
        ("panic-window-percentage", "100.5", "within [1, 100]"),
        ("panic-threshold-percentage", "109", "within [110, 1000]"),
        ("panic-threshold-percentage", "1001", "within [110, 1000]"),
        ("min-scale", "-1", "at least 0"),
        ("min-scale", "one", "not an integer"),
        ("max-scale", "-3", "at least 0"),
        ("max-scale", "2147483648", "int32"),
        ("initial-scale", "-1", "at least 0"),
        ("activation-scale", "0", "at least 1"),
        ("activation-scale", "2.5", "not an integer"),
        ("scale-down-delay", "-1s", "within [0s, 3600s]"),
        ("scale-down-delay", "61m", "within [0s, 3600s]"),
        ("scale-down-delay", "2500ms", "whole seconds"),
        ("scale-to-zero-pod-retention-period", "-1s", "within [0s, 3600s]"),
        ("scale-to-zero-pod-retention-period", "2h", "within [0s, 3600s]"),
        ("scale-to-zero-pod-retention-period", "often", "not a duration"),
    ],
)
def test_annotation_errors_name_the_annotation(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as ei:
        resolve_scaling(DEFAULTS, 0, {P + name: value})
    msg = str(ei.value)
    assert msg.startswith(f"{P}{name}: {value!r}") or msg.startswith(f"{P}{name}:"), msg
    assert value in msg, msg
    assert fragment in msg, msg


def test_max_below_min_names_max_scale() -> None:
    with pytest.raises(ConfigError, match=r"^autoscaling.knative.dev/max-scale: 2 is less than"):
        scaling(min_scale="3", max_scale="2")
    assert scaling(min_scale="3", max_scale="0").min_scale == 3  # 0 = unlimited


def test_kpa_class_and_empty_algorithm_are_fine() -> None:
    s = scaling(**{"class": "kpa.autoscaling.knative.dev"}, metric_aggregation_algorithm="")
    assert s.aggregation == "linear"


def test_negative_container_concurrency_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^containerConcurrency"):
        resolve_scaling(DEFAULTS, -1, {})


def test_unrelated_annotations_are_ignored() -> None:
    s = resolve_scaling(DEFAULTS, 0, {"foo/bar": "1", P + "something-new": "x"})
    assert s == scaling()


@given(
    cc=st.integers(0, 1000),
    target=st.floats(0.01, 10_000, allow_nan=False),
    tu=st.floats(1, 100, allow_nan=False),
)
def test_target_never_exceeds_total_or_cc(cc: int, target: float, tu: float) -> None:
    s = resolve_scaling(
        DEFAULTS,
        cc,
        {P + "target": repr(target), P + "target-utilization-percentage": repr(tu)},
    )
    assert s.target >= 0.01
    assert s.target <= max(s.total, 0.01) + 1e-9
    if cc > 0:
        assert s.total <= cc


def test_revision_scaling_is_frozen() -> None:
    s = scaling()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.target = 1.0  # type: ignore[misc]

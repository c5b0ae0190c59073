"""dataplane/observability.py: config-observability's flat keys, as Knative's ConfigMap
parsers read them, and their mix with Knative's JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataplane.envconfig import ConfigError
from dataplane.observability import ObservabilityConfig, parse_observability


def obs(value: dict[str, Any]) -> ObservabilityConfig:
    return parse_observability(json.dumps(value))


def error(value: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        obs(value)
    return str(e.value).removeprefix("OBSERVABILITY_CONFIG: ")


def test_flat_keys() -> None:
    c = obs(
        {
            "tracing-protocol": "grpc",
            "tracing-endpoint": "collector:4317",
            "tracing-sampling-rate": " 0.25 ",
            "request-metrics-protocol": "prometheus",
            "logging.enable-request-log": "True",
            "logging.request-log-template": "{{.Request.Method}}",
            "logging.enable-probe-request-log": "0",
        }
    )
    assert c == ObservabilityConfig(
        request_metrics_protocol="prometheus",
        tracing_protocol="grpc",
        tracing_endpoint="collector:4317",
        tracing_sampling_rate=0.25,
        enable_request_log=True,
        request_log_template="{{.Request.Method}}",
        enable_probe_request_log=False,
    )


def test_json_numbers_and_booleans_in_flat_keys_are_taken_as_text() -> None:
    c = obs(
        {
            "tracing-protocol": "stdout",
            "tracing-sampling-rate": 1,
            "logging.enable-probe-request-log": True,
        }
    )
    assert (c.tracing_sampling_rate, c.enable_probe_request_log) == (1.0, True)


def test_flat_key_wins_over_the_nested_field() -> None:
    c = obs({"tracing": {"protocol": "none", "samplingRate": 0.1}, "tracing-protocol": "stdout"})
    assert (c.tracing_protocol, c.tracing_sampling_rate) == ("stdout", 0.1)


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        ({"tracing-protocol": "http/protobuf"},
         'tracing: endpoint should be set for protocol "http/protobuf"'),
        ({"tracing-protocol": "none", "tracing-endpoint": "x"},
         "tracing: endpoint should not be set when protocol is 'none'"),
        ({"tracing-protocol": "zipkin"}, 'tracing: unsupported protocol "zipkin"'),
        ({"request-metrics-protocol": "grpc"},
         'requestMetrics: endpoint should be set when protocol is "grpc"'),
        ({"logging.enable-request-log": "yes"},
         'failed to parse "logging.enable-request-log": strconv.ParseBool: parsing "yes": '
         "invalid syntax"),
        ({"tracing-sampling-rate": "2"},
         "sampling rate 2.000000 should be less than or equal to one"),
    ],
)  # fmt: skip
def test_flat_errors_are_knatives(value: dict[str, Any], msg: str) -> None:
    assert error(value) == msg


def test_json_form_keeps_knatives_lenient_endpoints() -> None:
    """Knative's queue-proxy unmarshals the JSON without Validate: grpc without an endpoint
    uses the exporter's default endpoint."""
    assert obs({"tracing": {"protocol": "grpc"}}).tracing_protocol == "grpc"


def test_section_of_the_wrong_type() -> None:
    assert error({"tracing": "on"}) == (
        "json: cannot unmarshal string into Go struct field Config.tracing of type struct"
    )


def test_export_interval_both_forms() -> None:
    nested = obs({"requestMetrics": {"protocol": "prometheus", "exportInterval": 30_000_000_000}})
    assert nested.request_metrics_export_interval == 30.0
    flat = obs({"request-metrics-protocol": "prometheus", "request-metrics-export-interval": "1m"})
    assert flat.request_metrics_export_interval == 60.0
    assert error({"requestMetrics": {"exportInterval": "30s"}}) == (
        "json: cannot unmarshal string into Go struct field "
        "Config.requestMetrics.exportInterval of type time.Duration"
    )
    assert error({"request-metrics-export-interval": "soon"}) == (
        'failed to parse "request-metrics-export-interval": time: invalid duration "soon"'
    )

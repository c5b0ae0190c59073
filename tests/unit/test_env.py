"""Unit tests for dataplane.envconfig readers and the queue-proxy environment (queueproxy.env)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.envconfig import (
    ConfigError,
    env_bool,
    env_duration,
    env_float,
    env_int,
    env_str,
    parse_duration,
)
from queueproxy.env import Env, ObservabilityConfig, parse_env, parse_observability

REQUIRED = {
    "CONTAINER_CONCURRENCY": "10",
    "QUEUE_SERVING_PORT": "8012",
    "QUEUE_SERVING_TLS_PORT": "8112",
    "USER_PORT": "8080",
    "REVISION_TIMEOUT_SECONDS": "300",
    "SERVING_LOGGING_CONFIG": '{"level": "info"}',
    "SERVING_LOGGING_LEVEL": "",
    "SERVING_NAMESPACE": "default",
    "SERVING_CONFIGURATION": "hello",
    "SERVING_REVISION": "hello-00001",
    "SERVING_POD": "hello-00001-deployment-abc-xyz",
    "SERVING_POD_IP": "10.0.0.7",
}


def env(**overrides: str | None) -> dict[str, str]:
    e = dict(REQUIRED)
    for k, v in overrides.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def error_of(e: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_env(e)
    return str(info.value)


# --------------------------------------------------------------------------- parse_env


class TestParseEnv:
    def test_minimal_env_with_defaults(self) -> None:
        e = parse_env(REQUIRED)
        assert isinstance(e, Env)
        assert e.container_concurrency == 10
        assert (e.serving_port, e.tls_port, e.user_port) == (8012, 8112, 8080)
        assert e.revision_timeout == 300.0
        assert e.response_start_timeout == 0.0
        assert e.idle_timeout == 0.0
        assert e.readiness_probe == ""
        assert e.multi_container_probes is False
        assert e.full_duplex is False
        assert e.http2_auto_detection is False
        assert e.logging_config == '{"level": "info"}'
        assert e.logging_level == ""
        assert e.namespace == "default"
        assert e.service == ""
        assert e.configuration == "hello"
        assert e.revision == "hello-00001"
        assert e.pod == "hello-00001-deployment-abc-xyz"
        assert e.pod_ip == "10.0.0.7"
        assert e.admin_port == 8022
        assert e.metrics_port == 9090
        assert e.user_metrics_port == 9091
        assert e.drain_quiet_period == 30.0
        assert e.hijack_drain_timeout == 60.0
        assert e.user_host == "127.0.0.1"
        assert e.observability == ObservabilityConfig()

    def test_complete_knative_env(self) -> None:
        full = env(
            SERVING_SERVICE="hello-svc",
            REVISION_RESPONSE_START_TIMEOUT_SECONDS="120",
            REVISION_IDLE_TIMEOUT_SECONDS="30",
            SERVING_READINESS_PROBE='{"tcpSocket":{"port":8080,"host":"127.0.0.1"}}',
            ENABLE_HTTP_FULL_DUPLEX="true",
            ENABLE_HTTP2_AUTO_DETECTION="false",
            ENABLE_MULTI_CONTAINER_PROBES="True",
            SERVING_LOGGING_LEVEL="debug",
            OBSERVABILITY_CONFIG=json.dumps(
                {
                    "tracing": {"protocol": "none"},
                    "metrics": {"protocol": "none"},
                    "requestMetrics": {"protocol": "prometheus"},
                    "enableRequestLog": True,
                    "requestLogTemplate": "{{.Request.Method}}",
                }
            ),
            SYSTEM_NAMESPACE="knative-serving",
            HOST_IP="192.168.1.1",
            ROOT_CA="",
            OTEL_SERVICE_NAME="svc",
            QUEUE_PROXY_TLS_MIN_VERSION="1.3",
        )
        e = parse_env(full)
        assert e.service == "hello-svc"
        assert e.response_start_timeout == 120.0
        assert e.idle_timeout == 30.0
        assert e.readiness_probe.startswith('{"tcpSocket"')
        assert (e.full_duplex, e.http2_auto_detection, e.multi_container_probes) == (
            True,
            False,
            True,
        )
        assert e.logging_level == "debug"
        assert e.observability.request_metrics_protocol == "prometheus"
        assert e.observability.enable_request_log is True
        assert e.observability.request_log_template == "{{.Request.Method}}"

    def test_extras(self) -> None:
        e = parse_env(
            env(
                QUEUE_ADMIN_PORT="18022",
                QUEUE_METRICS_PORT="19090",
                QUEUE_USER_METRICS_PORT="19091",
                DRAIN_QUIET_PERIOD_SECONDS="0.5",
                HIJACK_DRAIN_TIMEOUT_SECONDS="2",
                USER_HOST="::1",
                QUEUE_BIND_ADDRESS="127.0.0.1",
            )
        )
        assert (e.admin_port, e.metrics_port, e.user_metrics_port) == (18022, 19090, 19091)
        assert e.drain_quiet_period == 0.5
        assert e.hijack_drain_timeout == 2.0
        assert e.user_host == "::1"
        assert e.bind_host == "127.0.0.1"

    def test_empty_optional_values_use_defaults(self) -> None:
        e = parse_env(
            env(
                REVISION_RESPONSE_START_TIMEOUT_SECONDS="",
                REVISION_IDLE_TIMEOUT_SECONDS="",
                ENABLE_HTTP_FULL_DUPLEX="",
                QUEUE_ADMIN_PORT="",
                DRAIN_QUIET_PERIOD_SECONDS="",
                USER_HOST="",
                OBSERVABILITY_CONFIG="",
            )
        )
        assert e.response_start_timeout == 0.0
        assert e.idle_timeout == 0.0
        assert e.full_duplex is False
        assert e.admin_port == 8022
        assert e.drain_quiet_period == 30.0
        assert e.user_host == "127.0.0.1"

    def test_cc_zero_allowed(self) -> None:
        assert parse_env(env(CONTAINER_CONCURRENCY="0")).container_concurrency == 0

    @pytest.mark.parametrize(
        "name",
        [
            "CONTAINER_CONCURRENCY",
            "QUEUE_SERVING_PORT",
            "QUEUE_SERVING_TLS_PORT",
            "USER_PORT",
            "REVISION_TIMEOUT_SECONDS",
            "SERVING_LOGGING_CONFIG",
            "SERVING_LOGGING_LEVEL",
            "SERVING_NAMESPACE",
            "SERVING_CONFIGURATION",
            "SERVING_REVISION",
            "SERVING_POD",
            "SERVING_POD_IP",
        ],
    )
    def test_required_missing(self, name: str) -> None:
        msg = error_of(env(**{name: None}))
        assert msg.startswith(name + ":")
        assert "required" in msg

    @pytest.mark.parametrize(
        "name",
        ["SERVING_LOGGING_CONFIG", "SERVING_NAMESPACE", "SERVING_POD", "SERVING_LOGGING_LEVEL"],
    )
    def test_required_strings_may_be_empty(self, name: str) -> None:
        parse_env(env(**{name: ""}))

    @pytest.mark.parametrize(
        "name",
        [
            "SERVING_SERVICE",
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            "REVISION_IDLE_TIMEOUT_SECONDS",
            "SERVING_READINESS_PROBE",
            "ENABLE_HTTP_FULL_DUPLEX",
            "OBSERVABILITY_CONFIG",
        ],
    )
    def test_optional_absent(self, name: str) -> None:
        parse_env(env(**{name: None}))

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("CONTAINER_CONCURRENCY", "ten"),
            ("CONTAINER_CONCURRENCY", "1.5"),
            ("CONTAINER_CONCURRENCY", ""),
            ("QUEUE_SERVING_PORT", "80a"),
            ("USER_PORT", "0x50"),
            ("REVISION_TIMEOUT_SECONDS", "300s"),
            ("REVISION_IDLE_TIMEOUT_SECONDS", "1.5"),
            ("QUEUE_ADMIN_PORT", "admin"),
        ],
    )
    def test_bad_int(self, name: str, value: str) -> None:
        msg = error_of(env(**{name: value}))
        assert msg.startswith(name + ":")
        assert "not an integer" in msg
        assert repr(value) in msg

    @pytest.mark.parametrize(
        "name",
        [
            "QUEUE_SERVING_PORT",
            "QUEUE_SERVING_TLS_PORT",
            "USER_PORT",
            "QUEUE_ADMIN_PORT",
            "QUEUE_METRICS_PORT",
            "QUEUE_USER_METRICS_PORT",
        ],
    )
    @pytest.mark.parametrize("value", ["0", "-1", "65536", "100000"])
    def test_port_out_of_range(self, name: str, value: str) -> None:
        msg = error_of(env(**{name: value}))
        assert msg.startswith(name + ":")
        assert "minimum" in msg or "maximum" in msg

    @pytest.mark.parametrize("value", ["1", "65535"])
    def test_port_edges(self, value: str) -> None:
        assert parse_env(env(USER_PORT=value)).user_port == int(value)

    @pytest.mark.parametrize(
        "name",
        [
            "CONTAINER_CONCURRENCY",
            "REVISION_TIMEOUT_SECONDS",
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            "REVISION_IDLE_TIMEOUT_SECONDS",
        ],
    )
    def test_negative(self, name: str) -> None:
        msg = error_of(env(**{name: "-1"}))
        assert msg.startswith(name + ":")
        assert "below the minimum 0" in msg

    @pytest.mark.parametrize(
        "name",
        ["ENABLE_HTTP_FULL_DUPLEX", "ENABLE_HTTP2_AUTO_DETECTION", "ENABLE_MULTI_CONTAINER_PROBES"],
    )
    @pytest.mark.parametrize("value", ["yes", "on", "2", "tRuE", "enabled"])
    def test_bad_bool(self, name: str, value: str) -> None:
        msg = error_of(env(**{name: value}))
        assert msg.startswith(name + ":")
        assert "not a boolean" in msg

    @pytest.mark.parametrize("value", ["verbose", "trace", "information", "5"])
    def test_bad_logging_level(self, value: str) -> None:
        msg = error_of(env(SERVING_LOGGING_LEVEL=value))
        assert msg.startswith("SERVING_LOGGING_LEVEL:")
        assert repr(value) in msg

    @pytest.mark.parametrize(
        "value",
        ["", "debug", "info", "warn", "error", "dpanic", "panic", "fatal", "INFO", " Warn "],
    )
    def test_good_logging_level(self, value: str) -> None:
        assert parse_env(env(SERVING_LOGGING_LEVEL=value)).logging_level == value

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("DRAIN_QUIET_PERIOD_SECONDS", "soon"),
            ("DRAIN_QUIET_PERIOD_SECONDS", "-1"),
            ("DRAIN_QUIET_PERIOD_SECONDS", "nan"),
            ("HIJACK_DRAIN_TIMEOUT_SECONDS", "inf"),
            ("QUEUE_MAX_HEADER_BYTES", "10"),
        ],
    )
    def test_bad_extras(self, name: str, value: str) -> None:
        assert error_of(env(**{name: value})).startswith(name + ":")

    def test_bad_observability_is_fatal(self) -> None:
        assert error_of(env(OBSERVABILITY_CONFIG="{")).startswith("OBSERVABILITY_CONFIG:")

    def test_whitespace_around_ints(self) -> None:
        assert parse_env(env(CONTAINER_CONCURRENCY=" 5 ")).container_concurrency == 5


# --------------------------------------------------------------------------- observability


def obs(value: Any) -> ObservabilityConfig:
    return parse_observability(value if isinstance(value, str) else json.dumps(value))


def obs_error(value: Any) -> str:
    with pytest.raises(ConfigError) as info:
        obs(value)
    msg = str(info.value)
    assert msg.startswith("OBSERVABILITY_CONFIG:")
    return msg


class TestObservability:
    @pytest.mark.parametrize("raw", ["", "  ", "{}"])
    def test_empty(self, raw: str) -> None:
        assert obs(raw) == ObservabilityConfig()

    def test_request_metrics_prometheus(self) -> None:
        c = obs({"requestMetrics": {"protocol": "prometheus"}})
        assert c.request_metrics_protocol == "prometheus"
        assert c.request_metrics_endpoint == ""

    @pytest.mark.parametrize("proto", ["none", "prometheus", "grpc", "http/protobuf"])
    def test_request_metrics_protocols(self, proto: str) -> None:
        c = obs({"requestMetrics": {"protocol": proto, "endpoint": "collector:4317"}})
        assert c.request_metrics_protocol == proto
        assert c.request_metrics_endpoint == "collector:4317"

    def test_request_metrics_unknown_protocol(self) -> None:
        assert obs_error({"requestMetrics": {"protocol": "statsd"}}) == (
            'OBSERVABILITY_CONFIG: requestMetrics: unsupported protocol "statsd"'
        )

    def test_tracing(self) -> None:
        c = obs(
            {
                "tracing": {
                    "protocol": "http/protobuf",
                    "endpoint": "http://otel:4318/v1/traces",
                    "samplingRate": 0.25,
                }
            }
        )
        assert c.tracing_protocol == "http/protobuf"
        assert c.tracing_endpoint == "http://otel:4318/v1/traces"
        assert c.tracing_sampling_rate == 0.25

    @pytest.mark.parametrize("rate", [0, 1, 0.5])
    def test_sampling_rate_range(self, rate: float) -> None:
        assert obs({"tracing": {"samplingRate": rate}}).tracing_sampling_rate == rate

    @pytest.mark.parametrize(
        ("rate", "msg"),
        [
            (-0.1, "sampling rate -0.100000 should be greater or equal to zero"),
            (1.5, "sampling rate 1.500000 should be less than or equal to one"),
            ("0.5", "json: cannot unmarshal string into Go struct field "
             "Config.tracing.samplingRate of type float64"),
            (True, "json: cannot unmarshal bool into Go struct field "
             "Config.tracing.samplingRate of type float64"),
            ([0.5], "json: cannot unmarshal array into Go struct field "
             "Config.tracing.samplingRate of type float64"),
        ],
    )  # fmt: skip
    def test_bad_sampling_rate(self, rate: Any, msg: str) -> None:
        """Knative's types: samplingRate is a float64, a string is refused as Go refuses it."""
        assert obs_error({"tracing": {"samplingRate": rate}}) == "OBSERVABILITY_CONFIG: " + msg

    def test_knative_json_names_only(self) -> None:
        """Go's encoding/json matches field names ignoring case, nothing looser."""
        for key in ("sampling-rate", "sampling_rate"):
            assert obs({"tracing": {key: 0.5}}).tracing_sampling_rate == 0.0

    def test_request_log(self) -> None:
        c = obs(
            {
                "enableRequestLog": True,
                "requestLogTemplate": '{"method": "{{.Request.Method}}"}',
                "enableProbeRequestLog": True,
            }
        )
        assert c.enable_request_log is True
        assert c.enable_probe_request_log is True
        assert c.request_log_template == '{"method": "{{.Request.Method}}"}'

    def test_template_without_enable(self) -> None:
        c = obs({"requestLogTemplate": "x"})
        assert c.enable_request_log is False
        assert c.request_log_template == "x"

    @pytest.mark.parametrize("extra", [{}, {"requestLogTemplate": ""}])
    def test_enable_request_log_without_template(self, extra: dict[str, Any]) -> None:
        msg = obs_error({"enableRequestLog": True, **extra})
        assert msg == (
            'OBSERVABILITY_CONFIG: "logging.enable-request-log" was set to true, but no '
            '"logging.request-log-template" was specified'
        )

    def test_case_insensitive_keys(self) -> None:
        c = obs(
            {
                "REQUESTMETRICS": {"Protocol": "prometheus", "ENDPOINT": ":9999"},
                "Tracing": {"PROTOCOL": "grpc", "SAMPLINGRATE": 1},
                "EnableRequestLog": True,
                "requestlogtemplate": "t",
                "ENABLEPROBEREQUESTLOG": True,
            }
        )
        assert c.request_metrics_protocol == "prometheus"
        assert c.request_metrics_endpoint == ":9999"
        assert c.tracing_protocol == "grpc"
        assert c.tracing_sampling_rate == 1.0
        assert c.enable_request_log is True
        assert c.request_log_template == "t"
        assert c.enable_probe_request_log is True

    def test_exact_key_preferred(self) -> None:
        c = obs({"RequestMetrics": {"protocol": "grpc"}, "requestMetrics": {"protocol": "none"}})
        assert c.request_metrics_protocol == "none"

    def test_null_values_ignored(self) -> None:
        c = obs(
            {
                "tracing": None,
                "requestMetrics": {"protocol": None},
                "enableRequestLog": None,
                "requestLogTemplate": None,
            }
        )
        assert c == ObservabilityConfig()

    def test_unknown_keys_ignored(self) -> None:
        c = obs({"runtime": {"profiling": "enabled"}, "x": 1})
        assert c == ObservabilityConfig()

    def test_metrics_section(self) -> None:
        """Knative's base metrics config (the activator's own metrics)."""
        c = obs({"metrics": {"protocol": "grpc", "endpoint": "http://c:4317"}})
        assert (c.metrics_protocol, c.metrics_endpoint) == ("grpc", "http://c:4317")

    @pytest.mark.parametrize("raw", ["{", "not json", '{"a": }', "{'single': 1}"])
    def test_invalid_json(self, raw: str) -> None:
        assert "not valid JSON" in obs_error(raw)

    @pytest.mark.parametrize("raw", ["[]", '"text"', "1", "null", "true"])
    def test_not_an_object(self, raw: str) -> None:
        assert "object" in obs_error(raw)

    @pytest.mark.parametrize(
        ("value", "where"),
        [
            ({"requestMetrics": "prometheus"}, "requestMetrics"),
            ({"requestMetrics": []}, "requestMetrics"),
            ({"tracing": 1}, "tracing"),
            ({"requestMetrics": {"protocol": 1}}, "requestMetrics.protocol"),
            ({"requestMetrics": {"endpoint": False}}, "requestMetrics.endpoint"),
            ({"tracing": {"endpoint": {}}}, "tracing.endpoint"),
            ({"enableRequestLog": "true"}, "enableRequestLog"),
            ({"enableRequestLog": 1}, "enableRequestLog"),
            ({"enableProbeRequestLog": "yes"}, "enableProbeRequestLog"),
            ({"requestLogTemplate": 5}, "requestLogTemplate"),
        ],
    )
    def test_wrong_types(self, value: dict[str, Any], where: str) -> None:
        assert where in obs_error(value)


# --------------------------------------------------------------------------- readers


class TestReaders:
    def test_env_str(self) -> None:
        assert env_str({"A": "x"}, "A") == "x"
        assert env_str({"A": ""}, "A") == ""
        assert env_str({}, "A", "d") == "d"
        with pytest.raises(ConfigError, match=r"^A: required"):
            env_str({}, "A")

    def test_env_int(self) -> None:
        assert env_int({"N": "42"}, "N") == 42
        assert env_int({"N": "-3"}, "N") == -3
        assert env_int({}, "N", 7) == 7
        assert env_int({"N": " "}, "N", 7) == 7
        with pytest.raises(ConfigError, match=r"^N: required"):
            env_int({}, "N")
        with pytest.raises(ConfigError, match=r"^N: 'x' is not an integer"):
            env_int({"N": "x"}, "N")
        with pytest.raises(ConfigError, match=r"^N: 3 is below the minimum 5"):
            env_int({"N": "3"}, "N", minimum=5)
        with pytest.raises(ConfigError, match=r"^N: 9 is above the maximum 8"):
            env_int({"N": "9"}, "N", maximum=8)

    def test_env_float(self) -> None:
        assert env_float({"F": "1.5"}, "F", 0.0) == 1.5
        assert env_float({"F": "2"}, "F", 0.0) == 2.0
        assert env_float({}, "F", 3.0) == 3.0
        assert env_float({"F": ""}, "F", 3.0) == 3.0
        for bad in ("nan", "inf", "-inf", "abc"):
            with pytest.raises(ConfigError, match=r"^F: "):
                env_float({"F": bad}, "F", 0.0)
        with pytest.raises(ConfigError, match=r"^F: -1 is below the minimum 0"):
            env_float({"F": "-1"}, "F", 0.0, minimum=0)

    @pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True", " true "])
    def test_env_bool_true(self, value: str) -> None:
        assert env_bool({"B": value}, "B") is True

    @pytest.mark.parametrize("value", ["0", "f", "F", "FALSE", "false", "False"])
    def test_env_bool_false(self, value: str) -> None:
        assert env_bool({"B": value}, "B", default=True) is False

    def test_env_bool_default(self) -> None:
        assert env_bool({}, "B") is False
        assert env_bool({}, "B", True) is True
        assert env_bool({"B": ""}, "B", True) is True

    def test_env_duration(self) -> None:
        assert env_duration({"D": "200ms"}, "D", 1.0) == pytest.approx(0.2)
        assert env_duration({"D": "5"}, "D", 1.0) == 5.0
        assert env_duration({"D": "2.5"}, "D", 1.0) == 2.5
        assert env_duration({}, "D", 1.0) == 1.0
        assert env_duration({"D": " "}, "D", 1.0) == 1.0
        with pytest.raises(ConfigError, match=r"^D: 'soon' is not a duration"):
            env_duration({"D": "soon"}, "D", 1.0)

    def test_config_error_is_value_error(self) -> None:
        assert issubclass(ConfigError, ValueError)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("300ms", 0.3),
            ("1m30s", 90.0),
            ("1.5h", 5400.0),
            ("-2s", -2.0),
            ("+2s", 2.0),
            ("0", 0.0),
            ("-0", 0.0),
            ("+0", 0.0),
            ("0s", 0.0),
            ("1ns", 1e-9),
            ("1us", 1e-6),
            ("1\u00b5s", 1e-6),  # micro sign
            ("2h45m", 9900.0),
            ("1h1m1s1ms", 3661.001),
            (".5s", 0.5),
            ("1.s", 1.0),
            ("10m", 600.0),
            (" 3s ", 3.0),
        ],
    )
    def test_valid(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)

    @pytest.mark.parametrize(
        "text",
        [
            "",
            " ",
            "-",
            "+",
            "5",
            "1.5",
            "s",
            "5x",
            "5sec",
            "1d",
            "1h-2m",
            "1e3s",
            ".",
            "1..2s",
            "ms",
        ],
    )
    def test_invalid(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_duration(text)

    def test_greek_mu(self) -> None:
        assert parse_duration("1\u03bcs") == pytest.approx(1e-6)

    @settings(max_examples=200, deadline=None)
    @given(
        h=st.integers(0, 100),
        m=st.integers(0, 59),
        s=st.integers(0, 59),
        ms=st.integers(0, 999),
        neg=st.booleans(),
    )
    def test_composed(self, h: int, m: int, s: int, ms: int, neg: bool) -> None:
        text = ("-" if neg else "") + f"{h}h{m}m{s}s{ms}ms"
        want = (h * 3600 + m * 60 + s + ms / 1000) * (-1 if neg else 1)
        assert parse_duration(text) == pytest.approx(want, rel=1e-12, abs=1e-12)

"""dataplane.telemetry: one bootstrap for every binary's tracing, metrics push and flush."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from dataplane.envconfig import ConfigError
from dataplane.telemetry import (
    Identity,
    flush_traces,
    observability,
    start_tracer,
    tracing_settings,
)

WHO = Identity("activator", {"k8s.pod.name": "p-1", "k8s.namespace.name": ""})


def settings(environ: dict[str, str]) -> tuple[str, str, float] | None:
    cfg = tracing_settings(observability(environ), environ, WHO)
    return None if cfg is None else (cfg.protocol, cfg.endpoint, cfg.rate)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("", None),
        (json.dumps({"tracing": {"protocol": "none"}}), None),
        (
            json.dumps({"tracing": {"protocol": "grpc", "endpoint": "c:4317", "samplingRate": 1}}),
            ("grpc", "c:4317", 1.0),
        ),
        (
            json.dumps({"Tracing": {"Protocol": "stdout", "samplingrate": 0.5}}),
            ("stdout", "", 0.5),
        ),
        (
            json.dumps(
                {
                    "tracing-protocol": "http/protobuf",
                    "tracing-endpoint": "http://c:4318/v1/traces",
                    "tracing-sampling-rate": "0.1",
                }
            ),
            ("http/protobuf", "http://c:4318/v1/traces", 0.1),
        ),
    ],
)
def test_tracing_settings_from_observability_config(
    raw: str, want: tuple[str, str, float] | None
) -> None:
    assert settings({"OBSERVABILITY_CONFIG": raw}) == want


def test_otel_variables_without_observability_config() -> None:
    assert settings({"OTEL_TRACES_EXPORTER": "console"}) == ("stdout", "", 1.0)
    assert settings({"OTEL_TRACES_EXPORTER": "none"}) is not None  # read, and off
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        settings({"OTEL_TRACES_EXPORTER": "zipkin"})


@pytest.mark.parametrize(
    "raw", ["{", "[]", '{"tracing": {"samplingRate": 2}}', '{"tracing-sampling-rate": "x"}']
)
def test_bad_observability_config_names_it(raw: str) -> None:
    with pytest.raises(ConfigError, match="OBSERVABILITY_CONFIG"):
        settings({"OBSERVABILITY_CONFIG": raw})


def test_identity_names_the_service_and_resource() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console"}
    cfg = tracing_settings(observability(env), env, WHO)
    assert cfg is not None
    assert cfg.service_name == "activator"
    assert cfg.resource == {"k8s.pod.name": "p-1"}  # empty values are left out
    env["OTEL_SERVICE_NAME"] = "mine"
    cfg = tracing_settings(observability(env), env, WHO)
    assert cfg is not None and cfg.service_name == "mine"
    assert WHO.resource(env) == {
        "service.name": "mine",
        "k8s.pod.name": "p-1",
        "k8s.namespace.name": "",
    }
    assert WHO.resource({})["service.name"] == "activator"


def test_start_tracer_is_none_when_tracing_is_off() -> None:
    assert start_tracer(None, "scope") is None
    env = {"OTEL_TRACES_EXPORTER": "none"}
    assert start_tracer(tracing_settings(observability(env), env, WHO), "scope") is None


class _StuckTracer:
    def shutdown(self) -> None:
        raise RuntimeError("exporter gone")


async def test_flush_traces_logs_a_failure_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    await flush_traces(None, loop)
    with caplog.at_level(logging.WARNING, logger="dataplane.telemetry"):
        await flush_traces(_StuckTracer(), loop)  # type: ignore[arg-type]
    assert "could not flush traces" in caplog.text

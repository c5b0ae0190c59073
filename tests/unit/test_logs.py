"""dataplane.logs: Knative's zap JSON lines, SERVING_LOGGING_CONFIG and SERVING_LOGGING_LEVEL."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from dataplane.logs import parse_logging_config, setup_logging

# Knative's default config-logging zap-logger-config
KNATIVE = json.dumps(
    {
        "level": "info",
        "development": False,
        "outputPaths": ["stdout"],
        "errorOutputPaths": ["stderr"],
        "encoding": "json",
        "encoderConfig": {
            "timeKey": "timestamp",
            "levelKey": "severity",
            "nameKey": "logger",
            "callerKey": "caller",
            "messageKey": "message",
            "stacktraceKey": "stacktrace",
            "lineEnding": "",
            "levelEncoder": "",
            "timeEncoder": "iso8601",
            "durationEncoder": "",
            "nameEncoder": "",
        },
    }
)
CTX = {"knative.dev/key": "default/hello-00001", "knative.dev/pod": "hello-pod"}


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_knative_keys_and_context() -> None:
    buf = io.StringIO()
    setup_logging("info", CTX, KNATIVE, stream=buf)
    logging.getLogger("queueproxy").warning("hello %s", "world", extra={"port": 8012})
    logging.getLogger("queueproxy").debug("hidden")
    [line] = lines(buf)
    assert list(line)[:5] == ["severity", "timestamp", "logger", "caller", "message"]
    assert line["severity"] == "WARN"
    assert line["logger"] == "queueproxy"
    assert line["message"] == "hello world"
    assert re.fullmatch(r"unit/test_logs\.py:\d+", line["caller"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])
    assert line["knative.dev/key"] == "default/hello-00001"
    assert line["knative.dev/pod"] == "hello-pod"
    assert line["port"] == 8012


def test_custom_encoder_keys_and_omitted_fields() -> None:
    cfg = json.dumps(
        {"encoderConfig": {"levelKey": "level", "timeKey": "ts", "callerKey": "", "nameKey": "n"}}
    )
    buf = io.StringIO()
    setup_logging("", {}, cfg, stream=buf)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("activator").exception("failed")
    [line] = lines(buf)
    assert line["level"] == "ERROR"
    assert "ts" in line and line["n"] == "activator"
    assert "caller" not in line and "severity" not in line
    assert "ValueError: boom" in line["stacktrace"]


@pytest.mark.parametrize(
    ("level", "config", "shown"),
    [
        ("", "", ["INFO", "WARN", "ERROR"]),  # SERVING_LOGGING_LEVEL may be empty
        ("debug", "", ["DEBUG", "INFO", "WARN", "ERROR"]),
        ("error", KNATIVE, ["ERROR"]),
        ("", json.dumps({"level": "warn"}), ["WARN", "ERROR"]),  # the config's level
        ("Warn", json.dumps({"level": "debug"}), ["WARN", "ERROR"]),  # the override wins
    ],
)
def test_levels(level: str, config: str, shown: list[str]) -> None:
    buf = io.StringIO()
    setup_logging(level, {}, config, stream=buf)
    log = logging.getLogger("x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [line["severity"] for line in lines(buf)] == shown


def test_bad_config_falls_back_with_a_warning() -> None:
    buf = io.StringIO()
    setup_logging("info", {}, "{nope", stream=buf)
    [line] = lines(buf)
    assert line["severity"] == "WARN"
    assert line["message"].startswith("SERVING_LOGGING_CONFIG: ignored")


def test_output_paths() -> None:
    assert parse_logging_config(KNATIVE)[0].output == "stdout"
    assert parse_logging_config("")[0].output == "stderr"
    assert parse_logging_config('{"outputPaths": ["/var/log/x"]}')[0].output == "stderr"

"""Structured JSON logs with Knative's zap keys, on the standard ``logging`` module.

One JSON object per line, as Knative's components write them with the default
``config-logging`` ``zap-logger-config``: ``severity``, ``timestamp`` (ISO 8601, milliseconds),
``logger``, ``caller``, ``message``, plus fixed context fields (``knative.dev/key`` =
``<namespace>/<revision>`` and ``knative.dev/pod`` for the queue-proxy, ``knative.dev/pod`` and
``knative.dev/controller`` for the activator), any ``extra`` fields, and ``stacktrace`` for
exceptions.

``SERVING_LOGGING_CONFIG`` (zap's JSON config, which Knative passes to the queue-proxy) is
honoured for what applies here: ``level``, ``outputPaths`` (``stdout``/``stderr``) and the key
names of ``encoderConfig`` (``levelKey``, ``timeKey``, ``nameKey``, ``callerKey``,
``messageKey``, ``stacktraceKey``; an empty key leaves that field out, as zap does).
``SERVING_LOGGING_LEVEL``, when not empty, overrides the level. Nothing here runs per request.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["JSONFormatter", "LogKeys", "parse_logging_config", "setup_logging"]

_LEVELS = {
    "": logging.INFO,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "dpanic": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "FATAL",
}

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


@dataclass(frozen=True, slots=True)
class LogKeys:
    """zap ``encoderConfig`` key names (Knative's defaults); ``""`` omits the field."""

    level: str = "severity"
    time: str = "timestamp"
    name: str = "logger"
    caller: str = "caller"
    message: str = "message"
    stacktrace: str = "stacktrace"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    keys: LogKeys = LogKeys()
    output: str = "stderr"


def parse_logging_config(raw: str) -> tuple[LoggingConfig, str | None]:
    """Decode zap's JSON config; returns the config and an error text (then the defaults apply,
    as Knative falls back to its default logger on a bad config)."""
    if not raw.strip():
        return LoggingConfig(), None
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
    except ValueError as e:
        return LoggingConfig(), f"SERVING_LOGGING_CONFIG: ignored, not a zap JSON config ({e})"
    enc = obj.get("encoderConfig")
    enc = enc if isinstance(enc, dict) else {}
    d = LogKeys()

    def key(name: str, default: str) -> str:
        v = enc.get(name, default)
        return v if isinstance(v, str) else default

    keys = LogKeys(
        level=key("levelKey", d.level),
        time=key("timeKey", d.time),
        name=key("nameKey", d.name),
        caller=key("callerKey", d.caller),
        message=key("messageKey", d.message),
        stacktrace=key("stacktraceKey", d.stacktrace),
    )
    level = obj.get("level")
    outputs = obj.get("outputPaths")
    output = "stderr"
    if isinstance(outputs, list) and outputs and outputs[0] in ("stdout", "stderr"):
        output = outputs[0]
    return LoggingConfig(level if isinstance(level, str) else "info", keys, output), None


def _timestamp(ts: float) -> str:
    # zap's ISO8601TimeEncoder in UTC: 2006-01-02T15:04:05.000Z
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e3):03d}Z"


class JSONFormatter(logging.Formatter):
    def __init__(self, context: dict[str, str] | None = None, keys: LogKeys | None = None) -> None:
        super().__init__()
        self.context = context or {}
        self.keys = keys or LogKeys()

    def format(self, record: logging.LogRecord) -> str:
        k = self.keys
        out: dict[str, Any] = {}
        if k.level:
            out[k.level] = _NAMES.get(record.levelno, record.levelname)
        if k.time:
            out[k.time] = _timestamp(record.created)
        if k.name:
            out[k.name] = record.name
        if k.caller:
            parts = record.pathname.replace("\\", "/").rsplit("/", 2)
            out[k.caller] = f"{'/'.join(parts[-2:])}:{record.lineno}"
        if k.message:
            out[k.message] = record.getMessage()
        out.update(self.context)
        for name, v in record.__dict__.items():
            if name not in _STD_ATTRS and not name.startswith("_"):
                out[name] = v
        if record.exc_info and k.stacktrace:
            out[k.stacktrace] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(
    level: str,
    context: dict[str, str] | None = None,
    config: str = "",
    stream: IO[str] | None = None,
) -> None:
    """JSON lines at ``level`` (Knative's names: debug, info, warn, error; empty: the config's
    level, else info), shaped by zap's JSON ``config`` (``SERVING_LOGGING_CONFIG``)."""
    cfg, problem = parse_logging_config(config)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if stream is None:
        stream = sys.stdout if cfg.output == "stdout" else sys.stderr
    h = logging.StreamHandler(stream)
    h.setFormatter(JSONFormatter(context, cfg.keys))
    root.addHandler(h)
    name = level.strip().lower() or cfg.level.strip().lower()
    root.setLevel(_LEVELS.get(name, logging.INFO))
    if problem is not None:
        logging.getLogger("logging").warning(problem)
    if name not in _LEVELS:
        logging.getLogger("logging").warning("unknown log level %r: using info", level)

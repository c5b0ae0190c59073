"""Structured JSON logs with Knative's zap keys, on the standard ``logging`` module.

One JSON object per line: ``severity``, ``timestamp``, ``logger``, ``caller``, ``message``, plus
fixed context fields (``knative.dev/key``, ``knative.dev/pod``) and any ``extra`` fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JSONFormatter", "setup_logging"]

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

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


class JSONFormatter(logging.Formatter):
    def __init__(self, context: dict[str, str] | None = None) -> None:
        super().__init__()
        self.context = context or {}

    def format(self, record: logging.LogRecord) -> str:
        ts = record.created
        out: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARNING" else "WARN",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
            + f".{int(ts % 1 * 1e6):06d}Z",
            "logger": record.name,
            "caller": f"{record.module}:{record.lineno}",
            "message": record.getMessage(),
        }
        out.update(self.context)
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["stacktrace"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, context: dict[str, str] | None = None) -> None:
    """JSON lines on stderr at ``level`` (Knative's names: debug, info, warn, error)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JSONFormatter(context))
    root.addHandler(h)
    root.setLevel(_LEVELS.get(level.strip().lower(), logging.INFO))

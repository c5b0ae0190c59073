"""``OBSERVABILITY_CONFIG``: one parser for the queue-proxy, the activator and ``knd``.

Two forms, each read with Knative's types and errors:

- Knative's JSON (what the reconciler puts in the queue-proxy's env: serving's
  ``observability.Config``), read as Go's ``encoding/json`` would: keys match exactly or else
  case-insensitively, unknown keys and ``null`` values are ignored, and a value of the wrong
  JSON type is an error (``"samplingRate": "0.5"`` is refused: the field is a float64).
- The ``config-observability`` ConfigMap keys (``tracing-protocol``, ``tracing-endpoint``,
  ``tracing-sampling-rate``, ``request-metrics-protocol``, ``request-metrics-endpoint``,
  ``request-metrics-export-interval``, ``logging.enable-request-log``,
  ``logging.request-log-template``, ``logging.enable-probe-request-log``), as Knative's
  activator reads them: string values parsed as ``strconv`` does (numbers and booleans in the
  JSON are taken as their text), then Knative's ``Validate`` (an endpoint is required for grpc
  and http/protobuf, and so on).

Both forms may be mixed; a flat key wins over the nested field it names. Every error starts
with ``OBSERVABILITY_CONFIG:`` and uses Knative's wording.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .envconfig import ConfigError, parse_duration

__all__ = ["ObservabilityConfig", "parse_observability"]

_NAME = "OBSERVABILITY_CONFIG"
_TRACING_PROTOCOLS = ("grpc", "http/protobuf", "none", "stdout")
_METRICS_PROTOCOLS = ("grpc", "http/protobuf", "prometheus", "none")


@dataclass(slots=True)
class ObservabilityConfig:
    """The parts of the observability config the data plane acts on."""

    request_metrics_protocol: str = "none"
    request_metrics_endpoint: str = ""
    request_metrics_export_interval: float = 0.0  # seconds; 0: the exporter's default
    # the component's own metrics (Knative's base MetricsConfig: the activator's)
    metrics_protocol: str = "none"
    metrics_endpoint: str = ""
    metrics_export_interval: float = 0.0
    tracing_protocol: str = "none"
    tracing_endpoint: str = ""
    tracing_sampling_rate: float = 0.0
    enable_request_log: bool = False
    request_log_template: str = ""
    enable_probe_request_log: bool = False


def _field(obj: Mapping[str, Any], key: str) -> Any:
    """Go's encoding/json: the exact key, else the first key equal ignoring case."""
    if key in obj:
        return obj[key]
    lk = key.lower()
    for k, v in obj.items():
        if k.lower() == lk:
            return v
    return None


_GO_TYPES = {str: "string", bool: "bool", float: "float64", dict: "struct"}


def _json_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _typed(v: Any, want: type, path: str, struct: str) -> Any:
    """``v`` if its JSON type fits a Go field of type ``want``, else Go's unmarshal error."""
    ok = (
        isinstance(v, want) and not (want is not bool and isinstance(v, bool))
        if want is not float
        else isinstance(v, int | float) and not isinstance(v, bool)
    )
    if not ok:
        raise ConfigError(
            f"{_NAME}: json: cannot unmarshal {_json_kind(v)} into Go struct field "
            f"{struct}.{path} of type {_GO_TYPES[want]}"
        )
    return float(v) if want is float else v


def _nested(obj: Mapping[str, Any], cfg: ObservabilityConfig) -> None:
    def section(key: str) -> Mapping[str, Any]:
        v = _field(obj, key)
        return {} if v is None else _typed(v, dict, key, "Config")

    def put(sec: Mapping[str, Any], where: str, key: str, want: type, attr: str) -> None:
        v = _field(sec, key)
        if v is not None:
            setattr(cfg, attr, _typed(v, want, f"{where}.{key}" if where else key, "Config"))

    for key, prefix in (("requestMetrics", "request_metrics"), ("metrics", "metrics")):
        sec = section(key)
        put(sec, key, "protocol", str, prefix + "_protocol")
        put(sec, key, "endpoint", str, prefix + "_endpoint")
        ns = _field(sec, "exportInterval")  # a Go time.Duration: integer nanoseconds in JSON
        if ns is not None:
            if not isinstance(ns, int) or isinstance(ns, bool):
                raise ConfigError(
                    f"{_NAME}: json: cannot unmarshal {_json_kind(ns)} into Go struct field "
                    f"Config.{key}.exportInterval of type time.Duration"
                )
            setattr(cfg, prefix + "_export_interval", ns / 1e9)
    tr = section("tracing")
    put(tr, "tracing", "protocol", str, "tracing_protocol")
    put(tr, "tracing", "endpoint", str, "tracing_endpoint")
    put(tr, "tracing", "samplingRate", float, "tracing_sampling_rate")
    put(obj, "", "enableRequestLog", bool, "enable_request_log")
    put(obj, "", "requestLogTemplate", str, "request_log_template")
    put(obj, "", "enableProbeRequestLog", bool, "enable_probe_request_log")
    section("runtime")  # typed in Go even though we do not act on it


_FLAT_STR = {
    "tracing-protocol": "tracing_protocol",
    "tracing-endpoint": "tracing_endpoint",
    "request-metrics-protocol": "request_metrics_protocol",
    "request-metrics-endpoint": "request_metrics_endpoint",
    "metrics-protocol": "metrics_protocol",
    "metrics-endpoint": "metrics_endpoint",
    "logging.request-log-template": "request_log_template",
}
_FLAT_BOOL = {
    "logging.enable-request-log": "enable_request_log",
    "logging.enable-probe-request-log": "enable_probe_request_log",
}
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _flat(obj: Mapping[str, Any], cfg: ObservabilityConfig) -> bool:
    """Apply the ConfigMap keys present; True if there was any."""
    seen = False
    for key, attr in _FLAT_STR.items():
        if key in obj and obj[key] is not None:
            setattr(cfg, attr, _text(obj[key]))
            seen = True
    for key, attr in _FLAT_BOOL.items():
        if key in obj and obj[key] is not None:
            s = _text(obj[key]).strip()
            if s not in _GO_TRUE and s not in _GO_FALSE:
                raise ConfigError(
                    f'{_NAME}: failed to parse "{key}": strconv.ParseBool: parsing "{s}": '
                    "invalid syntax"
                )
            setattr(cfg, attr, s in _GO_TRUE)
            seen = True
    for key, attr in (
        ("request-metrics-export-interval", "request_metrics_export_interval"),
        ("metrics-export-interval", "metrics_export_interval"),
    ):
        if key in obj and obj[key] is not None:
            s = _text(obj[key]).strip()
            try:
                setattr(cfg, attr, parse_duration(s))
            except ValueError:
                raise ConfigError(
                    f'{_NAME}: failed to parse "{key}": time: invalid duration "{s}"'
                ) from None
            seen = True
    key = "tracing-sampling-rate"
    if key in obj and obj[key] is not None:
        s = _text(obj[key]).strip()
        try:
            rate = float(s)
        except ValueError:
            rate = math.nan
        if math.isnan(rate) and s.lower() not in ("nan", "+nan", "-nan"):
            raise ConfigError(
                f'{_NAME}: failed to parse "{key}": strconv.ParseFloat: parsing "{s}": '
                "invalid syntax"
            )
        cfg.tracing_sampling_rate = rate
        seen = True
    return seen


def _validate(cfg: ObservabilityConfig, *, flat: bool) -> None:
    """Knative's checks: protocols everywhere (an unknown one is fatal at provider set-up in
    Knative too), the sampling rate range, the request log template; endpoint rules only for
    the ConfigMap form (Knative's JSON path does not run ``Validate``)."""
    p = cfg.tracing_protocol or "none"
    cfg.tracing_protocol = p
    if p not in _TRACING_PROTOCOLS:
        raise ConfigError(f'{_NAME}: tracing: unsupported protocol "{p}"')
    if flat and p in ("grpc", "http/protobuf") and not cfg.tracing_endpoint:
        raise ConfigError(f'{_NAME}: tracing: endpoint should be set for protocol "{p}"')
    if flat and p in ("none", "stdout") and cfg.tracing_endpoint:
        raise ConfigError(f"{_NAME}: tracing: endpoint should not be set when protocol is 'none'")
    rate = cfg.tracing_sampling_rate
    if rate < 0 or math.isnan(rate):
        raise ConfigError(f"{_NAME}: sampling rate {rate:f} should be greater or equal to zero")
    if rate > 1.0:
        raise ConfigError(f"{_NAME}: sampling rate {rate:f} should be less than or equal to one")
    for where, prefix in (("requestMetrics", "request_metrics"), ("metrics", "metrics")):
        m = getattr(cfg, prefix + "_protocol") or "none"
        setattr(cfg, prefix + "_protocol", m)
        endpoint = getattr(cfg, prefix + "_endpoint")
        if m not in _METRICS_PROTOCOLS:
            raise ConfigError(f'{_NAME}: {where}: unsupported protocol "{m}"')
        if flat and m in ("grpc", "http/protobuf") and not endpoint:
            raise ConfigError(f'{_NAME}: {where}: endpoint should be set when protocol is "{m}"')
        interval = getattr(cfg, prefix + "_export_interval")
        if interval < 0:
            raise ConfigError(
                f'{_NAME}: {where}: export interval "{interval:g}s" should be greater than zero'
            )
        if flat and m == "none" and endpoint:
            raise ConfigError(
                f'{_NAME}: {where}: endpoint should not be set when protocol is "none"'
            )
    if cfg.enable_request_log and not cfg.request_log_template:
        raise ConfigError(
            f'{_NAME}: "logging.enable-request-log" was set to true, but no '
            '"logging.request-log-template" was specified'
        )


def parse_observability(raw: str) -> ObservabilityConfig:
    """Decode ``OBSERVABILITY_CONFIG`` (empty: the defaults); ConfigError on a bad value."""
    cfg = ObservabilityConfig()
    if not raw.strip():
        return cfg
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{_NAME}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{_NAME}: expected a JSON object")
    _nested(obj, cfg)
    flat = _flat(obj, cfg)
    _validate(cfg, flat=flat)
    return cfg

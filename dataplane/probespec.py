"""Readiness probe specs: ``SERVING_READINESS_PROBE`` decoded and checked (SPEC §1.12).

The queue-proxy runs these probes (queueproxy/readiness.py); ``knd run`` and the platforms check
a service's probe with the same parser before anything starts. Stdlib only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_PROBE_HOST", "ProbeConfigError", "ProbeSpec", "parse_readiness_probe"]

DEFAULT_PROBE_HOST = "127.0.0.1"

_ENV = "SERVING_READINESS_PROBE"
_HANDLERS = ("httpGet", "tcpSocket", "grpc", "exec")
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_INT32_MAX = 2**31 - 1


class ProbeConfigError(ValueError):
    """SERVING_READINESS_PROBE cannot be used; fatal at start-up."""


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One decoded, normalised readiness probe."""

    kind: Literal["tcp", "http", "grpc"]
    host: str
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    grpc_service: str = ""
    period_seconds: int = 0
    timeout_seconds: int = 0
    success_threshold: int = 1
    failure_threshold: int = 0

    @property
    def aggressive(self) -> bool:
        """Knative polls aggressively inside one cycle when periodSeconds is 0."""
        return self.period_seconds == 0


# --------------------------------------------------------------------------- parsing


def parse_readiness_probe(value: str, *, multi_container: bool, user_port: int) -> list[ProbeSpec]:
    """Decode SERVING_READINESS_PROBE into normalised probes; ``[]`` means always ready.

    A single corev1.Probe object, or (when ``multi_container``) a JSON array of them; an object
    is also accepted in multi-container mode. Raises ProbeConfigError on anything unusable.
    """
    if not value.strip():
        return []
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ProbeConfigError(f"{_ENV}: malformed JSON: {exc}") from None
    if isinstance(doc, list):
        if not multi_container:
            raise ProbeConfigError(
                f"{_ENV}: got a JSON array but multi-container probing is off"
                " (ENABLE_MULTI_CONTAINER_PROBES); expected a single probe object"
            )
        return [_parse_probe(item, f"[{i}]", user_port) for i, item in enumerate(doc)]
    if isinstance(doc, dict):
        return [_parse_probe(doc, "", user_port)]
    expected = "a probe object or an array of them" if multi_container else "a probe object"
    raise ProbeConfigError(f"{_ENV}: expected {expected}, got {_json_type(doc)}")


def _parse_probe(obj: object, where: str, user_port: int) -> ProbeSpec:
    if not isinstance(obj, dict):
        raise _config_error(where, f"expected a probe object, got {_json_type(obj)}")
    present = [h for h in _HANDLERS if obj.get(h) is not None]
    if not present:
        raise _config_error(where, "no probe handler; expected one of httpGet, tcpSocket, grpc")
    if len(present) > 1:
        raise _config_error(where, f"more than one probe handler ({', '.join(present)})")
    handler = present[0]
    hwhere = _join(where, handler)
    if handler == "exec":
        raise _config_error(
            hwhere,
            "exec probes are not supported by the queue-proxy"
            " (the reconciler replaces them with a tcpSocket probe)",
        )
    body = obj[handler]
    if not isinstance(body, dict):
        raise _config_error(hwhere, f"expected an object, got {_json_type(body)}")

    period = _int_field(obj, "periodSeconds", where)
    timeout = _int_field(obj, "timeoutSeconds", where)
    success = _int_field(obj, "successThreshold", where)
    failure = _int_field(obj, "failureThreshold", where)
    _int_field(obj, "initialDelaySeconds", where)  # validated only: QP is probed on demand
    if period > 0 and timeout < 1:
        timeout = 1
    if success < 1:
        success = 1
    port = _parse_port(body.get("port"), _join(hwhere, "port"), user_port)

    kind: Literal["tcp", "http", "grpc"]
    host, path, scheme, service = DEFAULT_PROBE_HOST, "/", "HTTP", ""
    headers: tuple[tuple[str, str], ...] = ()
    if handler == "grpc":
        kind = "grpc"
        service = _str_field(body, "service", hwhere)
    else:
        kind = "tcp" if handler == "tcpSocket" else "http"
        host = _str_field(body, "host", hwhere) or DEFAULT_PROBE_HOST
        if any(c.isspace() or not c.isprintable() for c in host):
            raise _config_error(_join(hwhere, "host"), f"invalid host {host!r}")
    if kind == "http":
        path = _str_field(body, "path", hwhere) or "/"
        if not path.startswith("/"):
            path = "/" + path
        scheme = _str_field(body, "scheme", hwhere).upper() or "HTTP"
        if scheme == "HTTPS":
            raise _config_error(
                _join(hwhere, "scheme"), "HTTPS readiness probes are not supported yet; use HTTP"
            )
        if scheme != "HTTP":
            raise _config_error(
                _join(hwhere, "scheme"), f"unknown scheme {scheme!r}; expected HTTP"
            )
        headers = _parse_headers(body.get("httpHeaders"), _join(hwhere, "httpHeaders"))
    return ProbeSpec(
        kind,
        host,
        port,
        path=path,
        scheme=scheme,
        headers=headers,
        grpc_service=service,
        period_seconds=period,
        timeout_seconds=timeout,
        success_threshold=success,
        failure_threshold=failure,
    )


def _parse_port(value: object, where: str, user_port: int) -> int:
    """corev1 IntOrString port: an int or a numeric string; unset or 0 means the user port."""
    port: int
    if value is None or value == "":
        port = 0
    elif isinstance(value, bool):
        raise _config_error(where, f"expected a port number, got {_json_type(value)}")
    elif isinstance(value, int):
        port = value
    elif isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise _config_error(where, f"named port {value!r} is not supported; use a port number")
        port = int(value)
    else:
        raise _config_error(where, f"expected a port number, got {_json_type(value)}")
    if port == 0:
        if not 0 < user_port < 65536:
            raise _config_error(where, f"not set and USER_PORT {user_port} is not a valid port")
        return user_port
    if not 0 < port < 65536:
        raise _config_error(where, f"port {port} out of range 1-65535")
    return port


def _parse_headers(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _config_error(where, f"expected an array, got {_json_type(value)}")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        iwhere = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise _config_error(iwhere, f"expected an object, got {_json_type(item)}")
        name = _str_field(item, "name", iwhere)
        if not name or not set(name) <= _TOKEN_CHARS:
            raise _config_error(_join(iwhere, "name"), f"invalid header name {name!r}")
        val = _str_field(item, "value", iwhere)
        if any(c in val for c in "\r\n\0"):
            raise _config_error(_join(iwhere, "value"), "header value contains CR, LF or NUL")
        out.append((name, val))
    return tuple(out)


def _int_field(obj: dict[str, object], key: str, where: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _config_error(
            _join(where, key), f"expected an integer, got {_json_type(value)} {value!r}"
        )
    if not 0 <= value <= _INT32_MAX:
        raise _config_error(_join(where, key), f"must be between 0 and {_INT32_MAX}, got {value}")
    return value


def _str_field(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _config_error(_join(where, key), f"expected a string, got {_json_type(value)}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _config_error(where: str, what: str) -> ProbeConfigError:
    return ProbeConfigError(f"{_ENV}: {where}: {what}" if where else f"{_ENV}: {what}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"

"""The queue-proxy's environment contract (Knative SPEC §1.2), unchanged, plus our extras.

Knative's reconciler sets these on the queue-proxy container; the same names work here so this
image can replace Knative's. The extras (``QUEUE_ADMIN_PORT``, ``QUEUE_METRICS_PORT``,
``QUEUE_USER_METRICS_PORT``, ``DRAIN_QUIET_PERIOD_SECONDS``, ...) exist for running several pods
on one host and for tests; their defaults are Knative's fixed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dataplane.envconfig import (
    ConfigError,
    env_bool,
    env_float,
    env_int,
    env_str,
)
from dataplane.observability import ObservabilityConfig, parse_observability

__all__ = ["ConfigError", "Env", "ObservabilityConfig", "parse_env", "parse_observability"]

_PORT = {"minimum": 1, "maximum": 65535}


@dataclass(slots=True)
class Env:
    container_concurrency: int
    serving_port: int
    tls_port: int
    user_port: int
    revision_timeout: float
    response_start_timeout: float
    idle_timeout: float
    readiness_probe: str
    multi_container_probes: bool
    full_duplex: bool
    http2_auto_detection: bool
    logging_config: str
    logging_level: str
    namespace: str
    service: str
    configuration: str
    revision: str
    pod: str
    pod_ip: str
    admin_port: int = 8022
    metrics_port: int = 9090
    user_metrics_port: int = 9091
    drain_quiet_period: float = 30.0
    hijack_drain_timeout: float = 60.0
    bind_host: str = ""
    user_host: str = "127.0.0.1"
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 60.0
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    # Internal TLS: Knative's certificate directory (ours to move, for tests and local runs),
    # how often its files are re-read (Knative: every minute), and the QUEUE_PROXY_TLS_*
    # variables, read only when the certificates exist (as Knative does).
    cert_dir: str = "/var/lib/knative/certs"
    cert_reload: float = 60.0
    tls_env: dict[str, str] = field(default_factory=dict)


def parse_env(env: Mapping[str, str]) -> Env:
    """Read the whole contract; raises ConfigError naming the first bad variable."""
    cc = env_int(env, "CONTAINER_CONCURRENCY", minimum=0)
    e = Env(
        container_concurrency=cc,
        serving_port=env_int(env, "QUEUE_SERVING_PORT", **_PORT),
        tls_port=env_int(env, "QUEUE_SERVING_TLS_PORT", **_PORT),
        user_port=env_int(env, "USER_PORT", **_PORT),
        revision_timeout=float(env_int(env, "REVISION_TIMEOUT_SECONDS", minimum=0)),
        response_start_timeout=float(
            env_int(env, "REVISION_RESPONSE_START_TIMEOUT_SECONDS", 0, minimum=0)
        ),
        idle_timeout=float(env_int(env, "REVISION_IDLE_TIMEOUT_SECONDS", 0, minimum=0)),
        readiness_probe=env.get("SERVING_READINESS_PROBE", ""),
        multi_container_probes=env_bool(env, "ENABLE_MULTI_CONTAINER_PROBES"),
        full_duplex=env_bool(env, "ENABLE_HTTP_FULL_DUPLEX"),
        http2_auto_detection=env_bool(env, "ENABLE_HTTP2_AUTO_DETECTION"),
        logging_config=env_str(env, "SERVING_LOGGING_CONFIG"),
        logging_level=env_str(env, "SERVING_LOGGING_LEVEL"),
        namespace=env_str(env, "SERVING_NAMESPACE"),
        service=env.get("SERVING_SERVICE", ""),
        configuration=env_str(env, "SERVING_CONFIGURATION"),
        revision=env_str(env, "SERVING_REVISION"),
        pod=env_str(env, "SERVING_POD"),
        pod_ip=env_str(env, "SERVING_POD_IP"),
        admin_port=env_int(env, "QUEUE_ADMIN_PORT", 8022, **_PORT),
        metrics_port=env_int(env, "QUEUE_METRICS_PORT", 9090, **_PORT),
        user_metrics_port=env_int(env, "QUEUE_USER_METRICS_PORT", 9091, **_PORT),
        drain_quiet_period=env_float(env, "DRAIN_QUIET_PERIOD_SECONDS", 30.0, minimum=0),
        hijack_drain_timeout=env_float(env, "HIJACK_DRAIN_TIMEOUT_SECONDS", 60.0, minimum=0),
        bind_host=env.get("QUEUE_BIND_ADDRESS", ""),
        user_host=env.get("USER_HOST", "") or "127.0.0.1",
        max_header_bytes=env_int(
            env, "QUEUE_MAX_HEADER_BYTES", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024
        ),
        header_timeout=env_float(env, "QUEUE_READ_HEADER_TIMEOUT_SECONDS", 60.0, minimum=0),
    )
    e.cert_dir = env.get("QUEUE_CERT_DIR", "") or e.cert_dir
    e.cert_reload = env_float(env, "QUEUE_CERT_RELOAD_SECONDS", 60.0, minimum=0.01)
    e.tls_env = {k: v for k, v in env.items() if k.startswith("QUEUE_PROXY_TLS_")}
    level = e.logging_level.strip().lower()
    if level not in ("", "debug", "info", "warn", "warning", "error", "dpanic", "panic", "fatal"):
        raise ConfigError(
            f"SERVING_LOGGING_LEVEL: {e.logging_level!r} is not a log level "
            "(debug, info, warn, error)"
        )
    e.observability = parse_observability(env.get("OBSERVABILITY_CONFIG", ""))
    return e

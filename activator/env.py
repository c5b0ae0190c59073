"""The activator's environment (Knative SPEC §2.1) plus our settings for running without Knative."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dataplane.envconfig import ConfigError, env_duration, env_float, env_int, env_str

__all__ = ["ActivatorEnv", "ConfigError", "parse_env"]

_PORT = {"minimum": 1, "maximum": 65535}


@dataclass(slots=True)
class ActivatorEnv:
    pod_name: str
    pod_ip: str
    system_namespace: str = "knative-serving"
    cluster_domain: str = "cluster.local"
    autoscaler_url: str = ""
    max_idle_proxy_conns: int = 1000
    max_idle_proxy_conns_per_host: int = 100
    probe_timeout: float = 0.3
    probe_frequency: float = 0.2
    mesh_mode: str = "auto"  # config-network's mesh-compatibility-mode
    port: int = 8012
    metrics_port: int = 9090
    bind_host: str = ""
    drain_quiet_period: float = 45.0
    queue_depth: int = 10_000
    queue_wait: float | None = None
    # "knative" (Kubernetes with Knative Serving), "standalone" (annotated Deployments with
    # knd-autoscaler, platforms/kubernetes/standalone.py) or "static"
    platform: str = "knative"
    platform_file: str = ""
    activator_service: str = "knd-activator"  # standalone: our Service, for subsetting
    kubeconfig: str = ""
    watch_namespace: str = ""
    api_wait: float = 60.0
    logging_level: str = ""
    max_header_bytes: int = 64 * 1024
    h2c_port: int = 8013  # Knative's h2c port; 0: none (the data port accepts h2c too)
    # Internal TLS (config-network's system-internal-tls): the activator serves TLS on
    # tls_port and dials queue-proxies on queue_tls_port, checking kn-user-<namespace>. Its
    # certificate (routing-serving-certs: tls.crt, tls.key, ca.crt) comes from a mounted
    # directory that is re-read every cert_reload seconds.
    internal_tls: bool = False
    tls_port: int = 8112
    queue_tls_port: int = 8112
    cert_dir: str = "/var/lib/knative/certs"
    cert_reload: float = 10.0
    tls_env: dict[str, str] = field(default_factory=dict)


def parse_env(env: Mapping[str, str]) -> ActivatorEnv:
    """Read the environment; raises ConfigError naming the first bad variable."""
    ns = env_str(env, "SYSTEM_NAMESPACE", "knative-serving") or "knative-serving"
    domain = env_str(env, "CLUSTER_DOMAIN", "cluster.local") or "cluster.local"
    e = ActivatorEnv(
        pod_name=env_str(env, "POD_NAME"),
        pod_ip=env_str(env, "POD_IP"),
        system_namespace=ns,
        cluster_domain=domain,
        autoscaler_url=env.get("AUTOSCALER_URL", "") or f"ws://autoscaler.{ns}.svc.{domain}:8080",
        max_idle_proxy_conns=env_int(env, "MAX_IDLE_PROXY_CONNS", 1000, minimum=0),
        max_idle_proxy_conns_per_host=env_int(env, "MAX_IDLE_PROXY_CONNS_PER_HOST", 100, minimum=0),
        probe_timeout=env_duration(env, "PROBE_TIMEOUT", 0.3),
        probe_frequency=env_duration(env, "PROBE_FREQUENCY", 0.2),
        port=env_int(env, "ACTIVATOR_PORT", 8012, **_PORT),
        metrics_port=env_int(env, "ACTIVATOR_METRICS_PORT", 9090, **_PORT),
        bind_host=env.get("ACTIVATOR_BIND_ADDRESS", ""),
        drain_quiet_period=env_float(env, "DRAIN_QUIET_PERIOD_SECONDS", 45.0, minimum=0),
        queue_depth=env_int(env, "ACTIVATOR_QUEUE_DEPTH", 10_000, minimum=1),
        platform_file=env.get("ACTIVATOR_PLATFORM_FILE", ""),
        kubeconfig=env.get("KUBECONFIG", ""),
        watch_namespace=env.get("KND_WATCH_NAMESPACE", "").strip(),
        api_wait=env_float(env, "KND_KUBE_API_WAIT_SECONDS", 60.0, minimum=0),
        logging_level=env.get("SERVING_LOGGING_LEVEL", ""),
        h2c_port=env_int(env, "ACTIVATOR_H2C_PORT", 8013, minimum=0, maximum=65535),
        max_header_bytes=env_int(
            env, "ACTIVATOR_MAX_HEADER_BYTES", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024
        ),
    )
    mesh = env.get("KND_MESH_COMPATIBILITY_MODE", "").strip().lower() or "auto"
    if mesh not in ("auto", "enabled", "disabled"):
        raise ConfigError(
            f'KND_MESH_COMPATIBILITY_MODE: "{mesh}" is not "auto", "enabled" or "disabled" '
            "(config-network's mesh-compatibility-mode)"
        )
    e.mesh_mode = mesh
    tls = env.get("KND_SYSTEM_INTERNAL_TLS", "")
    if tls.lower() not in ("", "disabled", "enabled"):
        raise ConfigError(
            f'KND_SYSTEM_INTERNAL_TLS: "{tls}" is not "enabled" or "disabled" '
            "(config-network's system-internal-tls)"
        )
    e.internal_tls = tls.lower() == "enabled"
    e.tls_port = env_int(env, "ACTIVATOR_TLS_PORT", 8112, **_PORT)
    e.queue_tls_port = env_int(env, "KND_QUEUE_TLS_PORT", 8112, **_PORT)
    e.cert_dir = env.get("ACTIVATOR_CERT_DIR", "") or e.cert_dir
    e.cert_reload = env_float(env, "ACTIVATOR_CERT_RELOAD_SECONDS", 10.0, minimum=0.01)
    e.tls_env = {k: v for k, v in env.items() if k.startswith("ACTIVATOR_TLS_")}
    qw = env.get("ACTIVATOR_QUEUE_WAIT_SECONDS", "")
    if qw.strip():
        e.queue_wait = env_float(env, "ACTIVATOR_QUEUE_WAIT_SECONDS", 0.0, minimum=0)
    if not e.pod_name:
        raise ConfigError("POD_NAME: must not be empty (it names this activator in its stats)")
    if e.probe_timeout <= 0 or e.probe_frequency <= 0:
        raise ConfigError("PROBE_TIMEOUT and PROBE_FREQUENCY must be greater than 0")
    if not e.autoscaler_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"AUTOSCALER_URL: {e.autoscaler_url!r} is not a ws:// or wss:// URL")
    platform = env.get("KND_PLATFORM", "").strip().lower()
    if not platform:
        platform = "static" if e.platform_file else "knative"
    if platform not in ("static", "knative", "standalone"):
        raise ConfigError(
            f'KND_PLATFORM: {env.get("KND_PLATFORM")!r} is not "knative" (revisions and '
            'endpoints from the Kubernetes API), "standalone" (Deployments annotated '
            'knd.dev/enabled, scaled by knd-autoscaler) or "static" (a JSON file)'
        )
    e.platform = platform
    if platform == "standalone" and not env.get("AUTOSCALER_URL", ""):
        e.autoscaler_url = f"ws://knd-autoscaler.{ns}.svc.{domain}:8080"
    e.activator_service = env.get("KND_ACTIVATOR_SERVICE", "").strip() or "knd-activator"
    if platform == "static" and not e.platform_file:
        raise ConfigError(
            "ACTIVATOR_PLATFORM_FILE: required with KND_PLATFORM=static; a JSON file listing "
            "revisions and their endpoints (see platforms/static.py)"
        )
    return e

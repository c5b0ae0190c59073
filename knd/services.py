"""The services file of ``knd run --file`` (YAML), and the flags of ``knd run -- COMMAND``.

Schema (every key but ``services[].name`` and ``services[].command`` is optional)::

    autoscaler:                  # Knative's config-autoscaler keys, e.g.
      stable-window: 60s
      scale-to-zero-grace-period: 30s
    services:
      - name: hello              # DNS label; served at hello.localhost
        command: [python, -m, examples.hello]   # a list, or a string split like a shell
        concurrency: 0           # containerConcurrency (0: unlimited)
        timeout: 300             # timeoutSeconds
        env: {TARGET: World}     # added to knd's environment (plus PORT)
        cwd: .                   # working directory (default: knd's)
        autoscaling:             # autoscaling.knative.dev/<key> annotations
          min-scale: 0
          max-scale: 5
          initial-scale: 0
          target: 10
        readinessProbe:          # corev1 Probe (default: a TCP probe of the app's port)
          httpGet: {path: /healthz}
        port: 8081               # also served at localhost:8081, whatever the Host

Problems end in one :class:`~dataplane.envconfig.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Mapping
from typing import Any

from autoscaler.config import ANNOTATION_NAMES, CONFIG_KEYS, AutoscalerConfig, resolve_scaling
from dataplane.envconfig import ConfigError
from dataplane.probespec import ProbeConfigError, parse_readiness_probe
from platforms.base import DEFAULT_TIMEOUT_SECONDS
from platforms.local import ServiceSpec

__all__ = [
    "AUTOSCALING_FLAGS",
    "check_scaling",
    "load_services_file",
    "parse_services",
    "service_from_flags",
]

# knd prefixes app output with the pod name through a pipe: keep Python apps line-buffered.
_UNBUFFERED = {"PYTHONUNBUFFERED": "1"}
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

# knd run flags that map to autoscaling.knative.dev/<annotation>
AUTOSCALING_FLAGS = (
    "min-scale",
    "max-scale",
    "initial-scale",
    "activation-scale",
    "target",
    "target-utilization-percentage",
    "target-burst-capacity",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "metric",
    "metric-aggregation-algorithm",
)
# config-autoscaler keys that may be given as flags (they apply to every service)
CONFIG_FLAGS = ("stable-window", "scale-to-zero-grace-period", "enable-scale-to-zero")


def _str_map(v: Any, where: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a mapping")
    out: dict[str, str] = {}
    for k, val in v.items():
        if not isinstance(k, str) or isinstance(val, dict | list) or val is None:
            raise ConfigError(f"{where}.{k}: expected a scalar value")
        out[k] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


def _known_keys(m: Mapping[str, str], known: frozenset[str], where: str, what: str) -> None:
    """A typo must not pass silently (the default would apply): name the first unknown key."""
    for k in m:
        if k not in known:
            raise ConfigError(f"{where}.{k}: unknown key (not {what} knd reads)")


def _service(i: int, s: Any, where: str) -> ServiceSpec:
    w = f"{where}: services[{i}]"
    if not isinstance(s, dict):
        raise ConfigError(f"{w}: expected a mapping")
    unknown = set(s) - {
        "name",
        "command",
        "concurrency",
        "timeout",
        "env",
        "cwd",
        "autoscaling",
        "readinessProbe",
        "port",
    }
    if unknown:
        raise ConfigError(f"{w}: unknown key(s) {', '.join(sorted(unknown))}")
    name = s.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{w}.name: {name!r} is not a DNS label (lower case, digits, '-')")
    w = f"{where}: service {name}"
    cmd = s.get("command")
    if isinstance(cmd, str):
        argv = tuple(shlex.split(cmd))
    elif isinstance(cmd, list) and all(isinstance(a, str | int | float) for a in cmd):
        argv = tuple(str(a) for a in cmd)
    else:
        raise ConfigError(f"{w}.command: expected a string or a list of strings")
    if not argv:
        raise ConfigError(f"{w}.command: must not be empty")
    cc = s.get("concurrency", 0)
    if isinstance(cc, bool) or not isinstance(cc, int) or cc < 0:
        raise ConfigError(f"{w}.concurrency: expected an integer >= 0")
    timeout = s.get("timeout", DEFAULT_TIMEOUT_SECONDS)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf  # also refuses .nan
    ):
        raise ConfigError(f"{w}.timeout: expected a number of seconds > 0")
    port = s.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{w}.port: expected a port number (1 to 65535)")
    cwd = s.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigError(f"{w}.cwd: expected a path")
    env = _str_map(s.get("env"), f"{w}.env")
    for k, v in env.items():
        # What the OS cannot take fails at the first pod start, not at load: refuse it now.
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ConfigError(f"{w}.env.{k}: not a valid environment variable (name or value)")
    if any("\0" in a for a in argv):
        raise ConfigError(f"{w}.command: contains a NUL character")
    if cwd is not None and "\0" in cwd:
        raise ConfigError(f"{w}.cwd: contains a NUL character")
    autoscaling = _str_map(s.get("autoscaling"), f"{w}.autoscaling")
    _known_keys(
        autoscaling, ANNOTATION_NAMES, f"{w}.autoscaling", "an autoscaling.knative.dev/* annotation"
    )
    annotations = {f"autoscaling.knative.dev/{k}": v for k, v in autoscaling.items()}
    probe = s.get("readinessProbe")
    probe_json = ""
    if probe is not None:
        if not isinstance(probe, dict):
            raise ConfigError(f"{w}.readinessProbe: expected a mapping (a Kubernetes Probe)")
        probe_json = json.dumps(probe)
        try:
            parse_readiness_probe(probe_json, multi_container=False, user_port=1)
        except ProbeConfigError as e:
            raise ConfigError(f"{w}.readinessProbe: {e}") from None
    return ServiceSpec(
        name=name,
        command=argv,
        container_concurrency=cc,
        timeout_seconds=float(timeout),
        env={**_UNBUFFERED, **env},
        annotations=annotations,
        readiness_probe=probe_json,
        cwd=cwd,
        port=port,
    )


def parse_services(doc: Any, where: str) -> tuple[list[ServiceSpec], dict[str, str]]:
    """Services and config-autoscaler overrides from a parsed document."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'services' list")
    unknown = set(doc) - {"services", "autoscaler"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    items = doc.get("services")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: 'services' must be a non-empty list")
    services = [_service(i, s, where) for i, s in enumerate(items)]
    names = [s.name for s in services]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{where}: duplicate service name(s) {', '.join(sorted(dup))}")
    ports = [s.port for s in services if s.port]
    dup_ports = {p for p in ports if ports.count(p) > 1}
    if dup_ports:
        raise ConfigError(f"{where}: port {min(dup_ports)} is given to more than one service")
    config = _str_map(doc.get("autoscaler"), f"{where}: autoscaler")
    _known_keys(config, CONFIG_KEYS, f"{where}: autoscaler", "a config-autoscaler key")
    check_scaling(services, config, where=where)
    return services, config


_ANNOTATION = "autoscaling.knative.dev/"


def check_scaling(
    services: list[ServiceSpec], config: Mapping[str, str], *, where: str = ""
) -> None:
    """Validate config-autoscaler values and each service's autoscaling settings now, before
    anything starts. ``where`` is the services file (messages name its keys) or empty for the
    command line (messages name the flags)."""
    try:
        cfg = AutoscalerConfig.from_map({"allow-zero-initial-scale": "true", **config})
    except ConfigError as e:
        raise ConfigError(f"{where}: autoscaler.{e}" if where else f"--{e}") from None
    for spec in services:
        try:
            resolve_scaling(cfg, spec.container_concurrency, spec.annotations)
        except ConfigError as e:
            msg = str(e)
            if where:
                msg = msg.removeprefix(_ANNOTATION)
                raise ConfigError(f"{where}: service {spec.name}.autoscaling.{msg}") from None
            raise ConfigError(f"--{msg.removeprefix(_ANNOTATION)}") from None


def load_services_file(path: str) -> tuple[list[ServiceSpec], dict[str, str]]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        # PyYAML's message spans lines (problem, context, a caret under the source): one line.
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    return parse_services(doc, path)


def service_from_flags(
    name: str,
    command: list[str],
    *,
    concurrency: int,
    timeout: float,
    env: Mapping[str, str],
    autoscaling: Mapping[str, str],
) -> ServiceSpec:
    if not _NAME.match(name):
        raise ConfigError(f"--name: {name!r} is not a DNS label (lower case, digits, '-')")
    if not command:
        raise ConfigError("knd run: no command given; usage: knd run --name NAME -- COMMAND ARGS")
    return ServiceSpec(
        name=name,
        command=tuple(command),
        container_concurrency=concurrency,
        timeout_seconds=timeout,
        env={**_UNBUFFERED, **env},
        annotations={f"autoscaling.knative.dev/{k}": v for k, v in autoscaling.items()},
    )

"""How to reach the API server: in-cluster by default, a kubeconfig when one is given."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping

from dataplane.envconfig import ConfigError

from .api import KubeAPI, KubeConnectionError, KubeError

__all__ = ["connect", "wait_for_api"]


async def connect(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    request_timeout: float = 30.0,
) -> KubeAPI:
    """A :class:`KubeAPI` from ``kubeconfig`` (or ``$KUBECONFIG``), else the in-cluster
    service account. Raises ConfigError with a clear message when neither works."""
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

    env = os.environ if environ is None else environ
    path = kubeconfig or env.get("KUBECONFIG", "")
    cfg = Configuration()
    if path:
        missing = [p for p in path.split(os.pathsep) if p and not os.path.exists(p)]
        if missing:
            raise ConfigError(f"KUBECONFIG: {missing[0]}: no such file")
        try:
            await load_kube_config(
                config_file=path, context=context, client_configuration=cfg, persist_config=False
            )
        except (ConfigException, OSError, ValueError, KeyError) as e:
            raise ConfigError(f"KUBECONFIG: {path}: cannot use it: {e}") from None
    else:
        try:
            load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except ConfigException as e:
            raise ConfigError(
                "no Kubernetes API configuration: not running in a pod (in-cluster config: "
                f"{e}) and KUBECONFIG is not set"
            ) from None
    return KubeAPI(ApiClient(cfg), request_timeout=request_timeout)


async def wait_for_api(
    api: KubeAPI,
    *,
    timeout: float = 60.0,
    interval: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] | None = None,
) -> None:
    """Poll ``/version`` until the API server answers (Knative's activator waits up to 60 s,
    polling every second); raises ConfigError naming the server and the last error."""
    now = clock or asyncio.get_running_loop().time
    deadline = now() + timeout
    while True:
        try:
            await api.get_path("/version", "version")
            return
        except KubeConnectionError as e:
            last: KubeError = e
        except KubeError as e:
            # An HTTP answer, even an error, means the server is there; RBAC and auth errors
            # are reported by the informers, per resource.
            if getattr(e, "status", 0) >= 500:
                last = e
            else:
                return
        if now() >= deadline:
            raise ConfigError(f"Kubernetes API server not available after {timeout:g}s: {last}")
        await sleep(interval)

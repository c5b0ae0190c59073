"""How to reach the API server: in-cluster by default, a kubeconfig when one is given.

In-cluster: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, verified with the
service account's ``ca.crt``, authenticated with its ``token``, both in
``/var/run/secrets/kubernetes.io/serviceaccount`` (``KND_SERVICE_ACCOUNT_DIR`` names another
directory). The kubelet rotates the projected token by swapping the file; the token is re-read
whenever the file has changed (one ``stat`` per API request), so a rotated token is used from
the next request on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dataplane.envconfig import ConfigError

from .api import KubeAPI, KubeConnectionError, KubeError

__all__ = ["SERVICE_ACCOUNT_DIR", "ServiceAccountToken", "connect", "wait_for_api"]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ServiceAccountToken:
    """A ``refresh_api_key_hook`` for kubernetes-asyncio: the bearer token from ``path``,
    re-read when the file changes (inode, mtime or size); a missing or empty file keeps the
    last good token (the kubelet swaps it atomically, but be lenient)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = ""
        self._stamp: tuple[int, int, int] | None = None
        self.reads = 0

    def current(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError:
            return self.token
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                with open(self.path) as f:
                    token = f.read().strip()
            except OSError:
                return self.token
            if token:
                self.token, self._stamp = token, stamp
                self.reads += 1
        return self.token

    def __call__(self, configuration: Any, *args: object) -> None:
        token = self.current()
        if token:
            configuration.api_key["BearerToken"] = token
            configuration.api_key_prefix["BearerToken"] = "Bearer"


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
    from kubernetes_asyncio.config import ConfigException, load_kube_config
    from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

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
        sa_dir = env.get("KND_SERVICE_ACCOUNT_DIR", "").strip() or SERVICE_ACCOUNT_DIR
        token = ServiceAccountToken(os.path.join(sa_dir, "token"))
        try:
            InClusterConfigLoader(
                token_filename=token.path,
                cert_filename=os.path.join(sa_dir, "ca.crt"),
                try_refresh_token=False,
                environ=dict(env),
            ).load_and_set(cfg)
        except (ConfigException, OSError) as e:
            raise ConfigError(
                "no Kubernetes API configuration: not running in a pod (in-cluster config "
                f"from {sa_dir}: {e}) and KUBECONFIG is not set"
            ) from None
        token(cfg)
        cfg.refresh_api_key_hook = token
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

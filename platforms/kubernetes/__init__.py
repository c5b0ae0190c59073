"""Kubernetes platforms (kubernetes-asyncio; the ``kubernetes`` extra).

``api``: typed errors and raw JSON calls over kubernetes-asyncio's ApiClient; ``config``:
in-cluster or kubeconfig; ``informer``: list + watch caches with 410 re-list and back-off;
``knative``: Knative mode (Revisions + private-service endpoints) for the activator.
"""

from .api import KubeAPI, KubeError, Resource
from .config import connect, wait_for_api
from .informer import Backoff, Informer
from .knative import KnativePlatform

__all__ = [
    "Backoff",
    "Informer",
    "KnativePlatform",
    "KubeAPI",
    "KubeError",
    "Resource",
    "connect",
    "wait_for_api",
]

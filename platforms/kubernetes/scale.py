"""Actuation: patching a Deployment's ``scale`` subresource.

The autoscaler changes nothing but ``spec.replicas`` of the ``scale`` subresource, with a merge
patch and a field manager (``knd-autoscaler``), so server-side apply users see who owns the
field and RBAC can grant exactly ``patch`` on ``deployments/scale``. Failures are the
:class:`~platforms.kubernetes.api.KubeError` of the API layer, whose message names the verb and
the resource (``forbidden: cannot patch deployments.apps/scale in namespace ...``).
"""

from __future__ import annotations

from .api import DEPLOYMENTS, KubeAPI

__all__ = ["FIELD_MANAGER", "DeploymentScaler"]

FIELD_MANAGER = "knd-autoscaler"


class DeploymentScaler:
    """Reads and sets ``spec.replicas`` through ``deployments/scale``."""

    def __init__(self, api: KubeAPI, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api
        self.field_manager = field_manager

    async def scale(self, namespace: str, name: str, replicas: int) -> int:
        """Patch the Deployment's scale to ``replicas``; returns ``spec.replicas`` as stored."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        out = await self.api.patch(
            DEPLOYMENTS,
            namespace,
            name,
            {"spec": {"replicas": replicas}},
            sub="scale",
            content_type="application/merge-patch+json",
            fieldManager=self.field_manager,
        )
        stored = (out.get("spec") or {}).get("replicas")
        return replicas if not isinstance(stored, int) else stored

    async def get(self, namespace: str, name: str) -> int:
        """The Deployment's ``spec.replicas`` as the scale subresource reports it."""
        out = await self.api.get(DEPLOYMENTS, namespace, name, "scale")
        replicas = (out.get("spec") or {}).get("replicas")
        return replicas if isinstance(replicas, int) else 0

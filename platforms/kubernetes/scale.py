"""Actuation: patching a Deployment's ``scale`` subresource.

The autoscaler changes nothing but ``spec.replicas`` of the ``scale`` subresource, with a merge
patch and a field manager (``knd-autoscaler``), so server-side apply users see who owns the
field and RBAC can grant exactly ``patch`` on ``deployments/scale``. Failures are the
:class:`~platforms.kubernetes.api.KubeError` of the API layer, whose message names the verb and
the resource (``forbidden: cannot patch deployments.apps/scale in namespace ...``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from .api import DEPLOYMENTS, KubeAPI, KubeError, Resource

__all__ = ["EVENTS", "FIELD_MANAGER", "DeploymentScaler", "EventRecorder"]

log = logging.getLogger("platforms.kubernetes")

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


EVENTS = Resource("", "v1", "events")


class EventRecorder:
    """Kubernetes Events on the scaled Deployments (``kubectl describe deployment`` shows who
    scaled it and why). Best effort: a failure is logged once per reason, never raised."""

    def __init__(self, api: KubeAPI, component: str = FIELD_MANAGER, instance: str = "") -> None:
        self.api = api
        self.component = component
        self.instance = instance
        self._warned: set[str] = set()

    async def deployment_event(
        self,
        namespace: str,
        name: str,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        uid: str = "",
    ) -> None:
        """Record an Event on the Deployment ``namespace/name``; ``uid`` is looked up when not
        given: ``kubectl describe`` selects a Deployment's Events by ``involvedObject.uid``, so
        an Event without it is listed by ``kubectl get events`` but never described."""
        if not uid:
            try:
                dep = await self.api.get(DEPLOYMENTS, namespace, name)
                uid = str((dep.get("metadata") or {}).get("uid") or "")
            except KubeError as e:  # gone, or forbidden: record it without the uid
                self._warn(e)
        # A classic core/v1 Event (what client-go's legacy recorder writes), no eventTime
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
            "namespace": namespace,
        }
        if uid:
            involved["uid"] = uid
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create(EVENTS, namespace, event)
        except KubeError as e:
            self._warn(e)

    def _warn(self, e: KubeError) -> None:
        key = f"{type(e).__name__}:{e.verb}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning("cannot record Kubernetes events (continuing without): %s", e)

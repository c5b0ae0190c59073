"""A thin, typed layer over kubernetes-asyncio's ``ApiClient``: raw JSON requests, a line-by-line
watch stream, and errors that name the verb, the resource and the namespace.

kubernetes-asyncio gives us authentication (in-cluster token refresh, kubeconfig users), TLS and
its aiohttp session; the typed API classes and its ``Watch`` helper are not used: objects stay
plain JSON dicts (the platform reads a handful of fields), and watch events are parsed here so
that a ``410 Gone`` surfaces as :class:`KubeGone` for the informer to re-list.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = [
    "DEPLOYMENTS",
    "ENDPOINTS",
    "ENDPOINT_SLICES",
    "LEASES",
    "PODS",
    "REVISIONS",
    "SERVICES",
    "KubeAPI",
    "KubeAPIError",
    "KubeConflict",
    "KubeConnectionError",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeNotFound",
    "KubeUnauthorized",
    "Obj",
    "Resource",
]

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resource:
    """A Kubernetes resource type: group ("" for core), version, plural name."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def display(self) -> str:
        """``endpointslices.discovery.k8s.io``, ``pods``: as kubectl and RBAC name them."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str = ""
    ) -> str:
        p = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace and self.namespaced:
            p += f"/namespaces/{namespace}"
        p += f"/{self.plural}"
        if name:
            p += f"/{name}"
            if subresource:
                p += f"/{subresource}"
        return p


REVISIONS = Resource("serving.knative.dev", "v1", "revisions")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
ENDPOINTS = Resource("", "v1", "endpoints")
SERVICES = Resource("", "v1", "services")
PODS = Resource("", "v1", "pods")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


def _where(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "in all namespaces"


class KubeError(Exception):
    """A failed call to the API server; ``str()`` is a complete, user-facing message."""

    def __init__(self, message: str, *, verb: str, resource: str, namespace: str | None) -> None:
        super().__init__(message)
        self.verb = verb
        self.resource = resource
        self.namespace = namespace


class KubeConnectionError(KubeError):
    """The API server could not be reached, or the connection broke."""


class KubeAPIError(KubeError):
    """The API server answered with an error ``Status``."""

    def __init__(
        self,
        message: str,
        *,
        verb: str,
        resource: str,
        namespace: str | None,
        status: int,
        reason: str,
        server_message: str,
    ) -> None:
        super().__init__(message, verb=verb, resource=resource, namespace=namespace)
        self.status = status
        self.reason = reason
        self.server_message = server_message


class KubeForbidden(KubeAPIError):
    """403: RBAC does not allow the call."""


class KubeUnauthorized(KubeAPIError):
    """401: the credentials were rejected."""


class KubeNotFound(KubeAPIError):
    """404: no such object (or no such resource type on this server)."""


class KubeConflict(KubeAPIError):
    """409: already exists, or a stale resourceVersion."""


class KubeGone(KubeAPIError):
    """410: the resourceVersion is too old (the watch must re-list)."""


_BY_STATUS: dict[int, type[KubeAPIError]] = {
    401: KubeUnauthorized,
    403: KubeForbidden,
    404: KubeNotFound,
    409: KubeConflict,
    410: KubeGone,
}


def status_error(
    status: Any, *, verb: str, resource: str, namespace: str | None, http_status: int = 0
) -> KubeAPIError:
    """The error for a ``Status`` object (or whatever the server sent instead)."""
    st = status if isinstance(status, dict) else {}
    raw_code = st.get("code")
    code = raw_code if isinstance(raw_code, int) else http_status
    reason = str(st.get("reason") or "")
    msg = str(st.get("message") or (status if isinstance(status, str) else "")).strip()
    where = _where(namespace)
    if code == 403:
        text = (
            f"forbidden: cannot {verb} {resource} {where}: grant this service account RBAC "
            f'permission to "{verb}" {resource} (API server: {msg or "Forbidden"})'
        )
    elif code == 401:
        text = (
            f"unauthorized: the API server rejected this client's credentials "
            f"({verb} {resource} {where}): {msg or 'Unauthorized'}"
        )
    else:
        text = f"{verb} {resource} {where}: {code} {reason or 'error'}" + (
            f": {msg}" if msg else ""
        )
    cls = _BY_STATUS.get(code, KubeAPIError)
    return cls(
        text,
        verb=verb,
        resource=resource,
        namespace=namespace,
        status=code,
        reason=reason,
        server_message=msg,
    )


class KubeAPI:
    """JSON requests and watch streams over a kubernetes-asyncio ``ApiClient``."""

    def __init__(self, api_client: Any, *, request_timeout: float = 30.0) -> None:
        self.client = api_client
        self.request_timeout = request_timeout

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    async def close(self) -> None:
        await self.client.close()

    async def _send(
        self,
        verb: str,
        method: str,
        path: str,
        resource: str,
        namespace: str | None,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: Any = None,
    ) -> aiohttp.ClientResponse:
        try:
            resp = await self.client.call_api(
                path,
                method,
                query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout if timeout is not None else self.request_timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise KubeConnectionError(
                f"cannot reach the Kubernetes API server at {self.host} "
                f"({verb} {resource} {_where(namespace)}): {_describe(e)}",
                verb=verb,
                resource=resource,
                namespace=namespace,
            ) from None
        if not 200 <= resp.status < 300:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                raw = b""
            finally:
                resp.release()
            try:
                st: Any = json.loads(raw)
            except ValueError:
                st = raw.decode("utf-8", "replace")[:200]
            raise status_error(
                st, verb=verb, resource=resource, namespace=namespace, http_status=resp.status
            )
        return resp  # type: ignore[no-any-return]

    async def request(
        self,
        verb: str,
        method: str,
        res: Resource,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str = "",
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One request; returns the decoded JSON body (raises :class:`KubeError`)."""
        what = res.display + (f"/{subresource}" if subresource else "")
        path = res.path(namespace, name, subresource)
        resp = await self._send(
            verb,
            method,
            path,
            what,
            namespace,
            query=query,
            body=body,
            content_type=content_type,
        )
        try:
            data = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise KubeConnectionError(
                f"connection to the Kubernetes API server at {self.host} broke "
                f"({verb} {what} {_where(namespace)}): {_describe(e)}",
                verb=verb,
                resource=what,
                namespace=namespace,
            ) from None
        finally:
            resp.release()
        try:
            out = json.loads(data) if data else {}
        except ValueError:
            raise KubeAPIError(
                f"{verb} {what} {_where(namespace)}: the API server sent invalid JSON",
                verb=verb,
                resource=what,
                namespace=namespace,
                status=resp.status,
                reason="InvalidJSON",
                server_message="",
            ) from None
        return out if isinstance(out, dict) else {"value": out}

    async def get_path(self, path: str, what: str) -> Obj:
        """GET of a non-resource path (discovery, ``/version``)."""
        resp = await self._send("get", "GET", path, what, None)
        try:
            data = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise KubeConnectionError(
                f"connection to the Kubernetes API server at {self.host} broke (get {what}): "
                f"{_describe(e)}",
                verb="get",
                resource=what,
                namespace=None,
            ) from None
        finally:
            resp.release()
        try:
            out = json.loads(data)
        except ValueError:
            out = {}
        return out if isinstance(out, dict) else {}

    async def get(self, res: Resource, namespace: str | None, name: str, sub: str = "") -> Obj:
        return await self.request(
            "get", "GET", res, namespace=namespace, name=name, subresource=sub
        )

    async def list(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> Obj:
        q: list[tuple[str, str]] = []
        if label_selector:
            q.append(("labelSelector", label_selector))
        if field_selector:
            q.append(("fieldSelector", field_selector))
        if limit:
            q.append(("limit", str(limit)))
        if continue_token:
            q.append(("continue", continue_token))
        return await self.request("list", "GET", res, namespace=namespace, query=q)

    async def create(self, res: Resource, namespace: str | None, obj: Obj, **q: str) -> Obj:
        return await self.request(
            "create", "POST", res, namespace=namespace, body=obj, query=list(q.items())
        )

    async def replace(
        self, res: Resource, namespace: str | None, name: str, obj: Obj, sub: str = "", **q: str
    ) -> Obj:
        return await self.request(
            "update",
            "PUT",
            res,
            namespace=namespace,
            name=name,
            subresource=sub,
            body=obj,
            query=list(q.items()),
        )

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        sub: str = "",
        content_type: str = "application/merge-patch+json",
        **q: str,
    ) -> Obj:
        return await self.request(
            "patch",
            "PATCH",
            res,
            namespace=namespace,
            name=name,
            subresource=sub,
            body=patch,
            content_type=content_type,
            query=list(q.items()),
        )

    async def delete(self, res: Resource, namespace: str | None, name: str) -> Obj:
        return await self.request("delete", "DELETE", res, namespace=namespace, name=name)

    async def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncIterator[Obj]:
        """Watch events (``{"type": ..., "object": ...}``) from ``resource_version`` until the
        server ends the stream. An ``ERROR`` event is raised as its :class:`KubeAPIError`
        (:class:`KubeGone` for 410); a broken stream as :class:`KubeConnectionError`."""
        q = [("watch", "true"), ("resourceVersion", resource_version)]
        if bookmarks:
            q.append(("allowWatchBookmarks", "true"))
        q.append(("timeoutSeconds", str(timeout_seconds)))
        if label_selector:
            q.append(("labelSelector", label_selector))
        if field_selector:
            q.append(("fieldSelector", field_selector))
        what = res.display
        # The server ends the watch after timeoutSeconds; a silent connection for much longer
        # than that is dead.
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.request_timeout, sock_read=timeout_seconds + 30
        )
        resp = await self._send(
            "watch", "GET", res.path(namespace), what, namespace, query=q, timeout=timeout
        )
        try:
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                    raise KubeConnectionError(
                        f"watch of {what} {_where(namespace)} broke: {_describe(e)}",
                        verb="watch",
                        resource=what,
                        namespace=namespace,
                    ) from None
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    raise KubeConnectionError(
                        f"watch of {what} {_where(namespace)}: undecodable event {line[:80]!r}",
                        verb="watch",
                        resource=what,
                        namespace=namespace,
                    ) from None
                if not isinstance(ev, dict) or not isinstance(ev.get("object"), dict):
                    continue
                if ev.get("type") == "ERROR":
                    raise status_error(
                        ev["object"], verb="watch", resource=what, namespace=namespace
                    )
                yield ev
        finally:
            resp.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return str(e.os_error.strerror or e.os_error) if e.os_error else str(e)
    return str(e) or type(e).__name__

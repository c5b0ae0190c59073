"""One readiness probe attempt against the user container: TCP connect, HTTP GET, gRPC health
(queueproxy/grpcprobe.py, imported when such a probe runs) and the HTTP/2 auto-detection.

Stdlib asyncio only: this runs inside the queue-proxy sidecar. A failure raises
:class:`ProbeError` with the words Knative's prober prints; :class:`ProbeRefused` when nothing
listens on the port yet (the prober retries those sooner).
"""

from __future__ import annotations

import asyncio
import os
import socket

from dataplane import httpget
from dataplane.probespec import ProbeSpec

__all__ = [
    "KUBE_PROBE_USER_AGENT",
    "MAX_RESPONSE_BYTES",
    "ProbeError",
    "ProbeRefused",
    "attempt_probe",
    "auto_detect_attempt",
    "host_port",
    "http_attempt",
    "os_reason",
    "request_target",
    "tcp_attempt",
]

#: User-Agent of QP's HTTP readiness probe: ``kube-probe/`` + empty major + ``/`` + empty minor.
KUBE_PROBE_USER_AGENT = "kube-probe//"
#: Upper bound on response bytes (head buffer and drained body) read by one HTTP attempt.
MAX_RESPONSE_BYTES = 64 * 1024


class ProbeError(Exception):
    """One probe attempt failed; the message is what QP prints to stderr."""


class ProbeRefused(ProbeError):
    """The probed port refused the connection: nothing listens there yet (cheap to retry)."""


async def attempt_probe(spec: ProbeSpec, timeout: float) -> None:
    """The default attempt: HTTP GET for http probes, gRPC health check for grpc probes, a
    TCP connect for tcp probes."""
    if spec.kind == "http":
        await http_attempt(spec, timeout)
    elif spec.kind == "grpc":
        from .grpcprobe import grpc_attempt

        await grpc_attempt(spec, timeout)
    else:
        await tcp_attempt(spec.host, spec.port, timeout)


async def tcp_attempt(host: str, port: int, timeout: float) -> None:
    """Succeed if a TCP connection to host:port opens within ``timeout``; then close it."""
    addr = host_port(host, port)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except TimeoutError:
        raise ProbeError(f"dial tcp {addr}: i/o timeout") from None
    except ConnectionRefusedError as exc:
        raise ProbeRefused(f"dial tcp {addr}: {os_reason(exc)}") from None
    except OSError as exc:
        raise ProbeError(f"dial tcp {addr}: {os_reason(exc)}") from None
    transport.close()


async def http_attempt(spec: ProbeSpec, timeout: float) -> None:
    """GET the probe path over a fresh HTTP/1.1 connection; succeed on status 200-399.

    Connect, request, response head and a bounded body drain all share one ``timeout``. The
    body is drained (at most MAX_RESPONSE_BYTES) so the server sees a clean close, and a slow
    or endless body does not turn a good status into a failure, as in Go's prober.
    """
    target = request_target(spec.path)
    addr = host_port(spec.host, spec.port)
    url = f"{spec.scheme.lower()}://{addr}{target}"
    if spec.scheme.upper() != "HTTP":
        raise ProbeError(f'Get "{url}": scheme {spec.scheme!r} is not supported, only HTTP')
    request = _build_request(spec, target, addr)
    try:
        r = await httpget.exchange(
            spec.host,
            spec.port,
            request,
            timeout,
            max_head=MAX_RESPONSE_BYTES,
            max_body=MAX_RESPONSE_BYTES,
        )
    except httpget.DialError as e:
        cls = ProbeRefused if isinstance(e.error, ConnectionRefusedError) else ProbeError
        raise cls(f'Get "{url}": dial tcp {addr}: {os_reason(e.error)}') from None
    except httpget.HeadTimeout:
        raise ProbeError(
            f'Get "{url}": context deadline exceeded'
            " (Client.Timeout exceeded while awaiting headers)"
        ) from None
    except httpget.ReadError as e:
        if e.error is not None:
            raise ProbeError(f'Get "{url}": read tcp {addr}: {os_reason(e.error)}') from None
        what = "unexpected EOF in response headers" if e.partial else "EOF"
        raise ProbeError(f'Get "{url}": {what}') from None
    except httpget.HeadTooLarge:
        raise ProbeError(
            f'Get "{url}": response headers exceed {MAX_RESPONSE_BYTES} bytes'
        ) from None
    except httpget.BadResponse as e:
        raise ProbeError(f'Get "{url}": malformed HTTP response {e.first_line!r}') from None
    # The body was drained (bounded) so the server sees a clean close; like Go, how that
    # ended does not matter: the status decides.
    status = r.status
    if not 200 <= status < 400:
        raise ProbeError(f"HTTP probe did not respond Ready, got status code: {status}")


async def auto_detect_attempt(spec: ProbeSpec, timeout: float) -> None:
    """The attempt with ENABLE_HTTP2_AUTO_DETECTION: an HTTP probe tries h2c first (a 2xx or
    3xx there is success) and falls back to HTTP/1.1 (SPEC §1.12); other probes as usual."""
    if spec.kind != "http" or spec.scheme.upper() != "HTTP":
        await attempt_probe(spec, timeout)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    addr = host_port(spec.host, spec.port)
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", addr.encode()),
        (b":path", request_target(spec.path).encode()),
        (b"user-agent", KUBE_PROBE_USER_AGENT.encode()),
        *((n.lower().encode(), v.encode()) for n, v in spec.headers),
    ]
    from .grpcprobe import H2Failed, h2c_call

    try:
        got, _ = await h2c_call(spec.host, spec.port, headers, None, timeout)
        if 200 <= int(got.get(b":status", b"0")) < 400:
            return
    except (ProbeError, H2Failed, ValueError):
        pass
    await http_attempt(spec, max(0.001, deadline - loop.time()))


def _build_request(spec: ProbeSpec, target: str, addr: str) -> bytes:
    host = addr
    user_agent = KUBE_PROBE_USER_AGENT
    seen_host = seen_ua = False
    lines = [f"GET {target} HTTP/1.1\r\n"]
    for name, value in spec.headers:
        if any(c in name or c in value for c in "\r\n\0") or not name:
            raise ProbeError(f"invalid probe header {name!r}")
        lower = name.lower()
        # Host and User-Agent from the probe replace the defaults (first one wins, as kubelet);
        # framing and connection headers are ours to set.
        if lower == "host":
            if not seen_host:
                host, seen_host = value, True
        elif lower == "user-agent":
            if not seen_ua:
                user_agent, seen_ua = value, True
        elif lower not in ("connection", "content-length", "transfer-encoding"):
            lines.append(f"{name}: {value}\r\n")
    lines.insert(1, f"Host: {host}\r\nUser-Agent: {user_agent}\r\n")
    lines.append("Connection: close\r\n\r\n")
    return "".join(lines).encode("utf-8")


def request_target(path: str) -> str:
    """Ensure a leading slash and percent-encode bytes not allowed raw in a request line."""
    if not path.startswith("/"):
        path = "/" + path
    if path.isascii() and all(" " < c < "\x7f" and c != "#" for c in path):
        return path
    return "".join(
        c
        if c.isascii() and " " < c < "\x7f" and c != "#"
        else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
        for c in path
    )


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        reason = f"lookup failed: {exc.strerror}"
    elif exc.errno:
        reason = os.strerror(exc.errno)
    else:
        reason = str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]

"""Readiness probing of the user container (SPEC §1.12).

Decodes ``SERVING_READINESS_PROBE`` and runs Knative-style probe cycles: single flight, all
probes concurrently, aggressive (poll every 10 ms, every 3 ms while the port refuses, 100 ms
attempts, give up after 10 s) or standard (one attempt) mode. Stdlib asyncio only: this runs
inside the memory-constrained queue-proxy sidecar, so no HTTP client library is imported here.

A ``grpc`` probe calls ``grpc.health.v1.Health/Check`` over h2c with the ``h2`` state machine
(imported only when such a probe runs) and succeeds on ``SERVING``, as Knative's prober does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AGGRESSIVE_PROBE_TIMEOUT",
    "KUBE_PROBE_USER_AGENT",
    "MAX_RESPONSE_BYTES",
    "POLL_TIMEOUT",
    "REFUSED_RETRY_INTERVAL",
    "RETRY_INTERVAL",
    "ProbeConfigError",
    "ProbeError",
    "ProbeRefused",
    "ProbeSpec",
    "ReadinessProber",
    "attempt_probe",
    "auto_detect_attempt",
    "grpc_attempt",
    "http_attempt",
    "parse_readiness_probe",
    "tcp_attempt",
]

# pkg/queue/readiness/probe.go constants.
AGGRESSIVE_PROBE_TIMEOUT = 0.1
# Knative polls every 50 ms; 10 ms lets a pod take its first request (through the activator's
# long-poll probe) within ~10 ms of the app listening. While the app's port refuses connections
# (it is still starting: the common case) a retry costs one refused local connect, ~50-100 us of
# Python, so those retries come every 3 ms: the app is seen within 3 ms of listening for ~3 %
# of a core while it starts (measured release: listen -> request at the app 6-13 ms with 10 ms
# polls, the poll phase the largest share; see benchmarks/RESULTS.md).
RETRY_INTERVAL = 0.01
REFUSED_RETRY_INTERVAL = 0.003
POLL_TIMEOUT = 10.0

#: User-Agent of QP's HTTP readiness probe: ``kube-probe/`` + empty major + ``/`` + empty minor.
KUBE_PROBE_USER_AGENT = "kube-probe//"
#: Upper bound on response bytes (head buffer and drained body) read by one HTTP attempt.
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_PROBE_HOST = "127.0.0.1"

_ENV = "SERVING_READINESS_PROBE"
_HANDLERS = ("httpGet", "tcpSocket", "grpc", "exec")
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_INT32_MAX = 2**31 - 1


class ProbeConfigError(ValueError):
    """SERVING_READINESS_PROBE cannot be used; fatal at start-up."""


class ProbeError(Exception):
    """One probe attempt failed; the message is what QP prints to stderr."""


class ProbeRefused(ProbeError):
    """The probed port refused the connection: nothing listens there yet (cheap to retry)."""


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One decoded, normalised readiness probe."""

    kind: Literal["tcp", "http", "grpc"]
    host: str
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    grpc_service: str = ""
    period_seconds: int = 0
    timeout_seconds: int = 0
    success_threshold: int = 1
    failure_threshold: int = 0

    @property
    def aggressive(self) -> bool:
        """Knative polls aggressively inside one cycle when periodSeconds is 0."""
        return self.period_seconds == 0


# --------------------------------------------------------------------------- parsing


def parse_readiness_probe(value: str, *, multi_container: bool, user_port: int) -> list[ProbeSpec]:
    """Decode SERVING_READINESS_PROBE into normalised probes; ``[]`` means always ready.

    A single corev1.Probe object, or (when ``multi_container``) a JSON array of them; an object
    is also accepted in multi-container mode. Raises ProbeConfigError on anything unusable.
    """
    if not value.strip():
        return []
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ProbeConfigError(f"{_ENV}: malformed JSON: {exc}") from None
    if isinstance(doc, list):
        if not multi_container:
            raise ProbeConfigError(
                f"{_ENV}: got a JSON array but multi-container probing is off"
                " (ENABLE_MULTI_CONTAINER_PROBES); expected a single probe object"
            )
        return [_parse_probe(item, f"[{i}]", user_port) for i, item in enumerate(doc)]
    if isinstance(doc, dict):
        return [_parse_probe(doc, "", user_port)]
    expected = "a probe object or an array of them" if multi_container else "a probe object"
    raise ProbeConfigError(f"{_ENV}: expected {expected}, got {_json_type(doc)}")


def _parse_probe(obj: object, where: str, user_port: int) -> ProbeSpec:
    if not isinstance(obj, dict):
        raise _config_error(where, f"expected a probe object, got {_json_type(obj)}")
    present = [h for h in _HANDLERS if obj.get(h) is not None]
    if not present:
        raise _config_error(where, "no probe handler; expected one of httpGet, tcpSocket, grpc")
    if len(present) > 1:
        raise _config_error(where, f"more than one probe handler ({', '.join(present)})")
    handler = present[0]
    hwhere = _join(where, handler)
    if handler == "exec":
        raise _config_error(
            hwhere,
            "exec probes are not supported by the queue-proxy"
            " (the reconciler replaces them with a tcpSocket probe)",
        )
    body = obj[handler]
    if not isinstance(body, dict):
        raise _config_error(hwhere, f"expected an object, got {_json_type(body)}")

    period = _int_field(obj, "periodSeconds", where)
    timeout = _int_field(obj, "timeoutSeconds", where)
    success = _int_field(obj, "successThreshold", where)
    failure = _int_field(obj, "failureThreshold", where)
    _int_field(obj, "initialDelaySeconds", where)  # validated only: QP is probed on demand
    if period > 0 and timeout < 1:
        timeout = 1
    if success < 1:
        success = 1
    port = _parse_port(body.get("port"), _join(hwhere, "port"), user_port)

    kind: Literal["tcp", "http", "grpc"]
    host, path, scheme, service = DEFAULT_PROBE_HOST, "/", "HTTP", ""
    headers: tuple[tuple[str, str], ...] = ()
    if handler == "grpc":
        kind = "grpc"
        service = _str_field(body, "service", hwhere)
    else:
        kind = "tcp" if handler == "tcpSocket" else "http"
        host = _str_field(body, "host", hwhere) or DEFAULT_PROBE_HOST
        if any(c.isspace() or not c.isprintable() for c in host):
            raise _config_error(_join(hwhere, "host"), f"invalid host {host!r}")
    if kind == "http":
        path = _str_field(body, "path", hwhere) or "/"
        if not path.startswith("/"):
            path = "/" + path
        scheme = _str_field(body, "scheme", hwhere).upper() or "HTTP"
        if scheme == "HTTPS":
            raise _config_error(
                _join(hwhere, "scheme"), "HTTPS readiness probes are not supported yet; use HTTP"
            )
        if scheme != "HTTP":
            raise _config_error(
                _join(hwhere, "scheme"), f"unknown scheme {scheme!r}; expected HTTP"
            )
        headers = _parse_headers(body.get("httpHeaders"), _join(hwhere, "httpHeaders"))
    return ProbeSpec(
        kind,
        host,
        port,
        path=path,
        scheme=scheme,
        headers=headers,
        grpc_service=service,
        period_seconds=period,
        timeout_seconds=timeout,
        success_threshold=success,
        failure_threshold=failure,
    )


def _parse_port(value: object, where: str, user_port: int) -> int:
    """corev1 IntOrString port: an int or a numeric string; unset or 0 means the user port."""
    port: int
    if value is None or value == "":
        port = 0
    elif isinstance(value, bool):
        raise _config_error(where, f"expected a port number, got {_json_type(value)}")
    elif isinstance(value, int):
        port = value
    elif isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise _config_error(where, f"named port {value!r} is not supported; use a port number")
        port = int(value)
    else:
        raise _config_error(where, f"expected a port number, got {_json_type(value)}")
    if port == 0:
        if not 0 < user_port < 65536:
            raise _config_error(where, f"not set and USER_PORT {user_port} is not a valid port")
        return user_port
    if not 0 < port < 65536:
        raise _config_error(where, f"port {port} out of range 1-65535")
    return port


def _parse_headers(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _config_error(where, f"expected an array, got {_json_type(value)}")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        iwhere = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise _config_error(iwhere, f"expected an object, got {_json_type(item)}")
        name = _str_field(item, "name", iwhere)
        if not name or not set(name) <= _TOKEN_CHARS:
            raise _config_error(_join(iwhere, "name"), f"invalid header name {name!r}")
        val = _str_field(item, "value", iwhere)
        if any(c in val for c in "\r\n\0"):
            raise _config_error(_join(iwhere, "value"), "header value contains CR, LF or NUL")
        out.append((name, val))
    return tuple(out)


def _int_field(obj: dict[str, object], key: str, where: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _config_error(
            _join(where, key), f"expected an integer, got {_json_type(value)} {value!r}"
        )
    if not 0 <= value <= _INT32_MAX:
        raise _config_error(_join(where, key), f"must be between 0 and {_INT32_MAX}, got {value}")
    return value


def _str_field(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _config_error(_join(where, key), f"expected a string, got {_json_type(value)}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _config_error(where: str, what: str) -> ProbeConfigError:
    return ProbeConfigError(f"{_ENV}: {where}: {what}" if where else f"{_ENV}: {what}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# --------------------------------------------------------------------------- prober


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class ReadinessProber:
    """Runs probe cycles on demand (SPEC §1.12); the callers (kubelet, activator) set the pace."""

    def __init__(
        self,
        probes: list[ProbeSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        attempt: Callable[[ProbeSpec, float], Awaitable[None]] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._probes = tuple(probes)
        # Consecutive successes per probe; persists across cycles like Knative's Probe.count.
        self._counts = [0] * len(self._probes)
        self._clock = clock
        self._sleep = sleep
        self._attempt = attempt if attempt is not None else attempt_probe
        self._log = log if log is not None else _log_stderr
        self._inflight: asyncio.Task[bool] | None = None
        self._last_result: bool | None = None

    @property
    def probes(self) -> tuple[ProbeSpec, ...]:
        """The configured probes."""
        return self._probes

    @property
    def last_result(self) -> bool | None:
        """Result of the last finished cycle; None before the first one."""
        return self._last_result

    async def probe(self) -> bool:
        """Run one cycle, or join the one already running (single flight); True if all pass."""
        if not self._probes:
            self._last_result = True
            return True
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._cycle())
            self._inflight = task
            task.add_done_callback(self._cycle_done)
        # A waiter that is cancelled (client went away) must not cancel the shared cycle.
        return await asyncio.shield(task)

    def _cycle_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # mark retrieved even if every waiter went away

    async def _cycle(self) -> bool:
        if len(self._probes) == 1:
            ok = await self._run_probe(0)
        else:
            results = await asyncio.gather(*(self._run_probe(i) for i in range(len(self._probes))))
            ok = all(results)
        self._last_result = ok
        return ok

    async def _run_probe(self, index: int) -> bool:
        spec = self._probes[index]
        if spec.aggressive:
            return await self._run_aggressive(index, spec)
        timeout = float(spec.timeout_seconds) if spec.timeout_seconds > 0 else 1.0
        try:
            await self._attempt(spec, timeout)
        except Exception as exc:
            self._report(spec, _describe(exc))
            return False
        return True

    async def _run_aggressive(self, index: int, spec: ProbeSpec) -> bool:
        start = self._clock()
        deadline = start + POLL_TIMEOUT
        next_at = start
        failures = 0
        last_error: BaseException | None = None
        while True:
            try:
                await self._attempt(spec, AGGRESSIVE_PROBE_TIMEOUT)
            except Exception as exc:
                # Failures are expected while the user container starts: only the last is logged.
                self._counts[index] = 0
                failures += 1
                last_error = exc
                refused = isinstance(exc, ProbeRefused)
            else:
                refused = False
                self._counts[index] += 1
                if self._counts[index] >= spec.success_threshold:
                    return True
            now = self._clock()
            if now >= deadline:
                break
            # Ticker semantics like wait.PollImmediate: slow attempts eat into the interval.
            next_at = max(next_at + (REFUSED_RETRY_INTERVAL if refused else RETRY_INTERVAL), now)
            await self._sleep(min(next_at, deadline) - now)
        if last_error is None:
            self._report(spec, "aggressive probe error: timed out waiting for the condition")
        else:
            self._report(
                spec, f"aggressive probe error (failed {failures} times): {_describe(last_error)}"
            )
        return False

    def _report(self, spec: ProbeSpec, message: str) -> None:
        if len(self._probes) > 1:
            target = _host_port(spec.host, spec.port)
            if spec.kind == "http":
                target += spec.path
            message = f"{spec.kind} probe {target}: {message}"
        self._log(message)


# --------------------------------------------------------------------------- attempts


async def attempt_probe(spec: ProbeSpec, timeout: float) -> None:
    """The default attempt: HTTP GET for http probes, gRPC health check for grpc probes, a
    TCP connect for tcp probes."""
    if spec.kind == "http":
        await http_attempt(spec, timeout)
    elif spec.kind == "grpc":
        await grpc_attempt(spec, timeout)
    else:
        await tcp_attempt(spec.host, spec.port, timeout)


async def tcp_attempt(host: str, port: int, timeout: float) -> None:
    """Succeed if a TCP connection to host:port opens within ``timeout``; then close it."""
    addr = _host_port(host, port)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except TimeoutError:
        raise ProbeError(f"dial tcp {addr}: i/o timeout") from None
    except ConnectionRefusedError as exc:
        raise ProbeRefused(f"dial tcp {addr}: {_os_reason(exc)}") from None
    except OSError as exc:
        raise ProbeError(f"dial tcp {addr}: {_os_reason(exc)}") from None
    transport.close()


async def http_attempt(spec: ProbeSpec, timeout: float) -> None:
    """GET the probe path over a fresh HTTP/1.1 connection; succeed on status 200-399.

    Connect, request, response head and a bounded body drain all share one ``timeout``. The
    body is drained (at most MAX_RESPONSE_BYTES) so the server sees a clean close, and a slow
    or endless body does not turn a good status into a failure, as in Go's prober.
    """
    target = _request_target(spec.path)
    addr = _host_port(spec.host, spec.port)
    url = f"{spec.scheme.lower()}://{addr}{target}"
    if spec.scheme.upper() != "HTTP":
        raise ProbeError(f'Get "{url}": scheme {spec.scheme!r} is not supported, only HTTP')
    request = _build_request(spec, target, addr)
    deadline = asyncio.get_running_loop().time() + timeout
    writer: asyncio.StreamWriter | None = None
    try:
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    reader, writer = await asyncio.open_connection(
                        spec.host, spec.port, limit=MAX_RESPONSE_BYTES
                    )
                except OSError as exc:
                    cls = ProbeRefused if isinstance(exc, ConnectionRefusedError) else ProbeError
                    raise cls(f'Get "{url}": dial tcp {addr}: {_os_reason(exc)}') from None
                writer.write(request)
                status, body_length = await _read_head(reader, url)
        except TimeoutError:
            raise ProbeError(
                f'Get "{url}": context deadline exceeded'
                " (Client.Timeout exceeded while awaiting headers)"
            ) from None
        except OSError as exc:
            raise ProbeError(f'Get "{url}": read tcp {addr}: {_os_reason(exc)}') from None
        try:
            async with asyncio.timeout_at(deadline):
                await _drain(reader, status, body_length)
        except (TimeoutError, OSError):
            pass  # like Go: drain errors are ignored, the status decides
    finally:
        if writer is not None:
            writer.close()
    if not 200 <= status < 400:
        raise ProbeError(f"HTTP probe did not respond Ready, got status code: {status}")


_GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
_SERVING_STATUS = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _health_status(message: bytes) -> int:
    """The ``status`` (field 1, varint) of a HealthCheckResponse; 0 (UNKNOWN) if absent."""
    i = 0
    status = 0
    while i < len(message):
        key = message[i]
        i += 1
        if key & 7 == 0:  # varint
            v = shift = 0
            while i < len(message):
                b = message[i]
                i += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if key >> 3 == 1:
                status = v
        elif key & 7 == 2:  # length-delimited: skip
            n = shift = 0
            while i < len(message):
                b = message[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            i += n
        else:
            break
    return status


class _H2Failed(Exception):
    """The h2c exchange itself failed (connection, protocol, deadline)."""


async def _h2c_call(
    host: str, port: int, headers: list[tuple[bytes, bytes]], body: bytes | None, timeout: float
) -> tuple[dict[bytes, bytes], bytes]:
    """One request over a fresh h2c (prior knowledge) connection: (response headers and
    trailers, body). Raises ProbeError when connecting fails, _H2Failed on anything after."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import (
        ConnectionTerminated,
        DataReceived,
        ResponseReceived,
        StreamEnded,
        StreamReset,
        TrailersReceived,
    )
    from h2.exceptions import H2Error

    addr = _host_port(host, port)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    writer: asyncio.StreamWriter | None = None
    got: dict[bytes, bytes] = {}
    data = b""
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                raise ProbeError(f"dial tcp {addr}: {_os_reason(exc)}") from None
            conn.initiate_connection()
            conn.send_headers(1, headers, end_stream=body is None)
            if body is not None:
                conn.send_data(1, body, end_stream=True)
            writer.write(conn.data_to_send())
            done = False
            while not done:
                chunk = await reader.read(65536)
                if not chunk:
                    raise _H2Failed(f"connection to {addr} closed")
                for ev in conn.receive_data(chunk):
                    if isinstance(ev, (ResponseReceived, TrailersReceived)):
                        got.update(ev.headers or [])
                    elif isinstance(ev, DataReceived):
                        data += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if len(data) > MAX_RESPONSE_BYTES:
                            raise _H2Failed("response too large")
                    elif isinstance(ev, StreamEnded):
                        done = True
                    elif isinstance(ev, (StreamReset, ConnectionTerminated)):
                        raise _H2Failed(type(ev).__name__)
                writer.write(conn.data_to_send())
    except TimeoutError:
        raise _H2Failed("deadline exceeded") from None
    except (OSError, H2Error) as exc:
        raise _H2Failed(str(exc) or type(exc).__name__) from None
    finally:
        if writer is not None:
            writer.close()
    return got, data


async def grpc_attempt(spec: ProbeSpec, timeout: float) -> None:
    """Call ``grpc.health.v1.Health/Check`` (service ``spec.grpc_service``) over h2c; succeed
    when the answer is SERVING (SPEC §1.12)."""
    addr = _host_port(spec.host, spec.port)
    svc = spec.grpc_service.encode()
    msg = (b"\x0a" + _varint(len(svc)) + svc) if svc else b""
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", addr.encode()),
        (b":path", b"/grpc.health.v1.Health/Check"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"user-agent", KUBE_PROBE_USER_AGENT.encode()),
        (b"grpc-timeout", b"%dm" % max(1, int(timeout * 1000))),
    ]
    try:
        got, data = await _h2c_call(
            spec.host, spec.port, headers, b"\x00" + len(msg).to_bytes(4, "big") + msg, timeout
        )
    except ProbeError as e:
        raise ProbeError(f"failed to connect service {addr!r} within {timeout:g}s: {e}") from None
    except _H2Failed as e:
        if str(e) == "deadline exceeded":
            raise ProbeError(
                f"health rpc probe failed: rpc error: code = DeadlineExceeded desc = "
                f"health rpc did not complete within {timeout:g}s"
            ) from None
        raise ProbeError(f"health rpc probe failed: {e}") from None
    code = int(got.get(b"grpc-status", b"2") or b"2")
    if code != 0:
        name = _GRPC_STATUS[code] if 0 <= code < len(_GRPC_STATUS) else str(code)
        detail = got.get(b"grpc-message", b"").decode("utf-8", "replace")
        if name == "UNIMPLEMENTED":
            raise ProbeError(
                "this server does not implement the grpc health protocol "
                f"(grpc.health.v1.Health): rpc error: code = Unimplemented desc = {detail}"
            )
        raise ProbeError(f"health rpc probe failed: rpc error: code = {name} desc = {detail}")
    status = _health_status(data[5:]) if len(data) >= 5 else 0
    if status != 1:
        name = _SERVING_STATUS[status] if status < len(_SERVING_STATUS) else str(status)
        raise ProbeError(f"service unhealthy (responded with {name!r})")


async def auto_detect_attempt(spec: ProbeSpec, timeout: float) -> None:
    """The attempt with ENABLE_HTTP2_AUTO_DETECTION: an HTTP probe tries h2c first (a 2xx or
    3xx there is success) and falls back to HTTP/1.1 (SPEC §1.12); other probes as usual."""
    if spec.kind != "http" or spec.scheme.upper() != "HTTP":
        await attempt_probe(spec, timeout)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    addr = _host_port(spec.host, spec.port)
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", addr.encode()),
        (b":path", _request_target(spec.path).encode()),
        (b"user-agent", KUBE_PROBE_USER_AGENT.encode()),
        *((n.lower().encode(), v.encode()) for n, v in spec.headers),
    ]
    try:
        got, _ = await _h2c_call(spec.host, spec.port, headers, None, timeout)
        if 200 <= int(got.get(b":status", b"0")) < 400:
            return
    except (ProbeError, _H2Failed, ValueError):
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


async def _read_head(reader: asyncio.StreamReader, url: str) -> tuple[int, int | None]:
    """Read the response head; return (status, Content-Length or None). Skips 1xx except 101."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ProbeError(f'Get "{url}": EOF') from None
            raise ProbeError(f'Get "{url}": unexpected EOF in response headers') from None
        except asyncio.LimitOverrunError:
            raise ProbeError(
                f'Get "{url}": response headers exceed {MAX_RESPONSE_BYTES} bytes'
            ) from None
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(None, 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            raise ProbeError(f'Get "{url}": malformed HTTP response {lines[0][:80]!r}')
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            continue
        length: int | None = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                return status, None
            if name == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        return status, length


async def _drain(reader: asyncio.StreamReader, status: int, length: int | None) -> None:
    if status < 200 or status in (204, 304):
        return
    remaining = MAX_RESPONSE_BYTES if length is None else min(length, MAX_RESPONSE_BYTES)
    while remaining > 0:
        chunk = await reader.read(min(remaining, 16 * 1024))
        if not chunk:
            return
        remaining -= len(chunk)


def _request_target(path: str) -> str:
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


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        reason = f"lookup failed: {exc.strerror}"
    elif exc.errno:
        reason = os.strerror(exc.errno)
    else:
        reason = str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]

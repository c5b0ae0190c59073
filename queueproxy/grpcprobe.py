"""The gRPC readiness probe: ``grpc.health.v1.Health/Check`` over h2c (SPEC §1.12), with the
``h2`` state machine, imported only when such a probe runs; also the one-request h2c client the
HTTP/2 auto-detection uses."""

from __future__ import annotations

import asyncio

from dataplane.probespec import ProbeSpec
from dataplane.statpb import encode_varint

from .probes import KUBE_PROBE_USER_AGENT, MAX_RESPONSE_BYTES, ProbeError, host_port, os_reason

__all__ = ["H2Failed", "grpc_attempt", "h2c_call"]

_GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
_SERVING_STATUS = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


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


class H2Failed(Exception):
    """The h2c exchange itself failed (connection, protocol, deadline)."""


async def h2c_call(
    host: str, port: int, headers: list[tuple[bytes, bytes]], body: bytes | None, timeout: float
) -> tuple[dict[bytes, bytes], bytes]:
    """One request over a fresh h2c (prior knowledge) connection: (response headers and
    trailers, body). Raises ProbeError when connecting fails, H2Failed on anything after."""
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

    addr = host_port(host, port)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    writer: asyncio.StreamWriter | None = None
    got: dict[bytes, bytes] = {}
    data = b""
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                raise ProbeError(f"dial tcp {addr}: {os_reason(exc)}") from None
            conn.initiate_connection()
            conn.send_headers(1, headers, end_stream=body is None)
            if body is not None:
                conn.send_data(1, body, end_stream=True)
            writer.write(conn.data_to_send())
            done = False
            while not done:
                chunk = await reader.read(65536)
                if not chunk:
                    raise H2Failed(f"connection to {addr} closed")
                for ev in conn.receive_data(chunk):
                    if isinstance(ev, (ResponseReceived, TrailersReceived)):
                        got.update(ev.headers or [])
                    elif isinstance(ev, DataReceived):
                        data += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if len(data) > MAX_RESPONSE_BYTES:
                            raise H2Failed("response too large")
                    elif isinstance(ev, StreamEnded):
                        done = True
                    elif isinstance(ev, (StreamReset, ConnectionTerminated)):
                        raise H2Failed(type(ev).__name__)
                writer.write(conn.data_to_send())
    except TimeoutError:
        raise H2Failed("deadline exceeded") from None
    except (OSError, H2Error) as exc:
        raise H2Failed(str(exc) or type(exc).__name__) from None
    finally:
        if writer is not None:
            writer.close()
    return got, data


async def grpc_attempt(spec: ProbeSpec, timeout: float) -> None:
    """Call ``grpc.health.v1.Health/Check`` (service ``spec.grpc_service``) over h2c; succeed
    when the answer is SERVING (SPEC §1.12)."""
    addr = host_port(spec.host, spec.port)
    svc = spec.grpc_service.encode()
    msg = (b"\x0a" + encode_varint(len(svc)) + svc) if svc else b""
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
        got, data = await h2c_call(
            spec.host, spec.port, headers, b"\x00" + len(msg).to_bytes(4, "big") + msg, timeout
        )
    except ProbeError as e:
        raise ProbeError(f"failed to connect service {addr!r} within {timeout:g}s: {e}") from None
    except H2Failed as e:
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

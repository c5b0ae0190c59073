"""Readiness probe attempts against real sockets on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from dataplane.probespec import ProbeSpec
from queueproxy.probes import ProbeError, ProbeRefused, attempt_probe, http_attempt, tcp_attempt
from queueproxy.readiness import ReadinessProber

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Event], Awaitable[None]]


@dataclass
class Server:
    port: int
    requests: list[bytes] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def http_server(handler: Handler) -> AsyncIterator[Server]:
    """A tiny HTTP/1.1 server: records each request head, then lets ``handler`` answer."""
    stop = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    srv = Server(0)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            srv.requests.append(await reader.readuntil(b"\r\n\r\n"))
            await handler(reader, writer, stop)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            srv.finished.set()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        stop.set()
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)  # let handlers observe `stop` and finish


def respond(status: str, body: bytes = b"", headers: str = "") -> Handler:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body
        )
        await writer.drain()

    return handler


async def never_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
) -> None:
    await stop.wait()


def endless_body(content_length: bool) -> Handler:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        length = "Content-Length: 1000000000000\r\n" if content_length else ""
        writer.write(f"HTTP/1.1 200 OK\r\n{length}\r\n".encode())
        chunk = b"x" * 65536
        while not stop.is_set():
            writer.write(chunk)
            await writer.drain()  # raises once the client has gone away

    return handler


def http_spec(port: int, path: str = "/", headers: tuple[tuple[str, str], ...] = ()) -> ProbeSpec:
    return ProbeSpec("http", "127.0.0.1", port, path=path, headers=headers)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def header_lines(head: bytes) -> list[str]:
    return head.decode().split("\r\n")[1:-2]


# --------------------------------------------------------------------------- TCP


async def test_tcp_attempt_succeeds_against_listener() -> None:
    async with http_server(never_answer) as srv:
        await tcp_attempt("127.0.0.1", srv.port, 1.0)


async def test_tcp_attempt_fails_fast_on_closed_port() -> None:
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(ProbeError) as info:
        await tcp_attempt("127.0.0.1", port, 5.0)
    assert time.monotonic() - start < 1.0
    assert str(info.value) == f"dial tcp 127.0.0.1:{port}: connection refused"
    assert isinstance(info.value, ProbeRefused)  # retried on the short interval


async def test_default_attempt_dials_for_tcp_and_calls_grpc_health() -> None:
    async with http_server(never_answer) as srv:
        await attempt_probe(ProbeSpec("tcp", "127.0.0.1", srv.port), 1.0)
        assert srv.requests == []  # a bare connect, nothing sent
        # gRPC health (tests/integration/test_h2c_qp.py has a real server): no answer, no success
        with pytest.raises(ProbeError, match="DeadlineExceeded"):
            await attempt_probe(ProbeSpec("grpc", "127.0.0.1", srv.port, grpc_service="x"), 0.2)
    with pytest.raises(ProbeError, match="connection refused"):
        await attempt_probe(ProbeSpec("grpc", "127.0.0.1", closed_port()), 1.0)


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("status", ["200 OK", "204 No Content", "302 Found", "399 Whatever"])
async def test_http_success_statuses(status: str) -> None:
    async with http_server(respond(status, headers="Location: /x\r\n")) as srv:
        await http_attempt(http_spec(srv.port), 1.0)


@pytest.mark.parametrize("code", [101, 400, 404, 500, 503])
async def test_http_failure_statuses(code: int) -> None:
    async with http_server(respond(f"{code} Nope", b"not ready")) as srv:
        with pytest.raises(ProbeError) as info:
            await http_attempt(http_spec(srv.port), 1.0)
    assert str(info.value) == f"HTTP probe did not respond Ready, got status code: {code}"


async def test_http_request_shape() -> None:
    headers = (("X-Custom", "v1"), ("X-Custom", "v2"))
    async with http_server(respond("200 OK", b"ok")) as srv:
        await http_attempt(http_spec(srv.port, path="healthz", headers=headers), 1.0)
    [head] = srv.requests
    assert head.startswith(b"GET /healthz HTTP/1.1\r\n")
    lines = header_lines(head)
    assert f"Host: 127.0.0.1:{srv.port}" in lines
    assert "User-Agent: kube-probe//" in lines
    assert "Connection: close" in lines
    assert [line for line in lines if line.startswith("X-Custom")] == [
        "X-Custom: v1",
        "X-Custom: v2",
    ]


async def test_http_custom_user_agent_and_host_replace_defaults() -> None:
    headers = (("User-Agent", "my-probe/1.0"), ("Host", "example.com"), ("Connection", "x"))
    async with http_server(respond("200 OK")) as srv:
        await http_attempt(http_spec(srv.port, headers=headers), 1.0)
    lines = [line.lower() for line in header_lines(srv.requests[0])]
    assert [line for line in lines if line.startswith("user-agent:")] == [
        "user-agent: my-probe/1.0"
    ]
    assert [line for line in lines if line.startswith("host:")] == ["host: example.com"]
    assert [line for line in lines if line.startswith("connection:")] == ["connection: close"]


async def test_http_path_is_escaped() -> None:
    async with http_server(respond("200 OK")) as srv:
        await http_attempt(http_spec(srv.port, path="/a b/é?q=1"), 1.0)
    assert srv.requests[0].startswith(b"GET /a%20b/%C3%A9?q=1 HTTP/1.1\r\n")


async def test_http_timeout_when_server_never_answers() -> None:
    async with http_server(never_answer) as srv:
        start = time.monotonic()
        with pytest.raises(ProbeError) as info:
            await http_attempt(http_spec(srv.port, path="/ready"), 0.2)
        elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.0
    assert str(info.value) == (
        f'Get "http://127.0.0.1:{srv.port}/ready": context deadline exceeded'
        " (Client.Timeout exceeded while awaiting headers)"
    )


async def test_http_connection_refused() -> None:
    port = closed_port()
    with pytest.raises(ProbeError) as info:
        await http_attempt(http_spec(port), 1.0)
    assert str(info.value) == (
        f'Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: connection refused'
    )
    assert isinstance(info.value, ProbeRefused)


async def test_http_server_closes_without_response() -> None:
    async def close_now(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        return None

    async with http_server(close_now) as srv:
        with pytest.raises(ProbeError, match=r'": EOF$'):
            await http_attempt(http_spec(srv.port), 1.0)


async def test_http_malformed_response() -> None:
    async def garbage(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")

    async with http_server(garbage) as srv:
        with pytest.raises(ProbeError, match="malformed HTTP response"):
            await http_attempt(http_spec(srv.port), 1.0)


async def test_http_skips_informational_response() -> None:
    handler = respond("200 OK")

    async def continue_then_ok(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        await handler(reader, writer, stop)

    async with http_server(continue_then_ok) as srv:
        await http_attempt(http_spec(srv.port), 1.0)


async def test_http_does_not_wait_for_close_after_content_length() -> None:
    async def keep_alive(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await stop.wait()  # ignores Connection: close

    async with http_server(keep_alive) as srv:
        start = time.monotonic()
        await http_attempt(http_spec(srv.port), 5.0)
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "until-close"])
async def test_http_huge_body_is_not_read_unboundedly(content_length: bool) -> None:
    async with http_server(endless_body(content_length)) as srv:
        start = time.monotonic()
        await http_attempt(http_spec(srv.port), 5.0)
        # An unbounded reader would spin until the 5 s deadline; a bounded one stops at 64 KiB.
        assert time.monotonic() - start < 1.0
        # ... and closes the connection, so the server's writes start failing.
        await asyncio.wait_for(srv.finished.wait(), 2.0)


async def test_http_rejects_https_without_connecting() -> None:
    spec = ProbeSpec("http", "127.0.0.1", closed_port(), scheme="HTTPS")
    with pytest.raises(ProbeError, match="not supported"):
        await http_attempt(spec, 1.0)


# --------------------------------------------------------------------------- prober, end to end


async def test_aggressive_prober_waits_for_late_listener() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
    port = sock.getsockname()[1]
    logs: list[str] = []
    prober = ReadinessProber([ProbeSpec("tcp", "127.0.0.1", port)], log=logs.append)
    task = asyncio.create_task(prober.probe())
    await asyncio.sleep(0.2)
    assert not task.done()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(on_connection, sock=sock)
    try:
        assert await asyncio.wait_for(task, 2.0) is True
    finally:
        server.close()
        await server.wait_closed()
    assert logs == []


async def test_standard_http_prober_logs_failure() -> None:
    logs: list[str] = []
    async with http_server(respond("503 Service Unavailable")) as srv:
        spec = ProbeSpec("http", "127.0.0.1", srv.port, period_seconds=1, timeout_seconds=1)
        prober = ReadinessProber([spec], log=logs.append)
        assert await prober.probe() is False
    assert logs == ["HTTP probe did not respond Ready, got status code: 503"]

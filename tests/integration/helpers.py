"""Helpers for the queue-proxy integration tests: polling, a raw HTTP/1.x client, Stat decoding."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

T = TypeVar("T")

QP_BIN = str(Path(sys.executable).with_name("queue-proxy"))


def free_ports(n: int) -> list[int]:
    """``n`` distinct currently free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def knative_env(
    *, serving: int, tls: int, admin: int, metrics: int, user_metrics: int, user_port: int
) -> dict[str, str]:
    """A complete queue-proxy environment as Knative's reconciler would set it, plus our port
    extras so that nothing binds outside the ports picked for this test."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONTAINER_CONCURRENCY": "0",
        "QUEUE_SERVING_PORT": str(serving),
        "QUEUE_SERVING_TLS_PORT": str(tls),
        "USER_PORT": str(user_port),
        "REVISION_TIMEOUT_SECONDS": "30",
        "SERVING_LOGGING_CONFIG": "",
        "SERVING_LOGGING_LEVEL": "info",
        "SERVING_NAMESPACE": "default",
        "SERVING_SERVICE": "hello",
        "SERVING_CONFIGURATION": "hello",
        "SERVING_REVISION": "hello-00001",
        "SERVING_POD": "hello-00001-deployment-abc12",
        "SERVING_POD_IP": "10.0.0.7",
        "QUEUE_ADMIN_PORT": str(admin),
        "QUEUE_METRICS_PORT": str(metrics),
        "QUEUE_USER_METRICS_PORT": str(user_metrics),
        "DRAIN_QUIET_PERIOD_SECONDS": "30",
        # `make test` also runs this suite against the mypyc build via PYTHONPATH.
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
    }


class ChildProcess:
    """A component under test running as a subprocess (``what`` names it in failures)."""

    what = "process"

    def __init__(
        self, proc: subprocess.Popen[bytes], env: dict[str, str], out: Path, err: Path
    ) -> None:
        self.proc = proc
        self.env = env
        self.stdout_path = out
        self.stderr_path = err

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def running(self) -> bool:
        return self.proc.poll() is None

    async def wait_exit(self, timeout: float = 10.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (rc := self.proc.poll()) is None:
            if loop.time() >= deadline:
                raise AssertionError(f"{self.what} {self.pid} still running after {timeout}s")
            await asyncio.sleep(0.02)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)


class QueueProxy(ChildProcess):
    """A running queue-proxy subprocess."""

    what = "queue-proxy"

    def __init__(
        self, proc: subprocess.Popen[bytes], env: dict[str, str], out: Path, err: Path
    ) -> None:
        super().__init__(proc, env, out, err)
        self.port = int(env["QUEUE_SERVING_PORT"])
        self.admin_port = int(env["QUEUE_ADMIN_PORT"])
        self.metrics_port = int(env["QUEUE_METRICS_PORT"])
        self.user_metrics_port = int(env["QUEUE_USER_METRICS_PORT"])
        self.user_port = int(env["USER_PORT"])

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy; bounded by ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if loop.time() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- raw HTTP/1.x


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    @property
    def chunked(self) -> bool:
        te = self.header("transfer-encoding")
        return te is not None and te.lower().endswith("chunked")


class RawConn:
    """A plain TCP connection speaking hand-written HTTP/1.x (for malformed, pipelined, 1.0)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, timeout: float = 5.0, limit: int = 1 << 20) -> RawConn:
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=limit), timeout
        )
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _read(self, coro: Awaitable[bytes], deadline: float) -> bytes:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError("raw read deadline passed")
        return await asyncio.wait_for(coro, remaining)

    async def read_response(self, method: str = "GET", *, timeout: float = 5.0) -> RawResponse:
        """Read one response (interim 1xx responses are returned as such); raises
        ``asyncio.IncompleteReadError`` if the connection ends inside the message."""
        deadline = asyncio.get_running_loop().time() + timeout
        r = self.reader
        head = await self._read(r.readuntil(b"\r\n\r\n"), deadline)
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
        resp = RawResponse(version, int(code), reason, headers)
        if resp.status < 200 or method == "HEAD" or resp.status in (204, 304):
            return resp
        if resp.chunked:
            body = []
            while True:
                size_line = await self._read(r.readuntil(b"\r\n"), deadline)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    break
                data = await self._read(r.readexactly(size + 2), deadline)
                if data[-2:] != b"\r\n":
                    raise ValueError(f"bad chunk terminator {data[-2:]!r}")
                body.append(data[:-2])
            while True:
                line = await self._read(r.readuntil(b"\r\n"), deadline)
                if line == b"\r\n":
                    break
                k, _, v = line.decode("latin-1").partition(":")
                resp.trailers.append((k, v.strip()))
            resp.chunks = body
            resp.body = b"".join(body)
        elif resp.header("content-length") is not None:
            resp.body = await self._read(
                r.readexactly(int(resp.header("content-length") or 0)), deadline
            )
        else:
            resp.body = await self._read(r.read(), deadline)  # delimited by close
        return resp

    async def closed_by_peer(self, *, timeout: float = 3.0) -> bool:
        """True once the peer has closed (EOF or reset) with no further bytes; False if more
        bytes arrive first or nothing happens within ``timeout``."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def raw_exchange(
    port: int,
    data: bytes,
    *,
    method: str = "GET",
    timeout: float = 5.0,
    check_close: bool = True,
) -> tuple[RawResponse, bool]:
    """Send ``data`` on a fresh connection and read one response. With ``check_close``, also
    report whether the server then closed the connection (waiting up to 3 s for it)."""
    conn = await RawConn.open(port)
    try:
        await conn.send(data)
        resp = await conn.read_response(method, timeout=timeout)
        closed = await conn.closed_by_peer() if check_close else False
        return resp, closed
    finally:
        await conn.close()


# --------------------------------------------------------------------------- Stat protobuf


@cache
def stat_class() -> type[Any]:
    """Knative's ``metrics.Stat`` (pkg/autoscaler/metrics/stat.proto), built at run time."""
    fdp = descriptor_pb2.FileDescriptorProto(name="stat.proto", package="metrics", syntax="proto3")
    msg = fdp.message_type.add(name="Stat")
    F = descriptor_pb2.FieldDescriptorProto
    for number, (name, typ) in enumerate(
        (
            ("pod_name", F.TYPE_STRING),
            ("average_concurrent_requests", F.TYPE_DOUBLE),
            ("average_proxied_concurrent_requests", F.TYPE_DOUBLE),
            ("request_count", F.TYPE_DOUBLE),
            ("proxied_request_count", F.TYPE_DOUBLE),
            ("process_uptime", F.TYPE_DOUBLE),
            ("timestamp", F.TYPE_INT64),
        ),
        start=1,
    ):
        msg.field.add(name=name, number=number, type=typ, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("metrics.Stat"))


def parse_stat(data: bytes) -> Any:
    msg = stat_class()()
    msg.ParseFromString(data)
    return msg

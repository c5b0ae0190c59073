"""Buffers of the h2c path stay bounded and windows come back, against a real queue-proxy.

Raw frames from the test client (``hyperframe`` and ``hpack``, the reference libraries), a real
grpcio app behind the queue-proxy. Regression tests for review findings: bytes buffered for a
stream that the client resets are acknowledged (the response bytes to the pod's shared upstream
connection, the request bytes to the client), and a client that does not read is not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from hpack import Encoder
from hyperframe import frame as hf

from tests.apps import grpc_app

from .conftest import StartQP
from .helpers import QueueProxy

pytestmark = pytest.mark.timeout(90)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SVC = f"/{grpc_app.SERVICE}"


def request(path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"qp"),
        (b":path", path.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


def grpc_message(msg: bytes) -> bytes:
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


class RawClient:
    """One HTTP/2 connection written frame by frame; what comes back is parsed on demand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.enc = Encoder()
        self.buf = b""
        self.frames: list[hf.Frame] = []
        self.pings = 0

    @classmethod
    async def open(cls, port: int, settings: dict[int, int] | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        writer.write(PREFACE + hf.SettingsFrame(0, settings=settings or {}).serialize())
        return c

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool) -> bytes:
        f = hf.HeadersFrame(sid, data=self.enc.encode(fields))
        f.flags = {"END_HEADERS", "END_STREAM"} if end else {"END_HEADERS"}
        return f.serialize()

    async def read_until(self, pred: Callable[[hf.Frame], bool], timeout: float = 10) -> hf.Frame:
        """Read frames (kept in ``frames``) until one satisfies ``pred`` (or one before did)."""
        for f in self.frames:
            if pred(f):
                return f
        async with asyncio.timeout(timeout):
            while True:
                while len(self.buf) >= 9:
                    f, length = hf.Frame.parse_frame_header(memoryview(self.buf[:9]))
                    if len(self.buf) < 9 + length:
                        break
                    f.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    self.frames.append(f)
                    if pred(f):
                        return f
                chunk = await self.reader.read(65536)
                assert chunk, f"connection closed; frames: {self.frames[-5:]}"
                self.buf += chunk

    async def ping_round_trip(self) -> None:
        """A barrier: the queue-proxy has read everything sent before and run its loop since."""
        self.pings += 1
        data = self.pings.to_bytes(8, "big")
        self.writer.write(hf.PingFrame(0, opaque_data=data).serialize())
        await self.read_until(
            lambda f: isinstance(f, hf.PingFrame) and "ACK" in f.flags and f.opaque_data == data
        )

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def gapp() -> AsyncIterator[grpc_app.GrpcApp]:
    a = await grpc_app.start()
    yield a
    a.release.set()
    await a.close()


BIG = 200 * 1024


def _headers_of(sid: int) -> Callable[[hf.Frame], bool]:
    return lambda f: isinstance(f, hf.HeadersFrame) and f.stream_id == sid


async def test_cancelled_buffered_responses_give_the_upstream_window_back(
    gapp: grpc_app.GrpcApp, start_qp: StartQP
) -> None:
    qp = await start_qp({}, user_port=gapp.port)
    # A client that opens no stream window: each 200 KiB answer waits in the queue-proxy,
    # which has taken it from the pod's one upstream connection (4 MiB window), then the
    # client resets the stream. 20 x 200 KiB would leave less than 200 KiB of that window
    # if the dropped bytes were not acknowledged upstream.
    slow = await RawClient.open(qp.port, {hf.SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    try:
        for i in range(20):
            sid = 2 * i + 1
            body = hf.DataFrame(sid, data=grpc_message(b"1x%d" % BIG), flags=["END_STREAM"])
            slow.writer.write(slow.headers(sid, request(f"{SVC}/Stream"), False) + body.serialize())
            # The app wrote its whole answer (grpcio completes a write once it is on the wire),
            await gapp.wait_for(lambda n=i + 1: gapp.calls == n and gapp.active == 0)
            await slow.ping_round_trip()  # and the queue-proxy has read it,
            await slow.read_until(_headers_of(sid))
            assert not any(isinstance(f, hf.DataFrame) and f.data for f in slow.frames)
            slow.writer.write(hf.RstStreamFrame(sid, error_code=8).serialize())  # CANCEL
        await slow.ping_round_trip()
    finally:
        slow.close()
    # Another client, on its own connection, gets a whole 200 KiB answer over the same pod
    # connection.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{qp.port}") as ch:
        got = [m async for m in ch.unary_stream(f"{SVC}/Stream")(b"1x%d" % BIG, timeout=10)]
    assert [len(m) for m in got] == [1 + BIG]


async def test_request_bytes_of_a_reset_queued_stream_are_acknowledged(
    gapp: grpc_app.GrpcApp, start_qp: StartQP
) -> None:
    qp = await start_qp({"CONTAINER_CONCURRENCY": "1"}, user_port=gapp.port)
    c = await RawClient.open(qp.port)
    try:
        hold = hf.DataFrame(1, data=grpc_message(b"hold"), flags=["END_STREAM"]).serialize()
        c.writer.write(c.headers(1, request(f"{SVC}/Unary"), False) + hold)
        await gapp.wait_for(lambda: gapp.active == 1)  # the one slot is taken
        # Streams that wait in the breaker's queue, each with 240 KiB of body buffered, then
        # reset by the client: 1.9 MiB of the connection's 4 MiB window.
        chunk = b"x" * 16384
        sent = 0
        for sid in range(3, 19, 2):
            data = [c.headers(sid, request(f"{SVC}/Collect"), False)]
            for _ in range(15):
                data.append(hf.DataFrame(sid, data=chunk).serialize())
                sent += len(chunk)
            data.append(hf.RstStreamFrame(sid, error_code=8).serialize())
            c.writer.write(b"".join(data))
        await c.ping_round_trip()
        ups = [
            f.window_increment
            for f in c.frames
            if isinstance(f, hf.WindowUpdateFrame) and f.stream_id == 0
        ]
        assert ups[0] == 4 * 1024 * 1024 - 65535  # the connection window we are given
        back = sum(ups[1:])
        # Window updates are batched by a quarter of the window (1 MiB): all but that is back.
        assert sent - 1024 * 1024 <= back <= sent, (sent, back)
    finally:
        c.close()


async def test_a_client_that_does_not_read_is_not_read(
    gapp: grpc_app.GrpcApp, start_qp: StartQP
) -> None:
    qp = await start_qp({}, user_port=gapp.port)
    await _no_growth_from_pings(qp)


async def _no_growth_from_pings(qp: QueueProxy) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", qp.port)
    before = qp.rss_kb()
    try:
        writer.write(PREFACE + hf.SettingsFrame(0).serialize())
        ping = hf.PingFrame(0, opaque_data=b"12345678").serialize()
        block = ping * (1024 * 1024 // len(ping))  # ~1 MiB of PINGs, each answered by 17 bytes
        sent = 0
        blocked = False
        # Up to 50 MiB, never reading: the queue-proxy must stop reading us once its replies
        # fill its buffers (our writes then stall), not buffer 50 MiB of PING ACKs.
        for _ in range(50):
            writer.write(block)
            try:
                await asyncio.wait_for(writer.drain(), 3)
            except TimeoutError:
                blocked = True
                break
            sent += len(block)
        grown_mb = (qp.rss_kb() - before) / 1024
        assert blocked, f"all {sent >> 20} MiB were taken; RSS +{grown_mb:.0f} MB"
        assert grown_mb < 20, grown_mb
    finally:
        writer.transport.abort()

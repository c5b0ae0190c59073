"""A broken HTTP/2 client against the queue-proxy, on a real socket: RFC 9113's codes come back.

Frames are built and read with ``hyperframe`` and ``hpack`` (the reference libraries), not with
our codec. A malformed request is a stream error (RST_STREAM PROTOCOL_ERROR) and the connection
keeps serving; a broken frame layer is a connection error (GOAWAY with the code, then close).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hpack import Encoder
from hyperframe import frame as hf

from tests.apps import grpc_app

from .conftest import StartQP
from .helpers import QueueProxy

pytestmark = pytest.mark.timeout(60)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQ = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"qp"),
    (b":path", f"/{grpc_app.SERVICE}/Unary".encode()),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


@pytest.fixture
async def gapp() -> AsyncIterator[grpc_app.GrpcApp]:
    a = await grpc_app.start()
    yield a
    a.release.set()
    await a.close()


@pytest.fixture
async def qp(gapp: grpc_app.GrpcApp, start_qp: StartQP) -> QueueProxy:
    return await start_qp({}, user_port=gapp.port)


def headers(sid: int, enc: Encoder, fields: list[tuple[bytes, bytes]], end: bool) -> bytes:
    f = hf.HeadersFrame(sid, data=enc.encode(fields))
    f.flags = {"END_HEADERS", "END_STREAM"} if end else {"END_HEADERS"}
    return f.serialize()


def raw(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")
    return head + payload


async def exchange(
    port: int, data: bytes, until: type[hf.Frame] | None = None, sid: int = 0
) -> tuple[list[hf.Frame], bool]:
    """Send the preface, SETTINGS and ``data``; read frames until EOF (-> closed=True) or until a
    frame of type ``until`` on stream ``sid`` arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + hf.SettingsFrame(0).serialize() + data)
    frames: list[hf.Frame] = []
    buf = b""
    closed = False
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:  # closed with our bytes unread
                    chunk = b""
                if not chunk:
                    closed = True
                    break
                buf += chunk
                while len(buf) >= 9:
                    f, length = hf.Frame.parse_frame_header(memoryview(buf[:9]))
                    if len(buf) < 9 + length:
                        break
                    f.parse_body(memoryview(buf[9 : 9 + length]))
                    buf = buf[9 + length :]
                    frames.append(f)  # (no SETTINGS ACK: the proxy does not wait for it)
                if until is not None and any(
                    isinstance(f, until) and f.stream_id == sid for f in frames
                ):
                    break
    finally:
        writer.close()
    return frames, closed


async def test_malformed_request_is_a_stream_error_and_the_connection_goes_on(
    qp: QueueProxy,
) -> None:
    enc = Encoder()
    bad = headers(1, enc, [*REQ, (b"X-Upper", b"1")], end=True)
    good = headers(3, enc, REQ, end=False)
    body = hf.DataFrame(3, data=b"\x00\x00\x00\x00\x02hi", flags=["END_STREAM"]).serialize()
    frames, closed = await exchange(qp.port, bad + good + body, until=hf.HeadersFrame, sid=3)
    assert not closed
    resets = [(f.stream_id, f.error_code) for f in frames if isinstance(f, hf.RstStreamFrame)]
    assert resets == [(1, 1)]  # PROTOCOL_ERROR, stream 1 only
    assert any(isinstance(f, hf.HeadersFrame) and f.stream_id == 3 for f in frames)
    assert not any(isinstance(f, hf.GoAwayFrame) for f in frames)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw(0, 0, 1, b"x"), 1),  # DATA on an idle stream: PROTOCOL_ERROR
        (raw(0, 0, 1, b"x" * 16385), 6),  # above our MAX_FRAME_SIZE: FRAME_SIZE_ERROR
        (raw(1, 4, 1, b"\x80"), 9),  # HPACK index 0: COMPRESSION_ERROR
        (raw(8, 0, 0, b"\x7f\xff\xff\xff"), 3),  # window overflow: FLOW_CONTROL_ERROR
        (raw(6, 0, 0, b"short"), 6),  # PING of 5 bytes: FRAME_SIZE_ERROR
    ],
)
async def test_connection_errors_get_goaway_with_the_code(
    qp: QueueProxy, data: bytes, code: int
) -> None:
    frames, closed = await exchange(qp.port, data)
    goaways = [f for f in frames if isinstance(f, hf.GoAwayFrame)]
    assert goaways and goaways[-1].error_code == code, frames
    assert closed


async def test_ping_is_answered(qp: QueueProxy) -> None:
    ping = hf.PingFrame(0, opaque_data=b"12345678").serialize()
    frames, _ = await exchange(qp.port, ping, until=hf.PingFrame, sid=0)
    pongs = [f for f in frames if isinstance(f, hf.PingFrame)]
    assert pongs and "ACK" in pongs[0].flags and pongs[0].opaque_data == b"12345678"

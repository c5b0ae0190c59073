"""benchmarks/floor_proxy.py, the byte pass-through the proxy benchmark measures as the floor
under any Python proxy: it must forward every byte both ways, keep-alive and pipelined, hold
what a client sends before its upstream connection is up, stop reading a side whose peer is
not reading (flow control), and close each side when the other closes."""

from __future__ import annotations

import asyncio
import contextlib

from benchmarks import floor_proxy

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def _upstream(handler) -> tuple[asyncio.Server, int]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _floor(upstream_port: int) -> tuple[asyncio.Server, int]:
    server = await floor_proxy.start(0, upstream_port)
    return server, server.sockets[0].getsockname()[1]


async def test_requests_and_responses_pass_through_unchanged() -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            writer.write(RESPONSE)
            if len(seen) == 3:
                break
        writer.close()

    up, up_port = await _upstream(answer)
    floor, port = await _floor(up_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        requests = [f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3)]
        writer.write(requests[0])  # sent at once: before the upstream connection is up
        assert await asyncio.wait_for(reader.readexactly(len(RESPONSE)), 10) == RESPONSE
        writer.write(requests[1] + requests[2])  # pipelined
        assert await asyncio.wait_for(reader.readexactly(2 * len(RESPONSE)), 10) == 2 * RESPONSE
        # The upstream closed after three: so does the client's side.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert seen == requests
        writer.close()
        await writer.wait_closed()
    finally:
        floor.close()
        up.close()


async def test_a_large_body_arrives_whole_through_a_slow_reader() -> None:
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than any socket buffer holds
    done, closed = asyncio.Event(), asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()  # returns only as the proxy reads (and the client drains it)
        done.set()
        assert await reader.read() == b""  # the client closed: the proxy closes this side
        writer.close()
        await writer.wait_closed()
        closed.set()

    up, up_port = await _upstream(answer)
    floor, port = await _floor(up_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.endswith(b"Content-Length: %d\r\n\r\n" % len(body))
        got = bytearray()
        while len(got) < len(body):
            got += await reader.read(64 * 1024)
        assert bytes(got) == body
        await asyncio.wait_for(done.wait(), 10)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(closed.wait(), 10)
    finally:
        floor.close()
        up.close()


async def test_the_client_side_closes_when_no_upstream_answers() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    closed_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now
    floor, port = await _floor(closed_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            tail = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            tail = b""
        assert tail == b""
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    finally:
        floor.close()


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_a_full_send_buffer_pauses_reading_on_the_other_side() -> None:
    other = _Recorder()
    side = floor_proxy._Side(other)  # type: ignore[arg-type]
    side.pause_writing()  # this side's transport is full: stop reading the other side
    side.resume_writing()
    assert other.calls == ["pause", "resume"]


async def test_a_half_close_goes_through_and_the_answer_comes_back() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's half-close arrives
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(request) + request)
        writer.close()

    up, up_port = await _upstream(answer)
    floor, port = await _floor(up_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 10)
        assert got == b"HTTP/1.0 200 OK\r\nContent-Length: 18\r\n\r\nGET / HTTP/1.0\r\n\r\n"
        writer.close()
        await writer.wait_closed()
    finally:
        floor.close()
        up.close()

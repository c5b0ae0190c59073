"""dataplane.httpget over loopback sockets: framing, bounds, interim responses and each error
stage, against a small asyncio server that answers with whatever bytes a test gives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from dataplane import httpget

from .helpers import free_ports

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(answer: Answer) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server that reads one request head per connection and lets ``answer`` write."""
    heads: list[bytes] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            heads.append(await r.readuntil(b"\r\n\r\n"))
            await answer(w)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], heads
    finally:
        srv.close()
        await srv.wait_closed()


def writes(*parts: bytes, hold: float = 0.0) -> Answer:
    async def answer(w: asyncio.StreamWriter) -> None:
        for p in parts:
            w.write(p)
            await w.drain()
        if hold:
            await asyncio.sleep(hold)  # the server keeps the connection open

    return answer


async def test_content_length_body_and_the_request_sent() -> None:
    async with server(writes(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello")) as (
        port,
        heads,
    ):
        r = await httpget.get("127.0.0.1", port, "/p?q=1", 2.0, headers=b"Accept: x/y\r\n")
    assert (r.status, r.body, r.complete, r.header(b"x-a")) == (200, b"hello", True, b"1")
    assert heads[0] == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: x/y\r\nConnection: close\r\n\r\n"
        % port
    )


async def test_chunked_body_is_decoded_and_trailing_bytes_ignored() -> None:
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    async with server(writes(body + b"junk after the message")) as (port, _):
        r = await httpget.get("127.0.0.1", port, "/", 2.0)
    assert (r.body, r.complete) == (b"abcde", True)


async def test_body_is_bounded_and_an_open_connection_does_not_hold_the_answer() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    async with server(writes(head, b"x" * 100000, hold=30)) as (port, _):
        r = await httpget.get("127.0.0.1", port, "/", 5.0, max_body=10)
    assert (r.status, r.body, r.complete) == (200, b"x" * 10, False)


async def test_until_close_body_and_a_slow_body_are_returned_not_raised() -> None:
    async with server(writes(b"HTTP/1.1 200 OK\r\n\r\npartial")) as (port, _):
        r = await httpget.get("127.0.0.1", port, "/", 2.0)
    assert (r.status, r.body, r.complete) == (200, b"partial", False)
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\nab"
    async with server(writes(head, hold=30)) as (port, _):
        r = await httpget.get("127.0.0.1", port, "/", 0.3)  # the deadline passes in the body
    assert (r.status, r.body, r.complete) == (503, b"ab", False)


async def test_interim_responses_are_skipped() -> None:
    parts = (
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Final: yes\r\n\r\n",
    )
    async with server(writes(*parts)) as (port, _):
        r = await httpget.get("127.0.0.1", port, "/", 2.0)
    assert (r.status, r.complete, r.header(b"link"), r.header(b"x-final")) == (
        204,
        True,
        None,
        b"yes",
    )


async def test_refused_connection_is_a_dial_error() -> None:
    (port,) = free_ports(1)
    with pytest.raises(httpget.DialError) as ei:
        await httpget.get("127.0.0.1", port, "/", 2.0)
    assert isinstance(ei.value.error, ConnectionRefusedError)


async def test_silence_is_a_head_timeout() -> None:
    async with server(writes(hold=30)) as (port, _):
        loop = asyncio.get_running_loop()
        t = loop.time()
        with pytest.raises(httpget.HeadTimeout):
            await httpget.get("127.0.0.1", port, "/", 0.2)
        assert loop.time() - t < 2.0


@pytest.mark.parametrize(("data", "partial"), [(b"", False), (b"HTTP/1.1 200 OK\r\nX-", True)])
async def test_close_before_the_head_is_a_read_error(data: bytes, partial: bool) -> None:
    async with server(writes(data)) as (port, _):
        with pytest.raises(httpget.ReadError) as ei:
            await httpget.get("127.0.0.1", port, "/", 2.0)
    assert (ei.value.error, ei.value.partial, str(ei.value)) == (None, partial, "EOF")


async def test_garbage_and_oversized_heads_are_bad_responses() -> None:
    async with server(writes(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as (port, _):
        with pytest.raises(httpget.BadResponse) as ei:
            await httpget.get("127.0.0.1", port, "/", 2.0)
    assert ei.value.first_line == b"SSH-2.0-OpenSSH_9.2"
    huge = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 200_000 + b"\r\n\r\n"
    async with server(writes(huge)) as (port, _):
        with pytest.raises(httpget.HeadTooLarge):
            await httpget.exchange("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", 2.0)

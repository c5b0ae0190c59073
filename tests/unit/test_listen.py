"""dataplane.listen: a port that cannot be had is one error naming the setting."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dataplane.envconfig import ConfigError
from dataplane.listen import listen
from dataplane.proxy import Exchange, HTTPServer, ServerConfig


def _ok(ex: Exchange) -> None:
    ex.respond(200, b"ok")


async def test_busy_port_names_the_setting() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    server = HTTPServer(_ok, ServerConfig(), loop=asyncio.get_running_loop())
    try:
        with pytest.raises(ConfigError) as e:
            await listen(server, "127.0.0.1", port, "ACTIVATOR_PORT")
        assert str(e.value) == (
            f"ACTIVATOR_PORT: cannot listen on 127.0.0.1:{port}: Address already in use"
        )
    finally:
        busy.close()
        await server.shutdown()


async def test_listens_on_a_free_port_or_a_bound_socket() -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = HTTPServer(_ok, ServerConfig(), loop=loop)
    await listen(server, "ignored-when-sock", port, "QUEUE_SERVING_PORT", sock=sock)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await server.shutdown()

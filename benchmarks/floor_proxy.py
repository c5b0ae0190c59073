"""The floor under any HTTP proxy written in Python on uvloop: every byte in goes out unread.

Each client connection gets one upstream connection of its own, and each read on either side is
written to the other as it is (with flow control: a side whose peer's send buffer is full stops
reading until it drains). No parsing, no headers, no timers, no concurrency limit: per request it
does what no HTTP proxy on this runtime can avoid (two reads, two writes, two ``data_received``
callbacks and the event loop's wake-ups) and nothing else. Against keep-alive load, which sends
each request on the connection that sent the one before, it serves HTTP correctly; it is a
benchmark baseline, not a proxy to deploy (it would pair a client with an upstream connection
for life). The queue-proxy's CPU per request minus this one's is what its HTTP work costs.

Run: ``python -m benchmarks.floor_proxy --port P --upstream-port U``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import uvloop


class _Pending:
    """Stands in for the upstream's transport until it connects: keeps what the client sent
    (and stops reading the client, ``src``, until then), and its end."""

    __slots__ = ("chunks", "closed", "eof", "src")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.eof = False
        self.src: asyncio.Transport | None = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.src is not None:
            self.src.pause_reading()

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Side(asyncio.Protocol):
    """One end of a pair; ``out`` is the other end's transport, ``peer`` its protocol."""

    __slots__ = ("got_eof", "out", "peer", "transport")

    def __init__(self, out: asyncio.Transport | _Pending | None = None) -> None:
        self.out = out
        self.peer: _Side | None = None
        self.got_eof = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.out.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        # A half-close goes on to the other end, and this end stays open for the answer until
        # the other end has ended too (then closing this end closes both: connection_lost).
        self.got_eof = True
        out, peer = self.out, self.peer
        if peer is not None and peer.got_eof:
            return False
        if out is not None and (isinstance(out, _Pending) or out.can_write_eof()):
            out.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.out is not None:
            self.out.close()

    # The other end's buffer is full: stop reading this end (and resume once it drains).
    def pause_writing(self) -> None:
        self.out.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.out.resume_reading()  # type: ignore[union-attr]


class _Client(_Side):
    """The accepted end: read no further than one chunk until its upstream connection is up."""

    __slots__ = ("_connecting", "_upstream")

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(_Pending())
        self._upstream = upstream
        self._connecting: asyncio.Task[tuple[asyncio.BaseTransport, _Side]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(_Pending, self.out).src = self.transport
        loop = asyncio.get_running_loop()
        self._connecting = task = loop.create_task(
            loop.create_connection(lambda: _Side(self.transport), *self._upstream)
        )
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[tuple[asyncio.BaseTransport, _Side]]) -> None:
        self._connecting = None
        pending = self.out
        assert isinstance(pending, _Pending) and self.transport is not None
        if task.cancelled() or task.exception() is not None:
            self.transport.abort()
            return
        base, side = task.result()
        transport = cast(asyncio.Transport, base)
        side.out, side.peer = self.transport, self
        self.out, self.peer = transport, side
        if pending.chunks:
            transport.writelines(pending.chunks)
        if pending.closed:
            transport.close()
        elif pending.eof:
            transport.write_eof()
        elif pending.chunks:
            self.transport.resume_reading()


async def start(port: int, upstream_port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """Listen on ``host:port``; each connection is paired with one to ``host:upstream_port``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Client((host, upstream_port)), host, port, backlog=1024
    )


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await start(port, upstream_port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()

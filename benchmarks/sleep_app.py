"""A cheap stand-in for Knative's autoscale test image: ``GET /?sleep=100`` answers after 100 ms.

The probe shape of ``python -m benchmarks locust`` measures the latency each hop adds on top of
a 100 ms handler, so the app itself must cost next to nothing (examples/autoscale.py runs on
aiohttp: ~10 times the CPU per request). asyncio (uvloop when present) protocol, HTTP/1.1
keep-alive, one request at a time per connection as the clients send them (pipelined requests
with different sleeps would be answered out of order); bodies are skipped. Listens on
127.0.0.1:$PORT.

``PORT=8080 python -m benchmarks.sleep_app``
"""

from __future__ import annotations

import asyncio
import os
import re
import socket

_SLEEP = re.compile(rb"[?&](?:sleep|ms)=(\d+)")


def _response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class _App(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.skip = 0  # body bytes still to discard
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            if self.skip:
                n = min(self.skip, len(buf))
                self.skip -= n
                buf = buf[n:]
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end], buf[end + 4 :]
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.skip = int(value.strip() or b"0")
            m = _SLEEP.search(lines[0])
            ms = int(m.group(1)) if m else 0
            body = b"slept %d ms\n" % ms if ms else b"ok\n"
            self.loop.call_later(ms / 1000, self._write, _response(body))
        self.buf = buf

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


def main() -> None:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(os.environ.get("PORT", "8080"))))
    sock.listen(4096)

    async def serve() -> None:
        server = await loop.create_server(_App, sock=sock)
        await server.serve_forever()

    try:
        loop.run_until_complete(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""A user app that records each request as it arrived on the wire: method, target, header lines
in order, body and trailers. It answers ``200 ok``.

Its parser is a small one of its own, because the point is to see bytes the usual parsers
refuse (h11 and llhttp refuse bytes >= 0x80 in a request target; Go's server accepts them and
its queue-proxy forwards the query as received)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

Lines = list[tuple[bytes, bytes]]


@dataclass
class Seen:
    method: bytes
    target: bytes
    headers: Lines
    body: bytes = b""
    trailers: Lines = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def _fields(block: bytes) -> Lines:
    out = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


class RecordingApp:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RecordingApp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, _, block = head[:-4].partition(b"\r\n")
                method, target, _version = line.split(b" ")
                seen = Seen(method, target, _fields(block))
                if (seen.header(b"transfer-encoding") or b"").lower() == b"chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            break
                        seen.body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    trailer = await reader.readuntil(b"\r\n")
                    while trailer != b"\r\n":
                        seen.trailers += _fields(trailer)
                        trailer = await reader.readuntil(b"\r\n")
                else:
                    n = int(seen.header(b"content-length") or b"0")
                    seen.body = await reader.readexactly(n)
                self.seen.append(seen)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

"""The user app of the ``held`` scenario: a tiny HTTP/1.1 server that logs when it listens.

Everything is imported before the socket is bound; right after ``listen()`` it writes
``listen <time.monotonic()>`` to ``--log``, then ``request <time.monotonic()>`` for each of the
first ``--record`` requests when their head has arrived. CLOCK_MONOTONIC is one clock for all
processes on Linux, so the harness compares these times with its own. Every request (keep-alive,
any method; a Content-Length body is skipped) gets ``200`` with the body ``ok``.

``python -m benchmarks.held_app --port N --log FILE [--record K]``
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from typing import IO

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class _Recorder:
    def __init__(self, log: IO[str], limit: int) -> None:
        self.log = log
        self.left = limit

    def request(self, at: float) -> None:
        if self.left > 0:
            self.left -= 1
            self.log.write(f"request {at:.9f}\n")
            self.log.flush()


class _App(asyncio.Protocol):
    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder
        self.buf = b""
        self.skip = 0  # body bytes still to discard
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
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
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.skip = int(value.strip() or b"0")
            self.recorder.request(now)
            assert self.transport is not None
            self.transport.write(RESPONSE)
        self.buf = buf


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="file for the listen and request times")
    parser.add_argument("--record", type=int, default=1000, help="requests whose time is logged")
    args = parser.parse_args()
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    log = open(args.log, "a", encoding="ascii")  # noqa: SIM115 (open for the process's life)
    recorder = _Recorder(log, args.record)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(4096)
    listened = time.monotonic()
    log.write(f"listen {listened:.9f}\n")
    log.flush()
    server = loop.run_until_complete(loop.create_server(lambda: _App(recorder), sock=sock))
    try:
        loop.run_until_complete(server.serve_forever())
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        log.close()


if __name__ == "__main__":
    main()

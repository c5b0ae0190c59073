"""One small HTTP/1.1 client for the control loops: probes, scrapes, readiness checks.

The activator's probes of queue-proxies, the autoscaler's scrapes of ``/metrics``, the local
platform's kubelet-style probes and the queue-proxy's ``httpGet`` readiness probe all need the
same thing: one request on a fresh connection, the status, a few headers and a bounded body,
within a deadline. They use this client, which parses the response with httptools (the
engine's parser), so a chunked or otherwise framed body is read the same way everywhere.

Errors are typed by stage, so each caller can word them its own way (the readiness probe words
them as Go's prober does): :class:`DialError` (connecting failed), :class:`ReadError`
(the connection failed before the response head was complete), :class:`HeadTimeout` (no
complete head within the deadline), :class:`BadResponse` (not HTTP, or a head larger than
``max_head``). Once the head is in, nothing raises: the body read stops at the deadline, at
``max_body`` bytes, at the end of the message or of the connection, and :attr:`Response.complete`
says whether the message ended.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httptools

__all__ = [
    "BadResponse",
    "DialError",
    "GetError",
    "HeadTimeout",
    "HeadTooLarge",
    "ReadError",
    "Response",
    "exchange",
    "get",
]

_CHUNK = 16384


class GetError(Exception):
    """The request got no usable response head."""


class DialError(GetError):
    """Connecting failed; ``error`` is the OSError (ConnectionRefusedError: nothing listens)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.error = error


class ReadError(GetError):
    """The connection failed or ended before the head was complete: ``error`` is the OSError,
    or None when the peer closed (``partial``: after some bytes of a head)."""

    def __init__(self, error: OSError | None, *, partial: bool = False) -> None:
        text = "EOF" if error is None else str(error) or type(error).__name__
        super().__init__(text)
        self.error = error
        self.partial = partial


class HeadTimeout(GetError):
    """No complete response head within the deadline."""


class BadResponse(GetError):
    """The bytes received are not an HTTP/1.x response head; ``first_line``: what came."""

    def __init__(self, message: str, first_line: bytes = b"") -> None:
        super().__init__(message)
        self.first_line = first_line


class HeadTooLarge(BadResponse):
    """The response head is larger than ``max_head``."""


@dataclass(frozen=True, slots=True)
class Response:
    """A response head and the body bytes read (at most ``max_body``)."""

    status: int
    headers: dict[bytes, bytes]  # lower-case names; the first value of each
    body: bytes
    complete: bool  # the whole message was read (its end seen within max_body bytes)

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)


class _Reader:
    """httptools callbacks: status, headers, body, end. Interim (1xx) responses other than
    101 are skipped: the response is the first final one."""

    __slots__ = ("body", "body_len", "done", "head_done", "headers", "max_body", "parser")

    def __init__(self, max_body: int) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_len = 0
        self.max_body = max_body
        self.head_done = False
        self.done = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        if not self.head_done:
            self.headers.clear()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.setdefault(name.lower(), value)

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if not 100 <= status < 200 or status == 101:
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        if not self.head_done or self.done:
            return
        room = self.max_body - self.body_len
        if room > 0:
            part = body[:room]
            self.body.append(part)
            self.body_len += len(part)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True


async def exchange(
    host: str,
    port: int,
    request: bytes,
    timeout: float,
    *,
    max_head: int = 65536,
    max_body: int = 65536,
) -> Response:
    """Send ``request`` (a whole HTTP/1.1 request) on a fresh connection and read the answer,
    everything within ``timeout`` seconds (see the module docstring for what raises)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    writer: asyncio.StreamWriter | None = None
    rd = _Reader(max_body)
    parser = rd.parser = httptools.HttpResponseParser(rd)
    try:
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            raise DialError(e) from None
        except TimeoutError:
            raise HeadTimeout(f"no connection within {timeout:g}s") from None
        first = b""
        seen = 0
        try:
            async with asyncio.timeout_at(deadline):
                writer.write(request)
                while not rd.head_done:
                    data = await reader.read(_CHUNK)
                    if not data:
                        raise ReadError(None, partial=seen > 0)
                    if seen < 512:
                        first = (first + data[:512]).partition(b"\r\n")[0][:80]
                    seen += len(data)
                    try:
                        parser.feed_data(data)
                    except httptools.HttpParserError as e:
                        if not rd.head_done:  # else: bytes after the message, not ours to judge
                            raise BadResponse(f"malformed response: {e}", first) from None
                    if not rd.head_done and seen > max_head:
                        raise HeadTooLarge(f"response head larger than {max_head} bytes", first)
        except TimeoutError:
            raise HeadTimeout(f"no response within {timeout:g}s") from None
        except OSError as e:
            raise ReadError(e) from None
        # The head is in: from here the body is best effort, bounded by size and deadline.
        try:
            async with asyncio.timeout_at(deadline):
                while not rd.done and rd.body_len < max_body:
                    data = await reader.read(_CHUNK)
                    if not data:
                        break  # an until-close body ends here (``complete`` stays False)
                    with _ignore_parse_errors():
                        parser.feed_data(data)
        except (TimeoutError, OSError):
            pass
        return Response(parser.get_status_code(), rd.headers, b"".join(rd.body), rd.done)
    finally:
        if writer is not None:
            writer.close()


class _ignore_parse_errors:
    """A body that breaks its own framing ends the read (the head is what callers judge)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: object, exc: object, tb: object) -> bool:
        return isinstance(exc, httptools.HttpParserError)


async def get(
    host: str,
    port: int,
    target: str,
    timeout: float,
    *,
    headers: bytes = b"",
    authority: str | None = None,
    max_body: int = 65536,
) -> Response:
    """``GET target`` with ``Connection: close`` and the extra ``headers`` (complete
    ``Name: value\\r\\n`` lines); ``Host`` is ``authority``, by default ``host:port``."""
    if authority is None:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = b"GET %b HTTP/1.1\r\nHost: %b\r\n%bConnection: close\r\n\r\n" % (
        target.encode("latin-1"),
        authority.encode("latin-1"),
        headers,
    )
    return await exchange(host, port, request, timeout, max_body=max_body)

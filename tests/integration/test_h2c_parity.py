"""h2c through the queue-proxy as through Knative's Go queue-proxy (differences found by
``tools/differential.py --h2``): :path goes to the app as over HTTP/1.1, a path that is not a
valid encoding re-escaped, a '%' without two hex digits refused (Go's HTTP/2 server resets the
stream with PROTOCOL_ERROR); the app's interim responses (103 Early Hints) reach the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    InformationalResponseReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)

from .conftest import StartQP
from .helpers import QueueProxy

pytestmark = pytest.mark.timeout(60)


class PathApp:
    """An h2c app that records each request's :path and answers 200 ``ok``, after ``103`` with
    a ``link`` (and a ``101``, which has no place in HTTP/2) for ``/early``."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.paths: list[bytes] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        w.write(conn.data_to_send())
        try:
            while data := await r.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, RequestReceived):
                        self.paths.append(dict(ev.headers or [])[b":path"])
                    elif isinstance(ev, StreamEnded):
                        if self.paths[-1] == b"/early":
                            for status in (b"103", b"101"):
                                hint = [(b":status", status), (b"link", b"</s.css>; rel=preload")]
                                conn.send_headers(ev.stream_id, hint)
                        conn.send_headers(ev.stream_id, [(b":status", b"200")])
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
                w.write(conn.data_to_send())
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def app() -> AsyncIterator[PathApp]:
    a = PathApp()
    await a.start()
    yield a
    await a.close()


async def _get(qp: QueueProxy, paths: list[bytes]) -> list[str]:
    """GET each path on one h2c connection, in turn: how each stream ended ("200 ok" or
    "reset <code>"), after any interim responses ("103 </s.css>; rel=preload 200 ok")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", qp.port)
    # no validation: a raw byte in :path is what is under test
    conn = H2Connection(
        H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    out = []
    try:
        for i, path in enumerate(paths):
            sid = 2 * i + 1
            conn.send_headers(
                sid,
                [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"),
                 (b":path", path)],
                end_stream=True,
            )  # fmt: skip
            writer.write(conn.data_to_send())
            body, status, interim, ended = b"", b"", b"", ""
            async with asyncio.timeout(10):
                while not ended:
                    data = await reader.read(65536)
                    assert data, "connection closed"
                    for ev in conn.receive_data(data):
                        if getattr(ev, "stream_id", 0) != sid:
                            continue
                        if isinstance(ev, InformationalResponseReceived):
                            hs = dict(ev.headers)
                            interim += b"%s %s " % (hs[b":status"], hs.get(b"link", b""))
                        elif isinstance(ev, DataReceived):
                            body += ev.data
                        elif isinstance(ev, StreamEnded):
                            ended = f"{interim.decode()}{status.decode()} {body.decode()}"
                        elif isinstance(ev, StreamReset):
                            ended = f"reset {ErrorCodes(ev.error_code).name}"
                        elif hasattr(ev, "headers") and ev.headers:
                            status = dict(ev.headers).get(b":status", status)
                    writer.write(conn.data_to_send())
            out.append(ended)
    finally:
        writer.close()
    return out


async def test_paths_reach_the_app_escaped_as_go_sends_them(
    app: PathApp, start_qp: StartQP
) -> None:
    qp = await start_qp(user_port=app.port)
    sent = [b"/caf\xc3\xa9", b"/a|b", b"/a b", b"/a{b}", b"/?q=\xc3\xbc", b"/%41%2f", b"/a/b?x=1"]
    assert await _get(qp, sent) == ["200 ok"] * len(sent)
    assert app.paths == [
        b"/caf%C3%A9",
        b"/a%7Cb",
        b"/a%20b",
        b"/a%7Bb%7D",
        b"/?q=\xc3\xbc",  # the query goes as received
        b"/%41%2f",  # a valid encoding goes as received
        b"/a/b?x=1",
    ]


async def test_invalid_escape_resets_the_stream_and_keeps_the_connection(
    app: PathApp, start_qp: StartQP
) -> None:
    qp = await start_qp(user_port=app.port)
    assert await _get(qp, [b"/%zz", b"/a%4", b"/ok"]) == [
        "reset PROTOCOL_ERROR",
        "reset PROTOCOL_ERROR",
        "200 ok",
    ]
    assert app.paths == [b"/ok"]


async def test_early_hints_reach_the_client(app: PathApp, start_qp: StartQP) -> None:
    qp = await start_qp(user_port=app.port)
    assert await _get(qp, [b"/early", b"/ok"]) == [
        "103 </s.css>; rel=preload 200 ok",
        "200 ok",
    ]

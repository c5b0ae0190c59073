"""What the app sees through a real queue-proxy where Go's queue-proxy has its own rules:
request targets with raw bytes >= 0x80 (re-escaped path, raw query) and request trailers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.apps.recording import RecordingApp

from .conftest import StartQP
from .helpers import QueueProxy, RawConn


@pytest.fixture
async def rec() -> AsyncIterator[RecordingApp]:
    app = await RecordingApp().start()
    yield app
    await app.close()


@pytest.fixture
async def rqp(rec: RecordingApp, start_qp: StartQP) -> QueueProxy:
    return await start_qp(user_port=rec.port)


async def test_8bit_target_reaches_the_app_as_go_sends_it(
    rqp: QueueProxy, rec: RecordingApp
) -> None:
    conn = await RawConn.open(rqp.port)
    try:
        await conn.send(
            b"PUT /\xc3\xbc?q=\xc3\xa9 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        )
        resp = await conn.read_response("PUT")
        assert resp.status == 200
        await conn.send(b"GET /a|b%2F\xff HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await conn.read_response()).status == 200
        await conn.send(b"GET /%zz\xc3\xbc HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await conn.read_response()
        assert resp.status == 400
        assert await conn.closed_by_peer()
    finally:
        await conn.close()
    assert [(s.method, s.target) for s in rec.seen] == [
        (b"PUT", b"/%C3%BC?q=\xc3\xa9"),
        (b"GET", b"/a%7Cb/%FF"),
    ]


async def test_request_trailers_announced_and_relayed(rqp: QueueProxy, rec: RecordingApp) -> None:
    conn = await RawConn.open(rqp.port)
    try:
        await conn.send(
            b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-T: 42\r\n\r\n"
        )
        assert (await conn.read_response("POST")).status == 200
    finally:
        await conn.close()
    (seen,) = rec.seen
    assert seen.header(b"trailer") == b"X-T"
    assert seen.body == b"hello"
    assert seen.trailers == [(b"X-T", b"42")]

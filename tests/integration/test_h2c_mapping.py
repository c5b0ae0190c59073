"""RST_STREAM and GOAWAY mapping through the queue-proxy, against a scripted h2c upstream.

The upstream is a tiny h2 server in the test: ``/rst`` answers headers then resets the stream
with ENHANCE_YOUR_CALM; ``/goaway`` answers with a GOAWAY that leaves the stream unprocessed;
anything else is a 200 with body ``ok``. The client is a raw h2 connection to see frames.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)

from .conftest import StartQP, make_client
from .helpers import QueueProxy

pytestmark = pytest.mark.timeout(60)


class Upstream:
    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        w.write(conn.data_to_send())
        paths: dict[int, bytes] = {}
        try:
            while data := await r.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, RequestReceived):
                        paths[ev.stream_id] = dict(ev.headers or [])[b":path"]
                    elif isinstance(ev, StreamEnded):
                        self._answer(conn, ev.stream_id, paths.pop(ev.stream_id, b""))
                    elif isinstance(ev, DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                w.write(conn.data_to_send())
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    def _answer(self, conn: H2Connection, sid: int, path: bytes) -> None:
        if path == b"/goaway":
            conn.close_connection(last_stream_id=sid - 2 if sid > 2 else 0)
            return
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
        if path == b"/rst":
            conn.send_data(sid, b"partial")
            conn.reset_stream(sid, ErrorCodes.ENHANCE_YOUR_CALM)
            return
        conn.send_data(sid, b"ok", end_stream=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    u = Upstream()
    await u.start()
    yield u
    await u.close()


async def _request(qp: QueueProxy, path: bytes) -> list[object]:
    """One GET on a fresh h2c connection; the events of its stream until it ends or resets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", qp.port)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", path)],
        end_stream=True,
    )
    writer.write(conn.data_to_send())
    events: list[object] = []
    try:
        async with asyncio.timeout(10):
            while not any(isinstance(e, (StreamEnded, StreamReset)) for e in events):
                data = await reader.read(65536)
                assert data, f"closed early: {events}"
                events += [e for e in conn.receive_data(data) if getattr(e, "stream_id", 0)]
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    return events


async def test_upstream_reset_after_headers_resets_the_client_stream(
    upstream: Upstream, start_qp: StartQP
) -> None:
    qp = await start_qp(user_port=upstream.port)
    events = await _request(qp, b"/rst")
    assert isinstance(events[0], ResponseReceived)
    resets = [e for e in events if isinstance(e, StreamReset)]
    assert resets and resets[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM, events
    # The connection upstream is still good for the next stream.
    ok = await _request(qp, b"/ok")
    assert b"".join(e.data for e in ok if isinstance(e, DataReceived)) == b"ok"
    assert upstream.connections == 1


async def test_upstream_goaway_refuses_unprocessed_stream_and_reconnects(
    upstream: Upstream, start_qp: StartQP
) -> None:
    qp = await start_qp(user_port=upstream.port)
    events = await _request(qp, b"/goaway")
    resets = [e for e in events if isinstance(e, StreamReset)]
    # Not processed upstream: the client may safely retry (gRPC does so transparently).
    assert resets and resets[0].error_code == ErrorCodes.REFUSED_STREAM, events
    ok = await _request(qp, b"/ok")
    assert b"".join(e.data for e in ok if isinstance(e, DataReceived)) == b"ok"
    assert upstream.connections == 2  # a fresh upstream connection after the GOAWAY


def _http_probe(port: int) -> str:
    return json.dumps(
        {"httpGet": {"port": port, "path": "/hello"}, "periodSeconds": 1, "timeoutSeconds": 1}
    )


async def _kubelet_probe(qp: QueueProxy) -> int:
    async with make_client(qp.url()) as c:
        r = await c.get("/", headers={"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"})
        return r.status_code


@pytest.mark.parametrize("auto", [True, False])
async def test_http2_auto_detection_probes_an_h2c_only_app(
    upstream: Upstream, start_qp: StartQP, auto: bool
) -> None:
    env = {"SERVING_READINESS_PROBE": _http_probe(upstream.port)}
    if auto:
        env["ENABLE_HTTP2_AUTO_DETECTION"] = "true"
    qp = await start_qp(env, user_port=upstream.port)
    # The scripted upstream speaks only HTTP/2: ready with auto-detection, not without.
    assert await _kubelet_probe(qp) == (200 if auto else 503)


async def test_http2_auto_detection_falls_back_to_http1(start_qp: StartQP) -> None:
    from tests.apps import upstream as http1_app

    app = await http1_app.start()
    try:
        env = {"SERVING_READINESS_PROBE": _http_probe(app.port), "ENABLE_HTTP2_AUTO_DETECTION": "1"}
        qp = await start_qp(env, user_port=app.port)
        assert await _kubelet_probe(qp) == 200
    finally:
        await app.close()

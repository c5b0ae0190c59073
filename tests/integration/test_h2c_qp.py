"""gRPC (h2c) through the queue-proxy: grpcio client -> queue-proxy -> grpcio server.

One channel is one HTTP/2 connection, so concurrent calls here are streams multiplexed on it:
the breaker, the stats and cancellation must work per stream.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from tests.apps import grpc_app

from .conftest import StartQP, make_client
from .helpers import QueueProxy, eventually, free_ports

pytestmark = pytest.mark.timeout(60)

PROM = '{"requestMetrics":{"protocol":"prometheus"}}'
SVC = f"/{grpc_app.SERVICE}"


@pytest.fixture
async def gapp() -> AsyncIterator[grpc_app.GrpcApp]:
    a = await grpc_app.start()
    yield a
    a.release.set()
    await a.close()


@pytest.fixture
def cc() -> str:
    return "0"


@pytest.fixture
async def gqp(gapp: grpc_app.GrpcApp, start_qp: StartQP, cc: str) -> QueueProxy:
    return await start_qp(
        {"CONTAINER_CONCURRENCY": cc, "OBSERVABILITY_CONFIG": PROM}, user_port=gapp.port
    )


@pytest.fixture
async def channel(gqp: QueueProxy) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gqp.port}") as ch:
        yield ch


async def _queue_depth(m: httpx.AsyncClient) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    r = await m.get("/metrics")
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == "kn_serving_queue_depth":
                return float(s.value)
    raise AssertionError("kn_serving_queue_depth not exported:\n" + r.text)


async def test_unary(channel: grpc.aio.Channel, gapp: grpc_app.GrpcApp) -> None:
    call = channel.unary_unary(f"{SVC}/Unary")(b"hi", metadata=(("x-custom", "v1"),), timeout=5)
    assert await call == b"echo:hi"
    assert await call.code() == grpc.StatusCode.OK
    assert dict(await call.trailing_metadata())["x-echo-trailer"] == "yes"
    md = gapp.metadata[-1]
    assert md["x-custom"] == "v1"
    assert md["x-forwarded-for"] == "127.0.0.1"


async def test_error_status_in_trailers(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await channel.unary_unary(f"{SVC}/Unary")(b"fail", timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "asked to fail"


async def test_server_streaming_past_the_windows(channel: grpc.aio.Channel) -> None:
    # 300 x 16 KiB = 4.8 MiB: more than every flow-control window on the way.
    got = [m async for m in channel.unary_stream(f"{SVC}/Stream")(b"300x16384", timeout=20)]
    assert len(got) == 300
    assert [m[: len(b"%d" % i)] for i, m in enumerate(got)] == [b"%d" % i for i in range(300)]
    assert all(len(m) == len(b"%d" % i) + 16384 for i, m in enumerate(got))


async def test_client_streaming(channel: grpc.aio.Channel) -> None:
    parts = [b"%d" % i + b"x" * 20000 for i in range(200)]  # ~4 MB upstream

    async def gen() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    got = await channel.stream_unary(f"{SVC}/Collect")(gen(), timeout=20)
    assert got == b",".join(parts)


async def test_bidi_interleaved(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream(f"{SVC}/Chat")(timeout=10)
    for i in range(20):
        await call.write(b"m%d" % i)
        assert await call.read() == b"re:m%d" % i  # each answer before the next message
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_many_concurrent_streams_on_one_connection(
    channel: grpc.aio.Channel, gqp: QueueProxy
) -> None:
    unary = channel.unary_unary(f"{SVC}/Unary")
    got = await asyncio.gather(*(unary(b"%d" % i, timeout=10) for i in range(200)))
    assert got == [b"echo:%d" % i for i in range(200)]
    # Each stream is one request to the queue-proxy's metrics, like an HTTP/1 request.
    from prometheus_client.parser import text_string_to_metric_families

    async with make_client(f"http://127.0.0.1:{gqp.user_metrics_port}") as m:
        text = (await m.get("/metrics")).text
    counts = {
        s.labels.get("http_response_status_code"): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "kn_serving_invocation_duration_seconds_count"
    }
    assert counts == {"200": 200}


async def test_deadline_exceeded_cancels_upstream(
    channel: grpc.aio.Channel, gapp: grpc_app.GrpcApp
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await channel.unary_unary(f"{SVC}/Unary")(b"sleep:30", timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The deadline travelled (grpc-timeout) and the call ended at the app too.
    left = gapp.remaining[-1]
    assert left is not None and 0 < left <= 0.5
    await gapp.wait_for(lambda: gapp.active == 0 and gapp.cancelled == 1)


@pytest.mark.parametrize("cc", ["1"])
async def test_cancel_frees_the_breaker_slot(
    channel: grpc.aio.Channel, gapp: grpc_app.GrpcApp, gqp: QueueProxy
) -> None:
    unary = channel.unary_unary(f"{SVC}/Unary")
    call = unary(b"hold", timeout=20)
    await gapp.wait_for(lambda: gapp.active == 1)
    call.cancel()
    await gapp.wait_for(lambda: gapp.cancelled == 1 and gapp.active == 0)
    # The only slot (CC=1) is free again: the next call runs at once.
    assert await unary(b"next", timeout=5) == b"echo:next"
    async with make_client(f"http://127.0.0.1:{gqp.user_metrics_port}") as m:
        await eventually(lambda: _is_zero(m), what="queue depth back to 0")


async def _is_zero(m: httpx.AsyncClient) -> bool:
    return await _queue_depth(m) == 0


@pytest.mark.parametrize("cc", ["1"])
async def test_cc_enforced_per_stream(
    channel: grpc.aio.Channel, gapp: grpc_app.GrpcApp, gqp: QueueProxy
) -> None:
    unary = channel.unary_unary(f"{SVC}/Unary")
    calls = [unary(b"hold", timeout=20) for _ in range(3)]
    async with make_client(f"http://127.0.0.1:{gqp.user_metrics_port}") as m:

        async def depth3() -> bool:
            return await _queue_depth(m) == 3

        # All three streams reached the queue-proxy; one runs, two wait in the breaker.
        await eventually(depth3, what="3 streams admitted")
        await gapp.wait_for(lambda: gapp.active == 1)
        gapp.release.set()
        assert await asyncio.gather(*calls) == [b"echo:hold"] * 3
    assert gapp.max_active == 1
    assert gapp.calls == 3


def _grpc_probe(port: int, service: str = "") -> str:
    # periodSeconds 1: one attempt per kubelet probe (standard mode), so NOT_SERVING shows at once
    return json.dumps(
        {"grpc": {"port": port, "service": service}, "periodSeconds": 1, "timeoutSeconds": 1}
    )


async def _kubelet_probe(qp: QueueProxy) -> httpx.Response:
    async with make_client(qp.url()) as c:
        return await c.get(
            "/", headers={"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
        )


async def test_grpc_health_readiness(gapp: grpc_app.GrpcApp, start_qp: StartQP) -> None:
    qp = await start_qp({"SERVING_READINESS_PROBE": _grpc_probe(gapp.port)}, user_port=gapp.port)
    r = await _kubelet_probe(qp)
    assert (r.status_code, r.text) == (200, "queue")
    await gapp.set_serving(False)
    assert (await _kubelet_probe(qp)).status_code == 503
    assert "NOT_SERVING" in qp.stderr()
    await gapp.set_serving(True)
    assert (await _kubelet_probe(qp)).status_code == 200


async def test_grpc_health_readiness_unknown_service(
    gapp: grpc_app.GrpcApp, start_qp: StartQP
) -> None:
    qp = await start_qp(
        {"SERVING_READINESS_PROBE": _grpc_probe(gapp.port, "no.such.Service")},
        user_port=gapp.port,
    )
    assert (await _kubelet_probe(qp)).status_code == 503
    assert "NOT_FOUND" in qp.stderr()


async def test_drain_sends_goaway_and_finishes_streams(
    gapp: grpc_app.GrpcApp, start_qp: StartQP
) -> None:
    from h2.config import H2Configuration
    from h2.events import ConnectionTerminated, DataReceived, StreamEnded, TrailersReceived

    qp = await start_qp({"DRAIN_QUIET_PERIOD_SECONDS": "0.5"}, user_port=gapp.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", qp.port)
    from dataplane.h2proxy import GracefulConnection  # h2, minus its GOAWAY = closed

    conn = GracefulConnection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"qp"),
            (b":path", f"{SVC}/Unary".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ],
    )
    conn.send_data(1, b"\x00\x00\x00\x00\x04hold", end_stream=True)
    writer.write(conn.data_to_send())
    await gapp.wait_for(lambda: gapp.active == 1)
    qp.signal(signal.SIGTERM)
    events: list[object] = []
    try:
        async with asyncio.timeout(10):
            while not any(isinstance(e, StreamEnded) for e in events):
                data = await reader.read(65536)
                assert data, f"connection closed early; events {events}"
                for ev in conn.receive_data(data):
                    events.append(ev)
                    if isinstance(ev, ConnectionTerminated):
                        # Told to go away while the stream runs: it must still finish.
                        assert (ev.error_code, ev.last_stream_id) == (0, 1)
                        gapp.release.set()
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    kinds = [type(e) for e in events]
    assert kinds.index(ConnectionTerminated) < kinds.index(DataReceived)
    body = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert body == b"\x00\x00\x00\x00\x09echo:hold"
    trailers = next(dict(e.headers) for e in events if isinstance(e, TrailersReceived))
    assert trailers[b"grpc-status"] == b"0"
    assert await qp.wait_exit(10) == 0


async def test_header_list_limit_refuses_oversized_headers(gqp: QueueProxy) -> None:
    """Over QUEUE_MAX_HEADER_BYTES the request gets 431 (RFC 9113 10.5.1, as Go's server and as
    over HTTP/1.1); the connection goes on: the next request on it is served."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded

    reader, writer = await asyncio.open_connection("127.0.0.1", gqp.port)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    head = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"qp"),
        (b":path", f"/{grpc_app.SERVICE}/Unary".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    message = b"\x00\x00\x00\x00\x02hi"  # one uncompressed gRPC message: b"hi"
    big = (b"x-big", b"v" * 70000)  # QUEUE_MAX_HEADER_BYTES: 65536
    conn.send_headers(1, [*head, big], end_stream=True)
    writer.write(conn.data_to_send())
    events: list[object] = []
    status: dict[int, bytes] = {}
    body: dict[int, bytes] = {}
    ended: set[int] = set()
    try:
        async with asyncio.timeout(10):
            while not {1, 3} <= ended:
                data = await reader.read(65536)
                assert data, events
                for ev in conn.receive_data(data):
                    events.append(ev)
                    assert not isinstance(ev, ConnectionTerminated), events
                    if isinstance(ev, ResponseReceived):
                        status[ev.stream_id] = dict(ev.headers)[b":status"]
                    elif isinstance(ev, DataReceived):
                        body[ev.stream_id] = body.get(ev.stream_id, b"") + ev.data
                        conn.acknowledge_received_data(len(ev.data), ev.stream_id)
                    elif isinstance(ev, StreamEnded):
                        ended.add(ev.stream_id)
                        if ev.stream_id == 1:
                            conn.send_headers(3, head)
                            conn.send_data(3, message, end_stream=True)
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert status[1] == b"431" and body[1] == b"request header fields too large\n"
    assert status[3] == b"200" and body[3] == b"\x00\x00\x00\x00\x07echo:hi"  # same connection


async def _curl(*args: str) -> tuple[str, str]:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    p = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-D", "-", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await p.communicate()
    return out.decode(), err.decode()


@pytest.mark.parametrize("mode", ["--http2", "--http2-prior-knowledge"])
async def test_curl_upgrade_and_prior_knowledge(gqp: QueueProxy, mode: str) -> None:
    # --http2: HTTP/1.1 request with Upgrade: h2c -> 101 -> the answer on stream 1.
    out, err = await _curl(
        mode, "-H", "K-Network-Probe: probe", "-H", "K-Network-Hash: abc", gqp.url("/")
    )
    assert ("101 Switching Protocols" in out) == (mode == "--http2"), out
    assert "HTTP/2 200" in out and "k-network-hash: abc" in out, (out, err)
    # An HTTP/2 request the (gRPC) app refuses: a clean 502 with Go's error text.
    out, err = await _curl(mode, gqp.url("/x"))
    assert "HTTP/2 502" in out and "content-length: " in out, (out, err)
    assert "stream error: stream ID 1; " in out and "received from peer" in out


async def test_upstream_failures_are_502(start_qp: StartQP) -> None:
    (closed,) = free_ports(1)
    qp = await start_qp(user_port=closed)
    async with httpx.AsyncClient(http1=False, http2=True, trust_env=False, timeout=10) as c:
        r = await c.get(qp.url("/"))
    assert r.http_version == "HTTP/2"
    assert r.status_code == 502
    assert r.text == f"dial tcp 127.0.0.1:{closed}: connect: connection refused\n"


async def test_slow_reader_back_pressure_reaches_the_app(
    gapp: grpc_app.GrpcApp, gqp: QueueProxy
) -> None:
    """A client that stops acknowledging data stalls the app, not the queue-proxy's memory."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, StreamEnded

    reader, writer = await asyncio.open_connection("127.0.0.1", gqp.port)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"qp"),
            (b":path", f"{SVC}/Stream".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ],
    )
    conn.send_data(1, b"\x00\x00\x00\x00\x0a300x100000", end_stream=True)  # 30 MB
    writer.write(conn.data_to_send())
    rss0 = gqp.rss_kb()
    got = 0
    ended = False

    async def read(ack: bool) -> None:
        nonlocal got, ended
        data = await reader.read(1 << 20)
        assert data
        for ev in conn.receive_data(data):
            if isinstance(ev, DataReceived):
                got += len(ev.data)
                if ack:
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
            elif isinstance(ev, StreamEnded):
                ended = True
        writer.write(conn.data_to_send())

    try:
        async with asyncio.timeout(30):
            # Without WINDOW_UPDATEs we get the first 64 KiB window, then nothing.
            while got < 65535:
                await read(ack=False)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await read(ack=False)
            assert got == 65535
            assert gapp.active == 1  # the app is blocked in its stream, not finished
            assert gqp.rss_kb() - rss0 < 16 * 1024  # at most the windows are buffered
            conn.acknowledge_received_data(got, 1)  # now read on, acknowledging as we go
            writer.write(conn.data_to_send())
            while not ended:
                await read(ack=True)
    finally:
        writer.close()
    assert got == 300 * (5 + 100000) + sum(len(b"%d" % i) for i in range(300))

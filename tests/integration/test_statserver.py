"""The autoscaler's websocket stat server on loopback (SPEC §2.7, autoscaler side).

Frames are encoded with the official protobuf runtime (the message classes of
tests/unit/test_statpb.py, built from Knative's stat.proto) as well as with dataplane.statpb.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from autoscaler.config import AutoscalerConfig
from autoscaler.multiscaler import Autoscaler
from autoscaler.statserver import StatServer
from dataplane.statpb import Stat, WireStatMessage, encode_wire_stat_messages
from platforms.base import Revision, RevisionKey
from tests.unit.test_statpb import PbWires

WAIT = 5.0  # bound on every wait for the server


class Sink:
    """Collects the batches the server hands on; lets a test await a number of messages."""

    def __init__(self) -> None:
        self.batches: list[list[WireStatMessage]] = []
        self._changed = asyncio.Event()

    def __call__(self, batch: list[WireStatMessage]) -> None:
        self.batches.append(batch)
        self._changed.set()

    @property
    def messages(self) -> list[WireStatMessage]:
        return [m for b in self.batches for m in b]

    async def until(self, n: int) -> list[WireStatMessage]:
        async with asyncio.timeout(WAIT):
            while len(self.messages) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


@pytest.fixture
async def sink() -> Sink:
    return Sink()


@pytest.fixture
async def server(sink: Sink) -> AsyncIterator[tuple[StatServer, str]]:
    srv = StatServer(sink)
    port = await srv.start("127.0.0.1", 0)
    yield srv, f"127.0.0.1:{port}"
    await srv.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as s:
        yield s


def pb_frame(*msgs: tuple[str, str, dict[str, Any] | None]) -> bytes:
    """``WireStatMessages`` serialised by the official protobuf library."""
    wires = PbWires()
    for ns, name, stat in msgs:
        m = wires.messages.add(namespace=ns, name=name)
        if stat is not None:
            m.stat.CopyFrom(m.stat.__class__(**stat))
    return bytes(wires.SerializeToString())


async def test_binary_frames_on_any_path_are_decoded(
    server: tuple[StatServer, str], session: aiohttp.ClientSession, sink: Sink
) -> None:
    _, addr = server
    for i, path in enumerate(["/", "/some/other/path?x=1", ""]):
        async with session.ws_connect(f"ws://{addr}{path}") as ws:
            stat = {"pod_name": "activator-1", "average_concurrent_requests": 1.0 + i}
            await ws.send_bytes(pb_frame(("default", "hello-00001", stat)))
            await sink.until(i + 1)
    assert [(m.namespace, m.name) for m in sink.messages] == [("default", "hello-00001")] * 3
    assert [m.stat.average_concurrent_requests for m in sink.messages if m.stat] == [1.0, 2.0, 3.0]


async def test_batch_keeps_every_message_with_a_stat_and_drops_nil_stats(
    server: tuple[StatServer, str], session: aiohttp.ClientSession, sink: Sink
) -> None:
    _, addr = server
    frame = pb_frame(
        ("default", "a-00001", {"average_concurrent_requests": 3.0, "request_count": 4.0}),
        ("default", "b-00001", None),  # nil stat: skipped, as Knative does
        ("ns2", "c-00001", {"pod_name": "act", "timestamp": 1_700_000_000}),
    )
    async with session.ws_connect(f"ws://{addr}/") as ws:
        await ws.send_bytes(frame)
        msgs = await sink.until(2)
    assert len(sink.batches) == 1
    assert msgs == [
        WireStatMessage(
            "default", "a-00001", Stat(average_concurrent_requests=3.0, request_count=4.0)
        ),
        WireStatMessage("ns2", "c-00001", Stat(pod_name="act", timestamp=1_700_000_000)),
    ]


async def test_frames_encoded_by_our_encoder_are_accepted(
    server: tuple[StatServer, str], session: aiohttp.ClientSession, sink: Sink
) -> None:
    _, addr = server
    batch = [
        WireStatMessage("default", f"r{i}", Stat(average_concurrent_requests=i)) for i in range(50)
    ]
    async with session.ws_connect(f"ws://{addr}/") as ws:
        await ws.send_bytes(encode_wire_stat_messages(batch))
        assert await sink.until(50) == batch


async def test_garbage_and_text_frames_are_dropped_and_the_connection_lives(
    server: tuple[StatServer, str], session: aiohttp.ClientSession, sink: Sink
) -> None:
    _, addr = server
    async with session.ws_connect(f"ws://{addr}/") as ws:
        await ws.send_bytes(b"\xff\xff\xff\xff\xff")  # a varint that never ends
        await ws.send_bytes(b"\x0a\x10short")  # a length past the end
        await ws.send_bytes(b"\x0a\x03\x1a\x01\xff")  # a stat whose body is garbage
        await ws.send_bytes(b"\x0a\x03\x0a\x01\xff")  # a namespace that is not UTF-8
        await ws.send_str("not binary")
        await ws.send_bytes(b"")  # an empty batch
        good = pb_frame(("default", "ok-00001", {"average_concurrent_requests": 1.0}))
        await ws.send_bytes(good)
        msgs = await sink.until(1)
        assert [m.name for m in msgs] == ["ok-00001"]
        assert len(sink.batches) == 1  # nothing from the bad frames
        # Still the same, open connection: ping/pong works and another frame gets through.
        await ws.ping()
        await ws.send_bytes(good)
        await sink.until(2)
        assert not ws.closed


async def test_many_clients_at_once(
    server: tuple[StatServer, str], session: aiohttp.ClientSession, sink: Sink
) -> None:
    _, addr = server
    clients, frames = 100, 5

    async def client(i: int) -> None:
        async with session.ws_connect(f"ws://{addr}/client/{i}") as ws:
            for j in range(frames):
                stat = {"pod_name": f"act-{i}", "request_count": float(j + 1)}
                await ws.send_bytes(pb_frame(("default", f"rev-{i}", stat)))
            await ws.close()

    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(client(i) for i in range(clients)))
    msgs = await sink.until(clients * frames)
    assert len(msgs) == clients * frames
    per_client = {
        f"rev-{i}": [m.stat.request_count for m in msgs if m.name == f"rev-{i}" and m.stat]
        for i in range(clients)
    }
    assert all(v == [1.0, 2.0, 3.0, 4.0, 5.0] for v in per_client.values())


async def test_plain_requests_get_200_for_probes(
    server: tuple[StatServer, str], session: aiohttp.ClientSession
) -> None:
    _, addr = server
    for path in ("/", "/healthz"):
        async with session.get(
            f"http://{addr}{path}", headers={"User-Agent": "kube-probe/1.30"}
        ) as r:
            assert r.status == 200


async def test_close_sends_1012_restarting(sink: Sink, session: aiohttp.ClientSession) -> None:
    srv = StatServer(sink)
    port = await srv.start("127.0.0.1", 0)
    ws = await session.ws_connect(f"ws://127.0.0.1:{port}/")
    await ws.send_bytes(pb_frame(("default", "a", {"request_count": 1.0})))
    await sink.until(1)
    async with asyncio.timeout(WAIT):
        closing = asyncio.ensure_future(srv.close())
        msg = await ws.receive()
        await closing
    assert msg.type == WSMsgType.CLOSE
    assert msg.data == 1012
    assert msg.extra == "Restarting"
    await ws.close()


async def test_stats_reach_the_autoscaler_and_poke_a_revision_at_zero(
    session: aiohttp.ClientSession,
) -> None:
    """An activator's first stat for a revision at zero: the autoscaler scales it to 1 at once."""
    loop = asyncio.get_running_loop()
    scaled: asyncio.Queue[tuple[RevisionKey, int]] = asyncio.Queue()

    async def scale(key: RevisionKey, n: int) -> None:
        scaled.put_nowait((key, n))

    autoscaler = Autoscaler(
        loop=loop,
        scale=scale,
        ready=lambda key: 0,
        config=AutoscalerConfig.from_map({"allow-zero-initial-scale": "true"}),
    )
    rev = Revision(
        "default", "hello-00001", annotations={"autoscaling.knative.dev/initial-scale": "0"}
    )
    autoscaler.revision_updated(rev)
    srv = StatServer(autoscaler.record_wire)
    port = await srv.start("127.0.0.1", 0)
    try:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            # The activator's immediate message for a first request (SPEC §2.7).
            stat = {"pod_name": "act", "average_concurrent_requests": 1.0, "request_count": 1.0}
            await ws.send_bytes(pb_frame(("default", "hello-00001", stat)))
            async with asyncio.timeout(WAIT):
                assert await scaled.get() == (("default", "hello-00001"), 1)
        rs = autoscaler.revisions[("default", "hello-00001")]
        assert rs.replicas == 1
        assert rs.last.stable_value == pytest.approx(1.0)
    finally:
        autoscaler.stop()
        await srv.close()


async def _silent_client(addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket client that completes the handshake and then never reads nor answers."""
    host, port = addr.rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    w.write(
        b"GET / HTTP/1.1\r\nHost: %b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % addr.encode()
    )
    async with asyncio.timeout(WAIT):
        head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return r, w


async def test_close_is_prompt_with_clients_that_never_answer(sink: Sink) -> None:
    """Shutdown must not wait out a close handshake per silent client, one after another."""
    srv = StatServer(sink)
    port = await srv.start("127.0.0.1", 0)
    addr = f"127.0.0.1:{port}"
    clients = [await _silent_client(addr) for _ in range(3)]
    loop = asyncio.get_running_loop()
    t = loop.time()
    async with asyncio.timeout(30):
        await srv.close()
    elapsed = loop.time() - t
    for r, w in clients:
        data = await r.read(64)  # the close frame was sent: 0x88, code 1012
        assert data[:1] == b"\x88" and data[2:4] == (1012).to_bytes(2, "big")
        w.close()
    assert elapsed < 3.0

"""activator.statsink against the autoscaler stub over real loopback sockets (SPEC §2.7).

Waits poll with deadlines; the only fixed sleeps prove an absence (no redial after close, a
connection that answers pings survives several pong timeouts).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from activator.statsink import (
    BACKOFF_FACTOR,
    BACKOFF_INITIAL,
    BACKOFF_JITTER,
    BACKOFF_STEPS,
    StatSink,
    backoff_delays,
)
from dataplane.statpb import Stat, WireStatMessage
from tests.apps import autoscaler_stub
from tests.apps.autoscaler_stub import RunningStub

from .helpers import free_ports

WAIT = 5.0
DIAL_FAILED = "Websocket connection could not be established"
SEND_FAILED = "Error while sending stats"


async def until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.005)


def wsm(ns: str, name: str, avg: float, count: float, pod: str = "activator-0") -> WireStatMessage:
    return WireStatMessage(
        ns, name, Stat(pod, average_concurrent_requests=avg, request_count=count)
    )


class Events:
    """Records the sink's callbacks in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def connect(self) -> None:
        self.log.append("connect")

    def disconnect(self) -> None:
        self.log.append("disconnect")


@pytest.fixture
async def stubs() -> AsyncIterator[list[RunningStub]]:
    """Stubs started by a test, closed at its end."""
    started: list[RunningStub] = []
    yield started
    for s in started:
        await s.close()


@pytest.fixture
async def stub(stubs: list[RunningStub]) -> RunningStub:
    s = await autoscaler_stub.start()
    stubs.append(s)
    return s


SinkFactory = Callable[..., StatSink]


@pytest.fixture
async def sinks() -> AsyncIterator[SinkFactory]:
    """Factory for sinks (callbacks recorded in ``sink.events``), all closed at teardown."""
    made: list[StatSink] = []

    def make(url: str, **kw: Any) -> StatSink:
        ev = Events()
        s = StatSink(url, on_connect=ev.connect, on_disconnect=ev.disconnect, **kw)
        s.events = ev  # type: ignore[attr-defined]
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


def events(sink: StatSink) -> list[str]:
    return sink.events.log  # type: ignore[attr-defined,no-any-return]


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="activator.statsink")


# -- back-off schedule -----------------------------------------------------------------------


class TestBackoffSchedule:
    def test_one_cycle_then_restart(self) -> None:
        draws = random.Random(20240601)
        got = list_of(backoff_delays(random.Random(20240601)), 2 * BACKOFF_STEPS + 1)
        cycle_bases = [0.1 * 1.3**k for k in range(19)]
        expected: list[float] = []
        for _ in range(2):
            expected.append(0.0)  # attempt 1 of a cycle: dial at once
            expected += [b * (1 + 0.5 * draws.random()) for b in cycle_bases]  # attempts 2..20
        expected.append(0.0)  # after attempt 20 the cycle starts over at once
        assert got == pytest.approx(expected, rel=1e-12)

    def test_bounds_and_constants(self) -> None:
        assert (BACKOFF_INITIAL, BACKOFF_FACTOR, BACKOFF_JITTER, BACKOFF_STEPS) == (
            0.1,
            1.3,
            0.5,
            20,
        )
        low = list_of(backoff_delays(FixedRandom(0.0)), 21)
        high = list_of(backoff_delays(FixedRandom(0.999999)), 21)
        assert low[0] == 0.0 and low[20] == 0.0
        assert low[1:4] == pytest.approx([0.1, 0.13, 0.169])
        assert low[19] == pytest.approx(0.1 * 1.3**18)  # ~11.2 s, the longest wait
        assert sum(low) == pytest.approx(0.1 * (1.3**19 - 1) / 0.3)  # ~48.4 s per cycle
        for lo, hi in zip(low[1:20], high[1:20], strict=True):
            assert lo < hi < 1.5 * lo


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def list_of(it: Any, n: int) -> list[float]:
    return [next(it) for _ in range(n)]


async def test_dial_loop_follows_the_schedule(
    sinks: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)  # nothing listens: every dial is refused at once
    slept: list[float] = []
    parked = asyncio.Event()

    async def fake_sleep(d: float) -> None:
        slept.append(d)
        if len(slept) == 2 * (BACKOFF_STEPS - 1) + 1:
            parked.set()
            await asyncio.Event().wait()  # until close() cancels

    sink = sinks(f"ws://127.0.0.1:{port}/", rng=random.Random(7), sleep=fake_sleep)
    await sink.start()
    await asyncio.wait_for(parked.wait(), WAIT)
    expected = [d for d in list_of(backoff_delays(random.Random(7)), 42) if d > 0]
    assert slept == pytest.approx(expected[:39], rel=1e-12)
    # cycle 1: 20 dials, 19 sleeps; cycle 2 likewise; cycle 3: 1 dial, then the parked sleep
    assert len(records(caplog, DIAL_FAILED)) == 41
    assert not sink.connected
    assert events(sink) == []


# -- sending ---------------------------------------------------------------------------------


async def test_frames_arrive_and_decode_one_per_send(stub: RunningStub, sinks: SinkFactory) -> None:
    sink = sinks(stub.url)
    assert not sink.connected
    await sink.start()
    await until(lambda: sink.connected, "connected")
    assert events(sink) == ["connect"]
    batches = [
        [wsm("default", "hello-00001", 1.0, 1.0)],
        [
            wsm("default", "hello-00001", 0.0, 0.0),
            wsm("team-a", "shop-00003", 2.75, 12.0),
            wsm("ns-ü", "rev-✓", 1e-9, 3.0, pod="activator-7d9f-abcde"),
        ],
        [WireStatMessage("default", "no-stat", None)],
    ]
    for b in batches:
        sink.send(b)
    sink.send([])  # nothing to send: no frame
    for b in batches:
        assert await stub.state.next_batch() == b
    last = [wsm("default", "hello-00001", 3.0, 4.0)]
    sink.send(last)
    assert await stub.state.next_batch() == last
    assert stub.state.batches == [*batches, last]
    assert stub.state.connections[0].frames == 4
    assert stub.state.decode_errors == stub.state.non_binary_frames == 0


async def test_sends_while_disconnected_are_dropped_not_queued(
    stubs: list[RunningStub], sinks: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)
    sink = sinks(f"ws://127.0.0.1:{port}/")
    sink.send([wsm("default", "before-start", 1.0, 1.0)])  # not even started
    await sink.start()
    await until(lambda: len(records(caplog, DIAL_FAILED)) >= 2, "two failed dials")
    assert not sink.connected
    sink.send([wsm("default", "down-1", 1.0, 1.0), wsm("default", "down-2", 1.0, 1.0)])
    dropped = records(caplog, SEND_FAILED)
    assert [r.stat_message_count for r in dropped] == [1, 2]  # type: ignore[attr-defined]

    stub = await autoscaler_stub.start(port=port)
    stubs.append(stub)
    await until(lambda: sink.connected, "connected once the server is up")
    up = [wsm("default", "up", 2.0, 5.0)]
    sink.send(up)
    assert await stub.state.next_batch() == up
    assert stub.state.batches == [up]  # nothing sent earlier was kept


# -- connection state and reconnecting --------------------------------------------------------


async def test_connected_follows_the_server(
    stub: RunningStub,
    stubs: list[RunningStub],
    sinks: SinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = sinks(stub.url)
    await sink.start()
    await until(lambda: sink.connected, "connected")
    await stub.close()  # 1012 "Restarting", then nothing listens
    await until(lambda: not sink.connected, "disconnected")
    assert events(sink) == ["connect", "disconnect"]
    (broke,) = [r for r in caplog.records if "broke down" in r.getMessage()]
    assert broke.close_code == 1012  # type: ignore[attr-defined]

    again = await autoscaler_stub.start(port=stub.port)
    stubs.append(again)
    await until(lambda: sink.connected, "reconnected after the restart")
    assert events(sink) == ["connect", "disconnect", "connect"]
    batch = [wsm("default", "hello-00001", 1.0, 1.0)]
    sink.send(batch)
    assert await again.state.next_batch() == batch


async def test_reconnects_after_the_server_closes_the_connection(
    stub: RunningStub, sinks: SinkFactory
) -> None:
    sink = sinks(stub.url)
    await sink.start()
    await until(lambda: sink.connected, "connected")
    await stub.drop_connections()
    # A broken connection is redialled at once, with a fresh back-off cycle.
    await until(lambda: len(stub.state.connections) == 2 and sink.connected, "redialled")
    assert events(sink) == ["connect", "disconnect", "connect"]
    assert not stub.state.connections[0].open
    batch = [wsm("default", "after", 1.0, 2.0)]
    sink.send(batch)
    assert await stub.state.next_batch() == batch
    assert stub.state.connections[1].frames == 1


async def test_refused_upgrades_are_retried(stub: RunningStub, sinks: SinkFactory) -> None:
    stub.state.refuse = True
    sink = sinks(stub.url)
    await sink.start()
    await until(lambda: stub.state.refused >= 2, "two refused dials")
    assert not sink.connected
    stub.state.refuse = False
    await until(lambda: sink.connected, "connected once accepted")
    assert events(sink) == ["connect"]


async def test_handshake_timeout(sinks: SinkFactory) -> None:
    """A server that accepts TCP but never answers the upgrade is abandoned and redialled."""
    loop = asyncio.get_running_loop()
    accepted: list[float] = []
    eofs: list[float] = []

    async def blackhole(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(loop.time())
        await r.read()  # until the client gives up
        eofs.append(loop.time())
        w.close()

    server = await asyncio.start_server(blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = sinks(f"ws://127.0.0.1:{port}/", handshake_timeout=0.3)
        await sink.start()
        await until(lambda: len(accepted) >= 2, "a second dial")
        assert not sink.connected
        assert eofs and 0.28 <= eofs[0] - accepted[0] < 1.0
        assert accepted[1] - accepted[0] >= 0.3 + BACKOFF_INITIAL - 0.02
        await sink.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_pong_timeout_drops_and_redials(stub: RunningStub, sinks: SinkFactory) -> None:
    stub.state.answer_pings = False
    sink = sinks(stub.url, pong_timeout=0.6)  # pings every 0.2 s
    await sink.start()
    await until(lambda: len(stub.state.connections) == 2, "redial after no pongs")
    stub.state.answer_pings = True  # before the new connection's first ping (at +0.2 s)
    first, second = stub.state.connections
    assert first.closed_at is not None
    lifetime = first.closed_at - first.opened_at
    assert 0.55 <= lifetime < 1.5
    assert first.pings >= 2
    await until(lambda: sink.connected, "connected again")
    assert events(sink) == ["connect", "disconnect", "connect"]
    # Pongs now extend the read deadline: the connection outlives several pong timeouts.
    await asyncio.sleep(1.5)
    assert len(stub.state.connections) == 2 and second.open and sink.connected
    assert second.pings >= 5  # one every 0.2 s
    assert events(sink) == ["connect", "disconnect", "connect"]


async def test_close_stops_reconnecting(
    stub: RunningStub, sinks: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sink = sinks(stub.url)
    await sink.start()
    await until(lambda: sink.connected, "connected")
    await sink.close()
    assert not sink.connected
    assert events(sink) == ["connect", "disconnect"]
    await until(lambda: not stub.state.connections[0].open, "server sees the close")
    sink.send([wsm("default", "late", 1.0, 1.0)])  # dropped, no error
    assert records(caplog, SEND_FAILED)
    await asyncio.sleep(0.3)  # long enough for an immediate redial to have happened
    assert len(stub.state.connections) == 1
    assert stub.state.batches == []
    await sink.close()  # idempotent


async def test_close_while_dialling_a_dead_server(sinks: SinkFactory) -> None:
    (port,) = free_ports(1)
    sink = sinks(f"ws://127.0.0.1:{port}/")
    await sink.start()
    await asyncio.wait_for(sink.close(), 1.0)
    assert not sink.connected
    assert events(sink) == []
    with pytest.raises(RuntimeError):
        await sink.start()


async def test_server_pings_are_answered_and_probes_get_200(
    stub: RunningStub, sinks: SinkFactory
) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{stub.port}/healthz") as resp,
    ):
        assert resp.status == 200
    assert stub.state.probes == 1

    sink = sinks(stub.url)
    await sink.start()
    await until(lambda: len(stub.state.active()) == 1, "connected")
    conn = stub.state.active()[0]
    await conn.ws.ping(b"hi")
    await until(lambda: conn.pongs == 1, "the sink's pong")
    batch = [wsm("default", "x", 1.0, 1.0)]
    sink.send(batch)
    assert await stub.state.next_batch() == batch
    assert sink.connected


async def test_callback_errors_do_not_stop_the_sink(
    stub: RunningStub, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("metrics exporter broke")

    sink = StatSink(stub.url, on_connect=boom, on_disconnect=boom)
    try:
        await sink.start()
        await until(lambda: sink.connected, "connected")
        await stub.drop_connections()
        await until(lambda: len(stub.state.connections) == 2 and sink.connected, "redialled")
        assert any(r.getMessage() == "statsink callback failed" for r in caplog.records)
    finally:
        await sink.close()

"""The h2c engine's frames on both sides, in memory: a client and an app played by the ``h2``
library (the reference), our server connection and upstream connection between them.

END_STREAM rides on the last DATA frame of a body (no empty DATA frame after it) in both
directions, also when the body waits for window; a read's frames go out in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import DataFrame, Frame

from dataplane.h2c import H2Hub
from dataplane.h2engine import H2ServerConnection
from dataplane.proxy import HTTPServer, ServerConfig
from dataplane.upstream import UpstreamPool


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def take(self) -> bytes:
        data = b"".join(self.writes)
        self.writes.clear()
        return data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _frames(data: bytes) -> list[Frame]:
    out = []
    pos = 0
    while pos < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        out.append(frame)
        pos += 9 + length
    return out


class Pair:
    """client (h2) -> our H2ServerConnection -> handler proxy -> our H2Upstream -> app (h2)."""

    def __init__(self) -> None:
        self.app_frames: list[Frame] = []
        self.client_frames: list[Frame] = []
        self.app_ended: list[int] = []
        self.app_body = b""
        self.loop = asyncio.new_event_loop()
        pool = UpstreamPool("127.0.0.1", 9, loop=self.loop)
        self.server = HTTPServer(lambda ex: ex.proxy(pool), ServerConfig(), loop=self.loop)
        hub = H2Hub(self.loop)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.initiate_connection()
        self.ct = _Transport()
        self.conn = H2ServerConnection(hub, self.server, b"127.0.0.1", 40000)
        self.conn.start(self.ct, self.client.data_to_send())
        self.up = hub.upstream(pool)
        assert self.up._dial is not None
        self.up._dial.cancel()
        self.ut = _Transport()
        self.up.connection_made(self.ut)
        self.app = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.app.initiate_connection()
        self.settle()

    def settle(self) -> None:
        """Run the loop's ready callbacks and move bytes until nobody has more to say."""
        for _ in range(20):
            self.loop.run_until_complete(asyncio.sleep(0))
            moved = False
            data = self.ut.take()
            if data:
                self.app_events(data)
                moved = True
            out = self.app.data_to_send()
            if out:
                self.up.data_received(out)
                moved = True
            data = self.ct.take()
            if data:
                self.client_frames += _frames(data)
                self.client.receive_data(data)
                moved = True
            out = self.client.data_to_send()
            if out:
                self.conn.data_received(out)
                moved = True
            if not moved:
                return
        raise AssertionError("the connections never settled")

    def app_events(self, data: bytes) -> None:
        self.app_frames += _frames(data)
        for ev in self.app.receive_data(data):
            if isinstance(ev, h2.events.StreamEnded):
                self.app_ended.append(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                self.app.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                self.app_body += ev.data

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def _data_frames(frames: list[Frame], sid: int) -> list[DataFrame]:
    return [f for f in frames if isinstance(f, DataFrame) and f.stream_id == sid]


def test_request_body_end_goes_on_its_last_data_frame(pair: Pair) -> None:
    sid = pair.client.get_next_available_stream_id()
    head = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]
    pair.client.send_headers(sid, head)
    pair.client.send_data(sid, b"hello", end_stream=True)
    pair.conn.data_received(pair.client.data_to_send())
    pair.settle()
    frames = _data_frames(pair.app_frames, 1)
    assert [(f.data, "END_STREAM" in f.flags) for f in frames] == [(b"hello", True)]
    assert pair.app_ended == [1] and pair.app_body == b"hello"


def test_response_body_end_goes_on_its_last_data_frame(pair: Pair) -> None:
    sid = pair.client.get_next_available_stream_id()
    head = [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]
    pair.client.send_headers(sid, head, end_stream=True)
    pair.conn.data_received(pair.client.data_to_send())
    pair.settle()
    assert pair.app_ended == [1]
    pair.app.send_headers(1, [(b":status", b"200")])
    pair.app.send_data(1, b"x" * 1000, end_stream=True)
    pair.settle()
    frames = _data_frames(pair.client_frames, sid)
    assert [(len(f.data), "END_STREAM" in f.flags) for f in frames] == [(1000, True)]
    assert not pair.conn.streams and not pair.up.streams


def test_response_waiting_for_window_ends_on_its_last_frame(pair: Pair) -> None:
    # The client's stream window (100 bytes) takes the body in pieces; the last piece, sent
    # when the client opens its window, carries END_STREAM.
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    pair.conn.data_received(pair.client.data_to_send())
    pair.settle()
    sid = pair.client.get_next_available_stream_id()
    head = [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]
    pair.client.send_headers(sid, head, end_stream=True)
    pair.conn.data_received(pair.client.data_to_send())
    pair.settle()
    pair.app.send_headers(1, [(b":status", b"200")])
    pair.app.send_data(1, b"x" * 250, end_stream=True)
    pair.settle()
    got = [(len(f.data), "END_STREAM" in f.flags) for f in _data_frames(pair.client_frames, sid)]
    assert got == [(100, False)]
    for _ in range(2):
        pair.client.increment_flow_control_window(100, stream_id=sid)
        pair.conn.data_received(pair.client.data_to_send())
        pair.settle()
    got = [(len(f.data), "END_STREAM" in f.flags) for f in _data_frames(pair.client_frames, sid)]
    assert got == [(100, False), (100, False), (50, True)]
    assert not pair.conn.streams


def test_a_reads_frames_go_out_in_one_write(pair: Pair) -> None:
    # Two requests in one read: their upstream HEADERS and DATA go in one write to the app;
    # the acknowledgements to the client are written once, at the end of the read.
    head = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]
    for _ in range(2):
        sid = pair.client.get_next_available_stream_id()
        pair.client.send_headers(sid, head)
        pair.client.send_data(sid, b"y" * 10000)
        pair.client.send_data(sid, b"y" * 10000, end_stream=True)
    pair.conn.data_received(pair.client.data_to_send())
    assert len(pair.ct.writes) <= 1  # the client's WINDOW_UPDATEs: one write, at the end
    pair.loop.run_until_complete(asyncio.sleep(0))
    assert len(pair.ut.writes) == 1
    pair.settle()
    assert pair.app_ended == [1, 3] and len(pair.app_body) == 40000

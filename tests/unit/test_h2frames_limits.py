"""dataplane.h2frames' limits against abusive clients: rapid reset (CVE-2023-44487), over-long
content-length values, self-dependent PRIORITY frames. Frames are built with ``hyperframe``."""

from __future__ import annotations

import pytest
from hyperframe import frame as hf

from dataplane import h2frames as F
from dataplane.h2frames import ErrorCodes, H2Conn, ProtocolError

from .test_h2frames import REQ, headers_frame, parse, rst_codes, started_server


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def clocked_server(clock: Clock) -> H2Conn:
    s = H2Conn(client_side=False, clock=clock)
    s.initiate_connection()
    s.receive_data(F.PREFACE + hf.SettingsFrame(0).serialize())
    s.data_to_send()
    return s


def open_and_reset(sids: range) -> bytes:
    return b"".join(
        headers_frame(sid, REQ, ("END_HEADERS",)) + hf.RstStreamFrame(sid, 8).serialize()
        for sid in sids
    )


def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    clock = Clock()
    s = clocked_server(clock)
    burst = F._RESET_BURST
    evs = s.receive_data(open_and_reset(range(1, 2 * burst, 2)))
    assert sum(isinstance(e, F.StreamReset) for e in evs) == burst  # the burst is allowed
    with pytest.raises(ProtocolError) as e:
        s.receive_data(open_and_reset(range(2 * burst + 1, 2 * burst + 3, 2)))
    assert e.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    frames = parse(s.data_to_send())
    assert isinstance(frames[-1], hf.GoAwayFrame)
    assert frames[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert frames[-1].last_stream_id == 2 * burst + 1
    assert s.receive_data(open_and_reset(range(5001, 5003, 2))) == []  # the connection is dead


def test_the_reset_budget_refills_with_time() -> None:
    clock = Clock()
    s = clocked_server(clock)
    burst = F._RESET_BURST
    s.receive_data(open_and_reset(range(1, 2 * burst, 2)))
    clock.now += 1.0
    refill = int(F._RESET_RATE)
    sid = 2 * burst + 1
    s.receive_data(open_and_reset(range(sid, sid + 2 * refill, 2)))
    sid += 2 * refill
    with pytest.raises(ProtocolError):
        s.receive_data(open_and_reset(range(sid, sid + 2, 2)))


def test_resets_of_finished_streams_and_by_the_server_are_not_counted() -> None:
    clock = Clock()
    s = clocked_server(clock)
    sid = 1
    for _ in range(F._RESET_BURST + 10):
        # A whole exchange, then a late RST_STREAM from the client: nothing was cut short.
        s.receive_data(headers_frame(sid, REQ, ("END_HEADERS", "END_STREAM")))
        s.send_headers(sid, [(b":status", b"200")], end_stream=True)
        assert s.receive_data(hf.RstStreamFrame(sid, 8).serialize()) == []
        sid += 2
    for _ in range(F._RESET_BURST + 10):
        # Streams the server resets (a proxy cancelling) do not count either.
        s.receive_data(headers_frame(sid, REQ, ("END_HEADERS",)))
        s.reset_stream(sid, ErrorCodes.CANCEL)
        sid += 2
    assert not s.dead


def test_the_client_side_counts_no_resets() -> None:
    c = H2Conn(client_side=True, clock=Clock())
    c.initiate_connection()
    c.receive_data(hf.SettingsFrame(0).serialize())
    for i in range(F._RESET_BURST + 10):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, REQ)
        evs = c.receive_data(hf.RstStreamFrame(sid, 7).serialize())
        assert isinstance(evs[0], F.StreamReset), i


@pytest.mark.parametrize(
    "value",
    [b"1" * 5000, b"9" * 4301, b"1" * 20],
)
def test_overlong_content_length_is_a_malformed_request(value: bytes) -> None:
    s, _ = started_server()
    head = headers_frame(1, [*REQ, (b"content-length", value)], ("END_HEADERS",))
    assert s.receive_data(head) == []
    assert rst_codes(s) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    evs = s.receive_data(headers_frame(3, REQ, ("END_HEADERS", "END_STREAM")))
    assert isinstance(evs[0], F.RequestReceived)  # the connection goes on


def test_content_length_of_19_digits_is_read() -> None:
    s, _ = started_server()
    head = headers_frame(1, [*REQ, (b"content-length", b"0" * 18 + b"2")], ("END_HEADERS",))
    body = hf.DataFrame(1, data=b"ok", flags=["END_STREAM"]).serialize()
    evs = s.receive_data(head + body)
    assert [type(e) for e in evs] == [F.RequestReceived, F.DataReceived, F.StreamEnded]


def _priority(sid: int, depends_on: int) -> bytes:
    return hf.PriorityFrame(sid, depends_on=depends_on, stream_weight=16).serialize()


def test_priority_frame_depending_on_its_own_stream_is_a_stream_error() -> None:
    s, _ = started_server()
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS",)))
    evs = s.receive_data(_priority(1, 1))
    assert [type(e) for e in evs] == [F.StreamReset]
    assert evs[0].error_code == ErrorCodes.PROTOCOL_ERROR
    assert rst_codes(s) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    # On an idle stream too; other PRIORITY frames are fine and the connection goes on.
    assert s.receive_data(_priority(5, 5)) == []
    assert rst_codes(s) == [(5, ErrorCodes.PROTOCOL_ERROR)]
    assert s.receive_data(_priority(7, 3)) == []
    assert rst_codes(s) == []
    evs = s.receive_data(headers_frame(9, REQ, ("END_HEADERS", "END_STREAM")))
    assert isinstance(evs[0], F.RequestReceived)


def test_completed_streams_earn_resets_back() -> None:
    # A shared connection (the activator's to a pod) where many clients cancel: most streams
    # complete, so however many are reset, the budget holds. The clock never moves here.
    s = clocked_server(Clock())
    sid = 1
    for i in range(4 * F._RESET_BURST):
        s.receive_data(headers_frame(sid, REQ, ("END_HEADERS", "END_STREAM")))
        if i % 3:
            s.send_headers(sid, [(b":status", b"200")], end_stream=True)
        else:
            assert isinstance(
                s.receive_data(hf.RstStreamFrame(sid, 8).serialize())[0], F.StreamReset
            )
        sid += 2
    assert not s.dead
    # ...but resets alone still run out.
    with pytest.raises(ProtocolError):
        s.receive_data(open_and_reset(range(sid, sid + 2 * F._RESET_BURST + 2, 2)))

"""dataplane.h2frames against the ``h2`` library as the reference peer, and RFC 9113's error
codes for what a broken peer sends (frames built with ``hyperframe``, not with our code)."""

from __future__ import annotations

import pytest
from h2 import events as h2ev
from h2.config import H2Configuration
from h2.connection import H2Connection
from hpack import Encoder as RefEncoder
from hyperframe import frame as hf
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import h2frames as F
from dataplane.h2frames import ErrorCodes, H2Conn, ProtocolError

REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/x")]


def parse(data: bytes) -> list[hf.Frame]:
    out = []
    mv = memoryview(data)
    while mv:
        frame, length = hf.Frame.parse_frame_header(mv[:9])
        frame.parse_body(mv[9 : 9 + length])
        out.append(frame)
        mv = mv[9 + length :]
    return out


def ref_client() -> H2Connection:
    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    return c


def ref_server() -> H2Connection:
    c = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    c.initiate_connection()
    return c


def our_server() -> H2Conn:
    s = H2Conn(client_side=False)
    s.initiate_connection()
    s.update_settings({F.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    return s


def pump(a: H2Connection | H2Conn, b: H2Connection | H2Conn) -> list[object]:
    data = a.data_to_send()
    return list(b.receive_data(data)) if data else []


def started_server() -> tuple[H2Conn, bytes]:
    """Our server after a valid client preface + SETTINGS; returns it and that prefix."""
    s = our_server()
    prefix = F.PREFACE + hf.SettingsFrame(0).serialize()
    assert s.receive_data(prefix)[0].__class__ is F.RemoteSettingsChanged
    s.data_to_send()
    return s, prefix


def headers_frame(sid: int, headers: list[tuple[bytes, bytes]], flags: tuple[str, ...]) -> bytes:
    f = hf.HeadersFrame(sid)
    f.data = RefEncoder().encode(headers)
    f.flags = set(flags)
    return f.serialize()


def goaway_code(s: H2Conn, data: bytes) -> int:
    with pytest.raises(ProtocolError):
        s.receive_data(data)
    frames = parse(s.data_to_send())
    assert isinstance(frames[-1], hf.GoAwayFrame), frames
    return frames[-1].error_code


# -- against h2 ---------------------------------------------------------------------------
def test_request_response_with_trailers_both_ways() -> None:
    client = ref_client()
    server = our_server()
    pump(client, server)
    pump(server, client)
    client.send_headers(1, [*REQ, (b"te", b"trailers"), (b"x-a", b"1")])
    client.send_data(1, b"hello")
    client.send_headers(1, [(b"grpc-timeout", b"1S")], end_stream=True)
    evs = pump(client, server)
    kinds = [type(e) for e in evs]
    assert kinds == [F.RequestReceived, F.DataReceived, F.TrailersReceived, F.StreamEnded]
    assert evs[0].headers == [*REQ, (b"te", b"trailers"), (b"x-a", b"1")]
    assert evs[1].data == b"hello"
    assert evs[2].headers == [(b"grpc-timeout", b"1S")]
    server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(1, b"world")
    server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    got = pump(server, client)
    kinds2 = [type(e) for e in got]
    assert h2ev.ResponseReceived in kinds2 and h2ev.TrailersReceived in kinds2, got
    data = b"".join(e.data for e in got if isinstance(e, h2ev.DataReceived))
    assert data == b"world"
    assert 1 not in server.streams  # closed both ways


def test_our_client_against_h2_server_past_the_windows() -> None:
    """A 300 KB request and response through default (64 KiB) windows, acknowledged as read."""
    ours = H2Conn(client_side=True)
    ours.initiate_connection()
    ref = ref_server()
    pump(ours, ref)
    pump(ref, ours)
    pump(ours, ref)
    sid = ours.get_next_available_stream_id()
    ours.send_headers(sid, REQ)
    body = bytes(range(256)) * 1200
    sent = 0
    received = bytearray()
    reply = b"r" * 300_000
    replied = 0
    ended = False
    for _ in range(1000):
        while sent < len(body):
            n = min(ours.local_flow_control_window(sid), ours.max_outbound_frame_size)
            n = min(n, len(body) - sent)
            if n <= 0:
                break
            ours.send_data(sid, body[sent : sent + n])
            sent += n
        if sent == len(body) and sid in ours.streams and not ours.streams[sid].local_closed:
            ours.end_stream(sid)
        for ev in pump(ours, ref):
            if isinstance(ev, h2ev.DataReceived):
                received += ev.data
                ref.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if isinstance(ev, h2ev.RequestReceived):
                ref.send_headers(sid, [(b":status", b"200")])
        while replied < len(reply):
            n = min(ref.local_flow_control_window(sid), ref.max_outbound_frame_size)
            n = min(n, len(reply) - replied)
            if n <= 0:
                break
            ref.send_data(sid, reply[replied : replied + n], end_stream=replied + n == len(reply))
            replied += n
        for ev in pump(ref, ours):
            if isinstance(ev, F.DataReceived):
                ours.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if isinstance(ev, F.StreamEnded):
                ended = True
        if ended and bytes(received) == body:
            break
    assert bytes(received) == body
    assert ended and replied == len(reply)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from([b"x-a", b"user-agent", b"x-request-id", b"cookie"]),
                    st.binary(max_size=40).map(lambda b: b.hex().encode()),
                ),
                max_size=6,
            ),
            st.lists(st.binary(min_size=1, max_size=3000), max_size=4),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_h2_client_requests_arrive_intact(reqs: list[tuple[list, list, bool]]) -> None:
    """Whatever h2 sends (headers, body chunks, trailers), our server yields the same."""
    client = ref_client()
    server = our_server()
    pump(client, server)
    pump(server, client)
    pump(client, server)
    sid = 1
    for hdrs, chunks, trailers in reqs:
        client.send_headers(sid, REQ + hdrs, end_stream=not chunks and not trailers)
        for i, chunk in enumerate(chunks):
            client.send_data(sid, chunk, end_stream=i == len(chunks) - 1 and not trailers)
        if trailers:
            client.send_headers(sid, [(b"x-t", b"1")], end_stream=True)
        evs = pump(client, server)
        assert isinstance(evs[0], F.RequestReceived)
        assert evs[0].headers == REQ + hdrs
        body = b"".join(e.data for e in evs if isinstance(e, F.DataReceived))
        assert body == b"".join(chunks)
        assert isinstance(evs[-1], F.StreamEnded)
        for e in evs:
            if isinstance(e, F.DataReceived):
                server.acknowledge_received_data(e.flow_controlled_length, sid)
        server.send_headers(sid, [(b":status", b"204")], end_stream=True)
        got = pump(server, client)
        assert any(isinstance(e, h2ev.ResponseReceived) for e in got)
        sid += 2


def test_interim_responses_are_events_before_the_response() -> None:
    ours = H2Conn(client_side=True)
    ours.initiate_connection()
    ref = ref_server()
    pump(ours, ref)
    pump(ref, ours)
    sid = ours.get_next_available_stream_id()
    ours.send_headers(sid, REQ, end_stream=True)
    pump(ours, ref)
    ref.send_headers(sid, [(b":status", b"103"), (b"link", b"</s.css>")])
    ref.send_headers(sid, [(b":status", b"100")])
    ref.send_headers(sid, [(b":status", b"200")], end_stream=True)
    evs = [e for e in pump(ref, ours) if e.stream_id == sid]
    assert [type(e).__name__ for e in evs] == [
        "InformationalReceived",
        "InformationalReceived",
        "ResponseReceived",
        "StreamEnded",
    ]
    assert [e.headers for e in evs[:2]] == [  # type: ignore[attr-defined]
        [(b":status", b"103"), (b"link", b"</s.css>")],
        [(b":status", b"100")],
    ]


def test_large_header_block_goes_in_continuation_frames() -> None:
    client = ref_client()
    server = our_server()
    pump(client, server)
    pump(server, client)
    pump(client, server)
    client.send_headers(1, REQ, end_stream=True)
    pump(client, server)
    big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(40)]
    server.send_headers(1, [(b":status", b"200"), *big], end_stream=True)
    out = server.data_to_send()
    kinds = [type(f) for f in parse(out)]
    assert hf.ContinuationFrame in kinds
    got = client.receive_data(out)
    resp = next(e for e in got if isinstance(e, h2ev.ResponseReceived))
    assert list(resp.headers)[1:] == big


def test_upgrade_settings_and_stream_one() -> None:
    import base64

    payload = hf.SettingsFrame(0, settings={4: 1000}).serialize_body()
    s = H2Conn(client_side=False)
    s.initiate_upgrade_connection(base64.urlsafe_b64encode(payload).rstrip(b"="))
    assert s.streams[1].send_window == 1000 and s.streams[1].remote_closed
    out = parse(s.data_to_send())
    assert [type(f) for f in out] == [hf.SettingsFrame] and "ACK" not in out[0].flags
    s.receive_data(F.PREFACE + hf.SettingsFrame(0).serialize())
    s.send_headers(1, [(b":status", b"200")], end_stream=True)
    assert 1 not in s.streams
    with pytest.raises(F.H2Error):
        H2Conn(client_side=False).initiate_upgrade_connection(b"!!not base64")


# -- a broken peer: connection errors (GOAWAY) -------------------------------------------
def test_bad_preface() -> None:
    assert goaway_code(our_server(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == 1


def test_preface_in_pieces_is_fine() -> None:
    s = our_server()
    data = F.PREFACE + hf.SettingsFrame(0).serialize()
    for i in range(len(data)):
        s.receive_data(data[i : i + 1])
    assert s.settings_seen


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (hf.PingFrame(0, opaque_data=b"12345678").serialize(), ErrorCodes.PROTOCOL_ERROR),
        (hf.DataFrame(1, data=b"x").serialize(), ErrorCodes.PROTOCOL_ERROR),
    ],
)
def test_first_frame_must_be_settings(frame: bytes, code: int) -> None:
    assert goaway_code(our_server(), F.PREFACE + frame) == code


def _raw(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_raw(0, 0, 1, b"x" * 16385), ErrorCodes.FRAME_SIZE_ERROR),  # above MAX_FRAME_SIZE
        (_raw(6, 0, 0, b"1234567"), ErrorCodes.FRAME_SIZE_ERROR),  # PING of 7 bytes
        (_raw(4, 0, 0, b"\x00\x04\x00\x00"), ErrorCodes.FRAME_SIZE_ERROR),  # SETTINGS of 4
        (_raw(4, 1, 0, b"\x00" * 6), ErrorCodes.FRAME_SIZE_ERROR),  # ACK with a payload
        (_raw(4, 0, 1, b""), ErrorCodes.PROTOCOL_ERROR),  # SETTINGS on a stream
        (_raw(4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), ErrorCodes.FLOW_CONTROL_ERROR),
        (_raw(4, 0, 0, b"\x00\x05\x00\x00\x10\x00"), ErrorCodes.PROTOCOL_ERROR),  # frame 4096
        (_raw(4, 0, 0, b"\x00\x02\x00\x00\x00\x02"), ErrorCodes.PROTOCOL_ERROR),  # ENABLE_PUSH 2
        (_raw(0, 0, 1, b"x"), ErrorCodes.PROTOCOL_ERROR),  # DATA on an idle stream
        (_raw(0, 0, 0, b"x"), ErrorCodes.PROTOCOL_ERROR),  # DATA on stream 0
        (_raw(3, 0, 1, b"\x00\x00\x00\x08"), ErrorCodes.PROTOCOL_ERROR),  # RST idle stream
        (_raw(3, 0, 1, b"\x00\x00\x08"), ErrorCodes.FRAME_SIZE_ERROR),  # RST of 3 bytes
        (_raw(8, 0, 0, b"\x00\x00\x00\x00"), ErrorCodes.PROTOCOL_ERROR),  # WINDOW_UPDATE 0
        (_raw(8, 0, 0, b"\x7f\xff\xff\xff"), ErrorCodes.FLOW_CONTROL_ERROR),  # overflow
        (_raw(8, 0, 3, b"\x00\x00\x00\x01"), ErrorCodes.PROTOCOL_ERROR),  # idle stream
        (_raw(9, 4, 1, b"\x82"), ErrorCodes.PROTOCOL_ERROR),  # CONTINUATION alone
        (_raw(1, 4, 2, b"\x82"), ErrorCodes.PROTOCOL_ERROR),  # even stream id from a client
        (_raw(1, 4, 1, b"\x80"), ErrorCodes.COMPRESSION_ERROR),  # HPACK index 0
        (_raw(5, 4, 1, b"\x00\x00\x00\x02\x82"), ErrorCodes.PROTOCOL_ERROR),  # PUSH_PROMISE
        (_raw(7, 0, 1, b"\x00" * 8), ErrorCodes.PROTOCOL_ERROR),  # GOAWAY on a stream
    ],
)
def test_connection_errors(data: bytes, code: int) -> None:
    s, _ = started_server()
    assert goaway_code(s, data) == code
    assert s.receive_data(b"anything") == []  # nothing more is read


def test_header_block_interrupted() -> None:
    s, _ = started_server()
    first = headers_frame(1, REQ, ())  # no END_HEADERS
    assert goaway_code(s, first + hf.PingFrame(0, opaque_data=b"12345678").serialize()) == 1


def test_closed_stream_id_reused() -> None:
    s, _ = started_server()
    s.receive_data(headers_frame(3, REQ, ("END_HEADERS", "END_STREAM")))
    assert goaway_code(s, headers_frame(1, REQ, ("END_HEADERS", "END_STREAM"))) == 5


def test_connection_window_exceeded() -> None:
    s, _ = started_server()
    s.update_settings({F.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    data = headers_frame(1, REQ, ("END_HEADERS",))
    for _ in range(4):
        data += hf.DataFrame(1, data=b"x" * 16384).serialize()
    assert goaway_code(s, data) == ErrorCodes.FLOW_CONTROL_ERROR


def test_continuation_flood_is_enhance_your_calm() -> None:
    s, _ = started_server()
    data = headers_frame(1, REQ, ()) + _raw(9, 0, 1, b"") * 300
    assert goaway_code(s, data) == ErrorCodes.ENHANCE_YOUR_CALM


def test_oversized_request_head_is_that_request_s_problem() -> None:
    # RFC 9113 10.5.1, as Go's server: the request gets 431 (the engine answers it); the
    # connection and its other streams go on.
    s, _ = started_server()
    s.decoder.max_header_list_size = 200
    big = headers_frame(1, [*REQ, (b"x-big", b"v" * 300)], ("END_HEADERS", "END_STREAM"))
    (ev, *_rest) = s.receive_data(big)
    assert isinstance(ev, F.RequestReceived) and ev.too_large
    assert dict(ev.headers)[b":path"] == dict(REQ)[b":path"]  # the fields before the limit
    assert b"x-big" not in dict(ev.headers)
    ok = s.receive_data(headers_frame(3, REQ, ("END_HEADERS", "END_STREAM")))
    assert isinstance(ok[0], F.RequestReceived) and not ok[0].too_large


def test_oversized_trailers_are_enhance_your_calm() -> None:
    s, _ = started_server()
    s.decoder.max_header_list_size = 200
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS",)))
    big = headers_frame(1, [(b"x-big", b"v" * 300)], ("END_HEADERS", "END_STREAM"))
    assert goaway_code(s, big) == ErrorCodes.ENHANCE_YOUR_CALM


# -- stream errors (RST_STREAM) ------------------------------------------------------------
def rst_codes(s: H2Conn) -> list[tuple[int, int]]:
    return [(f.stream_id, f.error_code) for f in parse(s.data_to_send()) if f.type == 3]


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],  # no :path
        [*REQ, (b"X-Upper", b"1")],
        [*REQ, (b"connection", b"close")],
        [*REQ, (b"te", b"gzip")],
        [(b"x-a", b"1"), *REQ],  # pseudo-header after a regular one
        [*REQ, (b":path", b"/y")],  # repeated pseudo-header
        [*REQ, (b":status", b"200")],  # a response pseudo-header
        [*REQ, (b"x-a", b" padded")],
        [*REQ, (b"content-length", b"abc")],
        [*REQ, (b"content-length", b"5")],  # with END_STREAM and no body
    ],
)
def test_malformed_requests_are_reset_unseen(headers: list[tuple[bytes, bytes]]) -> None:
    s, _ = started_server()
    evs = s.receive_data(headers_frame(1, headers, ("END_HEADERS", "END_STREAM")))
    assert evs == []
    assert rst_codes(s) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    # The connection goes on: the next stream is served.
    evs = s.receive_data(headers_frame(3, REQ, ("END_HEADERS", "END_STREAM")))
    assert isinstance(evs[0], F.RequestReceived)


def test_content_length_mismatch_resets_a_seen_stream() -> None:
    s, _ = started_server()
    head = headers_frame(1, [*REQ, (b"content-length", b"3")], ("END_HEADERS",))
    body = hf.DataFrame(1, data=b"abcd", flags=["END_STREAM"]).serialize()
    evs = s.receive_data(head + body)
    assert [type(e) for e in evs] == [F.RequestReceived, F.StreamReset]
    assert evs[1].error_code == ErrorCodes.PROTOCOL_ERROR
    assert rst_codes(s) == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_data_after_end_stream_is_stream_closed() -> None:
    s, _ = started_server()
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS", "END_STREAM")))
    evs = s.receive_data(hf.DataFrame(1, data=b"x").serialize())
    assert [type(e) for e in evs] == [F.StreamReset]
    assert rst_codes(s) == [(1, ErrorCodes.STREAM_CLOSED)]


def test_trailers_must_end_the_stream() -> None:
    s, _ = started_server()
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS",)))
    enc = RefEncoder()
    enc.encode(REQ)  # keep in step with the first block's table
    f = hf.HeadersFrame(1)
    f.data = RefEncoder().encode([(b"x-t", b"1")])
    f.flags = {"END_HEADERS"}
    evs = s.receive_data(f.serialize())
    assert [type(e) for e in evs] == [F.StreamReset]
    assert rst_codes(s) == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_too_many_streams_are_refused() -> None:
    s, _ = started_server()
    s.update_settings({F.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    s.data_to_send()
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS",)))
    evs = s.receive_data(headers_frame(3, REQ, ("END_HEADERS",)))
    assert evs == []
    assert rst_codes(s) == [(3, ErrorCodes.REFUSED_STREAM)]


def test_window_update_zero_on_a_stream_resets_it() -> None:
    s, _ = started_server()
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS",)))
    evs = s.receive_data(_raw(8, 0, 1, b"\x00\x00\x00\x00"))
    assert [type(e) for e in evs] == [F.StreamReset]
    assert rst_codes(s) == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_frames_after_our_reset_are_ignored() -> None:
    s, _ = started_server()
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS",)))
    s.reset_stream(1, ErrorCodes.CANCEL)
    s.data_to_send()
    evs = s.receive_data(hf.DataFrame(1, data=b"late", flags=["END_STREAM"]).serialize())
    assert evs == []
    assert rst_codes(s) == []
    with pytest.raises(F.StreamClosedError):
        s.send_data(1, b"x")


def test_ping_is_answered_and_goaway_reported() -> None:
    s, _ = started_server()
    s.receive_data(hf.PingFrame(0, opaque_data=b"abcdefgh").serialize())
    (pong,) = parse(s.data_to_send())
    assert isinstance(pong, hf.PingFrame) and "ACK" in pong.flags
    assert pong.opaque_data == b"abcdefgh"
    g = hf.GoAwayFrame(0, last_stream_id=7, error_code=0, additional_data=b"bye")
    (ev,) = s.receive_data(g.serialize())
    assert isinstance(ev, F.ConnectionTerminated)
    assert (ev.error_code, ev.last_stream_id, ev.additional_data) == (0, 7, b"bye")


def test_settings_window_change_applies_to_open_streams() -> None:
    s, _ = started_server()
    s.receive_data(headers_frame(1, REQ, ("END_HEADERS", "END_STREAM")))
    assert s.local_flow_control_window(1) == 65535
    evs = s.receive_data(hf.SettingsFrame(0, settings={4: 100_000}).serialize())
    assert any(isinstance(e, F.WindowUpdated) for e in evs)
    assert s.streams[1].send_window == 100_000
    assert [type(f) for f in parse(s.data_to_send())] == [hf.SettingsFrame]  # the ACK


def test_code_names() -> None:
    assert F.code_name(8) == "CANCEL"
    assert F.code_name(0x99) == "unknown error code 0x99"


_frame_bytes = st.builds(
    _raw,
    st.integers(0, 10),
    st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0x2D]),
    st.sampled_from([0, 1, 2, 3, 5]),
    st.binary(max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_frame_bytes, max_size=8), st.sampled_from([False, True]))
def test_any_frames_give_events_or_a_protocol_error(frames: list[bytes], client: bool) -> None:
    """Arbitrary frames never raise anything but ProtocolError, and the stream bookkeeping
    stays consistent (no open stream above the highest id seen)."""
    if client:
        s = H2Conn(client_side=True)
        s.initiate_connection()
        s.send_headers(1, REQ)
        s.send_headers(3, REQ, end_stream=True)
        s.data_to_send()
        data = hf.SettingsFrame(0).serialize()
    else:
        s, data = started_server()
        data = b""
    try:
        for f in [data, *frames]:
            for ev in s.receive_data(f):
                assert isinstance(ev, F.Event)
    except ProtocolError as e:
        assert e.error_code in range(14)
        assert isinstance(parse(s.data_to_send())[-1], hf.GoAwayFrame)
    assert all(sid <= max(s.highest_in, s.highest_out) for sid in s.streams)


def test_padding_and_priority_fields_are_skipped() -> None:
    s, _ = started_server()
    f = hf.HeadersFrame(1)
    f.data = RefEncoder().encode([*REQ, (b"content-length", b"2")])
    f.flags = {"END_HEADERS", "PADDED", "PRIORITY"}
    f.pad_length = 7
    f.depends_on = 0
    d = hf.DataFrame(1, data=b"ok", flags=["END_STREAM", "PADDED"])
    d.pad_length = 10
    evs = s.receive_data(f.serialize() + d.serialize())
    assert [type(e) for e in evs] == [F.RequestReceived, F.DataReceived, F.StreamEnded]
    assert (evs[1].data, evs[1].flow_controlled_length) == (b"ok", 13)


def test_self_dependent_stream_is_reset_after_its_continuation() -> None:
    s, _ = started_server()
    block = RefEncoder().encode(REQ)
    f = hf.HeadersFrame(1, data=block[:3], flags=["PRIORITY", "END_STREAM"])
    f.depends_on = 1
    c = hf.ContinuationFrame(1, data=block[3:], flags=["END_HEADERS"])
    assert s.receive_data(f.serialize() + c.serialize()) == []
    assert rst_codes(s) == [(1, ErrorCodes.PROTOCOL_ERROR)]

"""Abusive HTTP/2 clients against a real queue-proxy (raw frames from ``hyperframe``/``hpack``):
rapid reset (CVE-2023-44487) gets GOAWAY ENHANCE_YOUR_CALM; an over-long content-length is a
malformed request (RST_STREAM PROTOCOL_ERROR), not a dropped connection."""

from __future__ import annotations

from hpack import Encoder
from hyperframe import frame as hf

from .helpers import QueueProxy
from .test_h2c_protocol_errors import REQ, exchange, gapp, headers, qp

__all__ = ["gapp", "qp"]  # (fixtures)


async def test_rapid_reset_gets_goaway_enhance_your_calm(qp: QueueProxy) -> None:
    enc = Encoder()
    # Far more streams opened and reset at once than the budget (1000 at once, 200 a second)
    # allows, however slowly the queue-proxy gets through them.
    data = b"".join(
        headers(sid, enc, REQ, end=False) + hf.RstStreamFrame(sid, error_code=8).serialize()
        for sid in range(1, 8000, 2)
    )
    frames, closed = await exchange(qp.port, data)
    goaways = [f for f in frames if isinstance(f, hf.GoAwayFrame)]
    assert goaways and goaways[-1].error_code == 11, frames[-3:]  # ENHANCE_YOUR_CALM
    assert 2000 < goaways[-1].last_stream_id < 8000
    assert closed


async def test_overlong_content_length_is_a_stream_error(qp: QueueProxy) -> None:
    enc = Encoder()
    bad = headers(1, enc, [*REQ, (b"content-length", b"1" * 5000)], end=False)
    good = headers(3, enc, REQ, end=False)
    body = hf.DataFrame(3, data=b"\x00\x00\x00\x00\x02hi", flags=["END_STREAM"]).serialize()
    frames, closed = await exchange(qp.port, bad + good + body, until=hf.HeadersFrame, sid=3)
    assert not closed
    resets = [(f.stream_id, f.error_code) for f in frames if isinstance(f, hf.RstStreamFrame)]
    assert resets == [(1, 1)]  # PROTOCOL_ERROR, stream 1 only
    assert not any(isinstance(f, hf.GoAwayFrame) for f in frames)
    assert "Traceback" not in qp.stderr()

"""A malformed ``:status`` from an h2c app fails that stream with a 502, not the pod's shared
upstream connection (a ValueError used to escape the upstream's data_received)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded

from .conftest import StartQP
from .test_h2c_mapping import Upstream, _request

pytestmark = pytest.mark.timeout(60)


class BadStatusUpstream(Upstream):
    def _answer(self, conn: H2Connection, sid: int, path: bytes) -> None:
        conn.config.validate_outbound_headers = False  # (h2 would refuse to send these)
        if path == b"/bad":
            conn.send_headers(sid, [(b":status", b"2x0")], end_stream=True)
        elif path == b"/nostatus":
            conn.send_headers(sid, [(b"x-no", b"status")], end_stream=True)
        else:
            super()._answer(conn, sid, path)


@pytest.fixture
async def bad_upstream() -> AsyncIterator[BadStatusUpstream]:
    u = BadStatusUpstream()
    await u.start()
    yield u
    await u.close()


@pytest.mark.parametrize(
    ("path", "what"), [(b"/bad", "malformed non-numeric"), (b"/nostatus", "missing")]
)
async def test_malformed_status_is_a_502_for_that_stream_only(
    bad_upstream: BadStatusUpstream, start_qp: StartQP, path: bytes, what: str
) -> None:
    qp = await start_qp(user_port=bad_upstream.port)
    ok = await _request(qp, b"/ok")  # the upstream connection is up
    assert b"".join(e.data for e in ok if isinstance(e, DataReceived)) == b"ok"
    events = await _request(qp, path)
    heads = [e for e in events if isinstance(e, ResponseReceived)]
    assert heads and dict(heads[0].headers)[b":status"] == b"502", events
    body = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert body.decode() == f"malformed response from server: {what} status pseudo header\n"
    assert isinstance(events[-1], StreamEnded)
    ok = await _request(qp, b"/ok")
    assert b"".join(e.data for e in ok if isinstance(e, DataReceived)) == b"ok"
    assert bad_upstream.connections == 1  # the same upstream connection served all three
    assert "Traceback" not in qp.stderr()

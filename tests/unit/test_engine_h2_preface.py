"""Engine: the HTTP/2 preface is recognised however its bytes are split across reads.

Its first 18 bytes (``PRI * HTTP/2.0\\r\\n\\r\\n``) parse as a complete HTTP/1 head, so a connection
whose first read stops there must wait for the rest rather than answer it as a request.
"""

from __future__ import annotations

import pytest

from dataplane.proxy import ServerConnection

from .enginekit import Kit, request

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame


def _kit_with_h2c() -> tuple[Kit, list[bytes]]:
    kit = Kit(defer=True)
    taken: list[bytes] = []

    class H2Side:  # what the transport delivers to once the connection is handed over
        active = None  # no HTTP/1 exchange (the kit's checks look)

        def data_received(self, data: bytes) -> None:
            taken[0] += data

    def handover(conn: ServerConnection, data: bytes) -> bool:
        assert not taken, "handed over twice"
        taken.append(data)
        conn.hand_over(H2Side())  # type: ignore[arg-type]
        assert conn not in conn.server.connections and conn.closed
        return True

    kit.server.h2c = handover
    return kit, taken


@pytest.mark.parametrize("cut", [1, 5, 16, 18, 20, 23])
def test_preface_split_in_two_reads_is_handed_to_h2c(cut: int) -> None:
    kit, taken = _kit_with_h2c()
    c = kit.client()
    data = H2_PREFACE + SETTINGS
    c.feed(data[:cut])
    assert taken == [] and c.take() == b""  # nothing answered yet: maybe HTTP/2
    c.feed(data[cut:])
    assert taken == [data]
    assert c.take() == b""  # no HTTP/1 answer (505) was written
    assert kit.exchanges == []


def test_preface_byte_by_byte_is_handed_to_h2c() -> None:
    kit, taken = _kit_with_h2c()
    c = kit.client()
    c.feed(H2_PREFACE + SETTINGS, step=1)
    assert taken == [H2_PREFACE + SETTINGS] and c.take() == b""


def test_http1_request_is_not_held_by_the_sniff() -> None:
    kit, taken = _kit_with_h2c()
    c = kit.client()
    c.feed(request(b"/x"))
    assert taken == [] and len(kit.exchanges) == 1


def test_the_retired_connection_counts_nothing_and_the_new_protocol_reads() -> None:
    kit, taken = _kit_with_h2c()
    c = kit.client()
    c.feed(H2_PREFACE)
    assert kit.server.inflight == 0 and kit.server.connections == set()
    c.feed(SETTINGS)  # delivered to the new protocol, not parsed as HTTP/1
    assert taken == [H2_PREFACE + SETTINGS] and c.take() == b""


def test_p_then_not_the_preface_is_an_http1_request() -> None:
    kit, taken = _kit_with_h2c()
    c = kit.client()
    req = request(b"/p", b"Content-Length: 0", method=b"POST")
    c.feed(req[:1])  # "P": could be the preface
    assert kit.exchanges == []
    c.feed(req[1:])
    assert taken == [] and len(kit.exchanges) == 1

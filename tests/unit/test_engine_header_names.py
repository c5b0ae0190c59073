"""Engine: header names are classified whatever their case, from a bounded memory of the
spellings seen (ServerConfig.raw_actions for requests, the upstream side's for responses)."""

from __future__ import annotations

from dataplane import h1reader
from dataplane.http1 import RAW_NAMES_MAX
from dataplane.proxy import ServerConfig

from .enginekit import Kit, request, response


def test_spellings_of_one_header_are_one_header() -> None:
    k = Kit(config=ServerConfig(index_headers=[b"x-tenant"]))
    up = k.idle_upstream()
    c = k.client()
    for spelling in (b"X-Tenant", b"x-tenant", b"X-TENANT"):
        c.feed(request(b"/", spelling + b": a"))
        ex = k.exchanges[-1]
        assert ex.header(b"x-tenant") == b"a"
        assert k.server.config.raw_actions[spelling][0] == b"x-tenant"
        up.take()
        up.feed(response(b"200 OK", b"Content-Length: 0"))
        c.take()
    # Two Host lines in different spellings are still two Host lines.
    c.feed(request(b"/", b"HOST: b.example"))
    assert c.take().startswith(b"HTTP/1.1 400 Bad Request")


def test_a_client_inventing_names_cannot_grow_the_memory() -> None:
    k = Kit()
    k.idle_upstream()
    for batch in range(12):  # 12 x 60 distinct names (under the per-request header limit)
        c = k.client()
        lines = [b"X-Made-Up-%d-%d: v" % (batch, i) for i in range(60)]
        c.feed(request(b"/", *lines))
        ex = k.exchanges[-1]
        assert ex.find_header(b"x-made-up-%d-59" % batch) == b"v"  # forwarded as received
    assert len(k.server.config.raw_actions) == RAW_NAMES_MAX


def test_response_header_spellings_are_classified_and_bounded() -> None:
    k = Kit()
    up = k.idle_upstream()
    c = k.client()
    c.feed(request())
    up.take()
    up.feed(response(b"200 OK", b"CONTENT-LENGTH: 2", b"X-Odd: 1") + b"ok")
    got = c.take()
    assert b"Content-Length: 2\r\n" in got and got.endswith(b"\r\n\r\nok")
    assert h1reader._RESP_RAW[b"CONTENT-LENGTH"] >= 0
    assert h1reader._RESP_RAW[b"X-Odd"] == -1
    assert len(h1reader._RESP_RAW) <= RAW_NAMES_MAX

"""The request model: HTTP/1.1's exchange and HTTP/2's stream are peers behind one handle."""

from __future__ import annotations

import asyncio

from dataplane.h2stream import H2Stream
from dataplane.handle import RequestHandle
from dataplane.proxy import Exchange, HTTPServer, ServerConfig, ServerConnection
from dataplane.request import Request


def _server() -> HTTPServer:
    return HTTPServer(lambda ex: None, ServerConfig(), loop=asyncio.new_event_loop())


def test_the_stream_inherits_no_http1_wire_state() -> None:
    assert not issubclass(H2Stream, Exchange)
    assert issubclass(H2Stream, RequestHandle) and issubclass(Exchange, RequestHandle)
    server = _server()
    st = H2Stream(server, b"10.0.0.1", 5000, link=None, sid=1)
    for http1_only in ("keep_alive", "body_buf", "conn", "closing", "resp_mode", "out"):
        assert not hasattr(st, http1_only), http1_only
    server.loop.close()


def test_both_answer_the_same_request_view() -> None:
    server = _server()
    conn = ServerConnection(server)
    conn.peer, conn.peer_port = b"10.0.0.2", 6000
    reqs: list[Request] = [
        Exchange(conn),
        H2Stream(server, b"10.0.0.2", 6000, link=None, sid=3),
    ]
    for r in reqs:
        r.target = b"/a/b?q=1"
        r.hdr[b"user-agent"] = b"curl"
        r.hdr_out += (b"X-A", b": ", b"1", b"\r\n")
        assert r.path == b"/a/b"
        assert r.peer == b"10.0.0.2" and r.peer_port == 6000
        assert r.header(b"user-agent") == b"curl"
        assert r.find_header(b"x-a") == b"1"
        r.drop_header(b"x-a")
        assert r.find_header(b"x-a") is None and not r.has_body
    server.loop.close()

"""Unit tests for dataplane.http1: status lines, dates, Connection tokens, Go http.Error headers."""

from __future__ import annotations

import email.utils
import time
import types
from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import http1
from dataplane.http1 import (
    REQ_ACTIONS,
    RESP_ACTIONS,
    DateCache,
    connection_tokens,
    error_body_headers,
    http_date,
    status_line,
)


class TestStatusLine:
    @pytest.mark.parametrize(
        ("code", "line"),
        [
            (200, b"HTTP/1.1 200 OK\r\n"),
            (101, b"HTTP/1.1 101 Switching Protocols\r\n"),
            (204, b"HTTP/1.1 204 No Content\r\n"),
            (400, b"HTTP/1.1 400 Bad Request\r\n"),
            (404, b"HTTP/1.1 404 Not Found\r\n"),
            (500, b"HTTP/1.1 500 Internal Server Error\r\n"),
            (502, b"HTTP/1.1 502 Bad Gateway\r\n"),
            (503, b"HTTP/1.1 503 Service Unavailable\r\n"),
            (504, b"HTTP/1.1 504 Gateway Timeout\r\n"),
        ],
    )
    def test_known(self, code: int, line: bytes) -> None:
        assert status_line(code) == line

    @pytest.mark.parametrize("status", list(HTTPStatus))
    def test_every_known_status(self, status: HTTPStatus) -> None:
        # Go's reason phrases; they differ from Python's in a few places.
        go = {414: "Request URI Too Long", 418: "I'm a teapot"}
        line = status_line(status.value)
        phrase = go.get(status.value, status.phrase)
        assert line == f"HTTP/1.1 {status.value} {phrase}\r\n".encode()

    @pytest.mark.parametrize("code", [299, 420, 499, 599, 999])
    def test_unknown_like_go(self, code: int) -> None:
        # Go's net/http writes "status code <n>" when StatusText is empty
        assert status_line(code) == b"HTTP/1.1 %d status code %d\r\n" % (code, code)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(100, 999))
    def test_shape(self, code: int) -> None:
        line = status_line(code)
        assert line.startswith(b"HTTP/1.1 %d " % code)
        assert line.endswith(b"\r\n")
        assert line.count(b"\r\n") == 1
        assert len(line.rstrip(b"\r\n")) > len(b"HTTP/1.1 100 ")


class TestHttpDate:
    @pytest.mark.parametrize(
        ("ts", "text"),
        [
            (784111777, b"Sun, 06 Nov 1994 08:49:37 GMT"),  # RFC 9110 example
            (0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
            (951782400, b"Tue, 29 Feb 2000 00:00:00 GMT"),
            (1700000000.999, b"Tue, 14 Nov 2023 22:13:20 GMT"),
            (253402300799, b"Fri, 31 Dec 9999 23:59:59 GMT"),
        ],
    )
    def test_fixed(self, ts: float, text: bytes) -> None:
        assert http_date(ts) == text

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 253402300799))
    def test_matches_formatdate(self, ts: int) -> None:
        assert http_date(ts) == email.utils.formatdate(ts, usegmt=True).encode()

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 4_000_000_000), st.integers(0, 999))
    def test_fractional_seconds_truncate(self, ts: int, ms: int) -> None:
        assert http_date(ts + ms / 1000) == email.utils.formatdate(ts, usegmt=True).encode()

    def test_fixed_width(self) -> None:
        assert len(http_date(0)) == len(b"Sun, 06 Nov 1994 08:49:37 GMT") == 29


class TestDateCache:
    def test_rebuilds_once_per_second(self, monkeypatch: pytest.MonkeyPatch) -> None:
        now = [784111777.2]
        calls: list[float] = []
        real_time = http1.time

        def fake_gmtime(ts: float) -> time.struct_time:
            calls.append(ts)
            return real_time.gmtime(ts)

        monkeypatch.setattr(
            http1, "time", types.SimpleNamespace(time=lambda: now[0], gmtime=fake_gmtime)
        )
        dc = DateCache()
        assert dc.line() == b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        now[0] = 784111777.9
        assert dc.line() == b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        assert len(calls) == 1
        now[0] = 784111778.0
        assert dc.line() == b"Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"
        assert len(calls) == 2


class TestConnectionTokens:
    @pytest.mark.parametrize(
        ("value", "tokens"),
        [
            (b"close", {b"close"}),
            (b"Keep-Alive", {b"keep-alive"}),
            (b"Upgrade, HTTP2-Settings", {b"upgrade", b"http2-settings"}),
            (b"  keep-alive ,  X-Custom  ", {b"keep-alive", b"x-custom"}),
            (b"a,,b, ,", {b"a", b"b"}),
            (b"", set()),
            (b" , ", set()),
            (b"CLOSE,close", {b"close"}),
            (b"te\t,\ttrailers", {b"te", b"trailers"}),
        ],
    )
    def test_tokens(self, value: bytes, tokens: set[bytes]) -> None:
        assert connection_tokens(value) == tokens


class TestErrorBodyHeaders:
    def _parse(self, raw: bytes) -> dict[bytes, bytes]:
        assert raw.endswith(b"\r\n")
        out: dict[bytes, bytes] = {}
        for line in raw[:-2].split(b"\r\n"):
            name, _, value = line.partition(b": ")
            assert name and value
            assert name.lower() not in {k.lower() for k in out}
            out[name] = value
        return out

    @pytest.mark.parametrize(
        "body",
        [b"", b"pending request queue full\n", b"request timeout", "ünïcødé\n".encode()],
    )
    def test_go_http_error_headers(self, body: bytes) -> None:
        h = self._parse(error_body_headers(body))
        assert h == {
            b"Content-Type": b"text/plain; charset=utf-8",
            b"X-Content-Type-Options": b"nosniff",
            b"Content-Length": str(len(body)).encode(),
        }

    def test_large_body(self) -> None:
        h = self._parse(error_body_headers(b"x" * 100_000))
        assert h[b"Content-Length"] == b"100000"


class TestActionTables:
    def test_keys_are_lower_case(self) -> None:
        for table in (REQ_ACTIONS, RESP_ACTIONS):
            assert all(k == k.lower() for k in table)

    @pytest.mark.parametrize(
        "name",
        [
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"proxy-authenticate",
            b"proxy-authorization",
            b"te",
            b"trailer",
            b"transfer-encoding",
            b"upgrade",
        ],
    )
    def test_hop_by_hop_headers_are_classified(self, name: bytes) -> None:
        # Go ReverseProxy's hop-by-hop list: none of them is passed through blindly
        assert name in REQ_ACTIONS
        assert name in RESP_ACTIONS
        assert REQ_ACTIONS[name] != http1.H_KEEP

    def test_engine_table_knows_no_knative_header(self) -> None:
        assert not [k for k in REQ_ACTIONS if k.startswith((b"k-", b"knative-"))]

    def test_component_headers_merged(self) -> None:
        table = http1.request_actions([b"User-Agent"], [b"Knative-Serving-Revision"])
        assert table[b"user-agent"] == http1.H_KEEP
        assert table[b"knative-serving-revision"] == http1.H_STRIP
        assert table[b"host"] == http1.H_HOST
        assert b"user-agent" not in REQ_ACTIONS  # the engine's table is left alone

    def test_indexing_an_engine_header_keeps_its_action(self) -> None:
        assert http1.request_actions([b"X-Forwarded-For"])[b"x-forwarded-for"] == http1.H_XFF

    def test_components_declare_their_knative_headers(self) -> None:
        from activator.handler import server_config as act_config
        from queueproxy.handler import server_config as qp_config

        for cfg in (qp_config(), act_config()):
            acts = cfg.req_actions
            assert acts[b"knative-serving-revision"] == http1.H_STRIP
            assert acts[b"knative-serving-namespace"] == http1.H_STRIP
            assert acts[b"k-original-host"] == http1.H_STRIP
            assert acts[b"k-network-probe"] == http1.H_KEEP
            assert acts[b"user-agent"] == http1.H_KEEP

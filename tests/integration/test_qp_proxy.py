"""Queue-proxy data path over real HTTP: proxying basics and header handling (SPEC §1.3, §1.7)."""

from __future__ import annotations

import json

import httpx

from tests.apps.upstream import RunningApp

from .helpers import QueueProxy, RawConn


def names(pairs: list[tuple[str, str]]) -> list[str]:
    return [k.lower() for k, _ in pairs]


def values(pairs: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in pairs if k.lower() == name.lower()]


async def raw_headers_request(qp: QueueProxy, head: str) -> tuple[dict, list[tuple[str, str]]]:
    """Send a hand-written request to /headers; returns (app JSON, app-seen header list)."""
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(head.encode("latin-1"))
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200, resp
    doc = json.loads(resp.body)
    return doc, [(k, v) for k, v in doc["headers"]]


async def test_get_and_post(client: httpx.AsyncClient, app: RunningApp) -> None:
    r = await client.get("/hello")
    assert r.status_code == 200
    assert r.text == "hello"
    r = await client.post("/echo", content=b"ping body", headers={"Content-Type": "text/x-test"})
    assert r.status_code == 200
    assert r.content == b"ping body"
    assert r.headers["content-type"].startswith("text/x-test")
    assert app.state.per_path == {"/hello": 1, "/echo": 1}


async def test_query_string_and_method_preserved(qp: QueueProxy) -> None:
    doc, _ = await raw_headers_request(
        qp,
        "PATCH /headers?a=1&b=%2F%20x&empty=&flag&a=2 HTTP/1.1\r\nHost: h\r\n"
        "Content-Length: 0\r\n\r\n",
    )
    assert doc["method"] == "PATCH"
    assert doc["raw_path"] == "/headers?a=1&b=%2F%20x&empty=&flag&a=2"


async def test_host_preserved(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp, "GET /headers HTTP/1.1\r\nHost: hello.default.example.com:8080\r\n\r\n"
    )
    assert values(hdrs, "host") == ["hello.default.example.com:8080"]


async def test_k_original_host_restores_host_and_is_removed(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: 10.1.2.3:8012\r\n"
        "K-Original-Host: hello.default.svc.cluster.local\r\n\r\n",
    )
    assert values(hdrs, "host") == ["hello.default.svc.cluster.local"]
    assert "k-original-host" not in names(hdrs)


async def test_knative_routing_headers_stripped_others_kept(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\n"
        "Knative-Serving-Revision: hello-00001\r\nKnative-Serving-Namespace: default\r\n"
        "K-Proxy-Request: activator\r\nKnative-Serving-Tag: blue\r\nX-Custom: yes\r\n\r\n",
    )
    n = names(hdrs)
    assert "knative-serving-revision" not in n
    assert "knative-serving-namespace" not in n
    assert values(hdrs, "k-proxy-request") == ["activator"]
    assert values(hdrs, "knative-serving-tag") == ["blue"]
    assert values(hdrs, "x-custom") == ["yes"]


async def test_x_forwarded_for_set_to_peer(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(qp, "GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
    assert values(hdrs, "x-forwarded-for") == ["127.0.0.1"]
    # Nothing to build a Forwarded header from: the shim runs before the peer is appended.
    assert "forwarded" not in names(hdrs)


async def test_x_forwarded_for_appended(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.9\r\n"
        "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\r\n",
    )
    assert values(hdrs, "x-forwarded-for") == ["203.0.113.9, 10.0.0.1, 10.0.0.2, 127.0.0.1"]


async def test_forwarded_shim_from_x_forwarded(qp: QueueProxy) -> None:
    # SPEC §1.7 example: XFF "127.0.0.1, ::1", XFH h, XFP p.
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1, ::1\r\n"
        "X-Forwarded-Host: h\r\nX-Forwarded-Proto: p\r\n\r\n",
    )
    assert values(hdrs, "forwarded") == ['for=127.0.0.1;host=h;proto=p, for="[::1]"']


async def test_forwarded_shim_uses_first_xff_header_line(qp: QueueProxy) -> None:
    # Go's r.Header.Get: only the first X-Forwarded-For line feeds the shim, while the
    # upstream X-Forwarded-For carries every line joined, plus the peer.
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.1\r\n"
        "X-Forwarded-For: 192.0.2.2\r\n\r\n",
    )
    assert values(hdrs, "forwarded") == ["for=192.0.2.1"]
    xff = values(hdrs, "x-forwarded-for")
    assert len(xff) == 1
    assert xff[0].startswith("192.0.2.1, 192.0.2.2, ")


async def test_forwarded_shim_single_hop(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.60\r\n"
        "X-Forwarded-Proto: https\r\n\r\n",
    )
    assert values(hdrs, "forwarded") == ["for=192.0.2.60;proto=https"]


async def test_forwarded_shim_host_and_proto_only(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: p\r\n\r\n",
    )
    assert values(hdrs, "forwarded") == ["host=h;proto=p"]


async def test_existing_forwarded_left_alone(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\nForwarded: for=198.51.100.17\r\n"
        "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n",
    )
    assert values(hdrs, "forwarded") == ["for=198.51.100.17"]


async def test_request_hop_by_hop_headers_removed(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\n"
        "Connection: keep-alive, X-Hop-A, x-hop-b\r\n"
        "X-Hop-A: 1\r\nX-Hop-B: 2\r\n"
        "Keep-Alive: timeout=5\r\n"
        "TE: gzip\r\n"
        "Upgrade: websocket\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "Proxy-Authenticate: Basic\r\n"
        "Trailer: X-T\r\n"
        "X-End-To-End: kept\r\n\r\n",
    )
    n = names(hdrs)
    for gone in (
        "x-hop-a",
        "x-hop-b",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "trailer",
    ):
        assert gone not in n, (gone, hdrs)
    assert all("x-hop" not in v.lower() for v in values(hdrs, "connection")), hdrs
    assert values(hdrs, "x-end-to-end") == ["kept"]


async def test_te_trailers_survives(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp, "GET /headers HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n"
    )
    assert values(hdrs, "te") == ["trailers"]


async def test_response_hop_by_hop_headers_removed(qp: QueueProxy) -> None:
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(b"GET /hop HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    assert resp.body == b"hop"
    got = [k.lower() for k, _ in resp.headers]
    for gone in (
        "x-resp-hop",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
        "trailer",
    ):
        assert gone not in got, (gone, resp.headers)
    assert all("x-resp-hop" not in v.lower() for v in resp.header_all("connection"))
    assert resp.header("x-resp-end2end") == "kept"


async def test_no_user_agent_or_accept_encoding_added(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(qp, "GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
    n = names(hdrs)
    assert "user-agent" not in n
    assert "accept-encoding" not in n


async def test_user_agent_and_accept_encoding_passed_as_sent(qp: QueueProxy) -> None:
    _, hdrs = await raw_headers_request(
        qp,
        "GET /headers HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.0\r\nAccept-Encoding: br\r\n\r\n",
    )
    assert values(hdrs, "user-agent") == ["curl/8.0"]
    assert values(hdrs, "accept-encoding") == ["br"]


async def test_response_status_and_headers_pass_through(client: httpx.AsyncClient) -> None:
    r = await client.get("/status", params={"code": "418", "body": "teapot"})
    assert r.status_code == 418
    assert r.text == "teapot"
    r = await client.get("/status", params={"code": "503", "body": "app busy"})
    assert r.status_code == 503
    assert r.text == "app busy"

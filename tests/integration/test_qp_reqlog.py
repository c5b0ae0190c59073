"""Request logging on stdout with Knative's default template (SPEC §1.14)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from .helpers import QueueProxy, RawConn, eventually

DEFAULT_TEMPLATE = (
    '{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": '
    '"{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": '
    '{{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": '
    '"{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": '
    '"{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": '
    '"{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}'
)


def obs(**extra: object) -> str:
    return json.dumps({"enableRequestLog": True, "requestLogTemplate": DEFAULT_TEMPLATE, **extra})


KUBELET = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}


def log_lines(qp: QueueProxy) -> list[dict]:
    return [json.loads(line) for line in qp.stdout().splitlines() if line.strip()]


async def wait_lines(qp: QueueProxy, n: int) -> list[dict]:
    def check() -> list[dict] | None:
        lines = log_lines(qp)
        return lines if len(lines) >= n else None

    return await eventually(check, timeout=5, what=f"{n} request log lines")


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=obs())
async def test_request_log_lines(qp: QueueProxy, client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/hello?x=1&y=%22q%22",
        headers={
            "User-Agent": 'agent "quoted"',
            "Referer": "http://ref.example/",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
    )
    assert r.status_code == 200
    r = await client.post("/echo", content=b"0123456789")
    assert r.status_code == 200
    r = await client.get("/status", params={"code": "404"})
    assert r.status_code == 404
    lines = await wait_lines(qp, 3)
    assert len(lines) == 3
    first, second, third = (x["httpRequest"] for x in lines)
    assert first["requestMethod"] == "GET"
    assert first["requestUrl"] == "/hello?x=1&y=%22q%22"
    assert first["status"] == 200
    assert first["responseSize"] == "5"
    assert first["requestSize"] == "0"
    assert first["userAgent"] == 'agent "quoted"'
    assert first["referer"] == "http://ref.example/"
    assert first["serverIp"] == "10.0.0.7"
    assert first["protocol"] == "HTTP/1.1"
    assert re.fullmatch(r"(::ffff:)?127\.0\.0\.1:\d+", first["remoteIp"])  # see below
    assert re.fullmatch(r"\d+(\.\d+)?(e-\d+)?s", first["latency"])
    assert lines[0]["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert second["requestMethod"] == "POST"
    assert second["requestUrl"] == "/echo"
    assert second["requestSize"] == "10"
    assert second["responseSize"] == "10"
    assert third["status"] == 404
    assert third["requestUrl"] == "/status?code=404"
    assert lines[2]["traceId"] == ""


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=obs())
async def test_request_log_remote_ip_is_ipv4(qp: QueueProxy, client: httpx.AsyncClient) -> None:
    assert (await client.get("/hello")).status_code == 200
    lines = await wait_lines(qp, 1)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", lines[0]["httpRequest"]["remoteIp"])


@pytest.mark.qp_env(
    OBSERVABILITY_CONFIG=obs(), CONTAINER_CONCURRENCY="1", REVISION_TIMEOUT_SECONDS="1"
)
async def test_request_log_queue_proxy_answers(qp: QueueProxy, client: httpx.AsyncClient) -> None:
    """Responses made by the queue-proxy itself are logged with their status."""
    r = await client.get("/hang")
    assert r.status_code == 504
    lines = await wait_lines(qp, 1)
    assert lines[-1]["httpRequest"]["status"] == 504
    assert lines[-1]["httpRequest"]["requestUrl"] == "/hang"


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=obs())
async def test_request_log_skips_probes(qp: QueueProxy, client: httpx.AsyncClient) -> None:
    assert (await client.get("/", headers=KUBELET)).status_code == 200
    r = await client.get("/", headers={"K-Network-Probe": "probe", "K-Network-Hash": "h"})
    assert r.status_code == 200
    assert (await client.get("/hello", headers={"K-Kubelet-Probe": "x"})).status_code == 200
    assert (await client.get("/hello?marker=1")).status_code == 200
    lines = await wait_lines(qp, 1)
    assert [x["httpRequest"]["requestUrl"] for x in lines] == ["/hello?marker=1"]


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=obs(enableProbeRequestLog=True))
async def test_request_log_probes_when_enabled(qp: QueueProxy, client: httpx.AsyncClient) -> None:
    assert (await client.get("/probe1", headers=KUBELET)).status_code == 200
    r = await client.get("/probe2", headers={"K-Network-Probe": "probe", "K-Network-Hash": "h"})
    assert r.status_code == 200
    r = await client.get("/hello?kubelet=1", headers={"K-Kubelet-Probe": "x"})
    assert r.status_code == 200
    assert (await client.get("/hello?marker=1")).status_code == 200
    lines = await wait_lines(qp, 4)
    urls = [x["httpRequest"]["requestUrl"] for x in lines]
    assert urls == ["/probe1", "/probe2", "/hello?kubelet=1", "/hello?marker=1"]
    assert lines[0]["httpRequest"]["status"] == 200
    assert lines[0]["httpRequest"]["userAgent"] == "kube-probe/1.30"


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=obs())
async def test_request_log_http10(qp: QueueProxy) -> None:
    conn = await RawConn.open(qp.port)
    try:
        await conn.send(b"GET /hello HTTP/1.0\r\n\r\n")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    lines = await wait_lines(qp, 1)
    assert lines[0]["httpRequest"]["protocol"] == "HTTP/1.0"


async def test_no_request_log_by_default(qp: QueueProxy, client: httpx.AsyncClient) -> None:
    assert (await client.get("/hello")).status_code == 200
    assert qp.stdout() == ""


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=obs())
async def test_request_log_skips_any_k_network_probe(
    qp: QueueProxy, client: httpx.AsyncClient
) -> None:
    r = await client.get("/hello?probe=1", headers={"K-Network-Probe": "activator"})
    assert r.status_code == 200  # not a health check: proxied to the app
    assert (await client.get("/hello?marker=1")).status_code == 200
    lines = await wait_lines(qp, 1)
    assert [x["httpRequest"]["requestUrl"] for x in lines] == ["/hello?marker=1"]

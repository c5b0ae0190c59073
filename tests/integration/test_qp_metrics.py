"""Autoscaling Stat on the metrics port and Prometheus request metrics (SPEC §1.10, §1.11)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps.upstream import RunningApp

from .conftest import make_client
from .helpers import QueueProxy, eventually, parse_stat

POD = "hello-00001-deployment-abc12"
PROM = '{"requestMetrics":{"protocol":"prometheus"}}'
KUBELET = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
ACTIVATOR = {"K-Proxy-Request": "activator"}


class Reports:
    """Scrapes /metrics often enough to see every 1 s report once (by process_uptime)."""

    def __init__(self, qp: QueueProxy) -> None:
        self.client = make_client(f"http://127.0.0.1:{qp.metrics_port}")
        self.seen: list[Any] = []

    async def scrape(self) -> Any:
        r = await self.client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/protobuf"
        stat = parse_stat(r.content)
        if not self.seen or stat.process_uptime != self.seen[-1].process_uptime:
            self.seen.append(stat)
        return stat

    async def until(self, pred: Any, timeout: float = 5.0) -> Any:
        async def check() -> Any:
            stat = await self.scrape()
            return stat if pred(stat) else None

        return await eventually(check, timeout=timeout, interval=0.05, what="a matching Stat")

    async def next_report(self) -> Any:
        n = len(self.seen)
        await eventually(
            lambda: self._newer(n), timeout=3, interval=0.05, what="the next Stat report"
        )
        return self.seen[-1]

    async def _newer(self, n: int) -> bool:
        await self.scrape()
        return len(self.seen) > n

    async def close(self) -> None:
        await self.client.aclose()


async def test_stat_before_first_report_has_only_pod_name(qp: QueueProxy) -> None:
    async with make_client(f"http://127.0.0.1:{qp.metrics_port}") as c:
        r = await c.get("/metrics", headers={"Accept": "text/plain"})  # Accept is ignored
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/protobuf"
    stat = parse_stat(r.content)
    assert stat.pod_name == POD
    if stat.process_uptime == 0:  # scraped before the first 1 s tick: only the pod name
        assert [f.name for f, _ in stat.ListFields()] == ["pod_name"]


async def test_metrics_port_other_paths_404(qp: QueueProxy) -> None:
    async with make_client(f"http://127.0.0.1:{qp.metrics_port}") as c:
        for path in ("/", "/metricsx", "/healthz", "/metrics/"):
            r = await c.get(path)
            assert r.status_code == 404, path
        r = await c.post("/metrics")  # any method
        assert r.status_code == 200


async def test_stat_counts_requests(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    reports = Reports(qp)
    try:
        first = await reports.until(lambda s: s.process_uptime > 0)
        assert first.pod_name == POD
        start = len(reports.seen)
        for _ in range(3):
            assert (await client.get("/hello")).status_code == 200
        for _ in range(2):
            assert (await client.get("/hello", headers=ACTIVATOR)).status_code == 200
        # Neither probes nor K-Kubelet-Probe requests count.
        for _ in range(4):
            assert (await client.get("/", headers=KUBELET)).status_code == 200
            r = await client.get("/hello", headers={"K-Kubelet-Probe": "queue"})
            assert r.status_code == 200
        # Sum the windows until all 5 are reported, then one more window to catch extras.
        await reports.until(lambda s: _total(reports, start) >= 5, timeout=6)
        await reports.next_report()
        windows = reports.seen[start:]
        assert sum(s.request_count for s in windows) == pytest.approx(5.0)
        assert sum(s.proxied_request_count for s in windows) == pytest.approx(2.0)
        assert all(s.pod_name == POD for s in windows)
        assert all(s.timestamp == 0 for s in windows)
        uptimes = [s.process_uptime for s in reports.seen]
        assert uptimes == sorted(uptimes)
    finally:
        await reports.close()


def _total(reports: Reports, start: int) -> float:
    return sum(s.request_count for s in reports.seen[start:])


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="10")
async def test_stat_average_concurrency(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    """Two requests held for more than a full window (one via the activator): a report shows
    average concurrency 2 and proxied concurrency 1."""
    reports = Reports(qp)
    tasks = [
        asyncio.create_task(client.get("/gate")),
        asyncio.create_task(client.get("/gate", headers=ACTIVATOR)),
    ]
    try:
        await app.state.wait_for(lambda s: s.in_flight == 2)
        stat = await reports.until(
            lambda s: (
                s.average_concurrent_requests == pytest.approx(2.0, abs=0.01)
                and s.request_count == 0
            ),
            timeout=5,
        )
        assert stat.average_proxied_concurrent_requests == pytest.approx(1.0, abs=0.01)
        assert stat.proxied_request_count == 0
    finally:
        app.state.gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reports.close()
    assert [t.result().status_code for t in tasks] == [200, 200]


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1")
async def test_stat_concurrency_includes_breaker_queue(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    reports = Reports(qp)
    tasks = [asyncio.create_task(client.get("/gate")) for _ in range(3)]
    try:
        await app.state.wait_for(lambda s: s.in_flight == 1)
        await reports.until(
            lambda s: s.average_concurrent_requests == pytest.approx(3.0, abs=0.01), timeout=5
        )
    finally:
        app.state.gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reports.close()


def _durations(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "kn_serving_invocation_duration_seconds":
            continue
        assert fam.type == "histogram"
        for s in fam.samples:
            if s.name.endswith("_count"):
                code = s.labels["http_response_status_code"]
                counts[code] = counts.get(code, 0) + s.value
    return counts


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=PROM, CONTAINER_CONCURRENCY="4")
async def test_prometheus_request_metrics(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    for _ in range(3):
        assert (await client.get("/hello")).status_code == 200
    for _ in range(2):
        assert (await client.get("/status", params={"code": "404"})).status_code == 404
    # Probes of every kind are excluded.
    await client.get("/", headers=KUBELET)
    await client.get("/", headers={"K-Network-Probe": "probe", "K-Network-Hash": "x"})
    await client.get("/hello", headers={"K-Kubelet-Probe": "queue"})
    async with make_client(f"http://127.0.0.1:{qp.user_metrics_port}") as m:

        async def scraped() -> dict[str, float] | None:
            r = await m.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            counts = _durations(r.text)
            return counts if counts.get("200", 0) >= 3 and counts.get("404", 0) >= 2 else None

        counts = await eventually(scraped, timeout=5, what="invocation durations")
        assert counts == {"200": 3, "404": 2}
        r = await m.get("/metrics")
        text = r.text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        hist = fams["kn_serving_invocation_duration_seconds"]
        buckets = sorted(
            {float(s.labels["le"]) for s in hist.samples if s.name.endswith("_bucket")}
        )
        assert buckets == [
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
            float("inf"),
        ]  # fmt: skip
        assert "kn_serving_queue_depth" in fams
        assert (await m.get("/other")).status_code == 404


@pytest.mark.qp_env(OBSERVABILITY_CONFIG=PROM)
async def test_prometheus_excludes_any_k_network_probe(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    r = await client.get("/hello", headers={"K-Network-Probe": "activator"})
    assert r.status_code == 200
    assert app.state.per_path == {"/hello": 1}
    assert (await client.get("/status", params={"code": "201"})).status_code == 201
    async with make_client(f"http://127.0.0.1:{qp.user_metrics_port}") as m:

        async def scraped() -> dict[str, float] | None:
            counts = _durations((await m.get("/metrics")).text)
            return counts if counts.get("201") else None

        counts = await eventually(scraped, timeout=5, what="the 201 counted")
    assert counts == {"201": 1}

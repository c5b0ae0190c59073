"""Probe-header abuse (issue 7): what an external client gains by sending Knative's probe
headers to a queue-proxy, next to what Knative's queue-proxy gives it (SPEC §1.3, §1.4).

- Health-check user agents (``kube-probe/``, ``Knative-Activator-Probe``,
  ``Knative-Autoscaling-Probe``) and ``K-Network-Probe: probe`` are answered by the queue-proxy
  itself: they never reach the app, whatever the path.
- Any other ``K-Network-Probe`` value is an ordinary request for the breaker and the autoscaling
  stats (Knative's ``IsProbe`` only keeps it out of request metrics, traces and the request log).
- ``K-Kubelet-Probe`` alone bypasses the breaker and the stats, exactly as in Knative (covered in
  ``test_qp_probes.py`` and ``test_qp_metrics.py``); behind the activator such requests never
  reach a queue-proxy (``test_activator_requests.py``). See docs/queue-proxy.md, "Probe headers".
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.apps.upstream import RunningApp

from .conftest import make_client
from .helpers import QueueProxy, eventually, parse_stat

PROM = '{"requestMetrics":{"protocol":"prometheus"}}'


async def _depth(qp: QueueProxy) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with make_client(f"http://127.0.0.1:{qp.user_metrics_port}") as c:
        r = await c.get("/metrics")
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == "kn_serving_queue_depth":
                return float(s.value)
    raise AssertionError("kn_serving_queue_depth not exported:\n" + r.text)


@pytest.mark.qp_env(CONTAINER_CONCURRENCY="1", OBSERVABILITY_CONFIG=PROM)
async def test_network_probe_values_do_not_bypass_the_breaker_or_the_stats(
    qp: QueueProxy, client: httpx.AsyncClient, app: RunningApp
) -> None:
    """With the only slot taken, requests carrying ``K-Network-Probe: queue`` or ``activator``
    (no probe user agent) wait in the breaker like any other and are counted in the Stat."""
    holder = asyncio.create_task(client.get("/gate"))
    spoofed = []
    try:
        await app.state.wait_for(lambda s: s.in_flight == 1)
        for value in ("queue", "activator"):
            spoofed.append(
                asyncio.create_task(client.get("/hello", headers={"K-Network-Probe": value}))
            )

        async def queued() -> bool:
            return await _depth(qp) == 3  # the holder plus both, admitted and waiting

        await eventually(queued, what="both spoofed probes queued in the breaker")
        assert app.state.in_flight == 1 and app.state.total == 1
        app.state.gate.set()
        results = await asyncio.wait_for(asyncio.gather(holder, *spoofed), 10)
    finally:
        app.state.gate.set()
        await asyncio.gather(holder, *spoofed, return_exceptions=True)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert app.state.max_in_flight == 1
    # All three are in the autoscaling Stat (summed over the 1 s windows until they show).
    seen: dict[float, float] = {}

    async def counted() -> bool:
        async with make_client(f"http://127.0.0.1:{qp.metrics_port}") as c:
            stat = parse_stat((await c.get("/metrics")).content)
        seen[stat.process_uptime] = stat.request_count
        return sum(seen.values()) >= 3

    await eventually(counted, timeout=5, interval=0.1, what="3 requests in the Stat")
    assert sum(seen.values()) == pytest.approx(3.0)


async def test_spoofed_health_checks_never_reach_the_app(
    client: httpx.AsyncClient, app: RunningApp
) -> None:
    """Probe user agents and ``K-Network-Probe: probe`` get the queue-proxy's own answers on any
    path and method; the app sees none of them."""
    cases = [
        ({"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}, 200, b"queue"),
        ({"User-Agent": "kube-probe/1.30"}, 400, b"unexpected probe header value: \n"),
        ({"User-Agent": "Knative-Activator-Probe", "K-Network-Probe": "queue"}, 200, b"queue"),
        (
            {"User-Agent": "Knative-Autoscaling-Probe", "K-Network-Probe": "activator"},
            400,
            b"unexpected probe header value: activator\n",
        ),
        ({"K-Network-Probe": "probe", "K-Network-Hash": "h"}, 200, b""),
    ]
    for headers, status, body in cases:
        for method, path in (("GET", "/hello"), ("POST", "/admin/delete-everything")):
            r = await client.request(method, path, headers=headers, content=b"x" * 10)
            assert (r.status_code, r.content) == (status, body), (headers, method, path)
    assert app.state.total == 0, app.state.paths

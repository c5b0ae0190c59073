"""Unit tests for autoscaler.scraper.Scraper: Knative's sample size, averaging and scaling (§3.1).

The scrape function is injected (no sockets here; ``scrape_stat`` itself is exercised over
loopback in tests/integration/test_scraper.py) and the autoscaler is a recorder.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import cast

import pytest

from autoscaler.config import AutoscalerConfig, resolve_scaling
from autoscaler.decider import population_mean_sample_size
from autoscaler.multiscaler import Autoscaler
from autoscaler.scraper import ScrapeError, Scraper
from dataplane.statpb import Stat
from platforms.base import RevisionKey

KEY: RevisionKey = ("default", "hello-00001")


class _Rev:
    def __init__(self, tbc: str = "211") -> None:
        self.scaling = resolve_scaling(
            AutoscalerConfig(), 0, {"autoscaling.knative.dev/target-burst-capacity": tbc}
        )


class Recorder:
    """Stands in for the Autoscaler: the revisions it knows and what the scraper records."""

    def __init__(self, *keys: RevisionKey, tbc: str = "211") -> None:
        self.revisions = {k: _Rev(tbc) for k in keys}
        self.recorded: list[tuple[RevisionKey, Stat]] = []
        self.event = asyncio.Event()

    def record(self, key: RevisionKey, stat: Stat, t: float | None = None) -> None:
        self.recorded.append((key, stat))
        self.event.set()


class Pods:
    """``address -> Stat`` (or an exception to raise); remembers the order of scrapes."""

    def __init__(self, stats: dict[str, Stat | Exception]) -> None:
        self.stats = stats
        self.scraped: list[str] = []

    async def scrape(self, addr: str) -> Stat:
        self.scraped.append(addr)
        s = self.stats[addr]
        if isinstance(s, Exception):
            raise s
        return s


def pod_stat(c: float, proxied: float = 0.0, rps: float = 0.0, proxied_rps: float = 0.0) -> Stat:
    return Stat(
        pod_name="pod",
        average_concurrent_requests=c,
        average_proxied_concurrent_requests=proxied,
        request_count=rps,
        proxied_request_count=proxied_rps,
    )


def scraper_for(rec: Recorder, pods: Pods, addrs: list[str], seed: int = 1) -> Scraper:
    return Scraper(
        cast(Autoscaler, rec),
        lambda key: list(addrs) if key in rec.revisions else [],
        scrape=pods.scrape,
        rng=random.Random(seed),
    )


# -- sample size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "want"),
    [  # Knative's sample_size_test.go, and the formula worked by hand in the comments
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),  # N <= 3: every pod
        (4, 4),  # ceil(4 * 15.3664 / 18.3664) = ceil(3.3466) = 4
        (5, 4),  # ceil(76.832 / 19.3664) = ceil(3.9673) = 4
        (10, 7),  # ceil(153.664 / 24.3664) = ceil(6.3064) = 7
        (20, 9),  # ceil(307.328 / 34.3664) = ceil(8.9427) = 9
        (100, 14),  # ceil(1536.64 / 114.3664) = ceil(13.436) = 14
        (1000, 16),  # ceil(15366.4 / 1014.3664) = ceil(15.148) = 16
        (10000, 16),  # ceil(15.344) = 16: the sample tends to 15.3664
    ],
)
def test_population_mean_sample_size(n: int, want: int) -> None:
    assert population_mean_sample_size(n) == want
    if n > 3:
        assert want == math.ceil(n * 1.96**2 * 100 / 5**2 / (n + 1.96**2 * 100 / 5**2 - 1))


# -- averaging over the sample, scaled to the ready pods -----------------------------------------


async def test_ten_pods_sample_seven_and_scale_by_ten_sevenths() -> None:
    addrs = [f"10.0.0.{i}:9090" for i in range(10)]
    pods = Pods(
        {a: pod_stat(float(i + 1), proxied=1.0, rps=2.0 * (i + 1)) for i, a in enumerate(addrs)}
    )
    rec = Recorder(KEY)
    agg = await scraper_for(rec, pods, addrs).scrape_revision(KEY)
    assert len(pods.scraped) == 7 and len(set(pods.scraped)) == 7
    sampled = [addrs.index(a) + 1 for a in pods.scraped]  # each pod's concurrency
    assert agg is not None
    assert agg.pod_name == "service-scraper"
    assert agg.average_concurrent_requests == pytest.approx(sum(sampled) / 7 * 10)
    assert agg.average_proxied_concurrent_requests == pytest.approx(7.0 / 7 * 10)
    assert agg.request_count == pytest.approx(2 * sum(sampled) / 7 * 10)
    assert rec.recorded == [(KEY, agg)]


async def test_identical_pods_give_the_exact_total() -> None:
    """20 pods at 2.5 each: 9 sampled, 22.5 / 9 * 20 = 50, the true total."""
    addrs = [f"p{i}:9090" for i in range(20)]
    pods = Pods({a: pod_stat(2.5, rps=4.0) for a in addrs})
    agg = await scraper_for(Recorder(KEY), pods, addrs).scrape_revision(KEY)
    assert len(pods.scraped) == 9
    assert agg is not None
    assert agg.average_concurrent_requests == pytest.approx(50.0)
    assert agg.request_count == pytest.approx(80.0)


async def test_three_pods_are_all_scraped_and_summed() -> None:
    addrs = ["a:1", "b:1", "c:1"]
    pods = Pods({"a:1": pod_stat(1.0), "b:1": pod_stat(2.0), "c:1": pod_stat(4.5)})
    agg = await scraper_for(Recorder(KEY), pods, addrs).scrape_revision(KEY)
    assert sorted(pods.scraped) == addrs
    assert agg is not None and agg.average_concurrent_requests == pytest.approx(7.5)


async def test_the_sample_is_random() -> None:
    addrs = [f"p{i}:9090" for i in range(10)]
    samples = set()
    for seed in range(8):
        pods = Pods({a: pod_stat(1.0) for a in addrs})
        await scraper_for(Recorder(KEY), pods, addrs, seed=seed).scrape_revision(KEY)
        samples.add(frozenset(pods.scraped))
    assert len(samples) > 1


async def test_a_failed_pod_is_replaced_by_the_next() -> None:
    """5 pods, sample 4; one pod fails, so all 5 are tried and the 4 answers scaled by 5/4."""
    addrs = [f"p{i}:9090" for i in range(5)]
    stats: dict[str, Stat | Exception] = {a: pod_stat(2.0) for a in addrs}
    stats["p2:9090"] = ScrapeError("scraping p2:9090: refused")
    pods = Pods(stats)
    agg = await scraper_for(Recorder(KEY), pods, addrs).scrape_revision(KEY)
    assert agg is not None
    assert "p2:9090" in pods.scraped
    assert len(pods.scraped) in (4, 5)  # p2 may fall outside the first four tried
    assert agg.average_concurrent_requests == pytest.approx(10.0)


async def test_every_pod_failing_records_nothing() -> None:
    addrs = ["a:1", "b:1"]
    pods = Pods({a: ScrapeError(f"scraping {a}: timeout") for a in addrs})
    rec = Recorder(KEY)
    assert await scraper_for(rec, pods, addrs).scrape_revision(KEY) is None
    assert sorted(pods.scraped) == addrs
    assert rec.recorded == []


async def test_no_ready_pods_scrapes_nothing() -> None:
    pods = Pods({})
    rec = Recorder(KEY)
    assert await scraper_for(rec, pods, []).scrape_revision(KEY) is None
    assert pods.scraped == [] and rec.recorded == []


async def test_synchronous_scrape_functions_work_too() -> None:
    rec = Recorder(KEY)
    s = Scraper(cast(Autoscaler, rec), lambda key: ["a:1"], scrape=lambda a: pod_stat(3.0))
    agg = await s.scrape_revision(KEY)
    assert agg is not None and agg.average_concurrent_requests == 3.0


async def test_revision_with_unlimited_burst_capacity_is_not_scraped() -> None:
    """TBC -1: the activator is always in the path and Knative's scrape target is empty."""
    pods = Pods({"a:1": pod_stat(5.0)})
    rec = Recorder(KEY, tbc="-1")
    assert await scraper_for(rec, pods, ["a:1"]).scrape_revision(KEY) is None
    assert pods.scraped == [] and rec.recorded == []


# -- the loop ------------------------------------------------------------------------------------


async def test_loop_scrapes_every_revision_until_stopped() -> None:
    other: RevisionKey = ("default", "other-00001")
    rec = Recorder(KEY, other)
    pods = Pods({"a:1": pod_stat(1.0)})
    s = scraper_for(rec, pods, ["a:1"])
    s.interval = 0.01
    s.start()
    try:
        async with asyncio.timeout(5.0):
            while {k for k, _ in rec.recorded} != {KEY, other}:
                rec.event.clear()
                await rec.event.wait()
    finally:
        await s.stop()
    n = len(pods.scraped)
    await asyncio.sleep(0.05)  # several intervals: nothing more once stopped
    assert len(pods.scraped) == n
    await s.stop()  # twice: harmless

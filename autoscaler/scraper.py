"""Scraping queue-proxies' ``/metrics`` (the protobuf ``Stat``) every second (Knative SPEC §3.1).

For each revision with scrape targets (the metrics addresses of its ready pods) a sample of
``population_mean_sample_size(N)`` pods is scraped, older pods (uptime above the stable window)
first; the sampled values are summed, scaled by ``N / sampled`` and recorded as one stat.
The client is dataplane/httpget.py: ``Accept: application/protobuf``, 3 s timeout, 2xx and
``Content-Type: application/protobuf`` required, at most 336 body bytes read, as Knative's
scraper does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from dataplane import httpget
from dataplane.statpb import DecodeError, Stat, decode_stat
from platforms.base import RevisionKey

from .decider import population_mean_sample_size
from .multiscaler import Autoscaler

__all__ = ["ScrapeError", "Scraper", "scrape_stat"]

log = logging.getLogger("autoscaler.scraper")

SCRAPE_INTERVAL = 1.0
SCRAPE_TIMEOUT = 3.0
MAX_BODY = 336  # Knative reads at most 6*10 + 256 + 20 bytes
_ACCEPT = b"Accept: application/protobuf\r\n"


class ScrapeError(Exception):
    pass


async def scrape_stat(address: str, timeout: float = SCRAPE_TIMEOUT) -> Stat:
    """GET ``http://<address>/metrics`` and decode the Stat."""
    host, _, port = address.rpartition(":")
    try:
        r = await httpget.get(
            host.strip("[]"), int(port), "/metrics", timeout, headers=_ACCEPT,
            authority=address, max_body=MAX_BODY,
        )  # fmt: skip
    except httpget.HeadTimeout:
        raise ScrapeError(f"scraping {address}: no response within {timeout:g}s") from None
    except httpget.DialError as e:
        raise ScrapeError(f"scraping {address}: {e}") from None
    except (httpget.ReadError, httpget.BadResponse) as e:
        raise ScrapeError(f"scraping {address}: unexpected response ({e})") from None
    except ValueError:
        raise ScrapeError(f"scraping {address}: not an ip:port address") from None
    if not 200 <= r.status < 300:
        raise ScrapeError(f"scraping {address}: unexpected response status {r.status}")
    ctype = (r.header(b"content-type") or b"").strip()
    if ctype != b"application/protobuf":
        raise ScrapeError(f"scraping {address}: unsupported metric type {ctype!r}")
    body = r.body
    clen = r.header(b"content-length")
    if clen is not None and clen.strip().isdigit() and len(body) < min(int(clen), MAX_BODY):
        # Cut at a field boundary it would decode: a stat missing fields, silently.
        raise ScrapeError(f"scraping {address}: body truncated ({len(body)} of {int(clen)} bytes)")
    try:
        return decode_stat(body)
    except DecodeError as e:
        raise ScrapeError(f"scraping {address}: {e}") from None


class Scraper:
    """Scrapes every revision's sampled pods once a second and feeds the autoscaler."""

    def __init__(
        self,
        autoscaler: Autoscaler,
        targets: Callable[[RevisionKey], list[str]],
        *,
        scrape: Callable[[str], object] | None = None,
        interval: float = SCRAPE_INTERVAL,
        rng: random.Random | None = None,
    ) -> None:
        self.autoscaler = autoscaler
        self.targets = targets
        self.scrape = scrape_stat if scrape is None else scrape
        self.interval = interval
        self.rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            keys = list(self.autoscaler.revisions)
            await asyncio.gather(*(self.scrape_revision(k) for k in keys), return_exceptions=True)

    async def scrape_revision(self, key: RevisionKey) -> Stat | None:
        """Scrape a sample of the revision's pods; record and return the aggregate."""
        rs = self.autoscaler.revisions.get(key)
        if rs is None or rs.scaling.target_burst_capacity == -1:
            return None  # TBC -1: Knative's scrape target is empty, activators report it all
        pods = self.targets(key)
        n = len(pods)
        if n == 0:
            return None
        sample_size = population_mean_sample_size(n)
        order = list(pods)
        self.rng.shuffle(order)
        stats: list[Stat] = []
        # Workers take the next pod on failure (young pods are only backups in Knative; our
        # targets are ready pods, so the shuffle is the whole rule here).
        for addr in order:
            if len(stats) == sample_size:
                break
            try:
                result = self.scrape(addr)
                stat = await result if asyncio.iscoroutine(result) else result
            except ScrapeError as e:
                log.debug("%s", e)
                continue
            assert isinstance(stat, Stat)
            stats.append(stat)
        if not stats:
            return None
        factor = n / len(stats)
        agg = Stat(
            pod_name="service-scraper",
            average_concurrent_requests=sum(s.average_concurrent_requests for s in stats) * factor,
            average_proxied_concurrent_requests=sum(
                s.average_proxied_concurrent_requests for s in stats
            )
            * factor,
            request_count=sum(s.request_count for s in stats) * factor,
            proxied_request_count=sum(s.proxied_request_count for s in stats) * factor,
        )
        self.autoscaler.record(key, agg)
        return agg

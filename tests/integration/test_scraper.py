"""autoscaler.scraper.scrape_stat over loopback sockets (SPEC §1.10 scraper expectations, §3.1).

A small asyncio server plays a queue-proxy's metrics port with whatever bytes a test wants;
one test scrapes a real ``queue-proxy`` process and feeds the autoscaler with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from autoscaler.config import AutoscalerConfig
from autoscaler.multiscaler import Autoscaler
from autoscaler.scraper import ScrapeError, Scraper, scrape_stat
from dataplane.statpb import Stat, encode_stat
from platforms.base import Revision
from tests.apps.upstream import RunningApp
from tests.unit.test_statpb import PbStat

from .conftest import StartQP, make_client
from .helpers import eventually, free_ports

STAT = Stat(
    pod_name="hello-00001-deployment-abc12",
    average_concurrent_requests=3.5,
    average_proxied_concurrent_requests=1.25,
    request_count=7.0,
    proxied_request_count=2.0,
    process_uptime=42.5,
)
BODY = encode_stat(STAT)


def response(body: bytes, *, status: str = "200 OK", ctype: str = "application/protobuf") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class MetricsServer:
    """Reads one request head per connection, records it, and lets ``handler`` answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.address = ""

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            await self.handler(head, w)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def __aenter__(self) -> MetricsServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def replying(data: bytes, *, hold: bool = False) -> Handler:
    """Answer with ``data``; with ``hold`` keep the connection open afterwards (no EOF)."""

    async def handler(head: bytes, w: asyncio.StreamWriter) -> None:
        w.write(data)
        await w.drain()
        if hold:
            await asyncio.sleep(30)

    return handler


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[MetricsServer]]]:
    servers: list[MetricsServer] = []

    async def start(handler: Handler) -> MetricsServer:
        s = MetricsServer(handler)
        await s.__aenter__()
        servers.append(s)
        return s

    yield start
    for s in servers:
        await s.__aexit__()


ServeFn = Callable[[Handler], Awaitable[MetricsServer]]


async def test_scrape_decodes_the_stat_and_sends_knatives_request(serve: ServeFn) -> None:
    srv = await serve(replying(response(BODY)))
    stat = await scrape_stat(srv.address, timeout=2.0)
    assert stat == STAT
    (head,) = srv.requests
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /metrics HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    assert headers["accept"] == "application/protobuf"
    assert headers["host"] == srv.address


async def test_scrape_decodes_the_official_protobuf_encoding(serve: ServeFn) -> None:
    pb = PbStat(pod_name="p", average_concurrent_requests=2.0, request_count=9.0, timestamp=17)
    srv = await serve(replying(response(pb.SerializeToString())))
    stat = await scrape_stat(srv.address, timeout=2.0)
    assert stat == Stat(
        pod_name="p", average_concurrent_requests=2.0, request_count=9.0, timestamp=17
    )


async def test_header_names_are_case_insensitive_and_extra_bytes_ignored(serve: ServeFn) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/protobuf\r\ncontent-length: %d\r\n\r\n"
        % len(BODY)
    )
    srv = await serve(replying(data + BODY + b"\xff\xff trailing junk"))
    assert await scrape_stat(srv.address, timeout=2.0) == STAT


async def test_empty_body_is_a_zero_stat(serve: ServeFn) -> None:
    """Before a queue-proxy's first report its Stat may be empty; proto3 decodes it to zeros."""
    srv = await serve(replying(response(b"")))
    assert await scrape_stat(srv.address, timeout=2.0) == Stat()


@pytest.mark.parametrize("status", ["503 Service Unavailable", "404 Not Found", "302 Found"])
async def test_non_2xx_status_is_an_error(serve: ServeFn, status: str) -> None:
    srv = await serve(replying(response(BODY, status=status)))
    with pytest.raises(ScrapeError, match=status.split()[0]) as ei:
        await scrape_stat(srv.address, timeout=2.0)
    assert srv.address in str(ei.value)


@pytest.mark.parametrize(
    "ctype", ["text/plain; version=0.0.4", "application/protobuf; charset=utf-8", ""]
)
async def test_other_content_type_is_unsupported(serve: ServeFn, ctype: str) -> None:
    srv = await serve(replying(response(BODY, ctype=ctype)))
    with pytest.raises(ScrapeError, match="unsupported metric type"):
        await scrape_stat(srv.address, timeout=2.0)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff",  # a varint that never ends
        b"\x11\x00\x00",  # a truncated double
        b"\x0a\x05ab",  # a truncated string
        b"\x0a\x02\xff\xfe",  # a pod name that is not UTF-8
        encode_stat(Stat(pod_name="x" * 400)),  # over Knative's 336-byte read limit
    ],
)
async def test_malformed_body_is_a_clean_error(serve: ServeFn, body: bytes) -> None:
    srv = await serve(replying(response(body)))
    with pytest.raises(ScrapeError) as ei:
        await scrape_stat(srv.address, timeout=2.0)
    assert str(ei.value).startswith(f"scraping {srv.address}: ")


async def test_body_cut_short_is_an_error(serve: ServeFn) -> None:
    """The connection closes after the pod name: decodable, but most of the Stat is missing."""
    whole = response(BODY)
    cut = whole[: whole.index(b"\r\n\r\n") + 4 + len(STAT.pod_name) + 2]
    srv = await serve(replying(cut))
    with pytest.raises(ScrapeError, match=f"body truncated \\(30 of {len(BODY)} bytes\\)"):
        await scrape_stat(srv.address, timeout=2.0)


@pytest.mark.parametrize("data", [b"", b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Ty"])
async def test_garbage_or_truncated_response_is_an_error(serve: ServeFn, data: bytes) -> None:
    srv = await serve(replying(data))
    with pytest.raises(ScrapeError, match="unexpected response"):
        await scrape_stat(srv.address, timeout=2.0)


async def test_connection_refused_is_an_error() -> None:
    (port,) = free_ports(1)
    loop = asyncio.get_running_loop()
    t = loop.time()
    with pytest.raises(ScrapeError, match=f"scraping 127.0.0.1:{port}: "):
        await scrape_stat(f"127.0.0.1:{port}", timeout=2.0)
    assert loop.time() - t < 1.0


async def test_silent_server_times_out(serve: ServeFn) -> None:
    async def silent(head: bytes, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    srv = await serve(silent)
    loop = asyncio.get_running_loop()
    t = loop.time()
    with pytest.raises(ScrapeError, match=r"no response within 0\.2s"):
        await scrape_stat(srv.address, timeout=0.2)
    assert 0.15 < loop.time() - t < 1.5


async def test_response_complete_before_the_server_closes(serve: ServeFn) -> None:
    """A server that keeps the connection open after a Content-Length body (ignoring our
    ``Connection: close``) still gives its stat at once, not a timeout."""
    srv = await serve(replying(response(BODY), hold=True))
    loop = asyncio.get_running_loop()
    t = loop.time()
    assert await scrape_stat(srv.address, timeout=1.0) == STAT
    assert loop.time() - t < 0.5


async def test_chunked_body_is_decoded_or_refused(serve: ServeFn) -> None:
    """Never a garbage Stat from chunk-size lines decoded as protobuf."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\nTransfer-Encoding: chunked\r\n"
    )
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY)
    srv = await serve(replying(head + b"\r\n" + chunked))
    try:
        stat = await scrape_stat(srv.address, timeout=2.0)
    except ScrapeError:
        return
    assert stat == STAT


async def test_scraper_records_a_real_queue_proxy(app: RunningApp, start_qp: StartQP) -> None:
    """Scrape a real queue-proxy: one direct request in flight counts, one proxied does not."""
    qp = await start_qp(user_port=app.port)
    loop = asyncio.get_running_loop()
    scaled: list[int] = []

    async def scale(key: object, n: int) -> None:
        scaled.append(n)

    autoscaler = Autoscaler(
        loop=loop,
        scale=scale,
        ready=lambda key: 1,
        config=AutoscalerConfig.from_map({"allow-zero-initial-scale": "true"}),
    )
    key = ("default", "hello-00001")
    autoscaler.revision_updated(
        Revision(
            "default", "hello-00001", annotations={"autoscaling.knative.dev/initial-scale": "0"}
        )
    )
    addr = f"127.0.0.1:{qp.metrics_port}"
    scraper = Scraper(autoscaler, lambda k: [addr] if k == key else [])
    async with make_client(qp.url(), timeout=10.0) as c:
        # Both held in the app until released: a full report window with 2 in flight.
        direct = asyncio.ensure_future(c.get("/gate"))
        proxied = asyncio.ensure_future(c.get("/gate", headers={"K-Proxy-Request": "activator"}))
        await app.state.wait_for(lambda st: st.in_flight == 2)

        async with asyncio.timeout(5.0):  # until a report covers both requests in flight
            while (raw := await scrape_stat(addr, timeout=2.0)).average_concurrent_requests < 1.9:
                await asyncio.sleep(0.05)
        assert raw.pod_name == "hello-00001-deployment-abc12"
        assert raw.average_proxied_concurrent_requests == pytest.approx(1.0, abs=0.1)
        agg = await scraper.scrape_revision(key)
        assert agg is not None and agg.pod_name == "service-scraper"
        # A stat with concurrency for a revision at zero pokes: a tick now, not in 2 s.
        await eventually(lambda: scaled == [1], timeout=1.0, interval=0.01, what="the poke")
        decision = autoscaler.revisions[key].last
        # Only the direct request counts; the proxied one is the activator's to report.
        assert decision.stable_value == pytest.approx(1.0, abs=0.1)
        assert decision.desired == 1
        app.state.gate.set()
        r1, r2 = await asyncio.gather(direct, proxied)
        assert (r1.status_code, r2.status_code) == (200, 200)
    autoscaler.stop()

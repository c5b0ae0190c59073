"""The durable websocket to the autoscaler's stat server (Knative ``pkg/websocket/connection.go``).

Behaviour (SPEC §2.7):

- dial with a 3 s handshake timeout; on failure retry with ``wait.Backoff{Duration: 100ms,
  Factor: 1.3, Jitter: 0.5, Steps: 20}``: 20 attempts with 19 growing sleeps between them, each
  sleep ``d + rand*0.5*d`` (k8s ``wait.Jitter``). When the steps run out the cycle starts over
  at once, and a connection that breaks is redialled at once with a fresh cycle;
- a ping every ``pong_timeout / 3``; the read deadline is ``pong_timeout`` and only a pong
  extends it, so a connection with no pong for ``pong_timeout`` is dropped and redialled;
- anything the server sends is read and discarded, so control frames are processed;
- every batch goes out as one binary ``WireStatMessages`` frame; writes (pings included) are
  serialised. Without a connection, or when the write fails, the batch is logged with
  ``stat_message_count`` and dropped: there is no buffering;
- ``connected`` is Knative's ``Status()``: the activator's health check depends on it.

Like Knative (gorilla's ``Close``), dropping a connection does not wait for a close handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator

import aiohttp

from dataplane.statpb import WireStatMessage, encode_wire_stat_messages

__all__ = [
    "BACKOFF_FACTOR",
    "BACKOFF_INITIAL",
    "BACKOFF_JITTER",
    "BACKOFF_STEPS",
    "StatSink",
    "backoff_delays",
]

log = logging.getLogger("activator.statsink")

BACKOFF_INITIAL = 0.1  # seconds
BACKOFF_FACTOR = 1.3
BACKOFF_JITTER = 0.5
BACKOFF_STEPS = 20

# Bound on tearing a connection down; the close frame is sent without waiting for the reply.
_CLOSE_TIMEOUT = 1.0


def backoff_delays(rng: random.Random) -> Iterator[float]:
    """The wait before each dial attempt, forever: 0 before the first attempt of each cycle of
    ``BACKOFF_STEPS`` attempts, then ``d_k + U[0,1)*BACKOFF_JITTER*d_k`` with
    ``d_k = BACKOFF_INITIAL * BACKOFF_FACTOR**(k-1)`` before attempt ``k+1``.

    This is ``wait.ExponentialBackoff`` (no sleep after the last step) called in a loop.
    """
    while True:
        yield 0.0
        d = BACKOFF_INITIAL
        for _ in range(BACKOFF_STEPS - 1):
            yield d + rng.random() * BACKOFF_JITTER * d
            d *= BACKOFF_FACTOR


class StatSink:
    """A websocket client that keeps itself connected and sends stat batches fire-and-forget.

    ``on_connect`` runs after each successful dial; ``on_disconnect`` once for each connection
    that ends, as soon as ``connected`` turns false (also for the one :meth:`close` ends).
    Callback errors are logged and ignored.
    """

    def __init__(
        self,
        url: str,
        *,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        handshake_timeout: float = 3.0,
        pong_timeout: float = 10.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = url
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._handshake_timeout = handshake_timeout
        self._pong_timeout = pong_timeout
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep  # back-off waits only; injectable for tests
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._sends: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether a connection currently exists."""
        return self._ws is not None

    async def start(self) -> None:
        """Start the background connect loop; returns at once."""
        if self._task is not None or self._closed:
            raise RuntimeError("StatSink already started")
        # One session for every dial; no request timeout: the handshake has its own.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="statsink")

    def send(self, messages: list[WireStatMessage]) -> None:
        """Send one batch as one binary frame, asynchronously; dropped (and logged) when there
        is no connection or the write fails."""
        if not messages:
            return
        ws = self._ws
        if ws is None:
            _log_dropped(len(messages), "connection has not yet been established")
            return
        data = encode_wire_stat_messages(messages)
        task = asyncio.get_running_loop().create_task(self._write(ws, data, len(messages)))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for t in list(self._sends):
            t.cancel()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            ws = await self._connect()
            try:
                await self._serve(ws)
            except Exception:  # a bug here must not end reconnecting
                log.exception("Connection to %s failed unexpectedly", self.url)

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        """Dial until it works, sleeping per :func:`backoff_delays`."""
        for delay in backoff_delays(self._rng):
            if delay > 0:
                await self._sleep(delay)
            try:
                return await self._dial()
            except Exception as e:  # any failure is retried; the loop must not die
                log.error(
                    "Websocket connection could not be established",
                    extra={"target": self.url, "error": repr(e)},
                )
        raise AssertionError("unreachable")  # backoff_delays never ends

    async def _dial(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        async with asyncio.timeout(self._handshake_timeout):
            return await self._session.ws_connect(
                self.url,
                autoping=False,  # pongs must be seen to extend the read deadline
                autoclose=True,
                heartbeat=None,
                timeout=aiohttp.ClientWSTimeout(ws_close=_CLOSE_TIMEOUT),
            )

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Own one connection: read it until it breaks, ping it meanwhile, then tear it down."""
        self._ws = ws
        log.debug("Connected to %s", self.url)
        _call(self._on_connect)
        pinger = asyncio.get_running_loop().create_task(self._ping_loop(ws))
        try:
            await self._read_loop(ws)
        finally:
            self._ws = None
            _call(self._on_disconnect)
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
            # The reader is no longer waiting (it returned, timed out or was cancelled), so
            # close() sends the close frame and drops the connection without awaiting a reply.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await ws.close()

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._pong_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.error("Connection to %s broke down, reconnecting: no pong", self.url)
                return
            try:
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                log.error("Connection to %s broke down, reconnecting: no pong", self.url)
                return
            kind = msg.type
            if kind is aiohttp.WSMsgType.PONG:
                deadline = loop.time() + self._pong_timeout
            elif kind is aiohttp.WSMsgType.PING:
                # autoping is off (to see pongs), so answer pings as gorilla's default handler
                # does; bounded, so a stuck write cannot stall the read deadline.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                        async with self._write_lock:
                            await ws.pong(msg.data)
            elif kind in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                log.error(
                    "Connection to %s broke down, reconnecting",
                    self.url,
                    extra={"close_code": ws.close_code, "error": repr(ws.exception())},
                )
                return
            # Text and binary frames are discarded: the stat server sends none.

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        interval = self._pong_timeout / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._write_lock:
                    await ws.ping()
            except Exception as e:
                log.error("Failed to send ping message to %s", self.url, extra={"error": repr(e)})

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, data: bytes, count: int) -> None:
        async with self._write_lock:
            if self._ws is not ws:
                _log_dropped(count, "connection has not yet been established")
                return
            try:
                await ws.send_bytes(data)
            except Exception as e:
                _log_dropped(count, repr(e))


def _log_dropped(count: int, error: str) -> None:
    log.error("Error while sending stats", extra={"stat_message_count": count, "error": error})


def _call(cb: Callable[[], None] | None) -> None:
    if cb is None:
        return
    try:
        cb()
    except Exception:
        log.exception("statsink callback failed")

"""One HTTP/2 stream seen as an :class:`~dataplane.proxy.Exchange`, so handlers run unchanged.

The queue-proxy's and the activator's handlers take an ``Exchange``: they read its headers, answer
it (``respond``/``error``), start its timeouts and ``proxy`` it, and learn its end through
``on_done``. An :class:`H2Stream` is that same object for one stream of an h2c connection: its
``hdr``/``hdr_out`` are filled from the HEADERS frame exactly as the HTTP/1 parser fills them,
and the few methods that touch the wire are overridden to go through the stream's HTTP/2
connection (``link``, :mod:`dataplane.h2engine`), which proxies it upstream over h2c. The breaker,
throttler, stats, drain, probe answers and request log therefore apply per stream, from one
place. This module is compiled with the engine (mypyc cannot subclass across the boundary) and
imports no HTTP/2 library: the ``link`` does the protocol work.
"""

from __future__ import annotations

from typing import Any

from .proxy import Exchange, ServerConnection
from .upstream import UpstreamPool

__all__ = ["H2Stream"]


class H2Stream(Exchange):
    """One request stream; ``conn`` is the (retired) HTTP/1 connection the h2c one came from."""

    __slots__ = (
        "link",
        "out_buf",
        "out_end",
        "out_size",
        "out_trailers",
        "req_buf",
        "req_end_sent",
        "req_ended",
        "req_h2_trailers",
        "reset",
        "resp_ended",
        "sid",
        "up",
        "up_sid",
    )

    def __init__(self, conn: ServerConnection, link: Any, sid: int) -> None:
        super().__init__(conn)
        self.version = "2.0"
        self.headers_complete = True
        self.link: Any = link  # the downstream H2 connection
        self.sid = sid
        self.up: Any = None  # the upstream H2 connection carrying this stream, once started
        self.up_sid = 0
        self.req_buf: list[bytes] = []  # request body not yet sent upstream
        self.req_ended = False  # the client ended its side
        self.req_end_sent = False
        self.req_h2_trailers: Any = None
        self.out_buf: list[bytes] = []  # response body waiting for the client's window
        self.out_size = 0
        self.out_end = False  # the response ends once out_buf is sent
        self.out_trailers: Any = None
        self.reset = False  # the downstream stream was reset (by either side)
        self.resp_ended = False  # END_STREAM sent to the client

    # -- overrides of the wire-facing parts of Exchange -------------------------------------
    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: bytes = b"",
        *,
        content_length: bool = True,
    ) -> None:
        if self.done or self.resp_started:
            return
        self.resp_status = status
        self.resp_size = len(body)
        self.resp_started = True
        self.link.respond(self, status, body if self.method != b"HEAD" else b"", headers)
        self._finish()

    def proxy(
        self, pool: UpstreamPool, *, host: bytes | None = None, extra_headers: bytes = b""
    ) -> None:
        if self.done:
            return
        self.pool = pool
        self.host_override = host
        self.extra_headers = extra_headers
        self.link.proxy(self, pool)

    def timed_out(self) -> None:
        if not self.done:
            self.link.timed_out(self)

    def abort(self) -> None:
        if self.done:
            return
        self.aborted = True
        self.link.cancel_upstream(self)
        self._finish()

    def finish(self) -> None:
        """The stream's exchange is over (response sent, reset or failed): run ``on_done``."""
        self._finish()

"""One HTTP/2 stream as a :class:`~dataplane.request.Request`, so handlers run unchanged.

An :class:`H2Stream` shares only the protocol-neutral request state with HTTP/1's exchange
(:class:`~dataplane.handle.RequestHandle`): its ``hdr``/``hdr_out`` are filled from the HEADERS
frame with the server's header table, exactly as the HTTP/1 parser fills an exchange's, and
its wire work goes through the stream's HTTP/2 connection (``link``,
:class:`dataplane.h2engine.H2ServerConnection`), which proxies it upstream over h2c. The
breaker, throttler, stats, drain, probe answers and request log therefore apply per stream,
from one place. Compiled with the engine; it imports no HTTP/2 library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .handle import RequestHandle

if TYPE_CHECKING:
    from .proxy import HTTPServer
    from .upstream import UpstreamPool

__all__ = ["H2Stream"]


class H2Stream(RequestHandle):
    """One request stream of a downstream h2c connection (``link``)."""

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

    def __init__(
        self, server: HTTPServer, peer: bytes, peer_port: int, link: Any, sid: int
    ) -> None:
        super().__init__(server, peer, peer_port)
        self.version = "2.0"
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

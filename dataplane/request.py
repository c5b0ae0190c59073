"""The request handle handlers program against, whichever protocol carried the request.

The queue-proxy's and the activator's handlers (and the admin endpoints) take a
:class:`Request`: they read its request line and the headers their server config declared
(``ServerConfig(index_headers=..., strip_headers=...)``), answer it (``respond``/``error``), or
start its timeouts and ``proxy`` it, and learn its end through ``on_done``. Two classes
implement it, neither inheriting the other's wire state:

- :class:`dataplane.proxy.Exchange`, one HTTP/1.1 request on a downstream connection;
- :class:`dataplane.h2stream.H2Stream`, one request stream of an h2c connection.

Both share the protocol-neutral part (:class:`dataplane.handle.RequestHandle`: request line,
indexed headers, per-request context, deadlines, the ``on_done`` callback). This module holds
types only (it is not compiled: mypyc treats a Protocol as ``object``); the module-level checks
at the bottom make mypy prove that both classes satisfy it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .timeouts import TimeoutPolicy
    from .upstream import UpstreamPool, UpstreamUser

__all__ = ["Handler", "Request"]


class Request(Protocol):
    """One request, as a handler sees it (HTTP/1.1 exchange or HTTP/2 stream)."""

    # -- request line and headers ------------------------------------------------------------
    method: bytes
    target: bytes  # origin form, as forwarded (path and query)
    version: str  # "1.0", "1.1" or "2.0"
    #: The headers the engine indexes (lower-case name -> first value; see ServerConfig).
    hdr: dict[bytes, bytes]
    #: The forwarded header lines: pieces that join into whole lines, each ending in CRLF
    #: ((name, ": ", value, CRLF) groups, or runs of lines as the client wrote them).
    hdr_out: list[bytes]
    req_chunked: bool  # HTTP/1.1 chunked request body
    upgrade: bool  # an HTTP/1.1 upgrade request (always False on HTTP/2)
    start: float  # loop time the request was dispatched

    @property
    def path(self) -> bytes: ...

    @property
    def has_body(self) -> bool: ...

    @property
    def peer(self) -> bytes:
        """The client's IP address (as Go reports it)."""
        ...

    @property
    def peer_port(self) -> int: ...

    def header(self, lname: bytes) -> bytes | None:
        """An indexed request header by lower-case name."""
        ...

    def find_header(self, lname: bytes) -> bytes | None:
        """Any request header by lower-case name (slower: scans the forwarded lines)."""
        ...

    def drop_header(self, lname: bytes) -> None:
        """Remove a request header before the request is forwarded."""
        ...

    # -- per-request state -------------------------------------------------------------------
    ctx: Any  # the handler's own per-request value
    #: Called exactly once when the request ends, whichever way it ends.
    on_done: Callable[[Request], None] | None
    resp_status: int
    resp_size: int
    #: Header lines added to the proxied response (and to a 101).
    resp_extra: bytes
    done: bool
    aborted: bool  # the client went away

    # -- answering -----------------------------------------------------------------------------
    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: bytes = b"",
        *,
        content_length: bool = True,
    ) -> None:
        """Answer locally with a complete response (``headers``: ready-made header lines)."""
        ...

    def error(self, status: int, message: str) -> None:
        """A Go ``http.Error`` response: ``message`` and a newline as text/plain."""
        ...

    def proxy(
        self, pool: UpstreamPool, *, host: bytes | None = None, extra_headers: bytes = b""
    ) -> None:
        """Forward the request to ``pool``'s destination and stream the response back."""
        ...

    def set_timeouts(self, policy: TimeoutPolicy) -> None:
        """Start the request's total/response-start/idle limits (from ``start``)."""
        ...


#: A server's request handler.
Handler = Callable[[Request], None]


if TYPE_CHECKING:  # mypy proves that both protocol objects are requests
    from .h2stream import H2Stream
    from .proxy import Exchange

    def _exchange_is_a_request(ex: Exchange) -> Request:
        return ex

    def _h2_stream_is_a_request(st: H2Stream) -> Request:
        return st

    def _exchange_is_an_upstream_user(ex: Exchange) -> UpstreamUser:
        return ex

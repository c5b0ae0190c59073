"""The protocol-neutral part of a request: what HTTP/1.1's exchange and HTTP/2's stream share.

:class:`RequestHandle` holds no wire state: the request line, the indexed headers, the
handler's context and ``on_done``, the response's status and size, and the deadlines the
server's sweep watches. :class:`dataplane.proxy.Exchange` (HTTP/1.1) and
:class:`dataplane.h2stream.H2Stream` (HTTP/2) extend it with their own wire state and implement
``respond``/``proxy``/``timed_out``/``abort``; together they satisfy
:class:`dataplane.request.Request`. Compiled with mypyc with the engine (a native base class
keeps attribute reads native in the compiled handlers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .h1core import lines_without
from .http1 import error_body_headers
from .timeouts import RequestDeadlines, TimeoutPolicy

if TYPE_CHECKING:
    from .proxy import HTTPServer
    from .request import Request
    from .upstream import UpstreamPool

__all__ = ["RequestHandle"]

log = logging.getLogger("dataplane.proxy")

_CRLF: Final = b"\r\n"


class RequestHandle:
    """Request state shared by both protocols (see the module docstring)."""

    __slots__ = (
        "aborted",
        "body_done",
        "ctx",
        "deadline",
        "deadlines",
        "done",
        "extra_headers",
        "hdr",
        "hdr_out",
        "host_override",
        "last_write",
        "method",
        "on_done",
        "peer",
        "peer_port",
        "pool",
        "req_chunked",
        "resp_extra",
        "resp_size",
        "resp_started",
        "resp_status",
        "server",
        "start",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self, server: HTTPServer, peer: bytes, peer_port: int) -> None:
        self.server = server
        self.peer = peer
        self.peer_port = peer_port
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.hdr: dict[bytes, bytes] = {}
        self.hdr_out: list[bytes] = []
        self.req_chunked = False
        self.upgrade = False
        self.body_done = False
        self.start = 0.0
        self.pool: UpstreamPool | None = None
        self.host_override: bytes | None = None
        self.extra_headers = b""
        self.resp_started = False
        self.resp_status = 0
        self.resp_size = 0
        self.resp_extra = b""  # header lines the handler adds to the proxied response
        self.last_write: float | None = None
        self.deadline = 0.0  # next time the server's sweep must look at this request; 0: none
        self.deadlines: RequestDeadlines | None = None
        self.on_done: Callable[[Request], None] | None = None
        self.ctx: Any = None
        self.done = False
        self.aborted = False

    # -- request view for handlers ---------------------------------------------------------
    @property
    def path(self) -> bytes:
        t = self.target
        i = t.find(b"?")
        return t if i < 0 else t[:i]

    @property
    def has_body(self) -> bool:
        if self.req_chunked:
            return True
        clen = self.hdr.get(b"content-length")  # (most requests have none: no strip() call)
        return clen is not None and clen.strip() not in (b"0", b"")

    def header(self, lname: bytes) -> bytes | None:
        """A request header by lower-case name (the engine's and the server's declared ones)."""
        return self.hdr.get(lname)

    def find_header(self, lname: bytes) -> bytes | None:
        """Any request header by lower-case name (slower: scans the pass-through list)."""
        v = self.hdr.get(lname)
        if v is not None:
            return v
        # (the pass-through pieces join into whole lines: see h1core.lines_without)
        for line in b"".join(self.hdr_out).split(_CRLF):
            name, colon, value = line.partition(b":")
            if colon and name.lower() == lname:
                return value.strip(b" \t")
        return None

    def drop_header(self, lname: bytes) -> None:
        """Remove a request header (all its lines) before the request is forwarded."""
        self.hdr.pop(lname, None)
        self.hdr_out = lines_without(self.hdr_out, {lname})

    # -- answering (each protocol implements these) ----------------------------------------
    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: bytes = b"",
        *,
        content_length: bool = True,
    ) -> None:
        raise NotImplementedError

    def error(self, status: int, message: str) -> None:
        """A Go ``http.Error`` response: ``message`` + newline as text/plain."""
        body = message.encode() + b"\n"
        self.respond(status, body, error_body_headers(body), content_length=False)

    def proxy(
        self, pool: UpstreamPool, *, host: bytes | None = None, extra_headers: bytes = b""
    ) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """The client is gone: release everything (``on_done`` runs)."""
        raise NotImplementedError

    def timed_out(self) -> None:
        """A limit set by :meth:`set_timeouts` passed."""
        raise NotImplementedError

    # -- timers ----------------------------------------------------------------------------
    def set_timeouts(self, policy: TimeoutPolicy) -> None:
        """Start the total/response-start/idle limits of this request (from its start).

        No timer per request: the server sweeps its timed requests every 50 ms, so a limit
        fires within 50 ms after it passes. The common total-only policy costs one float.
        """
        if self.done:
            return
        if policy.response_start > 0 or policy.idle > 0:
            self.deadlines = d = RequestDeadlines(policy, self.start)
            when = d.next_deadline(None)
            if when is None:
                return
            self.deadline = when
        elif policy.total > 0:
            self.deadline = self.start + policy.total
        else:
            return
        self.server.watch(self)

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep once ``now`` has reached ``self.deadline``."""
        if self.done:
            return
        d = self.deadlines
        if d is not None and not d.expired(now, self.last_write):
            when = d.next_deadline(self.last_write)
            self.deadline = when if when is not None else 0.0
            if not self.deadline:
                self.server.timed.discard(self)
            return
        self.timed_out()

    # -- end -------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.deadline:
            self.server.timed.discard(self)
        cb = self.on_done
        if cb is not None:
            self.on_done = None
            try:
                cb(self)
            except Exception:
                log.exception("on_done callback failed")
        self._ended()

    def _ended(self) -> None:
        """After ``on_done``: the protocol's own bookkeeping (the next pipelined request...)."""

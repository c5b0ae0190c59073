"""Listening and connecting sockets without name resolution.

``loop.create_server(host, port)`` and ``loop.create_connection(host, port)`` resolve even
numeric addresses through ``getaddrinfo`` on libuv's thread pool, which starts four threads (and
their malloc arenas) in a sidecar that otherwise needs none. For IP literals we build the
sockets ourselves. Only ``_socket`` is imported here so the console entry can bind its port
before asyncio is imported.
"""

from __future__ import annotations

import _socket
from typing import Any

__all__ = ["ip_family", "listen_socket"]


def ip_family(host: str) -> int | None:
    """AF_INET or AF_INET6 for an IP literal, None for a name."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
        except OSError:
            continue
        return int(family)
    return None


def listen_socket(host: str | None, port: int, backlog: int = 2048) -> Any:
    """A bound, listening, non-blocking TCP socket.

    ``host`` empty or None: all interfaces, dual-stack ``[::]`` when IPv6 works, else
    ``0.0.0.0`` (Go's ``:port``). Raises OSError (address in use, ...) or ValueError for a host
    name, which callers resolve the usual way.
    """
    if host:
        family = ip_family(host)
        if family is None:
            raise ValueError(f"not an IP address: {host!r}")
        candidates = [(family, host)]
    else:
        candidates = [(_socket.AF_INET6, "::"), (_socket.AF_INET, "0.0.0.0")]
    last: OSError | None = None
    for family, addr in candidates:
        try:
            s = _socket.socket(family, _socket.SOCK_STREAM)
        except OSError as e:
            last = e
            continue
        try:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if family == _socket.AF_INET6 and not host:
                s.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)
            s.bind((addr, port))
            s.listen(backlog)
            s.setblocking(False)
        except OSError as e:
            s.close()
            last = e
            if e.errno == 98:  # EADDRINUSE: no point trying the other family
                raise
            continue
        return s
    assert last is not None
    raise last

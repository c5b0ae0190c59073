"""The h2c proxy's entry points, imported by :mod:`dataplane.h2c` on the first HTTP/2 connection.

The protocol itself is :mod:`dataplane.h2engine` (compiled with mypyc with the rest of the data
path). This module stays interpreted so that it can also lend tests ``GracefulConnection`` (the
``h2`` library's connection with our drain semantics, :mod:`dataplane.h2ref`) without the proxy
importing ``h2``: mypyc does not support a module ``__getattr__``.
"""

from __future__ import annotations

from .h2engine import H2ServerConnection, H2Upstream, take_over, upgrade

__all__ = ["H2ServerConnection", "H2Upstream", "take_over", "upgrade"]


def __getattr__(name: str) -> object:
    if name == "GracefulConnection":
        from .h2ref import GracefulConnection

        return GracefulConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

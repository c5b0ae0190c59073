"""Starting a server on the port a setting names: a port that cannot be had ends the process
with one line naming the setting (the queue-proxy's and the activator's ports)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .envconfig import ConfigError

if TYPE_CHECKING:
    from .proxy import HTTPServer

__all__ = ["listen"]


async def listen(
    server: HTTPServer,
    host: str | None,
    port: int,
    setting: str,
    *,
    sock: Any = None,
    ssl: Any = None,
) -> None:
    """``server.start`` on ``host:port`` (or the bound ``sock``, with TLS when ``ssl``);
    ConfigError naming ``setting`` when the port cannot be had."""
    try:
        if sock is not None:
            await server.start(None, port, sock=sock)
        else:
            await server.start(host, port, ssl=ssl)
    except OSError as e:
        raise ConfigError(
            f"{setting}: cannot listen on {host or ''}:{port}: {e.strerror or e}"
        ) from None

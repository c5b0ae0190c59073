"""Starting a server on the port a setting names: a port that cannot be had ends the process
with one line naming the setting (the queue-proxy's and the activator's ports)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .envconfig import ConfigError

if TYPE_CHECKING:
    from .proxy import HTTPServer

__all__ = ["handle_stop_signals", "hold_stop_signals", "listen"]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def hold_stop_signals(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Hold SIGTERM and SIGINT while the servers start (a port may already answer): returns the
    list they are kept in, for :func:`handle_stop_signals`. Until a handler of ours is installed,
    asyncio.Runner's own SIGINT handler would cancel the serving task (the process then exits
    with KeyboardInterrupt) and SIGTERM would end the process without its drain."""
    held: list[int] = []
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, held.append, sig)
    return held


def handle_stop_signals(
    loop: asyncio.AbstractEventLoop, handler: Callable[[int], None], held: list[int]
) -> None:
    """From now on SIGTERM and SIGINT go to ``handler``, and those held while starting too."""
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, handler, sig)
    for early in held:
        handler(early)


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

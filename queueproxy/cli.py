"""``queue-proxy`` console entry: bind the serving port first, import the rest second.

Importing asyncio and uvloop takes most of the start-up time. Binding the main port before that
lets the kubelet's and the activator's first probes connect at once (they are answered as soon
as the event loop runs) instead of being refused and retried a probe period later.
"""

from __future__ import annotations

import os
import sys


def _early_listen(environ: os._Environ[str]) -> object | None:
    """A listening socket on QUEUE_SERVING_PORT, or None (errors are reported later)."""
    from dataplane.sockets import listen_socket

    try:
        port = int(environ.get("QUEUE_SERVING_PORT", ""))
        if not 0 < port < 65536:
            return None
        sock: object = listen_socket(environ.get("QUEUE_BIND_ADDRESS", ""), port)
        return sock
    except (OSError, ValueError):
        return None


def main() -> None:
    sock = _early_listen(os.environ)
    from .main import run

    sys.exit(run(os.environ, main_sock=sock))

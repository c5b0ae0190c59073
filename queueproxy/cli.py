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


# glibc's malloc serves blocks above its mmap threshold with fresh mmaps, so every large read
# buffer page-faults in and out again; setting the variable also fixes the threshold instead of
# letting it float. Measured on 1 MiB responses: 330 req/s at 2,970 us of CPU per request with
# the threshold at 128 KiB, 1,215 req/s at 780 us with these values (benchmarks/RESULTS.md).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "2097152"}


def _tune_malloc() -> None:
    """Re-exec once with the malloc settings when they are missing (the image sets them, so
    this only costs an interpreter start for hand-run processes). KND_MALLOC_TUNING=0 skips."""
    env = os.environ
    if env.get("KND_MALLOC_TUNING") == "0" or all(k in env for k in MALLOC_ENV):
        return
    new_env = dict(env)
    for k, v in MALLOC_ENV.items():
        new_env.setdefault(k, v)
    # -P: never put the current directory first on sys.path (it could shadow the install)
    argv = [sys.executable, "-P", "-m", "queueproxy", *sys.argv[1:]]
    try:
        os.execve(sys.executable, argv, new_env)
    except OSError:
        return  # carry on untuned rather than fail


def main() -> None:
    _tune_malloc()
    sock = _early_listen(os.environ)
    from .main import run

    sys.exit(run(os.environ, main_sock=sock))

"""Knative's Go queue-proxy as a same-run baseline (``--go PATH`` of several scenarios).

The binary is the user's: a queue-proxy they built from Knative's source (nothing here builds
or ships one). It reads the same environment contract as ours (``CONTAINER_CONCURRENCY``,
``QUEUE_SERVING_PORT``, ``QUEUE_SERVING_TLS_PORT``, ``USER_PORT``, ``SERVING_*``, ...), so a
scenario starts it with the env it gives our queue-proxy. Two things differ and are handled here:

- It binds two ports no variable changes: the admin port 8022 and the autoscaler metrics port
  9090. Only one can run at a time, so a scenario checks both are free before each start and
  says why when they are not.
- It serves TLS on ``QUEUE_SERVING_TLS_PORT`` only when ``tls.crt`` and ``tls.key`` exist in
  the fixed directory ``/var/lib/knative/certs`` (no variable moves it). ``installed_certs``
  puts the benchmark's pair there for the start only: Knative's certificate watcher keeps the
  pair it loaded when a later reload finds the files gone (it logs the error once a minute), so
  the files are removed as soon as the TLS port listens.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from benchmarks._procs import BenchError, StartError

ADMIN_PORT = 8022  # networking.QueueAdminPort in Knative
METRICS_PORT = 9090  # networking.AutoscalingQueueMetricsPort in Knative
FIXED_PORTS = (ADMIN_PORT, METRICS_PORT)
CERT_DIR = Path("/var/lib/knative/certs")  # queue.CertDirectory in Knative


def add_go_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--go PATH``: one option per scenario, with that scenario's wording."""
    parser.add_argument(
        "--go",
        metavar="PATH",
        default=None,
        help=f"path of a Knative queue-proxy binary you built from Knative's source: {what} "
        "(it binds ports 8022 and 9090, which must be free; skipped when not given)",
    )


def go_path(value: str | None) -> str | None:
    """The ``--go`` binary, checked to be an executable file; None when not given."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BenchError(f"--go {value}: not an executable file")
    return str(path.resolve())


def check_fixed_ports(ports: tuple[int, ...] = FIXED_PORTS) -> None:
    """StartError naming the port when one of Knative's fixed ports cannot be bound now.

    Bound like Go binds them (all addresses, SO_REUSEADDR), so a port in TIME_WAIT passes and a
    listening one (another Go queue-proxy, a cluster component) fails.
    """
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
                raise StartError(
                    f"port {port} {why}: Knative's Go queue-proxy binds {ADMIN_PORT} (admin) and "
                    f"{METRICS_PORT} (metrics) whatever its env says; stop what holds it"
                ) from exc


@contextlib.contextmanager
def installed_certs(cert: Path, key: Path, cert_dir: Path = CERT_DIR) -> Iterator[Path]:
    """Copy a certificate pair to ``cert_dir`` (tls.crt, tls.key) for the ``with`` block.

    Refuses (BenchError) when either file is already there: they are someone else's. On the way
    out it removes the two files and any directory it created, and nothing else; callers leave
    the block as soon as the Go queue-proxy listens on its TLS port.
    """
    targets = (cert_dir / "tls.crt", cert_dir / "tls.key")
    present = [str(p) for p in targets if p.exists()]
    if present:
        raise BenchError(f"{', '.join(present)} already exist(s); not overwriting them")
    created: list[Path] = []
    missing = cert_dir
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    written: list[Path] = []
    try:
        try:
            cert_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(
                f"cannot create {cert_dir} for Knative's Go queue-proxy (needs root): {exc}"
            ) from exc
        for src, dst in zip((cert, key), targets, strict=True):
            shutil.copyfile(src, dst)
            written.append(dst)
            dst.chmod(0o600)
        print(f"+ wrote {targets[0]} and {targets[1]} for Knative's Go queue-proxy", flush=True)
        yield cert_dir
    finally:
        for path in written:
            path.unlink(missing_ok=True)
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        if written:
            print(f"+ removed them{' and ' + str(created[-1]) if created else ''}", flush=True)

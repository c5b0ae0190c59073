"""Helpers for the ``knd run`` integration tests: the process, its output, a test app, pids.

``knd run`` runs as a real subprocess (``python -m knd run ...``) with the venv's ``bin`` first on
``PATH``, so that ``python`` in a service command is the venv's. Its stdout and stderr are read
by threads into line lists; the tests poll them (and the admin port's ``/status``) with deadlines.

The test app (:data:`APP`, written to a temporary file) is a small asyncio HTTP/1.1 server on
``$PORT``. Each process writes ``$KND_TEST_DIR/<pid>.json`` when it starts and whenever its most
requests in flight at once grows, so a test can see every pod that ever ran and its peak.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .helpers import free_ports

__all__ = [
    "APP",
    "REPO",
    "VENV_BIN",
    "AppRecords",
    "Knd",
    "ScaleLine",
    "alive",
    "check_decision",
    "free_ports",
    "knd_env",
    "scale_lines",
]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)

APP = r"""
import asyncio, json, os, sys, time

DIR = os.environ["KND_TEST_DIR"]
PID = os.getpid()
SERVICE = os.environ.get("K_SERVICE", "")
inflight = 0
peak = 0


def save():
    tmp = os.path.join(DIR, f"{PID}.tmp")
    with open(tmp, "w") as f:
        json.dump({"pid": PID, "service": SERVICE, "peak": peak, "started": START}, f)
    os.replace(tmp, os.path.join(DIR, f"{PID}.json"))


async def handle(reader, writer):
    global inflight, peak
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            length = 0
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if length:
                await reader.readexactly(length)
            path, _, query = line.split()[1].decode().partition("?")
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            out = {"pid": PID, "service": SERVICE, "path": path}
            if path == "/sleep":
                inflight += 1
                if inflight > peak:
                    peak = inflight
                    save()
                try:
                    await asyncio.sleep(int(params.get("ms", "100")) / 1000)
                finally:
                    inflight -= 1
            elif path == "/env":
                out["env"] = {k: os.environ.get(k) for k in params.get("names", "").split(",")}
            data = json.dumps(out).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(data), data)
            )
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    delay = int(os.environ.get("KND_TEST_START_DELAY_MS", "0"))  # a slower cold start
    if delay:
        await asyncio.sleep(delay / 1000)
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["PORT"]))
    save()
    async with server:
        await server.serve_forever()


START = time.time()
asyncio.run(main())
"""

SCALE_RE = re.compile(
    r"^\d\d:\d\d:\d\d (?P<svc>[-a-z0-9]+): scale (?P<old>\d+) -> (?P<new>\d+) "
    r"\((?:stable (?P<stable>[\d.]+), panic (?P<panic>[\d.]+)(?P<panicking>, panicking)?"
    r"|(?P<initial>initial scale))\)$"
)
STARTED_RE = re.compile(
    r": (?:started|restarted \(restart \d+\)): app pid (\d+) .*queue-proxy pid (\d+)"
)


def knd_env(test_dir: Path, **extra: str) -> dict[str, str]:
    """knd's environment: ours, the venv first on PATH, the app's record directory."""
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    env["KND_TEST_DIR"] = str(test_dir)
    env.update(extra)
    return env


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class _Lines:
    """A stream's lines, read by a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Knd:
    """A running ``knd run``."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        test_dir: Path,
        port: int,
        admin_port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.port = port
        self.admin_port = admin_port
        self.test_dir = test_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "knd", "run", *self.args],
            cwd=REPO,
            env=env if env is not None else knd_env(test_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out = _Lines(self.proc.stdout)
        self._err = _Lines(self.proc.stderr)

    # -- output ----------------------------------------------------------------------------
    @property
    def stdout(self) -> list[str]:
        return self._out.snapshot()

    @property
    def stderr(self) -> list[str]:
        return self._err.snapshot()

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])

    async def wait_line(
        self, pattern: str, *, timeout: float = 15.0, after: int = 0, stream: str = "stdout"
    ) -> tuple[int, re.Match[str]]:
        """The first line at index >= ``after`` matching ``pattern`` (regex search)."""
        rx = re.compile(pattern)
        src = self._out if stream == "stdout" else self._err
        deadline = time.monotonic() + timeout
        while True:
            lines = src.snapshot()
            for i in range(after, len(lines)):
                m = rx.search(lines[i])
                if m:
                    return i, m
            if self.proc.poll() is not None and len(src.snapshot()) == len(lines):
                src.join(1.0)
                if len(src.snapshot()) == len(lines):
                    raise AssertionError(
                        f"knd exited ({self.proc.returncode}) before a line matching "
                        f"{pattern!r}:\n{self.output()}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no line matching {pattern!r} after {timeout}s:\n{self.output()}"
                )
            await asyncio.sleep(0.02)

    def app_pids(self) -> set[int]:
        return {int(m.group(1)) for ln in self.stdout if (m := STARTED_RE.search(ln))}

    def child_pids(self) -> set[int]:
        """Every app and queue-proxy pid knd said it started."""
        out: set[int] = set()
        for ln in self.stdout:
            m = STARTED_RE.search(ln)
            if m:
                out.update((int(m.group(1)), int(m.group(2))))
        return out

    # -- admin -----------------------------------------------------------------------------
    async def status(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as c:
            r = await c.get(f"http://127.0.0.1:{self.admin_port}/status")
            r.raise_for_status()
            services: list[dict[str, Any]] = r.json()["services"]
            return services

    async def wait_status(
        self,
        pred: Callable[[dict[str, dict[str, Any]]], bool],
        what: str,
        *,
        timeout: float = 15.0,
    ) -> dict[str, dict[str, Any]]:
        """Poll ``/status`` (by service name) until ``pred`` holds."""
        deadline = time.monotonic() + timeout
        last: dict[str, dict[str, Any]] = {}
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"knd exited while waiting for {what}:\n{self.output()}")
            try:
                last = {s["service"]: s for s in await self.status()}
            except httpx.HTTPError:
                pass
            else:
                if pred(last):
                    return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; last status {last}\n"
                    + self.output()
                )
            await asyncio.sleep(0.05)

    async def wait_up(self, timeout: float = 15.0) -> None:
        await self.wait_line(r"status: knd status --admin-port", timeout=timeout)

    # -- lifecycle -------------------------------------------------------------------------
    async def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while (rc := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        self._out.join(2.0)
        self._err.join(2.0)
        return rc

    async def interrupt(self, timeout: float = 20.0) -> int:
        """SIGINT (Ctrl-C) and wait for the exit; SIGKILL if it takes longer than ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        rc = await self.wait_exit(timeout)
        if rc is None:
            self.kill()
            raise AssertionError(f"knd did not exit {timeout}s after SIGINT:\n{self.output()}")
        return rc

    def kill(self) -> None:
        """Last resort: SIGKILL knd and whatever it said it started."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in self.child_pids():
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=10)
        self._out.join(2.0)
        self._err.join(2.0)


class AppRecords:
    """What the test app's processes wrote into ``KND_TEST_DIR``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def all(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.directory.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def pids(self) -> set[int]:
        return {r["pid"] for r in self.all()}

    def peaks(self) -> dict[int, int]:
        return {r["pid"]: r["peak"] for r in self.all()}


@dataclass(frozen=True)
class ScaleLine:
    index: int
    service: str
    old: int
    new: int
    stable: float | None
    panic: float | None
    panicking: bool
    text: str


def scale_lines(lines: Iterable[str]) -> list[ScaleLine]:
    out = []
    for i, ln in enumerate(lines):
        m = SCALE_RE.match(ln)
        if m is None:
            continue
        initial = m.group("initial") is not None
        out.append(
            ScaleLine(
                i,
                m.group("svc"),
                int(m.group("old")),
                int(m.group("new")),
                None if initial else float(m.group("stable")),
                None if initial else float(m.group("panic")),
                m.group("panicking") is not None,
                ln,
            )
        )
    return out


def _ceil_range(value: float, target: float) -> tuple[int, int]:
    """ceil(v / target) for every v the one-decimal print of ``value`` may stand for."""
    lo = max(0, math.ceil(round((value - 0.05) / target, 9)))
    hi = max(0, math.ceil(round((value + 0.05) / target, 9)))
    return lo, hi


def check_decision(
    line: ScaleLine, *, target: float, min_scale: int = 0, max_scale: int = 0
) -> str | None:
    """Whether a scale event agrees with the KPA formulas (SPEC §3.4); a reason if not.

    Scale-ups must be exactly the formula (``ceil(stable/target)``, or the larger of that and
    ``ceil(panic/target)`` in panic), within min/max scale. A scale-down may be held above the
    formula by the max-scale-down rate (at most half the pods go at once) and by the rule that
    an active revision keeps one pod for a stable window; it is never below the formula.
    """
    if line.stable is None or line.panic is None:
        return None  # the initial scale
    lo, hi = _ceil_range(line.stable, target)
    if line.panicking:
        plo, phi = _ceil_range(line.panic, target)
        lo, hi = max(lo, plo), max(hi, phi)

    def bound(x: int) -> int:
        x = max(x, min_scale)
        return min(x, max_scale) if max_scale else x

    lo, hi = bound(lo), bound(hi)
    if line.new > line.old:
        ok = lo <= line.new <= hi
    else:
        ok = lo <= line.new <= max(hi, line.old // 2, 1)
    if ok:
        return None
    return f"{line.text!r}: expected {lo}..{hi} for target {target}"

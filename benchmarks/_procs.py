"""Child processes for benchmarks: start in their own session, always stop by pid, read /proc.

Every process a scenario starts goes through a ``ProcessSet``; leaving its ``with`` block (normally,
on an exception, on Ctrl-C, or on SIGTERM/SIGHUP via ``signals_raise_system_exit``) stops them all:
SIGTERM to the child's own process group (its pgid is its pid, so nginx workers go too), then
SIGKILL after a grace period.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Ports the queue-proxy (ours or Knative's) may bind by default; never hand these out.
RESERVED_PORTS = frozenset({8012, 8013, 8022, 8112, 9090, 9091, 8008})


class BenchError(Exception):
    """A problem the user can fix (missing tool, no root, bad option): printed without traceback."""


class StartError(Exception):
    """A target could not be started or does not answer; the scenario reports it and goes on."""


@contextlib.contextmanager
def signals_raise_system_exit() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit so ``finally``/``with`` cleanup runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class ProcessSet:
    """Owns child processes; ``stop_all`` (run on exit of the ``with`` block) ends each by pid."""

    def __init__(self, grace_seconds: float = 3.0) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._grace = grace_seconds

    def __enter__(self) -> ProcessSet:
        atexit.register(self.stop_all)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()
        atexit.unregister(self.stop_all)

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        stdout_pipe: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session; stderr (and stdout unless piped) go to ``log_path``."""
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise StartError(f"cannot exec {argv[0]}: {exc.strerror or exc}") from exc
        finally:
            if log_path:
                log.close()  # type: ignore[union-attr]
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], *, graceful: bool = True) -> int | None:
        """Stop one child and its process group: SIGTERM, then SIGKILL after the grace period.

        ``graceful=False`` sends SIGKILL at once (nothing to drain, e.g. after a start-up probe).
        """
        return self._stop_many([proc], graceful=graceful)[0]

    def stop_all(self) -> None:
        """Stop every child still owned, all at once (so drain periods overlap)."""
        self._stop_many(list(reversed(self._procs)), graceful=True)

    def _stop_many(
        self, procs: list[subprocess.Popen[bytes]], *, graceful: bool
    ) -> list[int | None]:
        # A group is signalled only while its leader is not yet reaped, so the pgid (the leader's
        # pid) cannot have been reused; descendants that outlive the leader are killed by pid.
        members: dict[int, list[int]] = {}
        for proc in procs:
            if proc.poll() is None:
                members[proc.pid] = [pid for pid in process_tree(proc.pid) if pid != proc.pid]
                _signal_group(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + self._grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self._grace)
        for leader, pids in members.items():
            for pid in pids:
                with contextlib.suppress(OSError):
                    if os.getpgid(pid) == leader:
                        os.kill(pid, signal.SIGKILL)
        for proc in procs:
            if proc.stdout is not None:
                proc.stdout.close()
            if proc in self._procs:
                self._procs.remove(proc)
        return [proc.returncode for proc in procs]


def _signal_group(pgid: int, sig: int) -> None:
    """Signal the process group a child leads (it was started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    """A loopback TCP port that is free right now (and not one a queue-proxy binds by default)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port
    raise BenchError("could not find a free loopback port")


def wait_listening(
    port: int,
    proc: subprocess.Popen[bytes] | None,
    timeout: float,
    interval: float = 0.001,
    log_path: Path | None = None,
) -> float:
    """Poll a TCP connect to 127.0.0.1:port every ``interval`` s; return seconds waited.

    Raises StartError when ``proc`` exits first or the deadline passes.
    """
    start = time.perf_counter()
    deadline = start + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.05, interval))
            try:
                sock.connect(("127.0.0.1", port))
                return time.perf_counter() - start
            except OSError:
                pass
        if proc is not None and proc.poll() is not None:
            raise StartError(f"exited with status {proc.returncode}{log_tail(log_path)}")
        if time.perf_counter() >= deadline:
            raise StartError(f"not listening on port {port} after {timeout:g}s{log_tail(log_path)}")
        time.sleep(interval)


def log_tail(log_path: Path | None, lines: int = 3) -> str:
    """The last few lines of a child's log, formatted to append to an error message."""
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").strip().splitlines()
    tail = " | ".join(line.strip() for line in text[-lines:] if line.strip())
    return f": {tail}" if tail else ""


# --- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (by scanning /proc for parent pids)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime (and reaped children's cutime+cstime) summed over the process tree."""
    return sum(tree_cpu_split(root))


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process tree (reaped children's included): the
    system part is the kernel's work for it (socket reads and writes, polling)."""
    user = system = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree_rss_mib(root: int) -> float:
    """VmRSS summed over the process tree, in MiB."""
    return sum(_status_kib(pid, "VmRSS") for pid in process_tree(root)) / 1024


def tree_hwm_mib(root: int) -> float:
    """VmHWM (peak RSS) summed over the process tree, in MiB."""
    return sum(_status_kib(pid, "VmHWM") for pid in process_tree(root)) / 1024


def reset_tree_hwm(root: int) -> None:
    """Reset VmHWM to the current RSS for the tree (``echo 5 > /proc/<pid>/clear_refs``)."""
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_busy_ticks() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            nums = [int(v) for v in values]
            idle = nums[3] + (nums[4] if len(nums) > 4 else 0)
            result[int(name[3:])] = (sum(nums[:8]) - idle, sum(nums[:8]))
    return result


def cpu_busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[int, float]:
    """Per-CPU busy percentage between two ``cpu_busy_ticks`` samples."""
    out = {}
    for cpu, (busy1, total1) in after.items():
        busy0, total0 = before.get(cpu, (busy1, total1))
        span = total1 - total0
        out[cpu] = 100.0 * (busy1 - busy0) / span if span > 0 else 0.0
    return out

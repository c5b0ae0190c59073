"""Find the external tools a scenario needs, installing Debian packages with apt-get if missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from benchmarks._procs import BenchError

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# Executable name -> Debian package that ships it.
PACKAGES = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def which(name: str) -> str | None:
    """Locate an executable, also in /usr/sbin (where Debian puts nginx) when not on PATH."""
    return shutil.which(name, path=SEARCH_PATH)


@contextlib.contextmanager
def _no_service_start() -> Iterator[None]:
    """Keep package scripts from starting a system nginx (policy-rc.d exit 101), if none exists."""
    if POLICY_RC_D.exists():
        yield
        return
    print(f"+ writing a temporary {POLICY_RC_D} (exit 101) so apt starts no system service")
    POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)
        print(f"+ removed {POLICY_RC_D}")


def _run(argv: list[str]) -> None:
    print("+ " + " ".join(argv), flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed with status {result.returncode}")


def ensure_tools(names: list[str]) -> dict[str, str]:
    """Return name -> path for each tool, apt-get installing the missing ones (needs root)."""
    missing = [name for name in names if which(name) is None]
    if missing:
        packages = sorted({PACKAGES[name] for name in missing})
        hint = f"install them with: apt-get install {' '.join(packages)}"
        if os.geteuid() != 0:
            raise BenchError(f"missing {', '.join(missing)} and not root; {hint}")
        if shutil.which("apt-get") is None:
            raise BenchError(f"missing {', '.join(missing)} and no apt-get here; {hint}")
        print(f"missing {', '.join(missing)}: installing Debian packages {', '.join(packages)}")
        with _no_service_start():
            _run(["apt-get", "update", "-q"])
            _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages])
    found = {name: which(name) for name in names}
    still = [name for name, path in found.items() if path is None]
    if still:
        raise BenchError(f"{', '.join(still)} still not found after apt-get install")
    return {name: path for name, path in found.items() if path is not None}


def tool_version(argv: list[str]) -> str:
    """First line a tool prints about its version (nginx and wrk print to stderr)."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"

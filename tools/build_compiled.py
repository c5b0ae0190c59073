"""Build the mypyc-compiled variant into ``build/compiled`` (not the source tree).

``python tools/build_compiled.py`` copies the packages there and compiles the modules listed in
``setup.py`` (COMPILED) in that copy, so ``PYTHONPATH=build/compiled`` runs the compiled code
while the source tree stays pure Python (no stale extension can shadow an edited module).
Prints the directory. Rebuilds only when a source file is newer than the last build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "compiled"
PACKAGES = ("dataplane", "queueproxy", "activator", "platforms")


def _compiled_list() -> list[str]:
    ns: dict[str, object] = {}
    src = (ROOT / "setup.py").read_text()
    start = src.index("COMPILED = [")
    exec(src[start : src.index("]", start) + 1], ns)  # the list literal only
    compiled = ns["COMPILED"]
    assert isinstance(compiled, list)
    return [str(x) for x in compiled]


def _newest_source() -> float:
    return max(p.stat().st_mtime for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def build() -> Path:
    stamp = OUT / ".built"
    if stamp.exists() and stamp.stat().st_mtime >= _newest_source():
        return OUT
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, OUT / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    mypyc = Path(sys.executable).with_name("mypyc")
    env = dict(os.environ, MYPYC_OPT_LEVEL="3", MYPYC_DEBUG_LEVEL="0")
    proc = subprocess.run(
        [str(mypyc), *_compiled_list()], cwd=OUT, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"mypyc build failed (exit {proc.returncode})")
    shutil.rmtree(OUT / "build", ignore_errors=True)
    stamp.touch()
    return OUT


if __name__ == "__main__":
    print(build())

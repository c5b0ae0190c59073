"""Build the mypyc-compiled variant into ``build/compiled`` (not the source tree).

``python tools/build_compiled.py`` copies the packages there and compiles the modules listed in
``setup.py`` (COMPILED_GROUPS, one shared library per group, as ``KND_MYPYC=1 pip install``
builds them) in that copy, so ``PYTHONPATH=build/compiled`` runs the compiled code
while the source tree stays pure Python (no stale extension can shadow an edited module).
Prints the directory. Rebuilds only when a source file is newer than the last build.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "compiled"
PACKAGES = ("dataplane", "queueproxy", "activator", "platforms")


def setup_dict(name: str) -> dict[str, list[str]]:
    """The dict literal that setup.py assigns to ``name`` (COMPILED_GROUPS, C_EXTENSIONS),
    read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, dict)
            return {str(k): [str(p) for p in v] for k, v in value.items()}
    raise LookupError(f"setup.py assigns no {name}")


# setup.py's mypycify call, run in the copy (what the ``mypyc`` command does, with groups).
_SETUP = """\
from setuptools import Extension, setup
from mypyc.build import mypycify

groups = {groups!r}
c_extensions = {c_extensions!r}
paths = [p for g in groups.values() for p in g]
setup(
    name="knd-compiled",
    ext_modules=mypycify(
        paths,
        separate=[(g, name) for name, g in groups.items()],
        opt_level="3",
        debug_level="0",
    )
    + [Extension(n, s, extra_compile_args=["-O2"]) for n, s in c_extensions.items()],
    script_args=["build_ext", "--inplace"],
)
"""


def _newest_source() -> float:
    newest = max(
        p.stat().st_mtime
        for pkg in PACKAGES
        for pattern in ("*.py", "*.c")
        for p in (ROOT / pkg).rglob(pattern)
    )
    return max(newest, (ROOT / "setup.py").stat().st_mtime)  # (its groups)


def build() -> Path:
    stamp = OUT / ".built"
    if stamp.exists() and stamp.stat().st_mtime >= _newest_source():
        return OUT
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, OUT / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    script = OUT / "_build_compiled_setup.py"
    script.write_text(
        _SETUP.format(groups=setup_dict("COMPILED_GROUPS"), c_extensions=setup_dict("C_EXTENSIONS"))
    )
    proc = subprocess.run([sys.executable, str(script)], cwd=OUT, capture_output=True, text=True)
    script.unlink()
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"mypyc build failed (exit {proc.returncode})")
    shutil.rmtree(OUT / "build", ignore_errors=True)
    stamp.touch()
    return OUT


if __name__ == "__main__":
    print(build())

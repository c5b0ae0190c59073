"""The Dockerfile, checked as text (there is no Docker engine in CI).

Multi-stage with a slim base, a numeric non-root user, an exec-form entry point, the malloc
tuning the queue-proxy relies on, nothing written at run time (bytecode precompiled, Python told
not to write any), and every console script of pyproject.toml installed and named.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from queueproxy.cli import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each a list of (INSTRUCTION, argument)."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, arg = line.partition(" ")
        op = op.upper()
        arg = arg.strip()
        if op == "FROM":
            parts = arg.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert op == "ARG", f"only ARG may precede the first FROM, got {op}"
            k, _, v = arg.partition("=")
            args[k] = v
        else:
            stages[-1].instructions.append((op, arg))
    return args, stages


def env_pairs(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in stage.all("ENV"):
        for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', arg):
            out[m.group(1)] = m.group(2).strip('"')
    return out


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def scripts(pyproject: dict[str, object]) -> dict[str, str]:
    project = pyproject["project"]
    assert isinstance(project, dict)
    return dict(project["scripts"])


def final(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


def test_multi_stage_on_a_slim_python_311(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert len(stages) >= 2
    names = {s.name for s in stages}
    # the runtime stage copies the result of an earlier stage, and builds nothing itself
    runtime = final(dockerfile)
    copies = runtime.all("COPY")
    assert copies and all(c.startswith("--from=") for c in copies)
    assert {c.split()[0].removeprefix("--from=") for c in copies} <= names
    assert not runtime.all("RUN"), "the runtime stage should only copy the installed tree"
    for s in stages:
        base = s.base
        for k, v in args.items():
            base = base.replace("${" + k + "}", v)
        if base.startswith("python:"):
            assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base


def test_optional_mypyc_stage_builds_with_knd_mypyc(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    args, stages = dockerfile
    by_name = {s.name: s for s in stages}
    compiled = by_name["wheel-compiled"]
    assert any("KND_MYPYC=1" in r and "--no-build-isolation" in r for r in compiled.all("RUN"))
    assert "wheel-pure" in by_name
    assert args.get("BUILD") in ("compiled", "pure")
    assert any(s.base == "wheel-${BUILD}" for s in stages)


def test_numeric_non_root_user(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    users = final(dockerfile).all("USER")
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]


def test_exec_form_entrypoint_names_a_console_script(
    dockerfile: tuple[dict[str, str], list[Stage]], pyproject: dict[str, object]
) -> None:
    runtime = final(dockerfile)
    entry = runtime.all("ENTRYPOINT")
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form is a JSON array; shell form does not parse
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert Path(argv[0]).name in scripts(pyproject)
    # Knative starts the queue-sidecar-image without a command: the default is the sidecar
    assert Path(argv[0]).name == "queue-proxy"
    for cmd in runtime.all("CMD"):
        json.loads(cmd)


def test_malloc_tuning_and_read_only_root(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    env = env_pairs(final(dockerfile))
    for k, v in MALLOC_ENV.items():  # the values the queue-proxy would re-exec with
        assert env.get(k) == v, k
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1048576"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "2097152"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("HOME", "").startswith("/tmp")
    runs = " ".join(r for s in dockerfile[1] for r in s.all("RUN"))
    assert "compileall" in runs and "unchecked-hash" in runs
    workdir = final(dockerfile).all("WORKDIR")
    assert workdir and workdir[-1].startswith("/tmp")


def test_every_console_script_is_installed_and_checked(
    dockerfile: tuple[dict[str, str], list[Stage]], pyproject: dict[str, object]
) -> None:
    runs = [r for s in dockerfile[1] for r in s.all("RUN")]
    checks = [r for r in runs if "for cmd in" in r]
    assert len(checks) == 1
    m = re.search(r"for cmd in ([^;]+);", checks[0])
    assert m is not None
    named = set(m.group(1).split())
    assert named == set(scripts(pyproject)), "Dockerfile check list != [project.scripts]"
    for name in ("queue-proxy", "activator", "knd", "knd-autoscaler"):
        assert name in scripts(pyproject)


def test_console_script_targets_exist(pyproject: dict[str, object]) -> None:
    import importlib

    for name, target in scripts(pyproject).items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_the_image_gets_every_package_and_the_kubernetes_extra(
    dockerfile: tuple[dict[str, str], list[Stage]], pyproject: dict[str, object]
) -> None:
    tool = pyproject["tool"]
    assert isinstance(tool, dict)
    packages = {p.rstrip("*") for p in tool["setuptools"]["packages"]["find"]["include"]}
    copied = {
        c.split()[0].rstrip("/")
        for s in dockerfile[1]
        for c in s.all("COPY")
        if not c.startswith("--from=")
    }
    assert packages <= copied, packages - copied
    for p in copied:
        assert (ROOT / p).exists(), p
    ignore = (ROOT / ".dockerignore").read_text().split()
    for p in packages | {"pyproject.toml", "setup.py", "README.md"}:
        assert f"!{p}/" in ignore or f"!{p}" in ignore, f".dockerignore drops {p}"
    project = pyproject["project"]
    assert isinstance(project, dict)
    extras = project.get("optional-dependencies", {})
    installs = " ".join(r for s in dockerfile[1] for r in s.all("RUN") if "pip install" in r)
    for extra in re.findall(r"\.whl\)\[([\w,-]+)\]", installs):
        for e in extra.split(","):
            assert e in extras, f"the image installs the extra {e!r} that pyproject lacks"


def _docker_ignores(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` leave ``path`` out of the build context (Docker's
    rules: the last pattern that matches the path or one of its parent directories wins, ``!``
    keeps, ``**`` spans directories)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        keep = raw.startswith("!")
        pattern = raw.lstrip("!").rstrip("/")
        rx = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(rx, p) for p in prefixes):
            ignored = not keep
    return ignored


def test_the_build_context_keeps_the_c_sources_setup_compiles() -> None:
    # (the compiled image builds dataplane/_h1scan.c: a context without it fails to build)
    spec = importlib.util.spec_from_file_location(
        "build_compiled", ROOT / "tools/build_compiled.py"
    )
    assert spec is not None and spec.loader is not None
    build_compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_compiled)
    sources = [s for paths in build_compiled.setup_dict("C_EXTENSIONS").values() for s in paths]
    assert sources
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _docker_ignores(source, patterns), f".dockerignore drops {source}"
    # the matcher itself: what the file means to leave out, it leaves out
    assert _docker_ignores("dataplane/__pycache__/x.pyc", patterns)
    assert _docker_ignores("dataplane/other.c", patterns)
    assert _docker_ignores("tests/unit/test_dockerfile.py", patterns)
    assert not _docker_ignores("dataplane/proxy.py", patterns)

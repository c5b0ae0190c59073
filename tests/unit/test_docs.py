"""README.md and docs/: every link stays inside the repository and resolves (file and, for
``#anchors``, a heading of that file), and nothing refers to files outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def _links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text()))


def test_docs_exist() -> None:
    names = {p.name for p in DOCS}
    for name in (
        "queue-proxy.md",
        "activator.md",
        "autoscaler.md",
        "kubernetes.md",
        "observability.md",
        "engine.md",
        "knd-run.md",
    ):
        assert name in names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_and_resolve(doc: Path) -> None:
    problems = []
    for target in _links(doc):
        if re.match(r"[a-z]+:", target):
            problems.append(f"{target}: points outside the repository")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not problems, problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    for needle in ("../shared", "SPEC.md", "SPEC §", "DESIGN.md", "/work/"):
        assert needle not in text, needle


def test_quick_start_commands() -> None:
    """The two commands of the quick start, as the Makefile has them."""
    readme = (ROOT / "README.md").read_text()
    assert "make run     # creates .venv" in readme
    assert "make test    # creates .venv" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: ", makefile, re.MULTILINE)
    assert re.search(r"^test: ", makefile, re.MULTILINE)

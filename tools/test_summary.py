"""The closing summary of ``make test``: one line naming every step, then the total in pytest's
form.

``make test`` runs its steps through ``run``, which records each one's exit status and time in a
report directory (the pytest steps also write JUnit XML there, ``--junitxml``) and always lets
make go on to the next step, so that one failing step does not hide the others' results.
``summary`` then prints, e.g.::

    make test: ruff ok, mypy ok, 2281 passed 1 skipped (suite), 258 passed (compiled build), ...
    2548 passed, 1 skipped

and exits 1 when any step failed. The last line keeps pytest's wording (``N failed, N passed,
N skipped, N errors``, zero counts left out except ``passed``) because CI reads the closing
``N passed`` line of pytest-like output; a step that failed without a failing test (ruff, mypy,
a crash before pytest wrote its report) counts as one error there.

    python tools/test_summary.py run DIR NAME [--junit] -- COMMAND...
    python tools/test_summary.py summary DIR
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

INTERRUPTED = {130, -signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGTERM}


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0

    def add(self, other: Counts) -> None:
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped
        self.errors += other.errors

    def pytest_line(self) -> str:
        """pytest's order and words: ``1 failed, 9 passed, 1 skipped, 2 errors``."""
        parts = [f"{self.failed} failed"] if self.failed else []
        parts.append(f"{self.passed} passed")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.errors:
            parts.append(f"{self.errors} error" + ("s" if self.errors > 1 else ""))
        return ", ".join(parts)


@dataclass
class Step:
    name: str
    rc: int
    seconds: float
    junit: bool
    counts: Counts | None = None  # None: not a pytest step, or its report is missing
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bad = self.counts is not None and (self.counts.failed or self.counts.errors)
        missing = self.junit and self.counts is None
        return self.rc == 0 and not bad and not missing


def read_junit(path: Path) -> Counts:
    """Count pytest's JUnit XML by test case: a ``failure`` child is failed, ``error`` an error,
    ``skipped`` skipped (xfail included, as pytest's junitxml records it), else passed."""
    counts = Counts()
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        if "failure" in tags:
            counts.failed += 1
        elif "error" in tags:
            counts.errors += 1
        elif "skipped" in tags:
            counts.skipped += 1
        else:
            counts.passed += 1
    return counts


def load_steps(directory: Path) -> list[Step]:
    steps = []
    for record in sorted(directory.glob("*.step.json")):
        data = json.loads(record.read_text())
        step = Step(data["name"], data["rc"], data["seconds"], data["junit"])
        if step.junit:
            xml = directory / f"{data['slug']}.xml"
            try:
                step.counts = read_junit(xml)
            except (OSError, ET.ParseError) as exc:
                step.problems.append(f"no test report ({type(exc).__name__})")
        steps.append(step)
    return steps


def describe(step: Step) -> str:
    if step.counts is None and not step.junit:
        text = f"{step.name} ok" if step.rc == 0 else f"{step.name} FAILED (exit {step.rc})"
        return text
    c = step.counts
    if c is None:
        return f"{step.name} FAILED (exit {step.rc}, {', '.join(step.problems)})"
    figures = [f"{c.passed} passed"]
    figures += [f"{c.skipped} skipped"] if c.skipped else []
    figures += [f"{c.failed} FAILED"] if c.failed else []
    figures += [f"{c.errors} ERRORS"] if c.errors else []
    text = f"{' '.join(figures)} ({step.name})"
    if step.rc != 0 and not (c.failed or c.errors):
        text += f" FAILED (exit {step.rc})"
    return text


def summary(directory: Path) -> int:
    steps = load_steps(directory)
    if not steps:
        print(f"make test: no step recorded in {directory}", file=sys.stderr)
        return 1
    total = Counts()
    for step in steps:
        if step.counts is not None:
            total.add(step.counts)
        if not step.ok and (step.counts is None or not (step.counts.failed or step.counts.errors)):
            total.errors += 1  # the step failed without a failing test to show for it
    seconds = sum(s.seconds for s in steps)
    failed = [s.name for s in steps if not s.ok]
    print()
    line = "make test: " + ", ".join(describe(s) for s in steps) + f"; {seconds:.0f} s"
    if failed:
        line += f"; FAILED: {', '.join(failed)}"
    print(line)
    print(total.pytest_line())
    return 1 if failed else 0


def run(directory: Path, name: str, junit: bool, command: list[str]) -> int:
    """Run one step; record its exit status and time. Returns 0 (make goes on to the next
    step) unless the step was interrupted (Ctrl-C stops make test as usual)."""
    directory.mkdir(parents=True, exist_ok=True)
    slug = _slug(directory, name)
    start = time.monotonic()
    try:
        rc = subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"make test: {name}: {exc}", file=sys.stderr)
        rc = 127
    record = {
        "name": name,
        "slug": slug,
        "rc": rc,
        "seconds": time.monotonic() - start,
        "junit": junit,
    }
    (directory / f"{slug}.step.json").write_text(json.dumps(record) + "\n")
    return rc if rc in INTERRUPTED else 0


def _slug(directory: Path, name: str) -> str:
    """The file stem of the next step: its rank (steps are summed in the order they ran)."""
    index = len(list(directory.glob("*.step.json")))
    return f"{index:02d}-" + "".join(ch if ch.isalnum() else "-" for ch in name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after the first `--` is the step's command, options included.
    cut = argv.index("--") if "--" in argv else len(argv)
    own, command = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="tools/test_summary.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run one step (the command after --) and record it")
    p_run.add_argument("dir", type=Path)
    p_run.add_argument("name")
    p_run.add_argument(
        "--junit", action="store_true", help="a pytest step: {JUNIT} in the command is its report"
    )
    p_sum = sub.add_parser("summary", help="print the summary and the total; exit 1 on a failure")
    p_sum.add_argument("dir", type=Path)
    args = parser.parse_args(own)
    if args.cmd == "summary":
        return summary(args.dir)
    if not command:
        parser.error("run: no command after --")
    if args.junit:
        xml = str(args.dir.resolve() / f"{_slug(args.dir, args.name)}.xml")
        command = [part.replace("{JUNIT}", xml) for part in command]
    return run(args.dir, args.name, args.junit, command)


if __name__ == "__main__":
    sys.exit(main())

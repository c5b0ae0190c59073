"""tools/test_summary.py, the closing lines of ``make test``: every step is run and recorded,
pytest's JUnit XML is counted per step, the last line is the total in pytest's form, and any
failure (a failing test, a failing non-pytest step, a pytest step without a report) gives a
non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, str(ROOT / "tools" / "test_summary.py")]

SAMPLE_TESTS = """
import pytest

def test_a(): pass
def test_b(): pass
def test_c(): pass
@pytest.mark.skip(reason="skipped on purpose")
def test_skip(): pass
@pytest.mark.xfail(reason="expected")
def test_xfail(): assert False
"""
FAILING_TESTS = """
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("setup fails")

def test_ok(): pass
def test_fails(): assert 1 == 2
def test_setup_error(broken): pass
"""


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def _pytest_step(report: Path, name: str, tests: Path) -> subprocess.CompletedProcess[str]:
    (tests.parent / "pytest.ini").write_text("[pytest]\n")
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
    return _tool("run", str(report), name, "--junit", "--", *pytest, "--junitxml={JUNIT}")


def test_all_green(tmp_path: Path) -> None:
    report = tmp_path / "report"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_sample.py").write_text(SAMPLE_TESTS)
    assert _tool("run", str(report), "ruff", "--", sys.executable, "-c", "pass").returncode == 0
    assert _pytest_step(report, "suite", suite / "test_sample.py").returncode == 0
    assert _pytest_step(report, "compiled build", suite / "test_sample.py").returncode == 0
    result = _tool("summary", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith(
        "make test: ruff ok, 3 passed 2 skipped (suite), 3 passed 2 skipped (compiled build); "
    )
    assert lines[-1] == "6 passed, 4 skipped"


def test_a_failing_test_fails_the_run(tmp_path: Path) -> None:
    report = tmp_path / "report"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_bad.py").write_text(FAILING_TESTS)
    # The step itself exits 0 so that make goes on; the summary carries the failure.
    assert _pytest_step(report, "suite", suite / "test_bad.py").returncode == 0
    assert _tool("run", str(report), "mypy", "--", sys.executable, "-c", "pass").returncode == 0
    result = _tool("summary", str(report))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert "1 passed 1 FAILED 1 ERRORS (suite), mypy ok" in lines[-2]
    assert lines[-2].endswith("FAILED: suite")
    assert lines[-1] == "1 failed, 1 passed, 1 error"


def test_a_failing_step_without_tests_fails_the_run(tmp_path: Path) -> None:
    report = tmp_path / "report"
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    assert _tool("run", str(report), "ruff", "--", *fail).returncode == 0
    # A pytest step that wrote no report (it crashed, or its build failed first).
    assert _tool("run", str(report), "compiled build", "--junit", "--", *fail).returncode == 0
    result = _tool("summary", str(report))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith(
        "make test: ruff FAILED (exit 3), compiled build FAILED (exit 3, no test report"
    )
    assert lines[-1] == "0 passed, 2 errors"


def test_an_interrupted_step_stops_make(tmp_path: Path) -> None:
    report = tmp_path / "report"
    ctrl_c = [sys.executable, "-c", "raise SystemExit(130)"]
    assert _tool("run", str(report), "suite", "--", *ctrl_c).returncode == 130


def test_no_step_recorded_is_a_failure(tmp_path: Path) -> None:
    result = _tool("summary", str(tmp_path))
    assert result.returncode == 1
    assert "no step recorded" in result.stderr

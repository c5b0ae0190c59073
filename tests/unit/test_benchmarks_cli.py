"""``python -m benchmarks --help`` and every scenario's ``--help`` print their usage and exit 0
(argparse %-formats help strings: a literal ``%`` must be written ``%%``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as bench_main

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(bench_main._scenarios())


def test_top_level_help_lists_every_scenario() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "1 % and 100 %" in result.stdout  # the telemetry line, %% rendered as %
    for name in SCENARIOS:
        assert f"    {name}" in result.stdout, name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_help(scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main.main([scenario, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m benchmarks {scenario} ")
    assert "--help" in out

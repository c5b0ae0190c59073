"""CI smoke test of the benchmarks: every scenario once, trimmed (``python -m benchmarks all
--smoke``), as a child process with a time limit.

It needs the ``bench`` extra (locust, matplotlib) and may apt-get wrk and nginx for the proxy
scenario, so it runs only under ``make bench-smoke`` (part of ``make test``), which installs the
extra and sets ``KND_BENCH_SMOKE=1``; a plain ``pytest`` skips it. It checks that every scenario
exits 0 (the locust scenario exits non-zero on any error under the stepped load or while pods
are removed: the zero-error requirements of DESIGN.md) and wrote its JSON. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Scenarios whose JSON the smoke expects (engine prints only).
WRITES_JSON = {"proxy", "held", "knd", "locust"}

pytestmark = pytest.mark.skipif(
    os.environ.get("KND_BENCH_SMOKE") != "1",
    reason="benchmark smoke: run by `make bench-smoke` (sets KND_BENCH_SMOKE=1)",
)


@pytest.mark.timeout(900)
def test_every_scenario_runs_once(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "benchmarks", "all", "--smoke", "--results-dir", str(tmp_path)]
    result = subprocess.run(argv, cwd=ROOT, timeout=840, check=False, stdin=subprocess.DEVNULL)
    summaries = sorted(tmp_path.glob("all-*.json"))
    assert summaries, "python -m benchmarks all wrote no summary"
    runs = json.loads(summaries[-1].read_text())["runs"]
    failed = [f"{r['scenario']}: exit {r['exit']}" for r in runs if r["exit"] != 0]
    assert not failed, failed
    assert result.returncode == 0
    for r in runs:
        if r["scenario"] in WRITES_JSON:
            assert r["json"], f"{r['scenario']} wrote no JSON"
            for path in r["json"]:
                json.loads(Path(path).read_text())
    locust = [r for r in runs if r["scenario"] == "locust"]
    assert locust, "the locust scenario did not run"
    data = json.loads(Path(locust[0]["json"][0]).read_text())
    stepped = data["results"]["stepped"]
    assert stepped["total_errors"] == 0, stepped["rows"]

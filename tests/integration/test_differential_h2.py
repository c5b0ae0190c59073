"""``tools/differential.py --h2`` end to end, ours against ours (CI has no second
implementation): two queue-proxy processes, each in front of its own h2c recording app, the
same generated requests through both, and nothing may differ. It exercises the tool's machinery
and shows that our h2c path answers the same way every time."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from .helpers import QP_BIN

pytestmark = pytest.mark.timeout(120)

TOOLS = Path(__file__).resolve().parents[2] / "tools"


async def test_ours_against_ours_over_h2c_is_identical() -> None:
    sys.path.insert(0, str(TOOLS))
    try:
        diff = importlib.import_module("differential")
        h2d = importlib.import_module("differential_h2")
    finally:
        sys.path.remove(str(TOOLS))
    count = 60
    report = await diff.run(QP_BIN, QP_BIN, count, 3, False, **h2d.MODE)
    assert report["identical"] == count, report["groups"]
    seen = [o["a"] for o in report["observations"]]
    # the run went through both sides for real: answers, resets, apps reached and not
    assert any(o["status"] == 200 and o["app"] for o in seen)
    assert any(o["reset"] == "RST_STREAM PROTOCOL_ERROR" and not o["app"] for o in seen)
    assert any(o["trailers"] for o in seen)

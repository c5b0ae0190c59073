"""Unit-test fixtures shared by every module here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .enginekit import check_all


@pytest.fixture(autouse=True)
def _kit_checks() -> Iterator[None]:
    """After each test, the invariants of every engine kit it made (tests/unit/enginekit.py)."""
    yield
    check_all()

"""tools/differential.py: the comparison and grouping logic (the tool itself needs two
queue-proxy executables and is not part of CI)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def diff() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "tools" / "differential.py"
    spec = importlib.util.spec_from_file_location("differential", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["differential"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def obs(diff: ModuleType, **kw: object) -> object:
    app = diff.AppView("GET", "/a", [("Host", "h"), ("X-A", "1")], "", [])
    base: dict[str, object] = {"status": 200, "headers": [("Date", "x")], "body": "ok", "app": app}
    base.update(kw)
    return diff.Observation(**base)


def test_identical_and_volatile_headers_ignored(diff: ModuleType) -> None:
    a = obs(diff)
    b = obs(diff, headers=[("Date", "y"), ("X-Diff-Id", "3")])
    assert diff.compare(a, b) == []


def test_each_difference_named(diff: ModuleType) -> None:
    a = obs(diff)
    app_b = diff.AppView("GET", "/b", [("host", "h"), ("X-A", "2")], "x", [("X-T", "1")])
    b = obs(diff, status=502, headers=[("Via", "1")], body="no", app=app_b)
    assert diff.compare(a, b) == [
        "client status: 200 vs 502",
        "client header names: only a [], only b ['via']",
        "client body",
        "app target",
        "app header values: ['x-a']",
        "app body",
        "app trailers",
    ]


def test_header_case_only_with_strict_case(diff: ModuleType) -> None:
    a = obs(diff)
    b = obs(diff, app=diff.AppView("GET", "/a", [("host", "h"), ("x-a", "1")], "", []))
    assert diff.compare(a, b) == []
    assert diff.compare(a, b, strict_case=True) == [
        "app header names: only a ['Host', 'X-A'], only b ['host', 'x-a']"
    ]


def test_app_not_reached(diff: ModuleType) -> None:
    assert diff.compare(obs(diff), obs(diff, status=400, app=None)) == [
        "client status: 200 vs 400",
        "app reached: True vs False",
    ]


def test_grouping_most_frequent_first(diff: ModuleType) -> None:
    groups = diff.group([("r1", ["app target"]), ("r2", []), ("r3", ["app target", "client body"])])
    assert list(groups.items()) == [("app target", ["r1", "r3"]), ("client body", ["r3"])]


def test_generated_requests_are_reproducible(diff: ModuleType) -> None:
    first = diff.generate(60, 7)
    assert [g.data for g in first] == [g.data for g in diff.generate(60, 7)]
    assert len({g.data for g in first}) > 40
    assert any(b"\xc3" in g.data.split(b"\r\n")[0] for g in diff.generate(300, 1))


def test_known_difference_explained(diff: ModuleType) -> None:
    a = obs(diff)
    b = obs(diff, headers=[("Date", "x"), ("Content-Type", "text/plain; charset=utf-8")])
    assert diff.explain(a, b) == (["Content-Type guessed by Go"], [])


def test_refusals_with_the_same_status_explained(diff: ModuleType) -> None:
    a = obs(diff, status=400, app=None, body="malformed request target: invalid URL escape\n")
    b = obs(diff, status=400, app=None, body="400 Bad Request", headers=[("Connection", "close")])
    assert diff.explain(a, b) == (["refusal body names the reason"], [])
    # a different status is not a known difference
    c = obs(diff, status=505, app=None, body="505 HTTP Version Not Supported")
    reasons, left = diff.explain(a, c)
    assert reasons == []
    assert left == ["client status: 400 vs 505", "client body"]


def test_unknown_difference_left_with_known_ones_taken_out(diff: ModuleType) -> None:
    a = obs(diff, app=diff.AppView("GET", "/a", [("Host", "h")], "", [("X-T", "1")]))
    b = obs(
        diff,
        headers=[("Date", "x"), ("Content-Type", "text/html")],
        app=diff.AppView("GET", "/b", [("Host", "h")], "", []),
    )
    reasons, left = diff.explain(a, b)
    assert reasons == ["Content-Type guessed by Go", "request trailers reach the app"]
    assert left == ["app target"]


def test_no_known_difference_between_identical_sides(diff: ModuleType) -> None:
    assert diff.explain(obs(diff), obs(diff)) == ([], [])


def test_connection_reuse_compared_when_both_sides_tried(diff: ModuleType) -> None:
    assert diff.compare(obs(diff, kept=True), obs(diff, kept=False)) == [
        "connection kept: True vs False"
    ]
    assert diff.compare(obs(diff, kept=True), obs(diff, kept=None)) == []  # b ran until close

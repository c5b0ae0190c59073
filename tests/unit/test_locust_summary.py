"""The locust scenario's summary and plot data, from synthetic records and /status samples (no
locust run): the scale-down summary quotes the table's own figures, and the burst's queued
line starts at t = 0."""

from __future__ import annotations

from typing import Any

from benchmarks.locust_shapes import (
    Rec,
    Step,
    burst_origin,
    queued_series,
    render_stepped,
    scale_down_summary,
    stepped_rows,
)

T0 = 1_000.0


def _sample(t: float, ready: int | None, queued: int = 0, desired: int | None = None) -> dict:
    return {
        "t": T0 + t,
        "desired": desired if desired is not None else ready,
        "ready": ready,
        "in_flight": 0,
        "queued": queued,
    }


def _recs(start: float, end: float, per_s: int) -> list[Rec]:
    n = int((end - start) * per_s)
    return [Rec(T0 + start + i / per_s, 100.0, 200, "") for i in range(n)]


# Steps 10 s up, 10 s up, 10 s down. The pods asked for in step 2 turn ready only after step 3
# has begun: ready is 2 at step 3's start, 4 a second later, then falls to 1.
STEPS = [Step(50, 10), Step(100, 10), Step(20, 10)]
USERS = [5, 10, 2]
SAMPLES = (
    [_sample(t, 0, queued=3) for t in (0.0, 0.5)]
    + [_sample(t, 1) for t in range(1, 10)]
    + [_sample(t, 2, desired=4) for t in range(10, 20)]
    + [_sample(20.0, 2, desired=4), _sample(21.0, 4), _sample(22.0, 4), _sample(25.0, 2)]
    + [_sample(t, 1) for t in range(26, 30)]
    + [_sample(30.5, 1)]  # after the last step's end: not in any row
)
RECS = _recs(0, 10, 50) + _recs(10, 20, 100) + _recs(20, 30, 20) + [Rec(T0 + 30.2, 90.0, 200, "")]


def _summary() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = stepped_rows(STEPS, USERS, RECS, SAMPLES, T0)
    down = scale_down_summary(rows)
    assert down is not None
    return rows, down


def test_rows_count_each_steps_requests_and_samples() -> None:
    rows, _ = _summary()
    assert [r["requests"] for r in rows] == [500, 1000, 201]  # the straggler joins the last
    assert [r["max_ready"] for r in rows] == [1, 2, 4]
    assert [r["max_desired"] for r in rows] == [1, 4, 4]
    assert [r["max_queued"] for r in rows] == [3, 0, 0]
    assert [r["scale_down"] for r in rows] == [False, False, True]
    assert rows[2]["start_s"] == 20.0


def test_scale_down_summary_uses_the_rows_figures() -> None:
    rows, down = _summary()
    last = rows[-1]
    # The peak is the step's own (4, as the table shows), not the count at its start (2).
    assert (down["ready_peak"], down["ready_after_peak"]) == (4, 1)
    assert down["ready_peak"] == last["max_ready"]
    assert down["pods_removed"] == 3
    assert down["goal"]["ok"] is True


def test_rendered_summary_and_table_agree() -> None:
    rows, down = _summary()
    text = render_stepped(
        {
            "concurrency": 1,
            "stable_window": "6s",
            "user_rate": 10,
            "rows": rows,
            "goals": [],
            "scale_down": down,
            "knd_problems": [],
        }
    )
    table_row = next(line for line in text.splitlines() if line.lstrip().startswith("3v"))
    assert table_row.split()[-2] == "4>1"  # ready column: peak > lowest after it
    assert "ready pods 4 -> 1 (3 removed while traffic flowed)" in text


def test_no_removal_is_a_miss() -> None:
    flat = [s for s in SAMPLES if s["t"] < T0 + 20] + [_sample(t, 2) for t in range(20, 30)]
    down = scale_down_summary(stepped_rows(STEPS, USERS, RECS, flat, T0))
    assert down is not None
    assert (down["ready_peak"], down["pods_removed"]) == (2, 0)
    assert down["goal"]["ok"] is False


def test_no_scale_down_step_no_summary() -> None:
    rows = stepped_rows(STEPS[:2], USERS[:2], RECS, SAMPLES, T0)
    assert scale_down_summary(rows) is None


def test_burst_origin_is_the_earliest_of_instant_and_first_request() -> None:
    assert burst_origin(T0, [Rec(T0 + 0.002, 5.0, 200, "")]) == T0
    assert burst_origin(T0, [Rec(T0 - 0.003, 5.0, 200, ""), Rec(T0, 5.0, 200, "")]) == T0 - 0.003
    assert burst_origin(T0, []) == T0


def test_queued_series_starts_at_zero() -> None:
    timeline = [
        {"t": -0.35, "queued": 0},
        {"t": -0.05, "queued": 7},  # a stale or early sample must not be drawn before t = 0
        {"t": 0.05, "queued": 20},
        {"t": 0.15, "queued": None},
    ]
    ts, vals = queued_series(timeline)
    assert ts == [0.0, 0.05, 0.15]
    assert vals == [0.0, 20.0, 0.0]
    assert min(ts) >= 0
    assert queued_series([{"t": 0.0, "queued": 4}]) == ([0.0], [4.0])
    assert queued_series([]) == ([0.0], [0.0])

"""Unit tests for dataplane.stats: time-weighted concurrency and per-window request counts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.stats import RequestStats, StatsReport


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-9)


class TestWorkedExamples:
    def test_spec_example_two_half_second_requests(self) -> None:
        # SPEC §1.10: 2 requests of 500 ms each inside a 1 s window give average 1.0
        s = RequestStats(now=0.0)
        s.req_in(0.0)
        s.req_in(0.0)
        s.req_out(0.5)
        s.req_out(0.5)
        rep = s.report(0.5)
        assert rep.average_concurrency == approx(2.0)
        # the same requests measured over a full second
        s = RequestStats(now=0.0)
        s.req_in(0.0)
        s.req_in(0.0)
        s.req_out(0.5)
        s.req_out(0.5)
        rep = s.report(1.0)
        assert rep == StatsReport(1.0, 0.0, 2.0, 0.0)

    def test_back_to_back_requests(self) -> None:
        s = RequestStats(now=10.0)
        s.req_in(10.0)
        s.req_out(10.5)
        s.req_in(10.5)
        s.req_out(11.0)
        rep = s.report(11.0)
        assert rep.average_concurrency == approx(1.0)
        assert rep.request_count == 2.0

    def test_partial_overlap(self) -> None:
        s = RequestStats(now=0.0)
        s.req_in(0.25)  # concurrency 1 for 0.75 s
        s.req_in(0.5)  # concurrency 2 for 0.25 s of that
        s.req_out(0.75)
        rep = s.report(1.0)
        assert rep.average_concurrency == approx((0.25 * 1 + 0.25 * 2 + 0.25 * 1) / 1.0)
        assert s.concurrency == 1

    def test_report_type_and_floats(self) -> None:
        s = RequestStats(now=0.0)
        s.req_in(0.0)
        rep = s.report(2.0)
        assert isinstance(rep, StatsReport)
        assert isinstance(rep.request_count, float)
        assert isinstance(rep.proxied_request_count, float)
        assert rep.average_concurrency == approx(1.0)


class TestProxied:
    def test_proxied_counts_in_both(self) -> None:
        s = RequestStats(now=0.0)
        s.proxied_in(0.0)
        assert (s.concurrency, s.proxied_concurrency) == (1, 1)
        assert (s.request_count, s.proxied_count) == (1, 1)
        s.req_in(0.0)
        assert (s.concurrency, s.proxied_concurrency) == (2, 1)
        rep = s.report(1.0)
        assert rep.average_concurrency == approx(2.0)
        assert rep.average_proxied_concurrency == approx(1.0)
        assert rep.request_count == 2.0
        assert rep.proxied_request_count == 1.0

    def test_proxied_out_decrements_both(self) -> None:
        s = RequestStats(now=0.0)
        s.proxied_in(0.0)
        s.proxied_out(0.5)
        assert (s.concurrency, s.proxied_concurrency) == (0, 0)
        rep = s.report(1.0)
        assert rep.average_concurrency == approx(0.5)
        assert rep.average_proxied_concurrency == approx(0.5)
        assert rep.request_count == 1.0
        assert rep.proxied_request_count == 1.0

    def test_direct_requests_do_not_touch_proxied(self) -> None:
        s = RequestStats(now=0.0)
        s.req_in(0.0)
        s.req_out(1.0)
        rep = s.report(1.0)
        assert rep.average_proxied_concurrency == 0.0
        assert rep.proxied_request_count == 0.0


class TestReport:
    def test_report_resets_accumulators_not_concurrency(self) -> None:
        s = RequestStats(now=0.0)
        s.req_in(0.0)
        s.proxied_in(0.0)
        first = s.report(1.0)
        assert first == StatsReport(2.0, 1.0, 2.0, 1.0)
        assert (s.request_count, s.proxied_count) == (0, 0)
        assert (s.concurrency, s.proxied_concurrency) == (2, 1)
        # nothing happens during the next window: the in-flight requests still count
        second = s.report(3.0)
        assert second == StatsReport(2.0, 1.0, 0.0, 0.0)

    def test_window_starts_at_previous_report(self) -> None:
        s = RequestStats(now=0.0)
        s.req_in(0.0)
        s.req_out(1.0)
        s.report(1.0)
        s.req_in(1.5)
        rep = s.report(2.0)
        assert rep.average_concurrency == approx(0.5)
        assert rep.request_count == 1.0

    def test_zero_elapsed_report_gives_zero_averages(self) -> None:
        s = RequestStats(now=5.0)
        s.req_in(5.0)
        s.proxied_in(5.0)
        rep = s.report(5.0)
        assert rep == StatsReport(0.0, 0.0, 2.0, 1.0)

    def test_second_report_at_same_instant(self) -> None:
        s = RequestStats(now=0.0)
        s.req_in(0.0)
        assert s.report(1.0).average_concurrency == approx(1.0)
        assert s.report(1.0) == StatsReport(0.0, 0.0, 0.0, 0.0)

    def test_initial_state(self) -> None:
        s = RequestStats(now=100.0)
        assert s.report(100.0) == StatsReport(0.0, 0.0, 0.0, 0.0)
        assert s.report(101.0) == StatsReport(0.0, 0.0, 0.0, 0.0)


class TestNonPositiveDt:
    def test_time_going_backwards_is_ignored(self) -> None:
        s = RequestStats(now=10.0)
        s.req_in(10.0)
        s.req_in(9.0)  # clock went backwards: no time accumulates, last change stays at 10
        s.req_out(11.0)
        rep = s.report(12.0)
        # [10, 11): concurrency 2; [11, 12): concurrency 1
        assert rep.average_concurrency == approx(1.5)
        assert rep.request_count == 2.0

    def test_report_in_the_past(self) -> None:
        s = RequestStats(now=10.0)
        s.req_in(10.0)
        rep = s.report(5.0)
        assert rep.average_concurrency == 0.0
        assert rep.request_count == 1.0
        # the window did not move back: the next report integrates from 10
        assert s.report(12.0).average_concurrency == approx(1.0)

    def test_same_instant_events(self) -> None:
        s = RequestStats(now=0.0)
        for _ in range(5):
            s.req_in(1.0)
            s.req_out(1.0)
        rep = s.report(2.0)
        assert rep.average_concurrency == 0.0
        assert rep.request_count == 5.0


# --------------------------------------------------------------------------- property test


@dataclass
class _Req:
    start: float
    end: float | None
    proxied: bool


Op = tuple[str, int, int]  # (kind, time step in ms, selector)

ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["in", "pin", "out", "report"]),
        st.integers(0, 2000),
        st.integers(0, 1000),
    ),
    max_size=60,
)


def _overlap(r: _Req, w0: float, w1: float) -> float:
    end = w1 if r.end is None else min(r.end, w1)
    return max(0.0, end - max(r.start, w0))


@settings(max_examples=100, deadline=None)
@given(start_ms=st.integers(0, 10**9), ops=ops_strategy)
def test_average_equals_exact_integral(start_ms: int, ops: list[Op]) -> None:
    """Averages equal the sum of each request's overlap with the window, divided by its length."""
    t = start_ms / 1000
    s = RequestStats(now=t)
    reqs: list[_Req] = []
    window_start = t
    window_reqs: list[_Req] = []  # requests that arrived in this window
    for kind, step, sel in ops:
        t += step / 1000
        if kind in ("in", "pin"):
            r = _Req(t, None, kind == "pin")
            reqs.append(r)
            window_reqs.append(r)
            (s.proxied_in if r.proxied else s.req_in)(t)
        elif kind == "out":
            open_reqs = [r for r in reqs if r.end is None]
            if not open_reqs:
                continue
            r = open_reqs[sel % len(open_reqs)]
            r.end = t
            (s.proxied_out if r.proxied else s.req_out)(t)
        else:
            rep = s.report(t)
            span = t - window_start
            if span <= 0:
                exp = exp_p = 0.0
            else:
                exp = sum(_overlap(r, window_start, t) for r in reqs) / span
                exp_p = sum(_overlap(r, window_start, t) for r in reqs if r.proxied) / span
            assert rep.average_concurrency == pytest.approx(exp, rel=1e-6, abs=1e-6)
            assert rep.average_proxied_concurrency == pytest.approx(exp_p, rel=1e-6, abs=1e-6)
            assert rep.request_count == len(window_reqs)
            assert rep.proxied_request_count == sum(r.proxied for r in window_reqs)
            window_start = t
            window_reqs = []
        open_now = [r for r in reqs if r.end is None]
        assert s.concurrency == len(open_now)
        assert s.proxied_concurrency == sum(r.proxied for r in open_now)

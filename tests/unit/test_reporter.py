"""Unit tests for activator.reporter: SPEC §2.7 per-revision accounting, with worked numbers.

The clock is injected; times are multiples of 0.25 s so the integrals are exact in binary.
"""

from __future__ import annotations

import struct

import pytest

from activator.reporter import ConcurrencyReporter, RevisionKey
from dataplane.statpb import (
    Stat,
    WireStatMessage,
    decode_wire_stat_messages,
    encode_stat,
    encode_wire_stat_messages,
)

POD = "activator-7d9f-abcde"
REV: RevisionKey = ("default", "hello-00001")
REV2: RevisionKey = ("team-a", "shop-00003")


def msg(key: RevisionKey, avg: float, count: float) -> WireStatMessage:
    return WireStatMessage(
        key[0], key[1], Stat(pod_name=POD, average_concurrent_requests=avg, request_count=count)
    )


def summary(msgs: list[WireStatMessage]) -> list[tuple[str, str, float, float]]:
    """(namespace, name, average, count) per message, checking the fields the activator owns."""
    out = []
    for m in msgs:
        assert m.stat is not None
        assert m.stat.pod_name == POD
        assert m.stat.average_proxied_concurrent_requests == 0.0
        assert m.stat.proxied_request_count == 0.0
        assert m.stat.process_uptime == 0.0
        assert m.stat.timestamp == 0
        out.append((m.namespace, m.name, m.stat.average_concurrent_requests, m.stat.request_count))
    return out


@pytest.fixture
def cr() -> ConcurrencyReporter:
    return ConcurrencyReporter(POD, now=0.0)


class TestImmediateMessage:
    def test_first_request_is_reported_at_once(self, cr: ConcurrencyReporter) -> None:
        assert cr.request_in(REV, 0.0) == [msg(REV, 1.0, 1.0)]

    def test_only_the_first_request_of_an_entry(self, cr: ConcurrencyReporter) -> None:
        assert len(cr.request_in(REV, 0.0)) == 1
        assert cr.request_in(REV, 0.25) is None
        cr.request_out(REV, 0.5)
        cr.request_out(REV, 0.5)
        # Nothing in flight, but the entry lives until a tick finds it idle.
        assert cr.request_in(REV, 0.75) is None

    def test_each_revision_gets_its_own(self, cr: ConcurrencyReporter) -> None:
        assert cr.request_in(REV, 0.0) == [msg(REV, 1.0, 1.0)]
        assert cr.request_in(REV2, 0.0) == [msg(REV2, 1.0, 1.0)]
        assert cr.request_in(REV, 0.0) is None

    def test_wire_bytes_carry_only_pod_average_and_count(self, cr: ConcurrencyReporter) -> None:
        (m,) = cr.request_in(REV, 0.0)
        assert m.stat is not None
        # field 1 (string), field 2 (double 1.0), field 4 (double 1.0); nothing else
        one = struct.pack("<d", 1.0)
        expected = b"\x0a" + bytes([len(POD)]) + POD.encode() + b"\x11" + one + b"\x21" + one
        assert encode_stat(m.stat) == expected
        assert decode_wire_stat_messages(encode_wire_stat_messages([m])) == [m]


class TestFirstReportAdjustment:
    def test_two_overlapping_requests(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 0.0)
        cr.request_in(REV, 0.25)
        cr.request_out(REV, 0.5)
        cr.request_out(REV, 0.75)
        # integral: 0.25*1 + 0.25*2 + 0.25*1 + 0.25*0 = 1.0 over 1.0 s; 2 requests.
        # Minus the request already reported: average 0.0, count 1.
        assert summary(cr.report(1.0)) == [("default", "hello-00001", 0.0, 1.0)]
        assert cr.concurrency() == {REV: 0.0}

    def test_average_is_floored_at_zero(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 0.0)
        cr.request_out(REV, 0.25)
        # average 0.25; 0.25 - 1 is floored at 0; count 1 - 1 = 0
        assert cr.report(1.0) == [msg(REV, 0.0, 0.0)]
        assert len(cr) == 1  # the period saw activity: kept

    def test_adjustment_applies_to_the_first_report_only(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 0.0)
        cr.request_in(REV, 0.0)
        cr.request_in(REV, 0.5)
        # 0.5*2 + 0.5*3 = 2.5; 3 requests -> 1.5, 2
        assert cr.report(1.0) == [msg(REV, 1.5, 2.0)]
        cr.request_in(REV, 1.5)
        # 0.5*3 + 0.5*4 = 3.5; 1 request; no adjustment any more
        assert cr.report(2.0) == [msg(REV, 3.5, 1.0)]
        assert cr.concurrency() == {REV: 3.5}

    def test_entry_created_mid_period_averages_over_its_own_window(
        self, cr: ConcurrencyReporter
    ) -> None:
        cr.request_in(REV, 0.5)
        cr.request_in(REV, 0.75)
        # the window starts at the first request: (0.25*1 + 0.25*2) / 0.5 = 1.5
        assert cr.report(1.0) == [msg(REV, 0.5, 1.0)]


class TestDeletion:
    def test_idle_entry_is_deleted_and_recreated(self, cr: ConcurrencyReporter) -> None:
        assert cr.request_in(REV, 0.0) == [msg(REV, 1.0, 1.0)]
        cr.request_out(REV, 0.5)
        assert cr.report(1.0) == [msg(REV, 0.0, 0.0)]  # 0.5 - 1 floored
        # A whole idle period: the final (zero) message is still sent, then the entry goes.
        assert cr.report(2.0) == [msg(REV, 0.0, 0.0)]
        assert len(cr) == 0
        assert cr.concurrency() == {REV: 0.0}
        assert cr.report(3.0) == []
        assert cr.concurrency() == {}
        # A new entry: a new immediate message and a new first-report adjustment.
        assert cr.request_in(REV, 3.25) == [msg(REV, 1.0, 1.0)]
        cr.request_out(REV, 3.75)
        # window 3.25..4.0: 0.5 / 0.75 = 2/3 -> floored to 0; count 1 - 1
        assert cr.report(4.0) == [msg(REV, 0.0, 0.0)]

    def test_a_request_in_flight_keeps_the_entry(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 1.0)
        # Reported at the instant of creation: no time has passed, so the average is 0, but
        # the live reference keeps the entry (no second immediate message).
        assert cr.report(1.0) == [msg(REV, 0.0, 0.0)]
        assert len(cr) == 1
        assert cr.request_in(REV, 1.5) is None
        # 0.5*1 + 0.5*2 = 1.5 over 1 s; 1 new request; adjustment already spent
        assert cr.report(2.0) == [msg(REV, 1.5, 1.0)]

    def test_long_request_spans_idle_looking_ticks(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 0.0)
        assert cr.report(1.0) == [msg(REV, 0.0, 0.0)]  # 1 - 1
        assert cr.report(2.0) == [msg(REV, 1.0, 0.0)]
        assert cr.report(3.0) == [msg(REV, 1.0, 0.0)]
        cr.request_out(REV, 3.25)
        assert cr.report(4.0) == [msg(REV, 0.25, 0.0)]
        assert cr.report(5.0) == [msg(REV, 0.0, 0.0)]
        assert len(cr) == 0

    def test_request_out_without_entry_is_ignored(self, cr: ConcurrencyReporter) -> None:
        cr.request_out(REV, 0.0)
        assert len(cr) == 0
        assert cr.report(1.0) == []


class TestConcurrentRequestsAcrossTicks:
    def test_worked_sequence(self, cr: ConcurrencyReporter) -> None:
        assert cr.request_in(REV, 0.0) == [msg(REV, 1.0, 1.0)]
        assert cr.request_in(REV, 0.25) is None
        assert cr.request_in(REV, 0.5) is None
        # 0.25*1 + 0.25*2 + 0.5*3 = 2.25; 3 requests -> 1.25, 2
        assert cr.report(1.0) == [msg(REV, 1.25, 2.0)]
        cr.request_out(REV, 1.5)
        cr.request_out(REV, 1.75)
        # 0.5*3 + 0.25*2 + 0.25*1 = 2.25; no new requests
        assert cr.report(2.0) == [msg(REV, 2.25, 0.0)]
        cr.request_in(REV, 2.0)
        cr.request_out(REV, 2.5)
        cr.request_out(REV, 2.5)
        # 0.5*2 = 1.0; 1 new request
        assert cr.report(3.0) == [msg(REV, 1.0, 1.0)]
        assert cr.report(4.0) == [msg(REV, 0.0, 0.0)]
        assert len(cr) == 0
        assert cr.request_in(REV, 4.5) == [msg(REV, 1.0, 1.0)]

    def test_missed_tick_averages_over_the_longer_window(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 0.0)
        cr.request_in(REV, 0.0)
        cr.request_out(REV, 1.0)
        # 1.0*2 + 1.0*1 = 3 over 2 s -> 1.5 - 1
        assert cr.report(2.0) == [msg(REV, 0.5, 1.0)]


class TestSeveralRevisions:
    def test_one_batch_with_a_message_per_revision(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 0.0)
        cr.request_in(REV2, 0.5)
        cr.request_in(REV2, 0.5)
        cr.request_out(REV, 0.5)
        # REV: 0.5 over 1 s -> 0 after adjustment, count 0.
        # REV2: window 0.5..1.0 at 2 -> 2.0 - 1, count 2 - 1.
        assert summary(cr.report(1.0)) == [
            ("default", "hello-00001", 0.0, 0.0),
            ("team-a", "shop-00003", 1.0, 1.0),
        ]
        assert cr.concurrency() == {REV: 0.0, REV2: 1.0}
        # REV idle for the whole period: final message and deleted; REV2 still busy.
        assert summary(cr.report(2.0)) == [
            ("default", "hello-00001", 0.0, 0.0),
            ("team-a", "shop-00003", 2.0, 0.0),
        ]
        assert len(cr) == 1
        assert cr.request_in(REV, 2.25) == [msg(REV, 1.0, 1.0)]
        assert cr.request_in(REV2, 2.25) is None
        cr.request_out(REV2, 2.5)
        cr.request_out(REV2, 2.5)
        cr.request_out(REV2, 2.5)
        batch = cr.report(3.0)
        # REV2 (created first) keeps its place; REV is new at the end.
        assert summary(batch) == [
            # 0.25*2 + 0.25*3 = 1.25; 1 new request
            ("team-a", "shop-00003", 1.25, 1.0),
            # window 2.25..3.0 at concurrency 1 -> 1.0 - 1, count 0
            ("default", "hello-00001", 0.0, 0.0),
        ]
        assert decode_wire_stat_messages(encode_wire_stat_messages(batch)) == batch

    def test_concurrency_is_a_copy(self, cr: ConcurrencyReporter) -> None:
        cr.request_in(REV, 0.0)
        cr.report(1.0)
        snapshot = cr.concurrency()
        snapshot[REV] = 42.0
        assert cr.concurrency() == {REV: 0.0}

    def test_no_revisions_no_messages(self, cr: ConcurrencyReporter) -> None:
        assert cr.report(1.0) == []
        assert cr.concurrency() == {}


class _Timers:
    """call_later that runs only when the test says (no wall clock)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[tuple[float, object]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: object) -> _Handle:
        h = _Handle(self.now + delay, fn)
        self.pending.append((h.when, h))
        return h

    def advance(self, dt: float) -> None:
        self.now += dt
        due = [h for when, h in self.pending if when <= self.now and not h.cancelled]
        self.pending = [(w, h) for w, h in self.pending if h not in due]
        for h in due:
            h.fn()


class _Handle:
    def __init__(self, when: float, fn: object) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_report_ticker_ships_a_batch_every_second_until_stopped() -> None:
    from activator.reporter import ConcurrencyReporter, ReportTicker

    loop = _Timers()
    sent: list[int] = []
    rep = ConcurrencyReporter("activator-0", 0.0)
    ticker = ReportTicker(loop, rep, lambda msgs: sent.append(len(msgs)))
    ticker.start()
    rep.request_in(("default", "r-1"), 0.1)
    loop.advance(1.0)
    assert sent == [1]  # one revision with activity: one message
    rep.request_out(("default", "r-1"), 1.5)
    loop.advance(1.0)
    assert sent == [1, 1]
    loop.advance(1.0)  # idle for a whole period: its last (zero) report, then it is gone
    assert sent == [1, 1, 1]
    loop.advance(1.0)
    assert sent == [1, 1, 1]  # nothing left to report
    ticker.stop()
    rep.request_in(("default", "r-1"), 4.5)
    loop.advance(5.0)
    assert sent == [1, 1, 1]  # stopped: no tick

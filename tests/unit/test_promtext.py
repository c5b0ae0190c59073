"""Unit tests for dataplane.promtext, parsed back with prometheus_client's text parser."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dataplane.promtext import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def parse(reg: Registry) -> dict[str, Any]:
    text = reg.render().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def one(metric: Counter | Gauge | Histogram) -> Registry:
    reg = Registry()
    reg.add(metric)
    return reg


def samples(fam: Any) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for s in fam.samples]


class TestRegistry:
    def test_content_type(self) -> None:
        assert CONTENT_TYPE == b"text/plain; version=0.0.4; charset=utf-8"

    def test_empty_registry(self) -> None:
        assert Registry().render() == b"\n"
        assert list(text_string_to_metric_families("\n")) == []

    def test_render_ends_with_newline_and_keeps_order(self) -> None:
        reg = Registry()
        g1 = Gauge("b_gauge", "second")
        g1.set(1)
        g2 = Gauge("a_gauge", "first")
        g2.set(2)
        reg.add(g1)
        reg.add(g2)
        out = reg.render()
        assert out.endswith(b"\n")
        assert out.index(b"b_gauge") < out.index(b"a_gauge")
        fams = parse(reg)
        assert fams["b_gauge"].documentation == "second"
        assert fams["a_gauge"].documentation == "first"


class TestGauge:
    def test_set_and_labels(self) -> None:
        g = Gauge("queue_depth", "depth", ("rev",))
        g.set(3, ("a",))
        g.set(4.5, ("b",))
        g.set(7, ("a",))
        fam = parse(one(g))["queue_depth"]
        assert fam.type == "gauge"
        assert fam.documentation == "depth"
        assert samples(fam) == [
            ("queue_depth", {"rev": "a"}, 7.0),
            ("queue_depth", {"rev": "b"}, 4.5),
        ]

    def test_no_labels(self) -> None:
        g = Gauge("g", "h")
        g.set(-2.5)
        assert samples(parse(one(g))["g"]) == [("g", {}, -2.5)]

    def test_function_gauge_read_at_render(self) -> None:
        box = [1.0]
        g = Gauge("fn_gauge", "from fn", fn=lambda: [((), box[0])])
        reg = one(g)
        assert samples(parse(reg)["fn_gauge"]) == [("fn_gauge", {}, 1.0)]
        box[0] = 42.0
        assert samples(parse(reg)["fn_gauge"]) == [("fn_gauge", {}, 42.0)]

    def test_unset_gauge_has_only_header(self) -> None:
        fam = parse(one(Gauge("empty", "nothing yet")))["empty"]
        assert fam.type == "gauge"
        assert fam.samples == []

    def test_special_values(self) -> None:
        g = Gauge("special", "h", ("k",))
        g.set(math.inf, ("a",))
        g.set(-math.inf, ("b",))
        g.set(math.nan, ("c",))
        text = one(g).render().decode()
        assert 'special{k="a"} +Inf' in text
        assert 'special{k="b"} -Inf' in text
        assert 'special{k="c"} NaN' in text
        vals = {s.labels["k"]: s.value for s in parse(one(g))["special"].samples}
        assert vals["a"] == math.inf
        assert vals["b"] == -math.inf
        assert math.isnan(vals["c"])

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (0, "0"),
            (-0.0, "0"),
            (3, "3"),
            (3.0, "3"),
            (0.5, "0.5"),
            (1e20, "1e+20"),
            (1e-7, "1e-07"),
            (123456789012345.0, "123456789012345"),
        ],
    )
    def test_number_rendering(self, value: float, text: str) -> None:
        g = Gauge("n", "h")
        g.set(value)
        assert one(g).render().decode().splitlines()[-1] == f"n {text}"
        assert samples(parse(one(g))["n"]) == [("n", {}, float(value))]

    @settings(max_examples=200, deadline=None)
    @given(st.floats(allow_nan=False))
    def test_any_float_round_trips(self, value: float) -> None:
        g = Gauge("f", "h")
        g.set(value)
        assert parse(one(g))["f"].samples[0].value == value


class TestLabelEscaping:
    @pytest.mark.parametrize(
        "value",
        ['quote"inside', "back\\slash", "new\nline", 'all\\"\n', "ünïcødé ☃", "", "{},= "],
    )
    def test_round_trip(self, value: str) -> None:
        g = Gauge("esc", "h", ("v",))
        g.set(1, (value,))
        text = one(g).render().decode()
        assert "\n" not in text.splitlines()[-1]
        assert samples(parse(one(g))["esc"]) == [("esc", {"v": value}, 1.0)]

    def test_exact_escapes(self) -> None:
        g = Gauge("esc", "h", ("v",))
        g.set(1, ('a\\b"c\nd',))
        assert one(g).render().decode().splitlines()[-1] == 'esc{v="a\\\\b\\"c\\nd"} 1'

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=30))
    def test_any_label_value(self, value: str) -> None:
        g = Gauge("esc", "h", ("v",))
        g.set(1, (value,))
        assert samples(parse(one(g))["esc"]) == [("esc", {"v": value}, 1.0)]

    def test_help_text_escaped(self) -> None:
        g = Gauge("doc", "line one\nline two with a \\ backslash")
        g.set(1)
        fam = parse(one(g))["doc"]
        assert fam.documentation == "line one\nline two with a \\ backslash"


class TestCounter:
    def test_inc_and_render_total_suffix(self) -> None:
        c = Counter("requests", "served", ("code",))
        c.inc(("200",))
        c.inc(("200",), 2)
        c.inc(("503",))
        lines = one(c).render().decode().splitlines()
        assert 'requests_total{code="200"} 3' in lines
        assert 'requests_total{code="503"} 1' in lines
        assert c.values == {("200",): 3.0, ("503",): 1.0}

    def test_values_parse(self) -> None:
        c = Counter("requests", "served", ("code",))
        c.inc(("200",), 5)
        found = [
            (s.name, dict(s.labels), s.value)
            for f in text_string_to_metric_families(one(c).render().decode())
            for s in f.samples
        ]
        assert found == [("requests_total", {"code": "200"}, 5.0)]

    def test_samples_belong_to_counter_family(self) -> None:
        c = Counter("requests", "served", ("code",))
        c.inc(("200",), 5)
        fams = list(text_string_to_metric_families(one(c).render().decode()))
        assert [(f.name, f.type) for f in fams] == [("requests", "counter")]
        assert samples(fams[0]) == [("requests_total", {"code": "200"}, 5.0)]


class TestHistogram:
    def test_buckets_cumulative_and_le_inclusive(self) -> None:
        h = Histogram("dur", "duration", (0.1, 0.5, 1.0), ("code",))
        for v in (0.05, 0.1, 0.1000001, 0.5, 0.7, 1.0, 3.0):
            h.observe(v, ("200",))
        fam = parse(one(h))["dur"]
        assert fam.type == "histogram"
        got = {
            (s.name, s.labels.get("le")): s.value for s in fam.samples if s.labels["code"] == "200"
        }
        assert got[("dur_bucket", "0.1")] == 2  # 0.05 and exactly 0.1
        assert got[("dur_bucket", "0.5")] == 4  # + 0.1000001 and exactly 0.5
        assert got[("dur_bucket", "1")] == 6  # + 0.7 and exactly 1.0
        assert got[("dur_bucket", "+Inf")] == 7
        assert got[("dur_count", None)] == 7
        assert got[("dur_sum", None)] == pytest.approx(0.05 + 0.1 + 0.1000001 + 0.5 + 0.7 + 4.0)

    def test_unsorted_buckets_are_sorted(self) -> None:
        h = Histogram("u", "h", (1.0, 0.1, 0.5))
        assert h.bounds == (0.1, 0.5, 1.0)
        h.observe(0.3)
        les = [s.labels["le"] for s in parse(one(h))["u"].samples if s.name == "u_bucket"]
        assert les == ["0.1", "0.5", "1", "+Inf"]

    def test_children_per_label(self) -> None:
        h = Histogram("d", "h", (1.0,), ("code",))
        h.observe(0.5, ("200",))
        h.observe(2.0, ("500",))
        h.observe(2.0, ("500",))
        fam = parse(one(h))["d"]
        counts = {s.labels["code"]: s.value for s in fam.samples if s.name == "d_count"}
        assert counts == {"200": 1, "500": 2}
        b1 = {
            s.labels["code"]: s.value
            for s in fam.samples
            if s.name == "d_bucket" and s.labels["le"] == "1"
        }
        assert b1 == {"200": 1, "500": 0}

    def test_no_observations(self) -> None:
        fam = parse(one(Histogram("none", "h", (1.0,))))["none"]
        assert fam.samples == []

    def test_knative_duration_buckets(self) -> None:
        h = Histogram("kn_serving_invocation_duration_seconds", "h", DURATION_BUCKETS, ("c",))
        for b in DURATION_BUCKETS:
            h.observe(b, ("200",))  # exactly on each bound
        fam = parse(one(h))["kn_serving_invocation_duration_seconds"]
        buckets = [s.value for s in fam.samples if s.name.endswith("_bucket")]
        assert buckets == [float(i) for i in range(1, len(DURATION_BUCKETS) + 1)] + [14.0]

    @settings(max_examples=75, deadline=None)
    @given(
        bounds=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=8, unique=True),
        values=st.lists(st.floats(-2e6, 2e6, allow_nan=False), max_size=40),
    )
    def test_matches_definition(self, bounds: list[float], values: list[float]) -> None:
        h = Histogram("p", "h", tuple(bounds))
        for v in values:
            h.observe(v)
        fam = parse(one(h))["p"]
        if not values:
            assert fam.samples == []
            return
        buckets = [(float(s.labels["le"]), s.value) for s in fam.samples if s.name == "p_bucket"]
        assert [b for b, _ in buckets] == [*sorted(bounds), math.inf]
        for le, count in buckets:
            assert count == sum(1 for v in values if v <= le)
        by_name = {s.name: s.value for s in fam.samples}
        assert by_name["p_count"] == len(values)
        assert by_name["p_sum"] == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-6)

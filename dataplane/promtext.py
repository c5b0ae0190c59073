"""A tiny Prometheus text-format registry: plain numbers on the hot path, text at scrape time.

prometheus_client costs ~5 MB and ~80 ms of import in a sidecar that must idle under 23 MB, and
our metrics are few and fixed, so they are kept here as integers and floats and rendered in the
text exposition format (version 0.0.4) only when scraped. Tests parse the output with the
official ``prometheus_client`` parser.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Registry"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    if v == float("-inf"):
        return "-Inf"
    if v != v:
        return "NaN"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels

    def header(self, name: str | None = None) -> list[str]:
        n = name or self.name
        h = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return [f"# HELP {n} {h}", f"# TYPE {n} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """Monotonic counter; children by label values."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        out = self.header(self.name + "_total")
        for lv, v in sorted(self.values.items()):
            out.append(f"{self.name}_total{_labels(self.label_names, lv)} {_num(v)}")
        return out


class Gauge(_Metric):
    """A gauge whose value is set, or read from a function at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...] = (),
        fn: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[tuple[str, ...], float] = {}
        self.fn = fn

    def set(self, value: float, labels: tuple[str, ...] = ()) -> None:
        self.values[labels] = value

    def render(self) -> list[str]:
        out = self.header()
        items = list(self.fn()) if self.fn is not None else sorted(self.values.items())
        for lv, v in items:
            out.append(f"{self.name}{_labels(self.label_names, lv)} {_num(v)}")
        return out


class Histogram(_Metric):
    """Cumulative-bucket histogram; ``observe`` is a bisect and three additions."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: tuple[float, ...],
        labels: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, help_text, labels)
        self.bounds = tuple(sorted(buckets))
        # per child: [bucket counts..., +Inf count] plus sum
        self.children: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        c = self.children.get(labels)
        if c is None:
            c = self.children[labels] = [0.0] * (len(self.bounds) + 2)
        c[bisect_left(self.bounds, value)] += 1
        c[-1] += value

    def render(self) -> list[str]:
        out = self.header()
        n = len(self.bounds)
        for lv, c in sorted(self.children.items()):
            acc = 0.0
            for i, b in enumerate(self.bounds):
                acc += c[i]
                le = f'le="{_num(b)}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, lv, le)} {_num(acc)}")
            acc += c[n]
            inf = _labels(self.label_names, lv, 'le="+Inf"')
            out.append(f"{self.name}_bucket{inf} {_num(acc)}")
            out.append(f"{self.name}_sum{_labels(self.label_names, lv)} {_num(c[-1])}")
            out.append(f"{self.name}_count{_labels(self.label_names, lv)} {_num(acc)}")
        return out


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, m: _Metric) -> None:
        self.metrics.append(m)

    def render(self) -> bytes:
        lines: list[str] = []
        for m in self.metrics:
            lines += m.render()
        return ("\n".join(lines) + "\n").encode()

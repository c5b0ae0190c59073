"""Benchmark scenarios for knative-dataplane: ``python -m benchmarks <scenario> [--quick]``.

Each scenario starts every process it needs on loopback, measures side by side in one run,
prints a table and writes JSON under ``benchmarks/results/``. See ``benchmarks/RESULTS.md``.
"""

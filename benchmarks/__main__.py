"""Command line: ``python -m benchmarks <scenario> [options]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from types import ModuleType

from benchmarks import _procs


def _scenarios() -> dict[str, tuple[str, Callable[[], ModuleType]]]:
    """Scenario name -> (one-line help, lazy module loader)."""

    def proxy() -> ModuleType:
        from benchmarks import proxy as mod

        return mod

    def engine() -> ModuleType:
        from benchmarks import engine as mod

        return mod

    def held() -> ModuleType:
        from benchmarks import held as mod

        return mod

    def knd() -> ModuleType:
        from benchmarks import knd_scaling as mod

        return mod

    def telemetry() -> ModuleType:
        from benchmarks import telemetry as mod

        return mod

    def locust() -> ModuleType:
        from benchmarks import locust_shapes as mod

        return mod

    def grpc() -> ModuleType:
        from benchmarks import grpc as mod

        return mod

    def h2load() -> ModuleType:
        from benchmarks import h2load as mod

        return mod

    def tls() -> ModuleType:
        from benchmarks import tls as mod

        return mod

    def soak() -> ModuleType:
        from benchmarks import soak as mod

        return mod

    def all_() -> ModuleType:
        from benchmarks import all_scenarios as mod

        return mod

    return {
        "proxy": ("queue-proxy throughput vs direct, nginx, aiohttp and --extra proxies", proxy),
        "engine": ("Python cost per proxied request, in memory (no sockets)", engine),
        "held": ("activator: memory per held request, draining them, release latency", held),
        "knd": ("knd run: cold start from zero, scale-out timeline under a stepped load", knd),
        "telemetry": ("queue-proxy throughput: tracing off, 1 %% and 100 %% vs none", telemetry),
        "locust": ("locust shapes: dataplane probe per hop, stepped load, burst from zero", locust),
        "grpc": ("gRPC unary calls/s, p50/p99: direct, queue-proxy, activator (h2c)", grpc),
        "h2load": ("h2c CPU per request through the queue-proxy under h2load (nginx h2c)", h2load),
        "tls": ("queue-proxy TLS port vs its plain port and nginx TLS (--go: Knative's too)", tls),
        "soak": ("RSS of activator and queue-proxy over a steady load: slope per minute", soak),
        "all": ("every other scenario once, in turn (--quick: the CI smoke)", all_),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the scenario name and its options, run it, return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="knative-dataplane benchmarks (loopback only; all processes stop on exit).",
    )
    sub = parser.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)
    runners = {}
    for name, (help_text, load) in _scenarios().items():
        mod = load()
        scenario_parser = sub.add_parser(name, help=help_text, description=mod.__doc__)
        mod.add_arguments(scenario_parser)
        runners[name] = mod.run
    args = parser.parse_args(argv)
    with _procs.signals_raise_system_exit():
        try:
            return int(runners[args.scenario](args))
        except _procs.BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())

"""knd: serve apps with scale-to-zero on this machine (knd run); see what runs (knd status).

knd run --name hello [--concurrency 10] [--port 8080] [--min-scale 0 ...] -- python app.py
knd run --file services.yaml
knd status [--admin-port 9080]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from typing import NoReturn

from dataplane.envconfig import ConfigError
from platforms.base import DEFAULT_TIMEOUT_SECONDS

__all__ = ["main"]


def _flag_name(key: str) -> str:
    return key.replace("-", "_")


# What each autoscaling flag means, with Knative's default (the annotation or config key of
# the same name; knd's own defaults where knd differs).
AUTOSCALING_HELP = {
    "min-scale": "pods kept even when idle (0: scale to zero)",
    "max-scale": "at most this many pods (0: no limit)",
    "initial-scale": "pods started before the first request (1; 0: none until a request)",
    "activation-scale": "pods started at least when scaling from zero (1)",
    "target": "requests in flight per pod the KPA aims at (the concurrency, or 100 with "
    "concurrency 0; requests/s with --metric rps: 200)",
    "target-utilization-percentage": "share of --target used before scaling (70)",
    "target-burst-capacity": "spare requests the activator absorbs before pods take traffic "
    "directly (211; -1: activator always in the path)",
    "window": "stable window: stats averaged over it (60s; 6s to 1h)",
    "panic-window-percentage": "panic window as a percentage of the stable window (10)",
    "panic-threshold-percentage": "panic when demand exceeds this percentage of capacity (200)",
    "scale-down-delay": "hold the highest recent decision this long before scaling down (0s)",
    "scale-to-zero-pod-retention-period": "keep the last pod this long after the last request (0s)",
    "metric": "concurrency (default) or rps",
    "metric-aggregation-algorithm": "linear (default) or weighted-exponential",
    "stable-window": "config-autoscaler stable-window for every service (60s)",
    "scale-to-zero-grace-period": "how long a pod may linger after the decision to scale to "
    "zero (30s)",
    "enable-scale-to-zero": "true (default) or false",
}


class _Parser(argparse.ArgumentParser):
    """Every usage error is one line naming the flag, then exit 2 (no usage block)."""

    subcommands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        if message.startswith("unrecognized arguments: "):
            flags = message.removeprefix("unrecognized arguments: ")
            message = f"unknown flag(s): {flags}"
        self.exit(2, f"knd: {message} (see {self.prog} --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return v


def _port(text: str) -> int:
    v = _int(text)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return v


def _parser() -> _Parser:
    from .services import AUTOSCALING_FLAGS, CONFIG_FLAGS

    doc = (__doc__ or "").split("\n\n")[0]
    p = _Parser(prog="knd", description=doc)
    p.subcommands = {}
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=_Parser)
    r = sub.add_parser(
        "run",
        help="serve apps with scale-to-zero (pods are local processes)",
        description="Serve one app (--name ... -- COMMAND) or the services of a file (--file). "
        "Each pod is the app (given $PORT; write $(PORT) in the command, quoted, to pass it "
        "as an argument) behind a real queue-proxy; the activator on --port routes "
        "NAME.localhost (any Host when there is one service) and holds requests while pods "
        "start; the autoscaler (Knative's KPA) scales from and to zero.",
        usage="knd run --name NAME [options] -- COMMAND [ARGS...]\n"
        "       knd run --file SERVICES.yaml [options]",
    )
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--name", help="service name (a DNS label)")
    src.add_argument("--file", "-f", help="services file (YAML; see examples/services.yaml)")
    r.add_argument(
        "--concurrency", type=_int, default=0, help="containerConcurrency (0: unlimited)"
    )
    r.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"request timeout ({DEFAULT_TIMEOUT_SECONDS:g} s)",
    )
    r.add_argument("--env", action="append", default=[], metavar="K=V", help="app environment")
    r.add_argument("--port", type=_port, default=8080, help="where requests come in (8080)")
    r.add_argument("--address", default="127.0.0.1", help="listen address (127.0.0.1)")
    r.add_argument("--admin-port", type=_port, default=9080, help="status port (9080)")
    r.add_argument(
        "--progress-deadline",
        type=_seconds,
        default=120.0,
        help="a service with no ready pod this many seconds after it asked for one fails; "
        "with one service knd run then exits (120)",
    )
    r.add_argument(
        "--drain-quiet-period",
        type=_seconds,
        default=1.0,
        help="a stopping pod's queue-proxy drain period in seconds (1; Knative: 30)",
    )
    r.add_argument("--quiet", action="store_true", help="no event and status lines")
    g = r.add_argument_group(
        "autoscaling (Knative's autoscaling.knative.dev/* annotations; defaults in brackets)"
    )
    for key in AUTOSCALING_FLAGS + CONFIG_FLAGS:
        g.add_argument(f"--{key}", dest=_flag_name(key), metavar="V", help=AUTOSCALING_HELP[key])
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... (with --name)")
    s = sub.add_parser("status", help="show what a running knd run serves")
    s.add_argument("--admin-port", type=_port, default=9080, help="knd run's --admin-port (9080)")
    s.add_argument("--json", action="store_true", help="the admin port's JSON as is")
    p.subcommands = {"run": r, "status": s}
    return p


def _run(args: argparse.Namespace) -> int:
    from .runner import RunOptions, run
    from .services import (
        AUTOSCALING_FLAGS,
        CONFIG_FLAGS,
        check_scaling,
        load_services_file,
        service_from_flags,
    )

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    config: dict[str, str] = {}
    for key in CONFIG_FLAGS:
        v = getattr(args, _flag_name(key))
        if v is not None:
            config[key] = v
    if config:
        check_scaling([], config)  # a bad value names its flag
    if args.file:
        if cmd:
            raise ConfigError("knd run --file: no command expected (the file names them)")
        services, file_config = load_services_file(args.file)
        config = {**file_config, **config}
        check_scaling(services, config, where=args.file)
    else:
        env: dict[str, str] = {}
        for kv in args.env:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise ConfigError(f"--env {kv!r}: expected KEY=VALUE")
            env[k] = v
        if args.concurrency < 0:
            raise ConfigError("--concurrency: must be 0 or more")
        auto = {
            key: getattr(args, _flag_name(key))
            for key in AUTOSCALING_FLAGS
            if getattr(args, _flag_name(key)) is not None
        }
        services = [
            service_from_flags(
                args.name,
                cmd,
                concurrency=args.concurrency,
                timeout=args.timeout,
                env=env,
                autoscaling=auto,
            )
        ]
        check_scaling(services, config)
    return run(
        RunOptions(
            services=services,
            config=config,
            port=args.port,
            address=args.address,
            admin_port=args.admin_port,
            progress_deadline=args.progress_deadline,
            drain_quiet_period=args.drain_quiet_period,
            quiet=args.quiet,
        )
    )


def _status(args: argparse.Namespace) -> int:
    url = f"http://127.0.0.1:{args.admin_port}/status"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            data = json.load(resp)
    except OSError as e:
        print(f"knd status: nothing answers on {url} ({e}); is knd run up?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    head = ("SERVICE", "READY", "DESIRED", "IN FLIGHT", "QUEUED", "COLD START", "WAIT", "URL")
    rows = [head]
    failures: list[str] = []

    def ms(v: object) -> str:
        return "-" if v is None else f"{v} ms"

    for s in data["services"]:
        rows.append(
            (
                s["service"],
                str(s["ready"]),
                str(s["desired"]),
                str(s["in_flight"]),
                str(s["queued"]),
                ms(s["last_cold_start_ms"]),
                ms(s.get("last_wait_ms")),
                s.get("url") or f"http://{s['host']}/",
            )
        )
        if s.get("failure"):
            failures.append(s["failure"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for text in failures:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # an unknown flag of a subcommand: that subcommand's one-line error
        parser.subcommands[args.cmd].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = _run(args) if args.cmd == "run" else _status(args)
    except ConfigError as e:
        print(f"knd: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()

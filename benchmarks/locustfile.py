"""Locust users for the knative-dataplane benchmarks (``python -m benchmarks locust`` drives it).

Usable on its own too, e.g. against ``make run`` (the ``slow`` service of examples/services.yaml,
scaled from zero by 100 users at 4 req/s each for a minute)::

    KND_LOCUST_PATH='/?sleep=100' KND_LOCUST_RATE=4 KND_LOCUST_HOST_HEADER=slow.localhost \
        .venv/bin/locust -f benchmarks/locustfile.py --headless -H http://127.0.0.1:8080 \
        -u 100 -r 100 -t 60s

One user class, ``DataplaneUser`` (``FastHttpUser``): a GET of ``KND_LOCUST_PATH`` at a fixed
rate per user. Everything is set through the environment, so the same file serves every shape:

- ``KND_LOCUST_PATH``: request path (``/?sleep=100``, Knative's autoscale image with a 100 ms
  handler).
- ``KND_LOCUST_HOST_HEADER``: a ``Host`` header (the activator routes by it); default none.
- ``KND_LOCUST_TARGETS``: JSON ``[[name, base_url, host_header], ...]``: each user sends its
  requests to these targets in turn (starting at a random one), recording the name, so several
  paths are measured interleaved under the same conditions; ``-H`` is then unused.
- ``KND_LOCUST_RATE``: requests per second per user (``constant_throughput``, each user starting
  at a random phase); 0 sends the next request as soon as the previous one is answered.
  Default 0.
- ``KND_LOCUST_TIMEOUT``: seconds before a request counts as failed (30, Knative's).
- ``KND_LOCUST_RECORD``: a path prefix; each locust process then writes one CSV line per request
  to ``<prefix>.<pid>.csv``: wall-clock start (``time.time()``, s), latency (ms, from
  ``perf_counter``), status (0 when no response), request name (the target's with
  ``KND_LOCUST_TARGETS``), error text (empty when it was a 200). Locust's
  own statistics round latencies (to 10 ms above 100 ms) and its history CSV is averaged, so the
  driver computes every percentile from these lines.
- ``KND_LOCUST_START_AT``: wall-clock time (``time.time()``) before which no user sends: spawned
  users wait for it, so a burst starts at one instant, not at the spawn rate.
- ``KND_LOCUST_ONE_SHOT=1``: each user sends one request and stops; ``KND_LOCUST_EXPECT=N``
  makes the (single) locust process quit once N requests have completed.
- ``KND_LOCUST_STEPS=USERS:SECONDS,...``: a ``LoadTestShape`` that holds each user count for
  its seconds (all users of a step start at once), then stops. Without it locust's ``-u``, ``-r``
  and ``-t`` apply.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import IO, Any

import gevent
from locust import LoadTestShape, constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.exception import StopUser

PATH = os.environ.get("KND_LOCUST_PATH", "/?sleep=100")
HOST_HEADER = os.environ.get("KND_LOCUST_HOST_HEADER", "")
RATE = float(os.environ.get("KND_LOCUST_RATE", "0") or 0)
TIMEOUT = float(os.environ.get("KND_LOCUST_TIMEOUT", "30") or 30)
RECORD = os.environ.get("KND_LOCUST_RECORD", "")
START_AT = float(os.environ.get("KND_LOCUST_START_AT", "0") or 0)
ONE_SHOT = os.environ.get("KND_LOCUST_ONE_SHOT", "") == "1"
EXPECT = int(os.environ.get("KND_LOCUST_EXPECT", "0") or 0)
STEPS = os.environ.get("KND_LOCUST_STEPS", "")
TARGETS: list[list[str]] = json.loads(os.environ.get("KND_LOCUST_TARGETS", "") or "[]")

_record: IO[str] | None = None
_completed = 0


def _parse_steps(spec: str) -> list[tuple[int, float]]:
    out = []
    for part in spec.split(","):
        if part.strip():
            users, _, seconds = part.partition(":")
            out.append((int(users), float(seconds)))
    return out


@events.init.add_listener
def _open_record(environment: Environment, **_kw: Any) -> None:
    """Each process (master or worker) that runs users writes its own file."""
    global _record
    if RECORD and _record is None:
        _record = open(f"{RECORD}.{os.getpid()}.csv", "a", buffering=1 << 16)  # noqa: SIM115


@events.quitting.add_listener
def _close_record(environment: Environment, **_kw: Any) -> None:
    if _record is not None:
        _record.flush()


@events.request.add_listener
def _on_request(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    response: Any = None,
    context: Any = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_kw: Any,
) -> None:
    global _completed
    status = int(getattr(response, "status_code", 0) or 0) if response is not None else 0
    error = ""
    if exception is not None:
        error = f"{type(exception).__name__}: {exception}".replace(",", ";").replace("\n", " ")
    elif status != 200:
        error = f"status {status}"
    if _record is not None:
        start = start_time if start_time is not None else time.time() - response_time / 1000
        label = name.replace(",", ";")
        _record.write(f"{start:.6f},{response_time:.3f},{status},{label},{error[:200]}\n")
    _completed += 1
    if EXPECT and _completed >= EXPECT:
        runner = _ENV.runner if _ENV is not None else None
        if runner is not None:
            gevent.spawn_later(0.2, runner.quit)


_ENV: Environment | None = None


@events.init.add_listener
def _keep_env(environment: Environment, **_kw: Any) -> None:
    global _ENV
    _ENV = environment


class DataplaneUser(FastHttpUser):
    """GET ``KND_LOCUST_PATH``; one request at a time on one keep-alive connection."""

    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    connection_timeout = TIMEOUT
    network_timeout = TIMEOUT
    host = "http://127.0.0.1:8080"

    def on_start(self) -> None:
        self._next = random.randrange(len(TARGETS)) if TARGETS else 0
        delay = START_AT - time.time()
        if delay > 0:
            gevent.sleep(delay)
        elif RATE > 0:
            # Users spawned together would stay in phase and send in bursts; a random phase
            # spreads them, so the offered load is steady like vegeta's.
            gevent.sleep(random.uniform(0, 1 / RATE))

    _next = 0

    @task
    def get(self) -> None:
        if TARGETS:
            name, base, host = TARGETS[self._next % len(TARGETS)]
            self._next += 1
            headers = {"Host": host} if host else None
            self.client.get(base + PATH, name=name, headers=headers)
        else:
            headers = {"Host": HOST_HEADER} if HOST_HEADER else None
            self.client.get(PATH, name=PATH, headers=headers)
        if ONE_SHOT:
            raise StopUser()


if STEPS:

    class StepShape(LoadTestShape):
        """Hold each step's user count for its seconds; users of a step start at once."""

        steps = _parse_steps(STEPS)

        def tick(self) -> tuple[int, float] | None:
            elapsed = self.get_run_time()
            end = 0.0
            for users, seconds in self.steps:
                end += seconds
                if elapsed < end:
                    return users, 10_000.0
            return None

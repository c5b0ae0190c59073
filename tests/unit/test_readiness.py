"""Unit tests for queueproxy.readiness: probe decoding and the prober's cycle logic (no I/O)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from dataplane.probespec import ProbeConfigError, ProbeSpec, parse_readiness_probe
from queueproxy.probes import ProbeError, ProbeRefused
from queueproxy.readiness import (
    AGGRESSIVE_PROBE_TIMEOUT,
    POLL_TIMEOUT,
    REFUSED_RETRY_INTERVAL,
    RETRY_INTERVAL,
    ReadinessProber,
)

USER_PORT = 8080


def parse(value: object, *, multi: bool = False) -> list[ProbeSpec]:
    text = value if isinstance(value, str) else json.dumps(value)
    return parse_readiness_probe(text, multi_container=multi, user_port=USER_PORT)


# --------------------------------------------------------------------------- parsing


class TestParse:
    @pytest.mark.parametrize("value", ["", "   ", "\n"])
    def test_empty_means_always_ready(self, value: str) -> None:
        assert parse(value) == []
        assert parse(value, multi=True) == []

    def test_default_tcp_probe(self) -> None:
        # Revision defaulting gives the serving container an empty tcpSocket probe.
        assert parse({"tcpSocket": {}}) == [ProbeSpec("tcp", "127.0.0.1", USER_PORT)]

    def test_tcp_with_host_and_port(self) -> None:
        [spec] = parse({"tcpSocket": {"host": "10.0.0.1", "port": 9000}})
        assert (spec.kind, spec.host, spec.port) == ("tcp", "10.0.0.1", 9000)

    def test_http_full(self) -> None:
        probe = {
            "httpGet": {
                "host": "127.0.0.1",
                "port": "8081",
                "path": "/healthz",
                "scheme": "HTTP",
                "httpHeaders": [{"name": "X-Probe", "value": "1"}, {"name": "Y", "value": ""}],
            },
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "successThreshold": 2,
            "failureThreshold": 4,
            "initialDelaySeconds": 3,
        }
        assert parse(probe) == [
            ProbeSpec(
                "http",
                "127.0.0.1",
                8081,
                path="/healthz",
                scheme="HTTP",
                headers=(("X-Probe", "1"), ("Y", "")),
                period_seconds=5,
                timeout_seconds=2,
                success_threshold=2,
                failure_threshold=4,
            )
        ]

    def test_http_defaults(self) -> None:
        [spec] = parse({"httpGet": {}})
        assert spec == ProbeSpec("http", "127.0.0.1", USER_PORT, path="/", scheme="HTTP")
        assert spec.aggressive

    def test_http_path_gets_leading_slash_and_lowercase_scheme(self) -> None:
        [spec] = parse({"httpGet": {"path": "ready", "scheme": "http", "port": 0}})
        assert (spec.path, spec.scheme, spec.port) == ("/ready", "HTTP", USER_PORT)

    def test_header_value_missing_is_empty(self) -> None:
        [spec] = parse({"httpGet": {"httpHeaders": [{"name": "X"}]}})
        assert spec.headers == (("X", ""),)

    def test_grpc_accepted(self) -> None:
        [spec] = parse({"grpc": {"port": 9090, "service": "svc"}, "periodSeconds": 1})
        assert spec == ProbeSpec(
            "grpc", "127.0.0.1", 9090, grpc_service="svc", period_seconds=1, timeout_seconds=1
        )
        [spec] = parse({"grpc": {"service": None}})
        assert (spec.port, spec.grpc_service) == (USER_PORT, "")

    def test_null_handlers_ignored_like_go(self) -> None:
        [spec] = parse({"exec": None, "httpGet": None, "tcpSocket": {"port": 1}})
        assert spec.kind == "tcp"

    @pytest.mark.parametrize(
        ("fields", "timeout"),
        [
            ({"periodSeconds": 10}, 1),
            ({"periodSeconds": 10, "timeoutSeconds": 0}, 1),
            ({"periodSeconds": 10, "timeoutSeconds": 7}, 7),
            ({"periodSeconds": 0, "timeoutSeconds": 0}, 0),  # aggressive: left alone
        ],
    )
    def test_timeout_normalisation(self, fields: dict[str, int], timeout: int) -> None:
        [spec] = parse({"tcpSocket": {}, **fields})
        assert spec.timeout_seconds == timeout

    @pytest.mark.parametrize(("given", "expected"), [(None, 1), (0, 1), (1, 1), (3, 3)])
    def test_success_threshold_default(self, given: int | None, expected: int) -> None:
        probe: dict[str, object] = {"tcpSocket": {}}
        if given is not None:
            probe["successThreshold"] = given
        [spec] = parse(probe)
        assert spec.success_threshold == expected

    def test_array_when_multi_container(self) -> None:
        specs = parse(
            [{"httpGet": {"port": 8080, "path": "/a"}}, {"tcpSocket": {"port": 9000}}], multi=True
        )
        assert [(s.kind, s.port, s.path) for s in specs] == [
            ("http", 8080, "/a"),
            ("tcp", 9000, "/"),
        ]

    def test_empty_array_when_multi_container(self) -> None:
        assert parse([], multi=True) == []

    def test_single_object_accepted_when_multi_container(self) -> None:
        assert parse({"tcpSocket": {}}, multi=True) == [ProbeSpec("tcp", "127.0.0.1", USER_PORT)]

    def test_unknown_extra_fields_ignored(self) -> None:
        [spec] = parse({"tcpSocket": {"port": 1, "extra": 1}, "terminationGracePeriodSeconds": 3})
        assert spec.port == 1

    @pytest.mark.parametrize(
        ("value", "multi", "message"),
        [
            ("{", False, "malformed JSON"),
            ("not json", False, "malformed JSON"),
            ("null", False, "expected a probe object, got null"),
            ("5", True, "expected a probe object or an array of them, got number"),
            ([{"tcpSocket": {}}], False, "ENABLE_MULTI_CONTAINER_PROBES"),
            ([{"tcpSocket": {}}, "x"], True, "[1]: expected a probe object, got string"),
            ({}, False, "no probe handler; expected one of httpGet, tcpSocket, grpc"),
            ({"periodSeconds": 1}, False, "no probe handler"),
            ({"udpSocket": {"port": 1}}, False, "no probe handler"),
            ({"exec": {"command": ["true"]}}, False, "exec: exec probes are not supported"),
            ([{"tcpSocket": {}}, {"exec": {}}], True, "[1].exec: exec probes are not supported"),
            ({"tcpSocket": {}, "httpGet": {}}, False, "more than one probe handler"),
            ({"tcpSocket": 5}, False, "tcpSocket: expected an object, got number"),
            ({"tcpSocket": {"port": "http"}}, False, "tcpSocket.port: named port 'http'"),
            (
                {"httpGet": {"port": "web"}},
                False,
                "httpGet.port: named port 'web' is not supported",
            ),
            ({"httpGet": {"port": 8080.5}}, False, "httpGet.port: expected a port number"),
            ({"httpGet": {"port": True}}, False, "httpGet.port: expected a port number"),
            ({"httpGet": {"port": [1]}}, False, "httpGet.port: expected a port number"),
            ({"httpGet": {"port": 70000}}, False, "httpGet.port: port 70000 out of range"),
            ({"httpGet": {"port": -1}}, False, "httpGet.port: port -1 out of range"),
            ({"grpc": {"port": "grpc"}}, False, "grpc.port: named port 'grpc'"),
            ({"httpGet": {"scheme": "HTTPS"}}, False, "httpGet.scheme: HTTPS readiness probes"),
            ({"httpGet": {"scheme": "https"}}, False, "not supported yet"),
            ({"httpGet": {"scheme": "FTP"}}, False, "httpGet.scheme: unknown scheme 'FTP'"),
            ({"httpGet": {"path": 5}}, False, "httpGet.path: expected a string, got number"),
            ({"httpGet": {"host": "a b"}}, False, "httpGet.host: invalid host"),
            ({"httpGet": {"httpHeaders": {}}}, False, "httpGet.httpHeaders: expected an array"),
            (
                {"httpGet": {"httpHeaders": [1]}},
                False,
                "httpGet.httpHeaders[0]: expected an object",
            ),
            (
                {"httpGet": {"httpHeaders": [{"value": "v"}]}},
                False,
                "httpGet.httpHeaders[0].name: invalid header name ''",
            ),
            (
                {"httpGet": {"httpHeaders": [{"name": "a b", "value": "v"}]}},
                False,
                "httpGet.httpHeaders[0].name: invalid header name 'a b'",
            ),
            (
                {"httpGet": {"httpHeaders": [{"name": "X", "value": "a\r\nEvil: 1"}]}},
                False,
                "httpGet.httpHeaders[0].value: header value contains CR, LF or NUL",
            ),
            ({"tcpSocket": {}, "periodSeconds": "5"}, False, "periodSeconds: expected an integer"),
            (
                {"tcpSocket": {}, "timeoutSeconds": 1.5},
                False,
                "timeoutSeconds: expected an integer",
            ),
            ({"tcpSocket": {}, "successThreshold": -1}, False, "successThreshold: must be between"),
            ({"tcpSocket": {}, "failureThreshold": True}, False, "failureThreshold: expected an"),
            ({"tcpSocket": {}, "initialDelaySeconds": "x"}, False, "initialDelaySeconds: expected"),
        ],
    )
    def test_errors(self, value: object, multi: bool, message: str) -> None:
        with pytest.raises(ProbeConfigError) as info:
            parse(value, multi=multi)
        text = str(info.value)
        assert text.startswith("SERVING_READINESS_PROBE: ")
        assert message in text
        assert isinstance(info.value, ValueError)

    def test_missing_port_with_bad_user_port(self) -> None:
        with pytest.raises(
            ProbeConfigError, match=re.escape("tcpSocket.port: not set and USER_PORT 0")
        ):
            parse_readiness_probe('{"tcpSocket": {}}', multi_container=False, user_port=0)


# --------------------------------------------------------------------------- prober


class FakeTime:
    """A clock that only moves when the prober sleeps (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


class FakeAttempt:
    """Scripted attempt results (True = success); after the script, repeats ``then``."""

    def __init__(self, script: Iterable[bool] = (), *, then: bool = True) -> None:
        self.script = list(script)
        self.then = then
        self.calls: list[tuple[ProbeSpec, float]] = []

    async def __call__(self, spec: ProbeSpec, timeout: float) -> None:
        self.calls.append((spec, timeout))
        await asyncio.sleep(0)
        ok = self.script.pop(0) if self.script else self.then
        if not ok:
            raise ConnectionRefusedError(f"dial tcp 127.0.0.1:{spec.port}: connection refused")


def make(
    probes: list[ProbeSpec], attempt: FakeAttempt, fake: FakeTime
) -> tuple[ReadinessProber, list[str]]:
    logs: list[str] = []
    prober = ReadinessProber(
        probes, clock=fake.clock, sleep=fake.sleep, attempt=attempt, log=logs.append
    )
    return prober, logs


AGGR = ProbeSpec("tcp", "127.0.0.1", 8080)


class TestAggressive:
    def test_constants(self) -> None:
        assert (AGGRESSIVE_PROBE_TIMEOUT, RETRY_INTERVAL, POLL_TIMEOUT) == (0.1, 0.01, 10.0)
        assert REFUSED_RETRY_INTERVAL == 0.003

    async def test_refused_port_is_retried_sooner_than_other_failures(self) -> None:
        fake = FakeTime()
        script = [ProbeRefused("refused"), ProbeRefused("refused"), ProbeError("503"), None]

        async def attempt(spec: ProbeSpec, timeout: float) -> None:
            await asyncio.sleep(0)
            exc = script.pop(0)
            if exc is not None:
                raise exc

        prober = ReadinessProber([AGGR], clock=fake.clock, sleep=fake.sleep, attempt=attempt)
        assert await prober.probe() is True
        assert fake.sleeps == pytest.approx(
            [REFUSED_RETRY_INTERVAL, REFUSED_RETRY_INTERVAL, RETRY_INTERVAL]
        )

    async def test_immediate_success(self) -> None:
        fake, attempt = FakeTime(), FakeAttempt()
        prober, logs = make([AGGR], attempt, fake)
        before = prober.last_result
        assert before is None
        assert await prober.probe() is True
        assert prober.last_result is True
        assert attempt.calls == [(AGGR, 0.1)]
        assert fake.sleeps == [] and logs == []

    async def test_consecutive_successes_with_reset(self) -> None:
        spec = ProbeSpec("tcp", "127.0.0.1", 8080, success_threshold=3)
        fake = FakeTime()
        attempt = FakeAttempt([False, True, True, False, True, True, True, False])
        prober, logs = make([spec], attempt, fake)
        assert await prober.probe() is True
        # fail, ok, ok, FAIL resets, ok, ok, ok -> ready on the 7th attempt.
        assert len(attempt.calls) == 7
        assert all(timeout == 0.1 for _, timeout in attempt.calls)
        assert fake.sleeps == pytest.approx([RETRY_INTERVAL] * 6)
        assert logs == []  # intermediate failures are not logged

    async def test_counter_persists_across_cycles(self) -> None:
        spec = ProbeSpec("tcp", "127.0.0.1", 8080, success_threshold=2)
        fake, attempt = FakeTime(), FakeAttempt()
        prober, _ = make([spec], attempt, fake)
        assert await prober.probe() is True
        assert len(attempt.calls) == 2
        # Count is already 2: the next cycle needs a single success.
        assert await prober.probe() is True
        assert len(attempt.calls) == 3
        # A failure resets the count, so two fresh successes are needed again.
        attempt.script = [False]
        assert await prober.probe() is True
        assert len(attempt.calls) == 6

    async def test_gives_up_after_poll_timeout(self) -> None:
        fake, attempt = FakeTime(), FakeAttempt(then=False)
        prober, logs = make([AGGR], attempt, fake)
        start = fake.now
        assert await prober.probe() is False
        assert prober.last_result is False
        assert fake.now - start == pytest.approx(POLL_TIMEOUT)
        expected = POLL_TIMEOUT / RETRY_INTERVAL  # one attempt per interval for 10 s
        assert expected - 5 <= len(attempt.calls) <= expected + 5
        assert len(logs) == 1
        match = re.fullmatch(
            r"aggressive probe error \(failed (\d+) times\): "
            r"dial tcp 127\.0\.0\.1:8080: connection refused",
            logs[0],
        )
        assert match is not None, logs
        assert int(match.group(1)) == len(attempt.calls)

    async def test_give_up_counts_only_failures(self) -> None:
        spec = ProbeSpec("tcp", "127.0.0.1", 8080, success_threshold=2)
        fake = FakeTime()
        # Alternating ok/fail never reaches two consecutive successes.
        attempt = FakeAttempt([i % 2 == 0 for i in range(2000)])
        prober, logs = make([spec], attempt, fake)
        assert await prober.probe() is False
        failures = sum(1 for i in range(len(attempt.calls)) if i % 2 == 1)
        assert logs[0].startswith(f"aggressive probe error (failed {failures} times): ")

    async def test_slow_attempts_eat_into_the_interval(self) -> None:
        fake = FakeTime()

        async def slow_fail(spec: ProbeSpec, timeout: float) -> None:
            fake.now += timeout  # the attempt times out after 100 ms
            await asyncio.sleep(0)
            raise TimeoutError

        logs: list[str] = []
        prober = ReadinessProber(
            [AGGR], clock=fake.clock, sleep=fake.sleep, attempt=slow_fail, log=logs.append
        )
        assert await prober.probe() is False
        assert all(delay == 0 for delay in fake.sleeps)  # ticker already overdue
        assert logs[0].endswith("times): TimeoutError")

    async def test_recovers_within_window(self) -> None:
        fake, attempt = FakeTime(), FakeAttempt([False] * 40)
        prober, logs = make([AGGR], attempt, fake)
        start = fake.now
        assert await prober.probe() is True
        assert len(attempt.calls) == 41
        assert fake.now - start == pytest.approx(40 * RETRY_INTERVAL)
        assert logs == []


class TestStandard:
    async def test_single_attempt_with_configured_timeout(self) -> None:
        spec = ProbeSpec("http", "127.0.0.1", 8080, period_seconds=10, timeout_seconds=3)
        fake, attempt = FakeTime(), FakeAttempt()
        prober, logs = make([spec], attempt, fake)
        assert await prober.probe() is True
        assert attempt.calls == [(spec, 3.0)]
        assert fake.sleeps == [] and logs == []

    async def test_single_failure_is_final_and_logged(self) -> None:
        spec = ProbeSpec("tcp", "127.0.0.1", 8080, period_seconds=1, timeout_seconds=1)
        fake, attempt = FakeTime(), FakeAttempt([False])
        prober, logs = make([spec], attempt, fake)
        assert await prober.probe() is False
        assert len(attempt.calls) == 1
        assert fake.sleeps == []
        assert logs == ["dial tcp 127.0.0.1:8080: connection refused"]
        assert await prober.probe() is True  # next cycle, next attempt

    async def test_unnormalised_zero_timeout_uses_one_second(self) -> None:
        spec = ProbeSpec("tcp", "127.0.0.1", 8080, period_seconds=5, timeout_seconds=0)
        fake, attempt = FakeTime(), FakeAttempt()
        prober, _ = make([spec], attempt, fake)
        assert await prober.probe() is True
        assert attempt.calls == [(spec, 1.0)]

    async def test_success_threshold_ignored_in_standard_mode(self) -> None:
        # Knative: standard mode is one attempt; kubelet applies the thresholds.
        spec = ProbeSpec(
            "tcp", "127.0.0.1", 1, period_seconds=1, timeout_seconds=1, success_threshold=3
        )
        fake, attempt = FakeTime(), FakeAttempt()
        prober, _ = make([spec], attempt, fake)
        assert await prober.probe() is True
        assert len(attempt.calls) == 1


class TestCycle:
    async def test_empty_probes_always_ready(self) -> None:
        fake, attempt = FakeTime(), FakeAttempt(then=False)
        prober, _ = make([], attempt, fake)
        assert await prober.probe() is True
        assert prober.last_result is True
        assert attempt.calls == []

    async def test_all_must_pass(self) -> None:
        user = ProbeSpec("http", "127.0.0.1", 8080, period_seconds=1, timeout_seconds=1)
        sidecar = ProbeSpec("tcp", "127.0.0.1", 9000, period_seconds=1, timeout_seconds=2)
        fake = FakeTime()

        async def attempt(spec: ProbeSpec, timeout: float) -> None:
            calls.append((spec.port, timeout))
            if spec.port in failing:
                raise OSError("boom")

        calls: list[tuple[int, float]] = []
        logs: list[str] = []
        failing: set[int] = {9000}
        prober = ReadinessProber(
            [user, sidecar], clock=fake.clock, sleep=fake.sleep, attempt=attempt, log=logs.append
        )
        assert await prober.probe() is False
        assert sorted(calls) == [(8080, 1.0), (9000, 2.0)]
        assert logs == ["tcp probe 127.0.0.1:9000: boom"]
        failing.clear()
        assert await prober.probe() is True

    async def test_probes_run_concurrently(self) -> None:
        specs = [ProbeSpec("tcp", "127.0.0.1", p, period_seconds=1) for p in (1, 2, 3)]
        started: list[int] = []
        release = asyncio.Event()

        async def attempt(spec: ProbeSpec, timeout: float) -> None:
            started.append(spec.port)
            await release.wait()

        prober = ReadinessProber(specs, attempt=attempt, log=lambda _: None)
        task = asyncio.create_task(prober.probe())
        for _ in range(5):
            await asyncio.sleep(0)
        assert sorted(started) == [1, 2, 3]  # all in flight before any finished
        release.set()
        assert await task is True

    async def test_aggressive_and_counter_per_probe(self) -> None:
        a = ProbeSpec("tcp", "127.0.0.1", 1, success_threshold=2)
        b = ProbeSpec("tcp", "127.0.0.1", 2, success_threshold=1)
        fake = FakeTime()
        calls: list[int] = []

        async def attempt(spec: ProbeSpec, timeout: float) -> None:
            calls.append(spec.port)
            await asyncio.sleep(0)

        prober = ReadinessProber([a, b], clock=fake.clock, sleep=fake.sleep, attempt=attempt)
        assert await prober.probe() is True
        assert sorted(calls) == [1, 1, 2]

    async def test_single_flight(self) -> None:
        release = asyncio.Event()
        calls = 0

        async def attempt(spec: ProbeSpec, timeout: float) -> None:
            nonlocal calls
            calls += 1
            await release.wait()

        prober = ReadinessProber([AGGR], attempt=attempt, log=lambda _: None)
        first = asyncio.create_task(prober.probe())
        second = asyncio.create_task(prober.probe())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        third = asyncio.create_task(prober.probe())
        await asyncio.sleep(0)
        assert calls == 1
        release.set()
        assert list(await asyncio.gather(first, second, third)) == [True, True, True]
        assert calls == 1
        # Once finished, the next call starts a fresh cycle.
        assert await prober.probe() is True
        assert calls == 2

    async def test_single_flight_shares_failure(self) -> None:
        fake, attempt = FakeTime(), FakeAttempt(then=False)
        spec = ProbeSpec("tcp", "127.0.0.1", 8080, period_seconds=1, timeout_seconds=1)
        prober, logs = make([spec], attempt, fake)
        results = await asyncio.gather(*(prober.probe() for _ in range(5)))
        assert results == [False] * 5
        assert len(attempt.calls) == 1
        assert len(logs) == 1

    async def test_cancelled_waiter_does_not_cancel_cycle(self) -> None:
        release = asyncio.Event()
        calls = 0

        async def attempt(spec: ProbeSpec, timeout: float) -> None:
            nonlocal calls
            calls += 1
            await release.wait()

        prober = ReadinessProber([AGGR], attempt=attempt)
        impatient = asyncio.create_task(prober.probe())
        patient = asyncio.create_task(prober.probe())
        await asyncio.sleep(0)
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        release.set()
        assert await patient is True
        assert calls == 1
        assert prober.last_result is True

    async def test_default_log_goes_to_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        spec = ProbeSpec("tcp", "127.0.0.1", 8080, period_seconds=1, timeout_seconds=1)
        prober = ReadinessProber([spec], attempt=FakeAttempt([False]))
        assert await prober.probe() is False
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == "dial tcp 127.0.0.1:8080: connection refused\n"


def test_no_third_party_imports() -> None:
    """The sidecar module must stay light: stdlib and the engine's parser, nothing beyond."""
    code = (
        "import sys, asyncio, json, dataclasses, time, socket, logging, os\n"
        "before = set(sys.modules)\n"
        "import queueproxy.readiness, queueproxy.probes, dataplane.probespec\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    added = set(json.loads(out))
    ours = {"queueproxy", "queueproxy.readiness", "queueproxy.probes"}
    ours |= {"dataplane", "dataplane.probespec", "dataplane.httpget"}
    # httptools: the engine's parser, which every queue-proxy has loaded anyway
    parser = {m for m in added if m.split(".")[0] == "httptools" or "cython" in m}
    assert added <= {"__future__", *ours, *parser}, added

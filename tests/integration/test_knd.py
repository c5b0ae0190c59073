"""``knd run`` end to end: real processes on loopback (knd, queue-proxies, a test app).

Every wait polls knd's output lines or its ``/status`` with a deadline. Autoscaling runs on
short settings (6 s stable window, 2 s grace period, 0.2 s drain quiet period).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from .knd_helpers import (
    APP,
    REPO,
    AppRecords,
    Knd,
    alive,
    check_decision,
    free_ports,
    knd_env,
    scale_lines,
)

FAST = [
    "--stable-window",
    "6s",
    "--scale-to-zero-grace-period",
    "2s",
    "--drain-quiet-period",
    "0.2",
]

StartKnd = Callable[..., Knd]


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    p = tmp_path / "app.py"
    p.write_text(APP)
    return p


@pytest.fixture
def records(tmp_path: Path) -> AppRecords:
    d = tmp_path / "records"
    d.mkdir()
    return AppRecords(d)


@pytest.fixture
async def start_knd(records: AppRecords) -> AsyncIterator[StartKnd]:
    """Factory: ``start_knd(args...)`` adds free --port/--admin-port; SIGINT at teardown."""
    started: list[Knd] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Knd:
        port, admin = free_ports(2)
        k = Knd(
            ["--port", str(port), "--admin-port", str(admin), *args],
            test_dir=records.directory,
            port=port,
            admin_port=admin,
            env=env,
        )
        started.append(k)
        return k

    yield start
    for k in started:
        if k.proc.poll() is None:
            try:
                await k.interrupt(timeout=15)
            except AssertionError:
                pass  # killed; the test has its verdict already
        else:
            k.kill()  # reaps, and kills anything it left behind
        print(k.output())  # shown when the test failed


def client(timeout: float = 30.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        trust_env=False,
        timeout=timeout,
        limits=httpx.Limits(max_connections=400, max_keepalive_connections=400),
    )


def hello_cmd(app_file: Path) -> list[str]:
    return ["--", "python", str(app_file)]


async def get(
    c: httpx.AsyncClient, k: Knd, path: str, host: str | None = None, **headers: str
) -> httpx.Response:
    h = dict(headers)
    if host is not None:
        h["Host"] = host
    return await c.get(f"http://127.0.0.1:{k.port}{path}", headers=h)


def run_knd(
    *args: str, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knd", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_decisions(k: Knd, *, target: float, max_scale: int = 0) -> None:
    problems = [
        p
        for line in scale_lines(k.stdout)
        if (p := check_decision(line, target=target, max_scale=max_scale)) is not None
    ]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- scale from zero


async def test_first_request_from_zero_starts_a_pod_for_it(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    k = start_knd(
        "--name", "hello", "--initial-scale", "0", "--env", "TARGET=knd", *FAST,
        *hello_cmd(app_file),
        env=knd_env(records.directory, KND_TEST_MARKER="inherited"),
    )  # fmt: skip
    await k.wait_up()
    st = await k.wait_status(lambda s: "hello" in s, "the service")
    assert (st["hello"]["ready"], st["hello"]["desired"]) == (0, 0)
    assert st["hello"]["last_cold_start_ms"] is None
    assert not records.all() and not k.app_pids()

    sent = time.time()
    async with client() as c:
        r = await get(c, k, "/sleep?ms=0")
        assert r.status_code == 200, r.text
        body = r.json()
        # Answered by a pod started for it: the process began after the request was sent,
        # and the activator held the request meanwhile.
        assert body["pid"] in k.app_pids()
        rec = next(x for x in records.all() if x["pid"] == body["pid"])
        assert rec["started"] >= sent - 0.05
        assert int(r.headers["knd-activator-wait-ms"]) > 0
        idx_scale, _ = await k.wait_line(r"^\S+ hello: scale 0 -> 1 \(stable 1\.0, panic 1\.0\)$")
        idx_start, _ = await k.wait_line(r"hello-00001-deployment-\w+: started: app pid")
        assert idx_scale < idx_start

        # With one service any Host reaches it; Knative's headers and hosts too.
        for host in ("example.com", "hello.localhost:1", "other.localhost"):
            r = await get(c, k, "/", host=host)
            assert r.status_code == 200 and r.json()["pid"] == body["pid"], host
        r = await get(
            c, k, "/", host="x.y",
            **{"Knative-Serving-Namespace": "default", "Knative-Serving-Revision": "hello-00001"},
        )  # fmt: skip
        assert r.status_code == 200
        r = await get(c, k, "/", host="hello-00001.default.svc.cluster.local")
        assert r.status_code == 200

        # The app inherits knd's environment, plus PORT, Knative's K_* and --env.
        r = await get(c, k, "/env?names=KND_TEST_MARKER,PORT,K_SERVICE,K_REVISION,TARGET")
        env = r.json()["env"]
        assert env["KND_TEST_MARKER"] == "inherited"
        assert env["TARGET"] == "knd"
        assert (env["K_SERVICE"], env["K_REVISION"]) == ("hello", "hello-00001")
        assert env["PORT"] and env["PORT"].isdigit() and int(env["PORT"]) != k.port

    st = await k.wait_status(
        lambda s: s["hello"]["last_cold_start_ms"] is not None, "the cold start in the status"
    )
    assert (st["hello"]["ready"], st["hello"]["desired"]) == (1, 1)
    assert st["hello"]["last_cold_start_ms"] > 0
    await k.wait_line(r"hello: 1/1 pods ready, 0 in flight, 0 queued, last cold start \d+ ms")


async def test_200_concurrent_requests_at_zero_all_succeed_within_cc(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    cc = 10
    k = start_knd(
        "--name", "burst", "--concurrency", str(cc), "--initial-scale", "0",
        "--max-scale", "3", *FAST, *hello_cmd(app_file),
    )  # fmt: skip
    await k.wait_up()
    assert not records.all()
    async with client(timeout=60) as c:
        rs = await asyncio.gather(*(get(c, k, "/sleep?ms=300") for _ in range(200)))
    codes = [r.status_code for r in rs]
    assert codes == [200] * 200, {c: codes.count(c) for c in set(codes)}
    peaks = records.peaks()
    assert peaks, "no pod ran"
    assert max(peaks.values()) <= cc, peaks
    assert {r.json()["pid"] for r in rs} <= set(peaks)
    assert_decisions(k, target=cc * 0.7, max_scale=3)


async def test_load_scales_out_then_down_without_drops_then_to_zero_and_back(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    k = start_knd(
        "--name", "load", "--concurrency", "1", "--initial-scale", "0", "--max-scale", "3",
        *FAST, *hello_cmd(app_file),
    )  # fmt: skip
    await k.wait_up()
    results: list[int] = []
    stops = [asyncio.Event() for _ in range(4)]

    async def worker(c: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                r = await get(c, k, "/sleep?ms=200")
                results.append(r.status_code)
            except httpx.HTTPError as e:
                results.append(-1)
                print("request failed:", repr(e))

    async with client() as c:
        tasks = [asyncio.create_task(worker(c, s)) for s in stops]
        try:
            # Sustained load of 4 with CC 1: out to max-scale (3).
            await k.wait_status(
                lambda s: s["load"]["ready"] == 3 and s["load"]["desired"] == 3,
                "3 ready pods under load",
                timeout=25,
            )
            # Down to one client: a scale-down while requests keep flowing.
            for s in stops[1:]:
                s.set()
            mark = len(k.stdout)
            await k.wait_line(r"load: scale 3 -> [12] \(", after=mark, timeout=30)
            await k.wait_line(r"load-00001-deployment-\w+: stopped$", after=mark, timeout=15)
            done = len(results)
            await k.wait_status(lambda s: True, "status")
            while len(results) < done + 3:
                await asyncio.sleep(0.05)
        finally:
            for s in stops:
                s.set()
            await asyncio.gather(*tasks)
        assert results and all(code == 200 for code in results), results
        assert max(records.peaks().values()) <= 1, records.peaks()

        # Idle: down to zero after the stable window and the grace period.
        await k.wait_status(
            lambda s: s["load"]["desired"] == 0 and s["load"]["ready"] == 0,
            "scale to zero",
            timeout=30,
        )
        await k.wait_line(r"load: scale 1 -> 0 \(stable 0\.0, panic 0\.0\)")
        before = records.pids()
        mark = len(k.stdout)
        r = await get(c, k, "/sleep?ms=0")
        assert r.status_code == 200
        assert r.json()["pid"] not in before
        # ceil(1 / 0.7) = 2 pods for one request at CC 1.
        await k.wait_line(r"load: scale 0 -> \d+ \(", after=mark)
    assert_decisions(k, target=0.7, max_scale=3)


async def test_autoscaler_decisions_match_the_formulas(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    # CC 1 at 50 % utilisation: target 0.5, so 2 requests in flight want ceil(2/0.5) = 4 pods.
    k = start_knd(
        "--name", "calc", "--concurrency", "1", "--target-utilization-percentage", "50",
        "--initial-scale", "0", *FAST, *hello_cmd(app_file),
    )  # fmt: skip
    await k.wait_up()
    async with client() as c:
        held = [asyncio.create_task(get(c, k, "/sleep?ms=6000")) for _ in range(2)]
        await k.wait_status(
            lambda s: s["calc"]["desired"] == 4 and s["calc"]["ready"] == 4,
            "desired = ceil(2 / 0.5) = 4",
            timeout=15,
        )
        rs = await asyncio.gather(*held)
    assert [r.status_code for r in rs] == [200, 200]
    lines = scale_lines(k.stdout)
    assert lines[0].old == 0 and lines[0].stable is not None
    assert max(line.new for line in lines) == 4, [line.text for line in lines]
    assert_decisions(k, target=0.5)
    assert max(records.peaks().values()) <= 1


async def test_crashed_pod_is_replaced(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    k = start_knd("--name", "crashy", *FAST, *hello_cmd(app_file))
    await k.wait_line(r"crashy-00001-deployment-\w+: ready after")
    async with client() as c:
        first = (await get(c, k, "/sleep?ms=0")).json()["pid"]
        mark = len(k.stdout)
        os.kill(first, 9)
        await k.wait_line(
            r"crashy-00001-deployment-\w+: crashed: app was killed by SIGKILL; replacing it in 1s",
            after=mark,
        )
        # The activator holds this request until the replacement is ready.
        r = await get(c, k, "/sleep?ms=0")
        assert r.status_code == 200
        second = r.json()["pid"]
    assert second != first
    await k.wait_line(r"crashy-00001-deployment-\w+: restarted \(restart 1\): app pid", after=mark)
    st = await k.wait_status(lambda s: s["crashy"]["ready"] == 1, "the pod ready again")
    assert st["crashy"]["desired"] == 1
    assert not any(" scale " in ln for ln in k.stdout[mark:]), "a crash is not a scale event"


# --------------------------------------------------------------------------- routing, status

SERVICES = """\
autoscaler:
  stable-window: 6s
services:
  - name: alpha
    command: [python, {app}]
    env: {{GREETING: from-alpha}}
  - name: beta
    command: python {app}
    concurrency: 2
    autoscaling: {{max-scale: 2}}
"""


async def test_routing_and_status_with_two_services(
    start_knd: StartKnd, app_file: Path, tmp_path: Path
) -> None:
    f = tmp_path / "services.yaml"
    f.write_text(SERVICES.format(app=app_file))
    k = start_knd("--file", str(f), "--drain-quiet-period", "0.2")
    await k.wait_up()
    assert f"alpha: serving http://alpha.localhost:{k.port}/" in "\n".join(k.stdout)
    await k.wait_status(
        lambda s: s["alpha"]["ready"] == 1 and s["beta"]["ready"] == 1, "both services ready"
    )
    p = k.port
    rev = {"Knative-Serving-Namespace": "default", "Knative-Serving-Revision": "beta-00001"}
    async with client() as c:
        for host, headers, want in [
            (f"alpha.localhost:{p}", {}, "alpha"),
            ("alpha.localhost", {}, "alpha"),
            ("ALPHA.localhost:1234", {}, "alpha"),  # any port, any case
            (f"beta.localhost:{p}", {}, "beta"),
            ("unknown.example", rev, "beta"),  # Knative's headers win over the Host
            (f"alpha.localhost:{p}", rev, "beta"),
            ("beta-00001.default.svc.cluster.local", {}, "beta"),
        ]:
            r = await get(c, k, "/", host=host, **headers)
            assert r.status_code == 200, (host, headers, r.text)
            assert r.json()["service"] == want, (host, headers)
        for host, headers in [
            (f"gamma.localhost:{p}", {}),
            (f"localhost:{p}", {}),
            ("alpha.localhost.example", {}),
            ("x", {"Knative-Serving-Namespace": "default", "Knative-Serving-Revision": "nope"}),
        ]:
            r = await get(c, k, "/", host=host, **headers)
            assert r.status_code == 404, (host, headers, r.text)
        r = await get(c, k, "/", host="gamma.localhost")
        assert "gamma.localhost" in r.text
        r = await get(c, k, "/env?names=GREETING", host="alpha.localhost")
        assert r.json()["env"] == {"GREETING": "from-alpha"}

    env = knd_env(tmp_path)
    res = run_knd("status", "--admin-port", str(k.admin_port), env=env)
    assert res.returncode == 0, res.stderr
    rows = [ln.split() for ln in res.stdout.splitlines()]
    assert rows[0] == ["SERVICE", "READY", "DESIRED", "IN", "FLIGHT", "QUEUED", "COLD", "START",
                       "WAIT", "URL"]  # fmt: skip
    by_name = {r[0]: r for r in rows[1:]}
    assert set(by_name) == {"alpha", "beta"}
    assert by_name["alpha"][1:5] == ["1", "1", "0", "0"]
    assert by_name["beta"][-1] == f"http://beta.localhost:{p}/"
    res = run_knd("status", "--admin-port", str(k.admin_port), "--json", env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    beta = next(s for s in data["services"] if s["service"] == "beta")
    assert beta["revision"] == "beta-00001" and beta["host"] == f"beta.localhost:{p}"
    assert set(beta) >= {"ready", "desired", "in_flight", "queued", "last_cold_start_ms"}
    assert set(beta) >= {"last_wait_ms", "failure", "url"}


def test_status_without_knd_run_says_so(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    res = run_knd("status", "--admin-port", str(port), env=knd_env(tmp_path), timeout=15)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "knd run" in lines[0]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("flag", ["--port", "--admin-port"])
def test_port_in_use_is_one_line_naming_the_flag(flag: str, tmp_path: Path, app_file: Path) -> None:
    port, admin = free_ports(2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port if flag == "--port" else admin))
        s.listen()
        res = run_knd(
            "run", "--name", "x", "--port", str(port), "--admin-port", str(admin),
            *hello_cmd(app_file), env=knd_env(tmp_path), timeout=20,
        )  # fmt: skip
    assert res.returncode != 0
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    busy = port if flag == "--port" else admin
    assert lines[0].startswith(f"knd: {flag} {busy}: cannot listen on 127.0.0.1:{busy}")
    assert "in use" in lines[0]
    assert "started" not in res.stdout


def test_command_not_found_ends_in_a_clear_message(tmp_path: Path) -> None:
    port, admin = free_ports(2)
    res = run_knd(
        "run", "--name", "x", "--port", str(port), "--admin-port", str(admin),
        "--", "no-such-command-knd", "arg", env=knd_env(tmp_path), timeout=20,
    )  # fmt: skip
    assert res.returncode != 0
    assert "knd: service x: command not found: no-such-command-knd" in res.stderr.splitlines()


def test_command_not_found_is_exactly_one_line(tmp_path: Path) -> None:
    port, admin = free_ports(2)
    res = run_knd(
        "run", "--name", "x", "--port", str(port), "--admin-port", str(admin),
        "--", "no-such-command-knd", env=knd_env(tmp_path), timeout=20,
    )  # fmt: skip
    assert res.stderr.splitlines() == ["knd: service x: command not found: no-such-command-knd"]


async def test_command_not_found_is_reported_before_anything_listens(
    start_knd: StartKnd,
) -> None:
    # Even at initial scale 0, where no pod would start before a request: checked up front.
    k = start_knd("--name", "x", "--initial-scale", "0", "--", "no-such-command-knd")
    rc = await k.wait_exit(15)
    assert rc is not None and rc != 0, "knd still running after the fatal error"
    assert k.stderr == ["knd: service x: command not found: no-such-command-knd"]
    assert not any("serving" in ln or "scale" in ln for ln in k.stdout), k.stdout


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("services: []\n", "'services' must be a non-empty list"),
        ("servces: []\n", "unknown key(s) servces"),
        ("services:\n  - command: x\n", "services[0].name"),
        ("services:\n  - name: Bad_Name\n    command: x\n", "services[0].name"),
        ("services:\n  - name: a\n", "service a.command"),
        ("services:\n  - name: a\n    command: []\n", "service a.command"),
        ("services:\n  - name: a\n    command: x\n    concurrency: -1\n", "service a.concurrency"),
        ("services:\n  - name: a\n    command: x\n    timeout: 0\n", "service a.timeout"),
        ("services:\n  - name: a\n    command: x\n    env: [A]\n", "service a.env"),
        ("services:\n  - name: a\n    command: x\n    ports: 1\n", "unknown key(s) ports"),
        (
            "services:\n  - name: a\n    command: x\n    autoscaling: {target: {x: 1}}\n",
            "service a.autoscaling.target",
        ),
        (
            "services:\n  - {name: a, command: x}\n  - {name: a, command: y}\n",
            "duplicate service name(s) a",
        ),
        ("autoscaler: [1]\nservices:\n  - {name: a, command: x}\n", "autoscaler"),
        (None, "no such file"),
        pytest.param(
            "services: [\n",
            "not valid YAML",
            id="yaml-syntax",
        ),
        pytest.param(
            "autoscaler:\n  stable-window: soon\nservices:\n  - {name: a, command: x}\n",
            "autoscaler.stable-window",
            id="autoscaler-value",
        ),
        pytest.param(
            "services:\n  - name: a\n    command: x\n    readinessProbe: {exec: {command: [x]}}\n",
            "service a.readinessProbe",
            id="readiness-probe",
        ),
        pytest.param(
            "services:\n  - name: a\n    command: x\n    autoscaling: {target: -5}\n",
            "service a.autoscaling.target",
            id="autoscaling-value",
        ),
    ],
)
def test_bad_services_file_is_one_line_naming_file_and_key(
    doc: str | None, needle: str, tmp_path: Path
) -> None:
    f = tmp_path / "services.yaml"
    if doc is not None:
        f.write_text(doc)
    port, admin = free_ports(2)
    res = run_knd(
        "run", "--file", str(f), "--port", str(port), "--admin-port", str(admin),
        env=knd_env(tmp_path), timeout=20,
    )  # fmt: skip
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"knd: {f}: "), lines[0]
    assert needle in lines[0], lines[0]
    assert res.returncode == 2
    assert res.stdout == ""


async def test_app_that_never_listens_hits_the_progress_deadline(
    start_knd: StartKnd, tmp_path: Path
) -> None:
    k = start_knd(
        "--name", "mute", "--progress-deadline", "1.5", *FAST,
        "--", "python", "-c", "import time; time.sleep(60)",
    )  # fmt: skip
    rc = await k.wait_exit(15)
    assert rc == 1, k.output()
    await k.wait_line(r"mute-00001-deployment-\w+: started: app pid (\d+)")
    err = k.stderr
    assert len(err) == 1, err
    assert err[0].startswith("knd: service mute: pod mute-00001-deployment-")
    assert "not ready after 2s: is the app listening on the port in $PORT" in err[0]
    assert not any(alive(pid) for pid in k.child_pids())


# --------------------------------------------------------------------------- Ctrl-C


def _processes_with_env(marker: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in env.split(b"\0") and alive(int(d.name)):
            out.append(int(d.name))
    return out


async def test_sigint_under_load_drains_and_leaves_no_process(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    k = start_knd("--name", "busy", "--min-scale", "2", *FAST, *hello_cmd(app_file))
    await k.wait_status(lambda s: s["busy"]["ready"] == 2, "2 ready pods")
    children = k.child_pids()
    assert len(children) == 4
    async with client() as c:
        tasks = [asyncio.create_task(get(c, k, "/sleep?ms=1500")) for _ in range(10)]
        await k.wait_status(lambda s: s["busy"]["in_flight"] == 10, "10 requests in flight")
        k.proc.send_signal(2)
        rs = await asyncio.gather(*tasks, return_exceptions=True)
    assert [getattr(r, "status_code", r) for r in rs] == [200] * 10
    rc = await k.wait_exit(20)
    assert rc in (0, 130), k.output()
    out = k.stdout
    # The first Ctrl-C says what it waits for: the requests in flight, pod by pod.
    said = [ln for ln in out if "stopping: draining " in ln]
    assert len(said) == 1, out
    assert said[0].endswith("(Ctrl-C again to stop now)")
    assert sum(int(n) for n in re.findall(r"(\d+) requests? on busy-00001-", said[0])) == 10
    assert sum(ln.endswith(": stopped") for ln in out) == 2
    assert k.stderr == []
    assert children == k.child_pids()
    assert not [pid for pid in children if alive(pid)]
    assert not _processes_with_env(f"KND_TEST_DIR={records.directory}")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--target", "-5"], "knd: --target: '-5' must be at least"),
        (["--stable-window", "soon"], "knd: --stable-window: 'soon' is not a duration"),
        (["--min-scale", "3", "--max-scale", "2"], "knd: --max-scale: "),
    ],
)
def test_bad_autoscaling_flag_is_one_line_naming_the_flag(
    flags: list[str], needle: str, tmp_path: Path
) -> None:
    port, admin = free_ports(2)
    res = run_knd(
        "run", "--name", "a", "--port", str(port), "--admin-port", str(admin), *flags,
        "--", "no-such-command-knd", env=knd_env(tmp_path), timeout=20,
    )  # fmt: skip
    assert res.returncode == 2, res
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(needle), res.stderr
    assert res.stdout == ""


def test_bad_tracing_config_is_one_line(tmp_path: Path) -> None:
    port, admin = free_ports(2)
    res = run_knd(
        "run", "--name", "a", "--port", str(port), "--admin-port", str(admin),
        "--", "no-such-command-knd",
        env=knd_env(tmp_path, OBSERVABILITY_CONFIG='{"tracing": {"protocol": "carrier-pigeon"}}'),
        timeout=20,
    )  # fmt: skip
    assert res.returncode == 2, res
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("knd: OBSERVABILITY_CONFIG: "), res.stderr
    assert "carrier-pigeon" in lines[0]

"""``knd run`` as a newcomer meets it: their own app and their own mistakes (end to end).

Real knd processes on loopback with real apps: an app that exits at start (its requests are
answered with 503 and why, at once; knd exits at the progress deadline), one that recovers,
``$(PORT)`` in the command, a service's own port, the two Ctrl-Cs, a burst from zero that gets
its pods in one step and the cold-start figure. Waits poll output lines or ``/status``.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx

from .knd_helpers import APP, AppRecords, alive, free_ports, knd_env, scale_lines
from .test_knd import FAST, StartKnd, app_file, client, get, records, start_knd

__all__ = ["app_file", "records", "start_knd"]  # fixtures used here

CRASH = "import sys; print('boom: DATABASE_URL is not set', file=sys.stderr); sys.exit(3)"


async def test_app_exiting_at_start_fails_requests_at_once_then_knd_exits_at_deadline(
    start_knd: StartKnd,
) -> None:
    k = start_knd(
        "--name", "bad", "--initial-scale", "0", "--progress-deadline", "6", *FAST,
        "--", "python", "-c", CRASH,
    )  # fmt: skip
    await k.wait_up()
    # The revision timeout is 300 s: a 503 within the client's 10 s means it was not held.
    async with client(timeout=10) as c:
        first = await get(c, k, "/")
        second = await get(c, k, "/")
    for r in (first, second):
        assert r.status_code == 503, r.text
        assert "service bad cannot start: its app exited with status 3" in r.text
        assert "boom: DATABASE_URL is not set" in r.text
        assert r.headers["content-type"].startswith("text/plain")
    rc = await k.wait_exit(30)
    assert rc == 1, k.output()
    # knd's own words are one line, the last; the app's stderr lines come prefixed before it.
    own = [ln for ln in k.stderr if not ln.startswith("bad-00001-deployment-")]
    assert own == k.stderr[-1:], k.stderr
    assert own[0].startswith("knd: service bad cannot start: its app exited with status 3")
    assert own[0].endswith("(no ready pod after 6s)")
    assert "crashed: app exited with status 3; replacing it in 1s" in "\n".join(k.stdout)


async def test_a_failed_service_answers_503_while_another_serves_and_it_recovers(
    start_knd: StartKnd, tmp_path: Path, records: AppRecords
) -> None:
    fixed = tmp_path / "fixed"
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        f"import os, sys\nif not os.path.exists({str(fixed)!r}):\n"
        "    print('not configured yet', file=sys.stderr)\n    sys.exit(4)\n" + APP
    )
    good = tmp_path / "good.py"
    good.write_text(APP)
    services = tmp_path / "services.yaml"
    services.write_text(
        "services:\n"
        f"  - {{name: flaky, command: [python, {flaky}], autoscaling: {{initial-scale: 0}}}}\n"
        f"  - {{name: good, command: [python, {good}], autoscaling: {{initial-scale: 0}}}}\n"
    )
    k = start_knd("--file", str(services), "--progress-deadline", "60", *FAST)
    await k.wait_up()
    async with client(timeout=15) as c:
        r = await get(c, k, "/", host="flaky.localhost")
        assert r.status_code == 503
        assert "service flaky cannot start: its app exited with status 4" in r.text
        assert "not configured yet" in r.text
        st = await k.wait_status(lambda s: s["flaky"]["failure"] is not None, "the failure")
        assert "status 4" in st["flaky"]["failure"]
        r = await get(c, k, "/", host="good.localhost")
        assert r.status_code == 200 and r.json()["service"] == "good"
        fixed.write_text("ok")  # the user fixes the app; knd's restarts pick it up
        for _ in range(300):  # bounded: the back-off is 1, 2, 4 s; scale-from-zero also works
            r = await get(c, k, "/", host="flaky.localhost")
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            await asyncio.sleep(0.1)
        assert r.status_code == 200 and r.json()["service"] == "flaky", r.text
    st = await k.wait_status(lambda s: s["flaky"]["failure"] is None, "the failure cleared")
    assert k.proc.poll() is None  # several services: a failed one does not end knd run


async def test_dollar_paren_port_in_the_command_is_the_pods_port(
    start_knd: StartKnd, tmp_path: Path
) -> None:
    app = tmp_path / "argv_app.py"
    app.write_text(
        APP.replace('int(os.environ["PORT"])', 'int(sys.argv[sys.argv.index("--port") + 1])')
    )
    k = start_knd(
        "--name", "api", "--initial-scale", "0", *FAST,
        "--", "python", str(app), "--port", "$(PORT)", "--tag", "$$(PORT)",
    )  # fmt: skip
    await k.wait_up()
    async with client() as c:
        r = await get(c, k, "/env?names=PORT")
    assert r.status_code == 200, r.text
    port = r.json()["env"]["PORT"]
    started = [ln for ln in k.stdout if "api-00001-deployment-" in ln and ": started:" in ln]
    assert started and f"on port {port}," in started[0]


async def test_a_service_port_serves_it_whatever_the_host(
    start_knd: StartKnd, tmp_path: Path
) -> None:
    a = tmp_path / "a.py"
    a.write_text(APP)
    (own,) = free_ports(1)
    services = tmp_path / "services.yaml"
    services.write_text(
        "services:\n"
        f"  - {{name: alpha, command: [python, {a}], port: {own}}}\n"
        f"  - {{name: beta, command: [python, {a}]}}\n"
    )
    k = start_knd("--file", str(services), *FAST)
    await k.wait_up()
    assert any(f"alpha: serving http://localhost:{own}/" in ln for ln in k.stdout), k.stdout
    async with client() as c:
        r = await c.get(f"http://127.0.0.1:{own}/")  # Host: 127.0.0.1:<own>
        assert r.status_code == 200 and r.json()["service"] == "alpha"
        r = await get(c, k, "/", host="beta.localhost")
        assert r.status_code == 200 and r.json()["service"] == "beta"
        r = await get(c, k, "/")  # two services: the shared port routes by Host only
        assert r.status_code == 404
    st = await k.wait_status(lambda s: "alpha" in s, "status")
    assert st["alpha"]["url"] == f"http://localhost:{own}/"


async def test_first_ctrl_c_says_what_it_drains_and_the_second_stops_at_once(
    start_knd: StartKnd, tmp_path: Path, app_file: Path
) -> None:
    k = start_knd("--name", "slow", "--concurrency", "1", *FAST, "--", "python", str(app_file))
    await k.wait_status(lambda s: s["slow"]["ready"] == 1, "a ready pod")
    children = k.child_pids()
    async with client(timeout=60) as c:
        long = asyncio.create_task(get(c, k, "/sleep?ms=25000"))
        await k.wait_status(lambda s: s["slow"]["in_flight"] == 1, "the request in flight")
        k.proc.send_signal(signal.SIGINT)
        _, m = await k.wait_line(r"stopping: draining (.*)$")
        assert re.fullmatch(
            r"1 request on slow-00001-deployment-\w{5} \(Ctrl-C again to stop now\)", m.group(1)
        ), m.group(0)
        assert not long.done()
        k.proc.send_signal(signal.SIGINT)
        r = await long
    assert r.status_code == 503
    assert r.text == "knd run stopped before this request was served\n"
    rc = await k.wait_exit(15)
    assert rc is not None, k.output()
    await k.wait_line(r"stopped now: 1 request answered 503, pods killed")
    assert not [pid for pid in children if alive(pid)]


async def test_a_burst_from_zero_gets_its_pods_in_one_step(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    k = start_knd(
        "--name", "burst", "--concurrency", "1", "--initial-scale", "0", "--max-scale", "5",
        *FAST, "--", "python", str(app_file),
    )  # fmt: skip
    await k.wait_up()
    async with client(timeout=30) as c:
        rs = await asyncio.gather(*(get(c, k, "/sleep?ms=1500") for _ in range(5)))
    assert [r.status_code for r in rs] == [200] * 5
    assert len({r.json()["pid"] for r in rs}) == 5  # one pod each, CC 1
    assert all(peak == 1 for peak in records.peaks().values())
    out = k.stdout
    first_ready = next(i for i, ln in enumerate(out) if ": ready after " in ln)
    ups = [s for s in scale_lines(out) if s.service == "burst" and s.new > s.old]
    # Every scale-up happened before the first pod was ready, and reached the demand (5 held,
    # ceil(5 / 0.7) = 8, max-scale 5): no second round of cold starts.
    assert ups and ups[-1].new == 5, out
    assert all(s.index < first_ready for s in ups), out


async def test_cold_start_figure_is_start_to_ready_not_the_queueing(
    start_knd: StartKnd, app_file: Path, records: AppRecords
) -> None:
    # The app listens 400 ms after it starts, so that the first request is seen held (knd's
    # status is polled) whatever the machine's speed; a fast cold start could be missed.
    k = start_knd(
        "--name", "one", "--concurrency", "1", "--initial-scale", "0", "--max-scale", "1",
        *FAST, "--", "python", str(app_file),
        env=knd_env(records.directory, KND_TEST_START_DELAY_MS="400"),
    )  # fmt: skip
    await k.wait_up()
    async with client(timeout=30) as c:
        first = asyncio.create_task(get(c, k, "/sleep?ms=1500"))
        await k.wait_status(lambda s: s["one"]["queued"] == 1, "the first request held")
        second = asyncio.create_task(get(c, k, "/sleep?ms=10"))
        r1, r2 = await asyncio.gather(first, second)
    assert (r1.status_code, r2.status_code) == (200, 200)
    _, m = await k.wait_line(r"one-00001-deployment-\w+: ready after ([\d.]+)s")
    ready_ms = float(m.group(1)) * 1000
    st = await k.wait_status(lambda s: s["one"]["last_wait_ms"] is not None, "the figures")
    cold, wait = st["one"]["last_cold_start_ms"], st["one"]["last_wait_ms"]
    assert abs(cold - ready_ms) <= 10, (cold, ready_ms)  # the pod's start to ready
    assert wait >= 1500 > cold  # the second request queued behind the first: not a cold start


def test_newcomer_env_is_the_tests_env(tmp_path: Path) -> None:
    # knd_env puts the venv first on PATH, so "python" in the commands above is the venv's.
    env = knd_env(tmp_path)
    assert env["KND_TEST_DIR"] == str(tmp_path)


__all__ += ["httpx"]

"""LocalPlatform with real processes on loopback: a tiny asyncio app behind the real queue-proxy.

Every wait is a poll with a deadline; the app below is written to a temporary file per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from platforms.base import Endpoints, Revision, RevisionKey
from platforms.local import LocalPlatform, PlatformError, PodPorts, ServiceSpec

KEY: RevisionKey = ("default", "hello-00001")
REPO = Path(__file__).resolve().parents[2]

APP = r"""
import asyncio, json, os, sys

inflight = 0
ready = True


async def handle(reader, writer):
    global inflight, ready
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split()[1].decode()
            status, body = "200 OK", f"{path} pid={os.getpid()}"
            if path.startswith("/sleep"):
                inflight += 1
                try:
                    await asyncio.sleep(int(path.partition("=")[2]) / 1000)
                finally:
                    inflight -= 1
            elif path == "/inflight":
                body = str(inflight)
            elif path == "/crash":
                os._exit(3)
            elif path == "/env":
                body = json.dumps(dict(os.environ))
            elif path == "/print":
                print("hello on stdout", flush=True)
                print("hello on stderr", file=sys.stderr, flush=True)
            elif path == "/unready":
                ready = False
            elif path == "/ready" and not ready:
                status = "503 Service Unavailable"
            data = body.encode()
            head = f"HTTP/1.1 {status}\r\nContent-Length: {len(data)}\r\n\r\n"
            writer.write(head.encode() + data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


class Recorder:
    """A PlatformEvents receiver that keeps everything it was told."""

    def __init__(self) -> None:
        self.revisions: list[Revision] = []
        self.history: list[Endpoints] = []

    def revision_updated(self, rev: Revision) -> None:
        self.revisions.append(rev)

    def revision_deleted(self, key: RevisionKey) -> None:
        raise AssertionError("unexpected revision_deleted")

    def endpoints_updated(self, key: RevisionKey, eps: Endpoints) -> None:
        assert key == KEY
        self.history.append(eps)

    def activators_updated(self, key: RevisionKey, index: int, count: int) -> None:
        raise AssertionError("unexpected activators_updated")

    @property
    def eps(self) -> Endpoints:
        return self.history[-1]


async def eventually(
    pred: Callable[[], bool], what: str, timeout: float = 10.0, interval: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(ppid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
            out.add(int(d.name))
    return out


def client(**kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=kw.pop("timeout", 10.0), **kw)


Make = Callable[..., Awaitable[tuple[LocalPlatform, Recorder, list[str]]]]


@pytest.fixture
def app_py(tmp_path: Path) -> str:
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(APP))
    return str(path)


@pytest.fixture
async def make(app_py: str) -> AsyncIterator[Make]:
    """Factory: a started LocalPlatform running the test app (closed at teardown)."""
    made: list[LocalPlatform] = []
    before = children_of(os.getpid())

    async def factory(
        command: tuple[str, ...] | None = None, *, spec: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[LocalPlatform, Recorder, list[str]]:
        lines: list[str] = []
        svc = ServiceSpec(name="hello", command=command or (sys.executable, app_py), **(spec or {}))
        kw.setdefault("drain_quiet_period", 0.3)
        p = LocalPlatform([svc], on_event=lines.append, **kw)
        made.append(p)
        rec = Recorder()
        await p.start(rec)
        return p, rec, lines

    yield factory
    for p in made:
        await asyncio.wait_for(p.close(), 30)
    leftover = children_of(os.getpid()) - before
    assert not {pid for pid in leftover if alive(pid)}, f"processes left running: {leftover}"


async def test_scale_up_two_pods(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KND_TEST_INHERITED", "yes")
    p, rec, lines = await make(spec={"env": {"EXTRA": "1"}, "container_concurrency": 5})
    assert [r.name for r in rec.revisions] == ["hello-00001"]
    assert rec.revisions[0].hosts == ("hello.localhost",)
    assert rec.revisions[0].container_concurrency == 5
    assert rec.eps == Endpoints()

    await p.scale(KEY, 2)
    pods = p.pods(KEY)
    addrs = {pod.address for pod in pods}
    assert len(addrs) == 2 and p.desired(KEY) == 2
    # Right after the processes start: not ready.
    assert set(rec.eps.not_ready) == addrs and rec.eps.ready == ()
    assert {pod.state for pod in pods} == {"starting"}

    await eventually(lambda: p.ready_count(KEY) == 2, "two ready pods")
    assert set(rec.eps.ready) == addrs and rec.eps.not_ready == ()
    first_seen = {a: next(i for i, e in enumerate(rec.history) if a in e.all) for a in addrs}
    for a, i in first_seen.items():
        assert a in rec.history[i].not_ready
    pods = p.pods(KEY)
    async with client() as c:
        for pod in pods:
            assert pod.state == "ready" and pod.ready_at is not None and pod.restarts == 0
            assert pod.name.startswith("hello-00001-deployment-")
            r = await c.get(f"http://{pod.address}/hello")
            assert r.status_code == 200 and r.text == f"/hello pid={pod.app_pid}"
            env = (await c.get(f"http://{pod.address}/env")).json()
            assert env["PORT"] == str(pod.app_port)
            assert env["EXTRA"] == "1" and env["KND_TEST_INHERITED"] == "yes"
            assert env["K_SERVICE"] == "hello" and env["K_REVISION"] == "hello-00001"
        assert sorted(p.scrape_targets(KEY)) == sorted(pod.metrics_address for pod in pods)
        for target in p.scrape_targets(KEY):
            r = await c.get(f"http://{target}/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/protobuf"
    assert sum("started" in ln for ln in lines) == 2
    assert sum("ready after" in ln for ln in lines) == 2


async def test_scale_down_under_load_drops_nothing(make: Make) -> None:
    p, rec, lines = await make()
    await p.scale(KEY, 2)
    await eventually(lambda: p.ready_count(KEY) == 2, "two ready pods")
    survivor, victim = p.pods(KEY)  # the newest pod goes first
    async with client() as c:
        long = [
            asyncio.create_task(c.get(f"http://{pod.address}/sleep?ms=1500"))
            for pod in (survivor, victim)
            for _ in range(4)
        ]

        async def inflight(pod: Any) -> int:
            return int((await c.get(f"http://127.0.0.1:{pod.app_port}/inflight")).text)

        deadline = time.monotonic() + 5
        while await inflight(victim) < 4 or await inflight(survivor) < 4:
            assert time.monotonic() < deadline, "long requests not in flight"
            await asyncio.sleep(0.01)

        await p.scale(KEY, 1)
        # Out of the endpoints before anything is signalled; the survivor stays ready.
        assert rec.eps == Endpoints(ready=(survivor.address,))
        assert p.desired(KEY) == 1
        assert [x.state for x in p.pods(KEY)] == ["ready", "terminating"]
        # A request that was already on its way (activator lag) is still served.
        r = await c.get(f"http://{victim.address}/hello")
        assert r.status_code == 200
        results = await asyncio.gather(*long)
        assert [r.status_code for r in results] == [200] * 8
        await eventually(lambda: len(p.pods(KEY)) == 1, "the victim pod to go")
        assert not alive(victim.app_pid) and not alive(victim.queue_proxy_pid)
        assert alive(survivor.app_pid) and alive(survivor.queue_proxy_pid)
        assert (await c.get(f"http://{survivor.address}/hello")).status_code == 200
    assert f"{victim.name}: stopping" in lines and f"{victim.name}: stopped" in lines


async def test_app_crash_is_reported_and_replaced(make: Make) -> None:
    p, rec, lines = await make()
    p.backoff_initial = 0.2
    await p.scale(KEY, 1)
    await eventually(lambda: p.ready_count(KEY) == 1, "a ready pod")
    (old,) = p.pods(KEY)
    async with client() as c:
        with pytest.raises(httpx.HTTPError):
            r = await c.get(f"http://127.0.0.1:{old.app_port}/crash")
        await eventually(lambda: old.address not in rec.eps.all, "the crashed pod to leave")
        await eventually(
            lambda: any(x.restarts == 1 and x.state == "ready" for x in p.pods(KEY)),
            "the replacement to be ready",
        )
        (new,) = p.pods(KEY)
        assert new.name == old.name and new.address != old.address
        assert rec.eps == Endpoints(ready=(new.address,))
        assert not alive(old.app_pid) and not alive(old.queue_proxy_pid)
        r = await c.get(f"http://{new.address}/hello")
        assert r.text == f"/hello pid={new.app_pid}"
    crash = [ln for ln in lines if "crashed" in ln]
    assert crash == [f"{old.name}: crashed: app exited with status 3; replacing it in 0.2s"]
    assert any("restarted (restart 1)" in ln for ln in lines)


async def test_queue_proxy_crash_keeps_its_log(make: Make) -> None:
    p, _rec, lines = await make()
    p.backoff_initial = 0.1
    await p.scale(KEY, 1)
    await eventually(lambda: p.ready_count(KEY) == 1, "a ready pod")
    (old,) = p.pods(KEY)
    os.kill(old.queue_proxy_pid, signal.SIGKILL)
    await eventually(lambda: any("crashed" in ln for ln in lines), "the crash report")
    await eventually(lambda: not alive(old.app_pid), "the app of the crashed pod to stop")
    line = next(ln for ln in lines if "crashed" in ln)
    assert "queue-proxy was killed by SIGKILL" in line and old.queue_proxy_log in line
    await eventually(lambda: p.ready_count(KEY) == 1, "the replacement")
    await p.close()
    assert Path(old.queue_proxy_log).exists()  # kept: its path was printed
    Path(old.queue_proxy_log).unlink()
    Path(old.queue_proxy_log).parent.rmdir()


async def test_command_not_found(make: Make) -> None:
    p, rec, _lines = await make(("knd-no-such-command-xyz", "--flag"))
    msg = "service hello: command not found: knd-no-such-command-xyz"
    with pytest.raises(PlatformError) as e:
        await p.scale(KEY, 1)
    assert str(e.value) == msg
    with pytest.raises(PlatformError, match="knd-no-such-command-xyz"):
        await p.scale(KEY, 2)
    assert p.pods(KEY) == [] and rec.eps == Endpoints()
    await p.scale(KEY, 0)  # scaling down is still fine


async def test_queue_proxy_not_found_stops_the_app(make: Make) -> None:
    p, _rec, _lines = await make(queue_proxy=["/nonexistent/queue-proxy"])
    with pytest.raises(PlatformError, match=r"queue-proxy: command not found: /nonexistent"):
        await p.scale(KEY, 1)
    assert p.pods(KEY) == []
    assert not {pid for pid in children_of(os.getpid()) if alive(pid)}


async def test_close_leaves_nothing_running(make: Make) -> None:
    p, rec, _lines = await make()
    await p.scale(KEY, 2)
    await eventually(lambda: p.ready_count(KEY) == 2, "two ready pods")
    pids = [pid for x in p.pods(KEY) for pid in (x.app_pid, x.queue_proxy_pid)]
    log_dir = p.log_dir
    assert set(pids) <= children_of(os.getpid())
    await asyncio.wait_for(p.close(), 10)
    assert not any(alive(pid) for pid in pids)
    assert not set(pids) & children_of(os.getpid())  # reaped: no zombies either
    assert rec.eps == Endpoints() and p.pods(KEY) == []
    assert not Path(log_dir).exists()
    await p.scale(KEY, 3)  # after close: ignored
    assert p.pods(KEY) == []


async def test_kill_is_immediate_and_synchronous(make: Make) -> None:
    p, rec, lines = await make()
    await p.scale(KEY, 1)
    await eventually(lambda: p.ready_count(KEY) == 1, "a ready pod")
    (pod,) = p.pods(KEY)
    p.kill()
    pids = {pod.app_pid, pod.queue_proxy_pid}
    assert not any(alive(pid) for pid in pids) and not pids & children_of(os.getpid())
    assert rec.eps == Endpoints()
    await asyncio.wait_for(p.close(), 5)
    assert p.pods(KEY) == [] and f"{pod.name}: stopped" in lines


async def test_readiness_failures_make_a_pod_not_ready(make: Make) -> None:
    probe = json.dumps({"httpGet": {"path": "/ready"}, "periodSeconds": 1})
    p, rec, lines = await make(spec={"readiness_probe": probe})
    p.probe_period = 0.1
    await p.scale(KEY, 1)
    await eventually(lambda: p.ready_count(KEY) == 1, "a ready pod")
    (pod,) = p.pods(KEY)
    async with client() as c:
        await c.get(f"http://127.0.0.1:{pod.app_port}/unready")
    await eventually(lambda: rec.eps == Endpoints(not_ready=(pod.address,)), "not ready")
    assert f"{pod.name}: not ready (3 failed readiness probes)" in lines
    assert p.pods(KEY)[0].state == "starting" and p.scrape_targets(KEY) == []


async def test_an_app_that_never_listens_is_reported(make: Make) -> None:
    p, rec, lines = await make((sys.executable, "-c", "import time; time.sleep(60)"))
    p.startup_probe_timeout = 0.2
    p.slow_start_warning = 0.3
    await p.scale(KEY, 1)
    (pod,) = p.pods(KEY)
    await eventually(lambda: any("not ready after" in ln for ln in lines), "the warning")
    assert f"is the app listening on 127.0.0.1:{pod.app_port} (its PORT)?" in lines[-1]
    assert rec.eps == Endpoints(not_ready=(pod.address,))


async def test_port_collision_at_start_is_retried(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, _rec, lines = await make()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    original = p._pick_ports
    calls: list[PodPorts] = []

    def pick() -> PodPorts:
        ports = original()
        if not calls:
            ports = PodPorts(
                ports.app,
                taken.getsockname()[1],
                ports.tls,
                ports.admin,
                ports.metrics,
                ports.user_metrics,
            )
        calls.append(ports)
        return ports

    monkeypatch.setattr(p, "_pick_ports", pick)
    try:
        await p.scale(KEY, 1)
        await eventually(lambda: p.ready_count(KEY) == 1, "a ready pod on other ports")
    finally:
        taken.close()
    (pod,) = p.pods(KEY)
    assert len(calls) == 2 and pod.address == f"127.0.0.1:{calls[1].serving}"
    assert pod.restarts == 0 and not any("crashed" in ln for ln in lines)


async def test_app_output_is_prefixed(make: Make, capsys: pytest.CaptureFixture[str]) -> None:
    p, _rec, _lines = await make()
    await p.scale(KEY, 1)
    await eventually(lambda: p.ready_count(KEY) == 1, "a ready pod")
    (pod,) = p.pods(KEY)
    out, err = "", ""
    async with client() as c:
        await c.get(f"http://{pod.address}/print")

    def seen() -> bool:
        nonlocal out, err
        o, e = capsys.readouterr()
        out, err = out + o, err + e
        return f"{pod.name} | hello on stderr\n" in err and f"{pod.name} | hello" in out

    await eventually(seen, "the app's output")
    assert f"{pod.name} | hello on stdout\n" in out


CRASHER = """
import asyncio, os, signal, sys
from platforms.local import LocalPlatform, ServiceSpec

class Events:
    def __getattr__(self, name):
        return lambda *a: None

async def main():
    p = LocalPlatform([ServiceSpec("hello", (sys.executable, sys.argv[1]))])
    await p.start(Events())
    await p.scale(("default", "hello-00001"), 1)
    while p.ready_count(("default", "hello-00001")) < 1:
        await asyncio.sleep(0.01)
    (pod,) = p.pods(("default", "hello-00001"))
    print(pod.app_pid, pod.queue_proxy_pid, p.log_dir, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_children_die_with_a_crashed_knd(app_py: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHER,
        app_py,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)  # type: ignore[union-attr]
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    app_pid, qp_pid, log_dir = line.decode().split()
    pids = [int(app_pid), int(qp_pid)]
    shutil.rmtree(log_dir)  # nobody else will: knd was killed
    try:
        await eventually(lambda: not any(alive(pid) for pid in pids), "the orphans to die", 5)
    finally:
        for pid in pids:  # never leak them, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

"""The pure parts of platforms.local: environments, victim choice, back-off, validation."""

from __future__ import annotations

import json
import signal

import pytest

from dataplane.probespec import parse_readiness_probe
from platforms.local import (
    CrashBackoff,
    LocalPlatform,
    PodInfo,
    PodPorts,
    ServiceSpec,
    app_env,
    choose_victims,
    default_readiness_probe,
    describe_exit,
    expand_vars,
    port_hint,
    queue_proxy_env,
    revision_for,
)
from queueproxy.env import parse_env

PORTS = PodPorts(app=8080, serving=8012, tls=8112, admin=8022, metrics=9090, user_metrics=9091)
SPEC = ServiceSpec(
    name="hello",
    command=("python", "app.py"),
    container_concurrency=10,
    timeout_seconds=12.5,
    env={"GREETING": "hi", "PORT": "1"},
    annotations={"autoscaling.knative.dev/max-scale": "3"},
)


def pod(name: str, state: str, started: float) -> PodInfo:
    return PodInfo(
        name=name,
        revision=("default", "hello-00001"),
        address="",
        metrics_address="",
        app_port=0,
        state=state,  # type: ignore[arg-type]
        started=started,
        ready_at=None,
        restarts=0,
    )


def test_queue_proxy_env_satisfies_the_contract() -> None:
    env = queue_proxy_env(
        SPEC,
        pod="hello-00001-deployment-abcde",
        ports=PORTS,
        drain_quiet_period=0.5,
        environ={
            "PATH": "/bin",
            "HOME": "/root",
            "OBSERVABILITY_CONFIG": '{"tracing": {"protocol": "none"}}',
            "OTEL_SERVICE_NAME": "svc",
        },
        extra={"SERVING_LOGGING_LEVEL": "debug"},
    )
    e = parse_env(env)  # the queue-proxy's own parser accepts it
    assert (e.container_concurrency, e.revision_timeout) == (10, 13.0)
    assert (e.serving_port, e.tls_port, e.user_port) == (8012, 8112, 8080)
    assert (e.admin_port, e.metrics_port, e.user_metrics_port) == (8022, 9090, 9091)
    assert (e.namespace, e.service, e.configuration) == ("default", "hello", "hello")
    assert (e.revision, e.pod, e.pod_ip) == (
        "hello-00001",
        "hello-00001-deployment-abcde",
        "127.0.0.1",
    )
    assert e.drain_quiet_period == 0.5 and e.bind_host == "127.0.0.1"
    assert e.logging_level == "debug" and env["SERVING_LOGGING_CONFIG"] == ""
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1048576"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "2097152"
    # A clean environment: knd's PATH and tracing settings (knd validated them), nothing else.
    assert env["PATH"] == "/bin" and "HOME" not in env
    assert env["OBSERVABILITY_CONFIG"] == '{"tracing": {"protocol": "none"}}'
    assert env["OTEL_SERVICE_NAME"] == "svc"
    (probe,) = parse_readiness_probe(e.readiness_probe, multi_container=False, user_port=1)
    assert (probe.kind, probe.host, probe.port, probe.aggressive) == (
        "tcp",
        "127.0.0.1",
        8080,
        True,
    )


def test_queue_proxy_env_keeps_a_given_readiness_probe() -> None:
    probe = json.dumps({"httpGet": {"path": "/healthz"}})
    spec = ServiceSpec("hello", ("app",), readiness_probe=probe)
    env = queue_proxy_env(spec, pod="p", ports=PORTS, drain_quiet_period=1, environ={})
    assert env["SERVING_READINESS_PROBE"] == probe
    assert env["DRAIN_QUIET_PERIOD_SECONDS"] == "1.0"


def test_default_readiness_probe() -> None:
    assert default_readiness_probe(1234) == '{"tcpSocket":{"port":1234,"host":"127.0.0.1"}}'


def test_app_env_layers() -> None:
    env = app_env(SPEC, port=8080, environ={"PATH": "/bin", "GREETING": "knd", "K_SERVICE": "x"})
    assert env["PATH"] == "/bin"
    assert env["GREETING"] == "hi"  # the service's env over knd's
    assert env["PORT"] == "8080"  # PORT always wins: the queue-proxy forwards there
    assert (env["K_SERVICE"], env["K_CONFIGURATION"], env["K_REVISION"]) == (
        "hello",
        "hello",
        "hello-00001",
    )


def test_revision_for() -> None:
    rev = revision_for(SPEC)
    assert rev.key == ("default", "hello-00001") == SPEC.key
    assert rev.container_concurrency == 10 and rev.timeout_seconds == 12.5
    assert rev.hosts == ("hello.localhost",)
    assert rev.annotations == {"autoscaling.knative.dev/max-scale": "3"}


def test_choose_victims_not_ready_first_then_newest() -> None:
    pods = [
        pod("old-ready", "ready", 1.0),
        pod("new-ready", "ready", 5.0),
        pod("starting", "starting", 2.0),
        pod("failed", "failed", 0.5),
        pod("going", "terminating", 9.0),
    ]
    names = [p.name for p in choose_victims(pods, 4)]
    assert names == ["failed", "starting", "new-ready", "old-ready"]
    assert [p.name for p in choose_victims(pods, 1)] == ["failed"]
    assert choose_victims(pods, 0) == [] and len(choose_victims(pods, 10)) == 4


def test_crash_backoff() -> None:
    b = CrashBackoff()
    assert [b.next_delay(0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.next_delay(59.9) == 30
    assert b.next_delay(60) == 1  # ready for a minute: start over
    assert b.next_delay(0) == 2


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(-200) == "was killed by signal 200"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ServiceSpec("a", ()), "empty command"),
        (ServiceSpec("a", ("x",), container_concurrency=-1), "container_concurrency"),
        (ServiceSpec("a", ("x",), timeout_seconds=0), "timeout_seconds"),
        (ServiceSpec("a", ("x",), readiness_probe="{"), "readiness probe"),
        (ServiceSpec("a", ("x",), readiness_probe='{"exec":{}}'), "exec probes"),
    ],
)
def test_invalid_services_are_rejected(spec: ServiceSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalPlatform([spec])


def test_duplicate_services_are_rejected() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        LocalPlatform([ServiceSpec("a", ("x",)), ServiceSpec("a", ("y",))])


def test_unknown_revision() -> None:
    p = LocalPlatform([ServiceSpec("a", ("x",))])
    with pytest.raises(KeyError, match="default/b-00001"):
        p.desired(("default", "b-00001"))
    assert p.desired(("default", "a-00001")) == 0 and p.pods(("default", "a-00001")) == []


def test_pod_ports_come_from_outside_the_ephemeral_range() -> None:
    # bind(0) ports are released before the pod binds them; in that gap any outgoing connection
    # on the machine may take one. Ports below the ephemeral range are only taken explicitly.
    import platforms.local as local

    low, high = local._FIXED_RANGE
    if high - low < 1000:
        pytest.skip("no room below this machine's ephemeral port range")
    p = LocalPlatform([ServiceSpec("a", ("x",))])
    seen: set[int] = set()
    for _ in range(20):
        ports = p._pick_ports().all()
        assert len(set(ports)) == 6
        assert all(low <= port < high for port in ports), ports
        seen.update(ports)
    assert len(seen) > 6  # random, not one fixed set


def test_pod_ports_skip_ports_of_live_pods() -> None:
    import platforms.local as local

    p = LocalPlatform([ServiceSpec("a", ("x",))])
    low, high = local._FIXED_RANGE
    if high - low < 1000:
        pytest.skip("no room below this machine's ephemeral port range")
    live = set(range(low, high - 10))  # all but the last 10 ports of the range are live pods'
    p._reserved.update(live)
    ports = p._pick_ports().all()
    assert len(set(ports)) == 6 and not live & set(ports), ports


# -- $(VAR) expansion (Kubernetes' rules) and the port hint ------------------------------------


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("--port=$(PORT)", "--port=8123"),
        ("$(PORT)", "8123"),
        ("$(K_SERVICE)-$(PORT)", "hello-8123"),
        ("$$(PORT)", "$(PORT)"),
        ("$$$(PORT)", "$8123"),
        ("$(NOPE)", "$(NOPE)"),
        ("$(PORT", "$(PORT"),
        ("$()", "$()"),
        ("$PORT", "$PORT"),
        ("a$", "a$"),
        ("$$", "$"),
        ("100$ $(EMPTY)!", "100$ !"),
        ("plain", "plain"),
    ],
)
def test_expand_vars_follows_kubernetes(text: str, out: str) -> None:
    env = {"PORT": "8123", "K_SERVICE": "hello", "EMPTY": ""}
    assert expand_vars(text, env) == out


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["uvicorn", "main:app", "--port"], "--port has no value"),
        (["gunicorn", "-b", "--workers", "2"], "-b has no value"),
        (["uvicorn", "main:app", "--port", "$(PORT)"], ""),
        (["python", "app.py"], ""),
    ],
)
def test_port_hint_names_an_empty_port_flag(argv: list[str], hint: str) -> None:
    got = port_hint(argv)
    assert (hint in got) if hint else got == ""
    if hint:
        assert "'$(PORT)'" in got

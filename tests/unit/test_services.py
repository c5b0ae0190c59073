"""Unit tests for knd.services: the services file of ``knd run --file`` (schema, defaults, errors).

Every problem must end in one ConfigError whose message names the file and the key at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataplane.envconfig import ConfigError
from knd.services import load_services_file, parse_services, service_from_flags

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "services.yaml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_services_file(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg, msg  # one line
    return msg.removeprefix(f"{path}: ")


def service_error(tmp_path: Path, body: str) -> str:
    """The error for one service ``hello`` (command given) with the extra YAML ``body``."""
    return load_error(tmp_path, f"services:\n  - name: hello\n    command: [app]\n{body}")


# -- valid files and defaults --------------------------------------------------------------------


def test_example_file_parses() -> None:
    services, config = load_services_file(str(ROOT / "examples" / "services.yaml"))
    assert config == {"stable-window": "20s", "scale-to-zero-grace-period": "10s"}
    hello, slow = services
    assert (hello.name, hello.command) == ("hello", ("python", "-m", "examples.hello"))
    assert hello.env["TARGET"] == "knd"
    assert hello.annotations == {
        "autoscaling.knative.dev/initial-scale": "0",
        "autoscaling.knative.dev/max-scale": "3",
    }
    assert (slow.name, slow.container_concurrency) == ("slow", 10)
    assert slow.annotations["autoscaling.knative.dev/max-scale"] == "5"
    assert hello.key == ("default", "hello-00001")


def test_defaults_of_a_minimal_service() -> None:
    services, config = parse_services({"services": [{"name": "a", "command": "app"}]}, "f.yaml")
    (s,) = services
    assert config == {}
    assert s.command == ("app",)
    assert s.container_concurrency == 0
    assert s.timeout_seconds == 300.0
    assert s.env == {"PYTHONUNBUFFERED": "1"}  # knd's own environment is inherited at start
    assert s.annotations == {}
    assert s.readiness_probe == ""
    assert s.cwd is None


def test_every_key_of_a_full_service(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
autoscaler:
  stable-window: 30s
  enable-scale-to-zero: false
  max-scale-up-rate: 10
services:
  - name: web-2
    command: python -m http.server --bind 127.0.0.1 "$PORT"
    concurrency: 4
    timeout: 12.5
    env: {DEBUG: true, N: 3, NAME: x}
    cwd: /tmp
    autoscaling:
      min-scale: 1
      max-scale: 4
      target: 3
      window: 20s
      scale-down-delay: 10s
    readinessProbe:
      httpGet: {path: /healthz}
      periodSeconds: 1
""",
    )
    (s,), config = load_services_file(path)
    assert config == {
        "stable-window": "30s",
        "enable-scale-to-zero": "false",  # YAML booleans in Knative's spelling
        "max-scale-up-rate": "10",
    }
    assert s.command == ("python", "-m", "http.server", "--bind", "127.0.0.1", "$PORT")
    assert (s.container_concurrency, s.timeout_seconds, s.cwd) == (4, 12.5, "/tmp")
    assert s.env == {"PYTHONUNBUFFERED": "1", "DEBUG": "true", "N": "3", "NAME": "x"}
    assert s.annotations == {
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/max-scale": "4",
        "autoscaling.knative.dev/target": "3",
        "autoscaling.knative.dev/window": "20s",
        "autoscaling.knative.dev/scale-down-delay": "10s",
    }
    assert json.loads(s.readiness_probe) == {"httpGet": {"path": "/healthz"}, "periodSeconds": 1}


def test_command_list_items_may_be_numbers() -> None:
    (s,), _ = parse_services({"services": [{"name": "a", "command": ["sleep", 5]}]}, "f")
    assert s.command == ("sleep", "5")


def test_knatives_camel_case_annotation_aliases_are_accepted(tmp_path: Path) -> None:
    (s,), _ = load_services_file(
        write(
            tmp_path,
            "services:\n  - name: a\n    command: app\n"
            "    autoscaling: {minScale: 1, maxScale: 2, class: kpa.autoscaling.knative.dev}\n",
        )
    )
    assert s.annotations["autoscaling.knative.dev/minScale"] == "1"


def test_flags_build_the_same_spec() -> None:
    s = service_from_flags(
        "hello",
        ["python", "-m", "examples.hello"],
        concurrency=2,
        timeout=30.0,
        env={"A": "b"},
        autoscaling={"max-scale": "3"},
    )
    assert s.command == ("python", "-m", "examples.hello")
    assert s.env == {"PYTHONUNBUFFERED": "1", "A": "b"}
    assert s.annotations == {"autoscaling.knative.dev/max-scale": "3"}
    with pytest.raises(ConfigError, match="--name: 'Hello'"):
        service_from_flags("Hello", ["x"], concurrency=0, timeout=1.0, env={}, autoscaling={})
    with pytest.raises(ConfigError, match="no command"):
        service_from_flags("hello", [], concurrency=0, timeout=1.0, env={}, autoscaling={})


# -- the file as a whole -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_services_file(path)


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "services:\n  - name: [unclosed\n")
    assert msg.startswith("not valid YAML (")


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("", "expected a mapping with a 'services' list"),
        ("- name: a\n", "expected a mapping with a 'services' list"),
        ("just a string\n", "expected a mapping with a 'services' list"),
        ("autoscaler: {}\n", "'services' must be a non-empty list"),
        ("services: []\n", "'services' must be a non-empty list"),
        ("services: {name: a}\n", "'services' must be a non-empty list"),
        ("services:\n  - name: a\n    command: x\nservice: []\n", "unknown key(s) service"),
        ("services:\n  - just-a-string\n", "services[0]: expected a mapping"),
        (
            "services:\n  - {name: a, command: x}\n  - {name: a, command: y}\n",
            "duplicate service name(s) a",
        ),
    ],
)
def test_document_errors(tmp_path: Path, text: str, expect: str) -> None:
    assert load_error(tmp_path, text) == expect


# -- each service key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("services:\n  - command: x\n", "services[0].name: None is not a DNS label"),
        ("services:\n  - {name: Hello, command: x}\n", "services[0].name: 'Hello' is not"),
        ("services:\n  - {name: a_b, command: x}\n", "services[0].name: 'a_b' is not"),
        ("services:\n  - {name: 7, command: x}\n", "services[0].name: 7 is not"),
        (
            "services:\n  - {name: a, command: x, ports: 8080}\n",
            "services[0]: unknown key(s) ports",
        ),
        ("services:\n  - {name: a}\n", "service a.command: expected a string or a list"),
        ("services:\n  - {name: a, command: {x: 1}}\n", "service a.command: expected a string"),
        ("services:\n  - {name: a, command: [x, [y]]}\n", "service a.command: expected a string"),
        ("services:\n  - {name: a, command: ''}\n", "service a.command: must not be empty"),
        ("services:\n  - {name: a, command: []}\n", "service a.command: must not be empty"),
        ('services:\n  - {name: a, command: "x\\0"}\n', "service a.command: contains a NUL"),
    ],
)
def test_name_command_and_unknown_keys(tmp_path: Path, text: str, expect: str) -> None:
    assert load_error(tmp_path, text).startswith(expect)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("services:\n  - {name: a, command: x, port: http}\n", "service a.port: expected a port"),
        ("services:\n  - {name: a, command: x, port: 70000}\n", "service a.port: expected a port"),
        (
            "services:\n  - {name: a, command: x, port: 8081}\n"
            "  - {name: b, command: x, port: 8081}\n",
            "port 8081 is given to more than one service",
        ),
    ],
)
def test_bad_service_port_is_named(tmp_path: Path, text: str, expect: str) -> None:
    assert expect in load_error(tmp_path, text)


def test_service_port_is_read(tmp_path: Path) -> None:
    services, _ = load_services_file(
        str(write(tmp_path, "services:\n  - {name: a, command: x, port: 8081}\n"))
    )
    assert services[0].port == 8081


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ("    concurrency: -1\n", "service hello.concurrency: expected an integer >= 0"),
        ("    concurrency: '4'\n", "service hello.concurrency: expected an integer >= 0"),
        ("    concurrency: 1.5\n", "service hello.concurrency: expected an integer >= 0"),
        ("    concurrency: true\n", "service hello.concurrency: expected an integer >= 0"),
        ("    timeout: 0\n", "service hello.timeout: expected a number of seconds > 0"),
        ("    timeout: 30s\n", "service hello.timeout: expected a number of seconds > 0"),
        ("    timeout: false\n", "service hello.timeout: expected a number of seconds > 0"),
        ("    timeout: .inf\n", "service hello.timeout: expected a number of seconds > 0"),
        ("    timeout: .nan\n", "service hello.timeout: expected a number of seconds > 0"),
        ("    cwd: 5\n", "service hello.cwd: expected a path"),
        ("    env: [A=b]\n", "service hello.env: expected a mapping"),
        ("    env: {A: [1]}\n", "service hello.env.A: expected a scalar value"),
        ("    env: {A: null}\n", "service hello.env.A: expected a scalar value"),
        ("    env: {A=B: x}\n", "service hello.env.A=B: not a valid environment variable"),
        ("    env: {'': x}\n", "service hello.env.: not a valid environment variable"),
        ('    env: {A: "x\\0y"}\n', "service hello.env.A: not a valid environment variable"),
        ('    cwd: "/tmp\\0"\n', "service hello.cwd: contains a NUL character"),
        ("    autoscaling: 3\n", "service hello.autoscaling: expected a mapping"),
        ("    autoscaling: {max-scale: {a: 1}}\n", "service hello.autoscaling.max-scale: expected"),
        ("    readinessProbe: /healthz\n", "service hello.readinessProbe: expected a mapping"),
    ],
)
def test_service_key_types(tmp_path: Path, body: str, expect: str) -> None:
    assert service_error(tmp_path, body).startswith(expect)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("    autoscaling: {max-scale: lots}\n", "service hello.autoscaling.max-scale: "),
        ("    autoscaling: {min-scale: -1}\n", "service hello.autoscaling.min-scale: "),
        ("    autoscaling: {target: 0}\n", "service hello.autoscaling.target: "),
        ("    autoscaling: {window: 2s}\n", "service hello.autoscaling.window: "),
        ("    autoscaling: {metric: latency}\n", "service hello.autoscaling.metric: "),
        (
            "    autoscaling: {min-scale: 3, max-scale: 2}\n",
            "service hello.autoscaling.max-scale: ",
        ),
        (
            "    autoscaling: {class: hpa.autoscaling.knative.dev}\n",
            "service hello.autoscaling.class",
        ),
    ],
)
def test_autoscaling_values_are_checked_at_load(tmp_path: Path, body: str, key: str) -> None:
    assert service_error(tmp_path, body).startswith(key)


def test_unknown_autoscaling_key_is_an_error(tmp_path: Path) -> None:
    """A typo must not be ignored silently: the service would run with the default."""
    msg = service_error(tmp_path, "    autoscaling: {min-scal: 1}\n")
    assert msg.startswith("service hello.autoscaling.min-scal: unknown key")


def test_readiness_probe_is_checked_at_load(tmp_path: Path) -> None:
    msg = service_error(tmp_path, "    readinessProbe: {httpGet: {path: /h}, periodSeconds: -3}\n")
    assert msg.startswith("service hello.readinessProbe: ")


# -- the autoscaler section ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expect"),
    [
        ("autoscaler: [stable-window]\n", "autoscaler: expected a mapping"),
        ("autoscaler: {stable-window: [60s]}\n", "autoscaler.stable-window: expected a scalar"),
        ("autoscaler: {stable-window: 2s}\n", "autoscaler.stable-window: "),
        ("autoscaler: {stable-window: soon}\n", "autoscaler.stable-window: "),
        ("autoscaler: {enable-scale-to-zero: maybe}\n", "autoscaler.enable-scale-to-zero: "),
        ("autoscaler: {max-scale-down-rate: 1}\n", "autoscaler.max-scale-down-rate: "),
        ("autoscaler: {stable-windw: 20s}\n", "autoscaler.stable-windw: unknown key"),
    ],
)
def test_autoscaler_section_errors(tmp_path: Path, section: str, expect: str) -> None:
    msg = load_error(tmp_path, section + "services:\n  - {name: a, command: x}\n")
    assert msg.startswith(expect)


def test_every_flag_is_a_known_key() -> None:
    """What ``knd run`` accepts as flags, the file accepts as keys (and the reverse check)."""
    from autoscaler.config import ANNOTATION_NAMES, CONFIG_KEYS
    from knd.services import AUTOSCALING_FLAGS, CONFIG_FLAGS

    assert set(AUTOSCALING_FLAGS) <= ANNOTATION_NAMES
    assert set(CONFIG_FLAGS) <= CONFIG_KEYS
    doc = {
        "autoscaler": {
            "stable-window": "20s",
            "activator-capacity": 50,
            "allow-zero-initial-scale": True,
        },
        "services": [
            {"name": "a", "command": "x", "autoscaling": {"max-scale": 3, "window": "7s"}}
        ],
    }
    (s,), config = parse_services(doc, "f.yaml")
    assert config["activator-capacity"] == "50"
    assert s.annotations["autoscaling.knative.dev/window"] == "7s"

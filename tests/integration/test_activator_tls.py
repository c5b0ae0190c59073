"""The activator with system-internal-tls (KND_SYSTEM_INTERNAL_TLS=enabled), end to end: real
activator and queue-proxy processes, certificates the test makes. The activator dials the pod's
TLS port, verifies the chain against ca.crt, the name data-plane.knative.dev and the SAN
kn-user-<namespace>; it serves TLS on its own port beside plain HTTP."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.apps.autoscaler_stub import RunningStub
from tests.tlscerts import CA

from .activator_helpers import (
    ACTIVATOR_BIN,
    ActivatorProc,
    PlatformFile,
    Pods,
    StartActivator,
    rev_headers,
)
from .conftest import make_client
from .helpers import free_ports

REV = "hello-00001"
NAME = "data-plane.knative.dev"


async def _tls_pod(pods: Pods, ca: CA, certdir: Path, sans: tuple[str, ...]) -> tuple[str, int]:
    ca.install(certdir, sans=sans)
    pod = await pods.start(QUEUE_CERT_DIR=str(certdir))
    port = int(pod.qp.env["QUEUE_SERVING_TLS_PORT"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return pod.dest, port
        except OSError:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)


async def _activator(
    platform: PlatformFile,
    stub: RunningStub,
    start_activator: StartActivator,
    pods: Pods,
    tmp_path: Path,
    *,
    pod_sans: tuple[str, ...] = ("kn-user-default", NAME),
    pod_ca: CA | None = None,
) -> tuple[ActivatorProc, CA, int]:
    ca = CA(tmp_path / "ca")
    dest, qp_tls = await _tls_pod(pods, pod_ca or ca, tmp_path / "pod-certs", pod_sans)
    platform.revision(REV)
    platform.endpoints(REV, ready=[dest])
    platform.write()
    ca.install(tmp_path / "routing-certs", sans=("kn-routing", NAME))
    (tls_port,) = free_ports(1)
    act = await start_activator(
        platform,
        stub.url,
        KND_SYSTEM_INTERNAL_TLS="Enabled",
        ACTIVATOR_CERT_DIR=str(tmp_path / "routing-certs"),
        ACTIVATOR_TLS_PORT=str(tls_port),
        KND_QUEUE_TLS_PORT=str(qp_tls),
    )
    return act, ca, tls_port


async def test_proxies_to_the_pod_over_tls_and_serves_tls(
    platform: PlatformFile,
    stub: RunningStub,
    start_activator: StartActivator,
    pods: Pods,
    tmp_path: Path,
) -> None:
    act, ca, tls_port = await _activator(platform, stub, start_activator, pods, tmp_path)
    async with make_client(act.url()) as c:
        r = await c.get("/hello", headers=rev_headers(REV))
    assert (r.status_code, r.text) == (200, "hello")
    # its own TLS port (TLS 1.3 minimum by default, as ACTIVATOR_TLS_MIN_VERSION is unset)
    ctx = ssl.create_default_context(cadata=ca.pem().decode())
    async with httpx.AsyncClient(verify=ctx, trust_env=False, timeout=10) as c:
        r = await c.get(
            f"https://127.0.0.1:{tls_port}/hello",
            headers=rev_headers(REV),
            extensions={"sni_hostname": NAME},
        )
    assert (r.status_code, r.text) == (200, "hello")
    old = ssl.create_default_context(cadata=ca.pem().decode())
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(OSError):
        _, w = await asyncio.open_connection("127.0.0.1", tls_port, ssl=old, server_hostname=NAME)
        w.close()


async def test_pod_certificate_of_another_namespace_is_refused(
    platform: PlatformFile,
    stub: RunningStub,
    start_activator: StartActivator,
    pods: Pods,
    tmp_path: Path,
) -> None:
    act, _, _ = await _activator(
        platform, stub, start_activator, pods, tmp_path, pod_sans=("kn-user-other", NAME)
    )
    async with make_client(act.url()) as c:
        r = await c.get("/hello", headers=rev_headers(REV))
    assert r.status_code == 502
    assert 'san "kn-user-default" does not have a matching name in [kn-user-other' in r.text


async def test_pod_certificate_of_another_ca_is_refused(
    platform: PlatformFile,
    stub: RunningStub,
    start_activator: StartActivator,
    pods: Pods,
    tmp_path: Path,
) -> None:
    other = CA(tmp_path / "other-ca", "other")
    act, _, _ = await _activator(platform, stub, start_activator, pods, tmp_path, pod_ca=other)
    async with make_client(act.url()) as c:
        r = await c.get("/hello", headers=rev_headers(REV))
    assert r.status_code == 502
    assert r.text.startswith("tls: failed to verify certificate of 127.0.0.1:")
    assert "unable to get local issuer certificate" in r.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "activator: ACTIVATOR_CERT_DIR: KND_SYSTEM_INTERNAL_TLS is enabled but the "
         "certificates in {d} (tls.crt, tls.key, ca.crt) cannot be loaded: "),
        ({"KND_SYSTEM_INTERNAL_TLS": "on"}, 'activator: KND_SYSTEM_INTERNAL_TLS: "on" is not '
         "\"enabled\" or \"disabled\" (config-network's system-internal-tls)"),
        ({"ACTIVATOR_TLS_MAX_VERSION": "1.4"}, 'activator: invalid ACTIVATOR_TLS_MAX_VERSION '
         '"1.4": unsupported TLS version "1.4": must be "1.2" or "1.3"'),
    ],
)  # fmt: skip
def test_bad_tls_configuration_exits_with_one_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    platform = PlatformFile(tmp_path / "platform.json")
    platform.write()
    port, metrics = free_ports(2)
    proc = subprocess.run(
        [ACTIVATOR_BIN],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            "POD_NAME": "a",
            "POD_IP": "127.0.0.1",
            "ACTIVATOR_PLATFORM_FILE": str(platform.path),
            "ACTIVATOR_PORT": str(port),
            "ACTIVATOR_METRICS_PORT": str(metrics),
            "ACTIVATOR_BIND_ADDRESS": "127.0.0.1",
            "ACTIVATOR_H2C_PORT": "0",
            "AUTOSCALER_URL": "ws://127.0.0.1:1",
            "KND_SYSTEM_INTERNAL_TLS": "enabled",
            "ACTIVATOR_CERT_DIR": str(tmp_path / "none"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith(message.format(d=tmp_path / "none")), err

"""The in-cluster configuration path of platforms.kubernetes.config.connect() against the fake
API server over HTTPS: a CA and a server certificate made here (openssl), the service account's
token and CA files in a directory named by KND_SERVICE_ACCOUNT_DIR, KUBERNETES_SERVICE_HOST and
_PORT as the kubelet sets them. The server's certificate is verified against that CA, and a
token the kubelet rotates (swapping the file) is used from the next request on."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dataplane.envconfig import ConfigError
from platforms.kubernetes.api import PODS, KubeConnectionError, KubeUnauthorized
from platforms.kubernetes.config import connect
from tests.fakekube import FakeKube


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"


def make_ca(d: Path, name: str) -> None:
    """``<name>.key`` and ``<name>.crt``: a self-signed CA (P-256, one day)."""
    _openssl(
        "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:prime256v1", "-keyout", f"{name}.key", "-out", f"{name}.crt",
        "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def make_server_cert(d: Path, ca: str) -> None:
    """``server.key`` and ``server.crt`` signed by ``ca``, for 127.0.0.1 and the names a pod
    uses for the API server."""
    _openssl(
        "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=kube-apiserver",
        cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc,DNS:kubernetes.default\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "server.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test's certificates")
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "cluster-ca")
    make_ca(d, "other-ca")
    make_server_cert(d, "cluster-ca")
    return d


@pytest.fixture
async def kube(pki: Path) -> AsyncIterator[FakeKube]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    async with FakeKube(token="token-1", ssl_context=ctx) as k:
        yield k


def service_account(d: Path, ca: Path, token: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca, d / "ca.crt")
    (d / "token").write_text(token)
    (d / "namespace").write_text("knd-system")
    return d


def rotate(sa: Path, token: str) -> None:
    """As the kubelet does: the new token is written beside and swapped in atomically."""
    tmp = sa / ".token.new"
    tmp.write_text(token)
    os.replace(tmp, sa / "token")


def in_cluster_env(kube: FakeKube, sa: Path) -> dict[str, str]:
    return {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(kube.port),
        "KND_SERVICE_ACCOUNT_DIR": str(sa),
    }


async def test_in_cluster_over_https_with_a_rotated_token(
    kube: FakeKube, pki: Path, tmp_path: Path
) -> None:
    sa = service_account(tmp_path / "sa", pki / "cluster-ca.crt", "token-1")
    api = await connect(environ=in_cluster_env(kube, sa))
    try:
        assert api.host == f"https://127.0.0.1:{kube.port}"
        assert (await api.get_path("/version", "version"))["major"] == "1"
        kube.create("pods", {"metadata": {"name": "p", "namespace": "default"}})
        assert [p["metadata"]["name"] for p in (await api.list(PODS))["items"]] == ["p"]
        # the kubelet rotates the token; the server accepts only the new one from now on
        rotate(sa, "token-2\n")
        kube.token = "token-2"
        assert (await api.list(PODS, namespace="default"))["items"]
        assert api.client.configuration.api_key["BearerToken"] == "token-2"
        # and the fake does refuse the old one (so the request above proves the re-read)
        rotate(sa, "token-3")
        with pytest.raises(KubeUnauthorized):
            await api.list(PODS)
        kube.token = "token-3"
        assert (await api.list(PODS))["items"]
    finally:
        await api.close()


async def test_the_server_certificate_is_verified_against_the_service_account_ca(
    kube: FakeKube, pki: Path, tmp_path: Path
) -> None:
    sa = service_account(tmp_path / "sa", pki / "other-ca.crt", "token-1")
    api = await connect(environ=in_cluster_env(kube, sa))
    try:
        with pytest.raises(KubeConnectionError, match="certificate verify failed"):
            await api.get_path("/version", "version")
        assert not kube.requests  # no request got through the handshake
    finally:
        await api.close()


async def test_a_missing_service_account_names_the_directory(tmp_path: Path) -> None:
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "KND_SERVICE_ACCOUNT_DIR": str(tmp_path / "nope"),
    }
    with pytest.raises(ConfigError, match=rf"in-cluster config from {tmp_path / 'nope'}: "):
        await connect(environ=env)

"""The queue-proxy's internal TLS (Knative system-internal-tls), end to end with real processes,
certificates made by the test (openssl CLI), ``ssl`` clients and httpx: the TLS port serves the
main handler when tls.crt/tls.key exist, plain HTTP stays on the main and admin ports, the
QUEUE_PROXY_TLS_* settings apply (TLS 1.3 only by default), and a certificate rotation under
load fails no request."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from tests.apps.upstream import RunningApp
from tests.tlscerts import CA

from .conftest import StartQP, make_client
from .helpers import QueueProxy

NAME = "data-plane.knative.dev"


class HasPort(Protocol):
    port: int


def client_ctx(ca: CA, *, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.pem().decode())
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def tls_get(
    port: int, ctx: ssl.SSLContext, path: str = "/hello"
) -> tuple[int, bytes, ssl.SSLObject]:
    """One request on a new TLS connection: (status, body, the SSL object)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=NAME), 10
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
        sslobj = writer.get_extra_info("ssl_object")
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, sslobj


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "ca")


async def start_tls_qp(
    start_qp: StartQP, app: HasPort, ca: CA, tmp_path: Path, **env: str
) -> tuple[QueueProxy, Path]:
    certdir = tmp_path / "certs"
    ca.install(certdir)
    qp = await start_qp({"QUEUE_CERT_DIR": str(certdir), **env}, user_port=app.port)
    port = int(qp.env["QUEUE_SERVING_TLS_PORT"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # the TLS port opens just after the plain ones
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return qp, certdir
        except OSError:
            assert loop.time() < deadline, qp.stderr()
            await asyncio.sleep(0.01)


async def test_tls_port_serves_and_plain_ports_stay(
    start_qp: StartQP, app: RunningApp, ca: CA, tmp_path: Path
) -> None:
    qp, _ = await start_tls_qp(start_qp, app, ca, tmp_path)
    tls_port = int(qp.env["QUEUE_SERVING_TLS_PORT"])
    status, body, sslobj = await tls_get(tls_port, client_ctx(ca))
    assert (status, body) == (200, b"hello")
    assert sslobj.version() == "TLSv1.3"
    # Knative's default minimum is TLS 1.3: a TLS 1.2 client is refused.
    with pytest.raises(OSError):  # an alert or a reset, either way no session
        await tls_get(tls_port, client_ctx(ca, version=ssl.TLSVersion.TLSv1_2))
    async with httpx.AsyncClient(verify=client_ctx(ca), trust_env=False) as c:
        r = await c.get(f"https://127.0.0.1:{tls_port}/hello", extensions={"sni_hostname": NAME})
        assert (r.status_code, r.text, r.http_version) == (200, "hello", "HTTP/1.1")
    # ALPN offers h2 as Go's TLS server does (HTTP/2 requests then go to the app over h2c,
    # like Knative's auto transport: tests/integration/test_h2c_qp.py covers that path).
    h2 = client_ctx(ca)
    h2.set_alpn_protocols(["h2", "http/1.1"])
    _, w = await asyncio.open_connection("127.0.0.1", tls_port, ssl=h2, server_hostname=NAME)
    assert w.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    w.close()
    # plain HTTP on the main port and the admin port, as before
    async with make_client(qp.url()) as c:
        assert (await c.get("/hello")).text == "hello"
    async with make_client(f"http://127.0.0.1:{qp.admin_port}") as c:
        assert (await c.get("/nope")).status_code == 404
    assert app.state.paths == ["/hello"] * 3  # two over TLS, one plain


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls12_allowed_by_min_version(
    start_qp: StartQP, app: RunningApp, ca: CA, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    qp, _ = await start_tls_qp(start_qp, app, ca, tmp_path, QUEUE_PROXY_TLS_MIN_VERSION="1.2")
    status, _, sslobj = await tls_get(
        int(qp.env["QUEUE_SERVING_TLS_PORT"]), client_ctx(ca, version=version)
    )
    assert status == 200
    assert sslobj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2"}.get(version, "TLSv1.3")


async def test_cipher_suites_restrict_tls12(
    start_qp: StartQP, app: RunningApp, ca: CA, tmp_path: Path
) -> None:
    qp, _ = await start_tls_qp(
        start_qp,
        app,
        ca,
        tmp_path,
        QUEUE_PROXY_TLS_MIN_VERSION="1.2",
        QUEUE_PROXY_TLS_MAX_VERSION="1.2",
        QUEUE_PROXY_TLS_CIPHER_SUITES="TLS_AES_128_GCM_SHA256, "
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    )
    port = int(qp.env["QUEUE_SERVING_TLS_PORT"])
    _, _, sslobj = await tls_get(port, client_ctx(ca))
    assert sslobj.version() == "TLSv1.2"
    cipher = sslobj.cipher()
    assert cipher is not None and cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    other = client_ctx(ca)
    other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(OSError):
        await tls_get(port, other)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"QUEUE_PROXY_TLS_MIN_VERSION": "1.1"},
            'invalid QUEUE_PROXY_TLS_MIN_VERSION "1.1": unsupported TLS version "1.1"',
        ),
        (
            {"QUEUE_PROXY_TLS_CIPHER_SUITES": "TLS_RSA_WITH_RC4_128_SHA"},
            "invalid QUEUE_PROXY_TLS_CIPHER_SUITES: unknown cipher suite "
            '"TLS_RSA_WITH_RC4_128_SHA"',
        ),
        (
            {"QUEUE_PROXY_TLS_CURVE_PREFERENCES": "P-256,Curve25519"},
            'invalid QUEUE_PROXY_TLS_CURVE_PREFERENCES: unknown curve "Curve25519"',
        ),
    ],
)
async def test_bad_tls_settings_exit_with_one_line(
    start_qp: StartQP, app: RunningApp, ca: CA, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    certdir = tmp_path / "certs"
    ca.install(certdir)
    qp = await start_qp({"QUEUE_CERT_DIR": str(certdir), **env}, user_port=app.port, wait=False)
    assert await qp.wait_exit() == 1
    assert qp.stderr().strip().splitlines()[-1].startswith(f"queue-proxy: {message}")


async def test_bad_tls_settings_ignored_without_certificates(
    start_qp: StartQP, app: RunningApp, tmp_path: Path
) -> None:
    """Knative reads QUEUE_PROXY_TLS_* only when the certificates are mounted."""
    qp = await start_qp(
        {"QUEUE_CERT_DIR": str(tmp_path / "none"), "QUEUE_PROXY_TLS_MIN_VERSION": "1.1"},
        user_port=app.port,
    )
    async with make_client(qp.url()) as c:
        assert (await c.get("/hello")).text == "hello"


async def test_unloadable_certificate_exits_with_one_line(
    start_qp: StartQP, app: RunningApp, tmp_path: Path
) -> None:
    certdir = tmp_path / "certs"
    certdir.mkdir()
    (certdir / "tls.crt").write_text("not a certificate")
    (certdir / "tls.key").write_text("not a key")
    qp = await start_qp({"QUEUE_CERT_DIR": str(certdir)}, user_port=app.port, wait=False)
    assert await qp.wait_exit() == 1
    last = qp.stderr().strip().splitlines()[-1]
    assert last.startswith(
        f"queue-proxy: QUEUE_CERT_DIR: cannot load the certificate pair in {certdir}"
    )


def _serial(der: bytes) -> int:
    # TBSCertificate: SEQUENCE { [0] version, INTEGER serial, ... }: read the INTEGER after the
    # explicit version tag (our certificates are v3 with short serials).
    i = der.index(b"\xa0\x03\x02\x01\x02") + 5
    assert der[i] == 0x02
    n = der[i + 1]
    return int.from_bytes(der[i + 2 : i + 2 + n], "big")


async def test_rotation_under_load_fails_no_request(
    start_qp: StartQP, app: RunningApp, ca: CA, tmp_path: Path
) -> None:
    """Clients keep making new TLS connections (and keep-alive requests on httpx) while the
    pair is replaced, the two files one after the other as a careless rotation would: every
    request succeeds, and new handshakes end up with the new certificate."""
    qp, certdir = await start_tls_qp(start_qp, app, ca, tmp_path, QUEUE_CERT_RELOAD_SECONDS="0.05")
    port = int(qp.env["QUEUE_SERVING_TLS_PORT"])
    ctx = client_ctx(ca)
    _, _, first = await tls_get(port, ctx)
    old = _serial(first.getpeercert(binary_form=True) or b"")
    failures: list[BaseException | int] = []
    seen: set[int] = set()
    stop = asyncio.Event()
    done = 0

    async def new_connections() -> None:
        nonlocal done
        for _ in range(400):  # bounded: the rotation is seen long before
            try:
                status, body, sslobj = await tls_get(port, ctx)
                seen.add(_serial(sslobj.getpeercert(binary_form=True) or b""))
                if (status, body) != (200, b"hello"):
                    failures.append(status)
            except (OSError, ssl.SSLError, TimeoutError) as e:
                failures.append(e)
            done += 1
            if stop.is_set():
                return

    async def keep_alive() -> None:
        async with httpx.AsyncClient(verify=ctx, trust_env=False, timeout=10) as c:
            for _ in range(2000):
                try:
                    r = await c.get(
                        f"https://127.0.0.1:{port}/hello", extensions={"sni_hostname": NAME}
                    )
                    if r.status_code != 200:
                        failures.append(r.status_code)
                except httpx.HTTPError as e:
                    failures.append(e)
                if stop.is_set():
                    return

    tasks = [asyncio.create_task(new_connections()) for _ in range(3)]
    tasks.append(asyncio.create_task(keep_alive()))
    crt, key = ca.issue()
    new = ca._n + 1000
    (certdir / "tls.crt").write_bytes(crt)  # the key follows a moment later
    await asyncio.sleep(0.2)
    (certdir / "tls.key").write_bytes(key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while new not in seen and loop.time() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    start = done
    while done < start + 10 and loop.time() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)  # a few more handshakes after the switch
    stop.set()
    await asyncio.gather(*tasks)
    assert failures == []
    assert old != new
    assert new in seen, (old, new, seen)
    err = qp.stderr()
    # The half-written pair (new certificate, old key) was seen and kept the previous one.
    assert "keeping the previous one" in err, err[-2000:]
    assert "Certificate and/or key have changed on disk and were reloaded." in err


async def test_grpc_over_tls(start_qp: StartQP, ca: CA, tmp_path: Path) -> None:
    """HTTP/2 by ALPN on the TLS port: a grpcio client over TLS, the app behind over h2c."""
    import grpc

    from tests.apps import grpc_app

    gapp = await grpc_app.start()
    try:
        qp, _ = await start_tls_qp(start_qp, gapp, ca, tmp_path)
        creds = grpc.ssl_channel_credentials(root_certificates=ca.pem())
        target = f"127.0.0.1:{qp.env['QUEUE_SERVING_TLS_PORT']}"
        opts = (("grpc.ssl_target_name_override", NAME),)
        async with grpc.aio.secure_channel(target, creds, options=opts) as ch:
            call = ch.unary_unary(f"/{grpc_app.SERVICE}/Unary")
            assert await call(b"hi", timeout=10) == b"echo:hi"
            got = await asyncio.gather(*(call(b"%d" % i, timeout=10) for i in range(20)))
            assert got == [b"echo:%d" % i for i in range(20)]
    finally:
        gapp.release.set()
        await gapp.close()

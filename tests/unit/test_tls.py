"""dataplane/tls.py: Knative's TLS settings from env, curve preferences, certificate reloads and
the activator's SAN check. Handshakes run in memory (two SSLObjects over MemoryBIOs)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from dataplane.envconfig import ConfigError
from dataplane.tls import (
    CertWatcher,
    ClientTLS,
    TLSSettings,
    data_plane_user_san,
    server_context,
    settings_from_env,
)
from tests.tlscerts import CA

NAME = "data-plane.knative.dev"


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake in memory; raises ssl.SSLError if it fails."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=NAME)
    done = [False, False]
    for _ in range(20):
        for i, (obj, out, peer_in) in enumerate(((cli, c_out, s_in), (srv, s_out, c_in))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done):
            return srv, cli
    raise AssertionError("handshake did not finish")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def pair(ca: CA, tmp_path: Path) -> tuple[str, str]:
    ca.install(tmp_path)
    return str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")


def client(ca: CA) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.pem().decode())


class TestSettings:
    def test_defaults_are_knatives(self) -> None:
        s = settings_from_env({}, "QUEUE_PROXY_")
        assert s == TLSSettings(min_version=ssl.TLSVersion.TLSv1_3)
        assert settings_from_env({"QUEUE_PROXY_TLS_MIN_VERSION": ""}, "QUEUE_PROXY_") == s

    def test_all_four(self) -> None:
        s = settings_from_env(
            {
                "ACTIVATOR_TLS_MIN_VERSION": "1.2",
                "ACTIVATOR_TLS_MAX_VERSION": "1.3",
                "ACTIVATOR_TLS_CIPHER_SUITES": " TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,,"
                "TLS_CHACHA20_POLY1305_SHA256",
                "ACTIVATOR_TLS_CURVE_PREFERENCES": "X25519, CurveP256,P-384",
                "QUEUE_PROXY_TLS_MIN_VERSION": "bogus",  # another prefix: not read
            },
            "ACTIVATOR_",
        )
        assert s == TLSSettings(
            ssl.TLSVersion.TLSv1_2,
            ssl.TLSVersion.TLSv1_3,
            ("ECDHE-RSA-AES128-GCM-SHA256",),
            ("X25519", "P-256", "P-384"),
        )

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("TLS_MIN_VERSION", "1.1", 'invalid X_TLS_MIN_VERSION "1.1": unsupported TLS '
             'version "1.1": must be "1.2" or "1.3"'),
            ("TLS_MAX_VERSION", "TLS1.3", 'invalid X_TLS_MAX_VERSION "TLS1.3": unsupported TLS '
             'version "TLS1.3": must be "1.2" or "1.3"'),
            ("TLS_CIPHER_SUITES", "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
             'invalid X_TLS_CIPHER_SUITES: unknown cipher suite "TLS_ECDHE_RSA_WITH_RC4_128_SHA"'),
            ("TLS_CURVE_PREFERENCES", "secp256r1",
             'invalid X_TLS_CURVE_PREFERENCES: unknown curve "secp256r1"'),
        ],
    )  # fmt: skip
    def test_errors_name_the_variable(self, key: str, value: str, message: str) -> None:
        """knative.dev/pkg/network/tls's wording."""
        with pytest.raises(ConfigError) as e:
            settings_from_env({"X_" + key: value}, "X_")
        assert str(e.value) == message


class TestServer:
    def test_default_is_tls13_only(self, ca: CA, pair: tuple[str, str]) -> None:
        srv = server_context(TLSSettings(), *pair)
        _, c = handshake(srv, client(ca))
        assert c.version() == "TLSv1.3"
        old = client(ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            handshake(srv, old)

    @pytest.mark.parametrize(
        ("server", "client_curve", "ok"),
        [
            (("P-384",), "prime256v1", False),
            (("P-384",), "secp384r1", True),
            (("X25519", "P-384"), "secp384r1", True),  # a list: set through OpenSSL directly
            (("X25519", "P-384"), "prime256v1", False),
            (("P-521", "P-256"), "prime256v1", True),
        ],
    )
    def test_curve_preferences(
        self, ca: CA, pair: tuple[str, str], server: tuple[str, ...], client_curve: str, ok: bool
    ) -> None:
        srv = server_context(TLSSettings(curves=server), *pair)
        cli = client(ca)
        cli.set_ecdh_curve(client_curve)  # the client offers that group only
        if ok:
            handshake(srv, cli)
        else:
            with pytest.raises(ssl.SSLError):
                handshake(srv, cli)

    def test_only_tls13_suites_listed_leaves_no_tls12(self, ca: CA, pair: tuple[str, str]) -> None:
        settings = settings_from_env(
            {"Q_TLS_MIN_VERSION": "1.2", "Q_TLS_CIPHER_SUITES": "TLS_AES_128_GCM_SHA256"}, "Q_"
        )
        srv = server_context(settings, *pair)
        assert handshake(srv, client(ca))[1].version() == "TLSv1.3"
        old = client(ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            handshake(srv, old)


def serial(obj: ssl.SSLObject) -> int:
    cert = obj.getpeercert()
    assert cert
    return int(str(cert["serialNumber"]), 16)


class TestCertWatcher:
    def test_reload_swaps_for_new_handshakes_only_when_the_pair_loads(
        self, ca: CA, tmp_path: Path
    ) -> None:
        first = ca.install(tmp_path)
        w = CertWatcher(TLSSettings(), str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
        assert serial(handshake(w.context, client(ca))[1]) == first
        assert w.check() is False  # unchanged
        crt, key = ca.issue()
        (tmp_path / "tls.crt").write_bytes(crt)  # half a rotation: cert without its key
        assert w.check() is False
        assert serial(handshake(w.context, client(ca))[1]) == first
        (tmp_path / "tls.key").write_bytes(key)
        assert w.check() is True
        second = serial(handshake(w.context, client(ca))[1])
        assert second == first + 1
        assert w.reloads == 1

    def test_missing_file_keeps_the_pair(self, ca: CA, tmp_path: Path) -> None:
        first = ca.install(tmp_path)
        w = CertWatcher(TLSSettings(), str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
        (tmp_path / "tls.key").unlink()
        assert w.check() is False
        assert serial(handshake(w.context, client(ca))[1]) == first


class TestClient:
    def test_san_and_server_name(self, ca: CA, tmp_path: Path) -> None:
        ca.install(tmp_path)
        ct = ClientTLS(str(tmp_path / "ca.crt"))
        srv = server_context(TLSSettings(), str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
        _, cli = handshake(srv, ct.context)

        class T:
            def get_extra_info(self, name: str) -> object:
                return cli.getpeercert() if name == "peercert" else None

        assert ct.for_namespace("default").verify(T()) is None
        assert ct.for_namespace("Default").san == "kn-user-default"
        err = ct.for_namespace("other").verify(T())
        assert err == (
            'san "kn-user-other" does not have a matching name in '
            "[kn-user-default data-plane.knative.dev]"
        )
        assert data_plane_user_san("NS") == "kn-user-ns"

    def test_server_name_is_checked(self, ca: CA, tmp_path: Path) -> None:
        ca.install(tmp_path, sans=("kn-user-default",))  # no data-plane.knative.dev
        ct = ClientTLS(str(tmp_path / "ca.crt"))
        srv = server_context(TLSSettings(), str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(srv, ct.context)

    def test_other_ca_is_refused_and_ca_reload(self, ca: CA, tmp_path: Path) -> None:
        other = CA(tmp_path / "other", "other-ca")
        ca.install(tmp_path / "a")
        other.install(tmp_path / "b")
        ct = ClientTLS(str(tmp_path / "a" / "ca.crt"))
        srv_b = server_context(
            TLSSettings(), str(tmp_path / "b" / "tls.crt"), str(tmp_path / "b" / "tls.key")
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(srv_b, ct.context)
        assert ct.check() is False
        (tmp_path / "a" / "ca.crt").write_bytes(other.pem())
        assert ct.check() is True
        handshake(srv_b, ct.context)


@pytest.mark.skipif(ssl.OPENSSL_VERSION_INFO >= (3, 5), reason="OpenSSL 3.5 has X25519MLKEM768")
def test_curve_this_openssl_lacks_names_the_variable() -> None:
    with pytest.raises(ConfigError) as e:
        settings_from_env({"Q_TLS_CURVE_PREFERENCES": "X25519,X25519MLKEM768"}, "Q_")
    assert str(e.value).startswith(
        "invalid Q_TLS_CURVE_PREFERENCES: X25519,X25519MLKEM768 not supported by OpenSSL"
    )

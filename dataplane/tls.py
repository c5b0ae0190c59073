"""Internal TLS (Knative's ``system-internal-tls``): settings, server certificates that reload,
and the activator's verified client connections to queue-proxies.

Knative's rules, kept here:

- TLS settings come from ``<PREFIX>TLS_MIN_VERSION``, ``TLS_MAX_VERSION``, ``TLS_CIPHER_SUITES``
  and ``TLS_CURVE_PREFERENCES`` (knative.dev/pkg/network/tls; prefix ``QUEUE_PROXY_`` or
  ``ACTIVATOR_``). The minimum defaults to TLS 1.3; versions are "1.2" or "1.3"; suites and
  curves use Go's names. As in Go, the suite list only restricts TLS 1.2 (TLS 1.3 suites are
  accepted in the list and not configurable).
- A server certificate is a ``tls.crt``/``tls.key`` pair read from a directory; the files are
  re-read on a period and swapped in when their checksums change (Knative's CertWatcher: one
  minute). A pair that does not load (a rotation caught half-written) keeps the previous one.
  Handshakes in flight keep the certificate they started with; new ones get the new pair.
- The activator dials a pod's TLS port with ServerName ``data-plane.knative.dev``, verifies
  the chain against the CA it is given (``ca.crt``), requires TLS 1.3, and accepts the
  certificate only if its SANs name ``kn-user-<namespace>`` of the revision.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .envconfig import ConfigError

__all__ = [
    "CertWatcher",
    "ClientTLS",
    "TLSSettings",
    "data_plane_user_san",
    "settings_from_env",
]

log = logging.getLogger("dataplane.tls")

#: ServerName the activator sends and verifies (certificates.LegacyFakeDnsName).
DATA_PLANE_NAME = "data-plane.knative.dev"

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# Go's crypto/tls.CipherSuites() names -> OpenSSL names (None: a TLS 1.3 suite, which Go does
# not let a configuration restrict).
_SUITES: dict[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}

# knative.dev/pkg/network/tls curve names -> OpenSSL group names.
_CURVES = {
    "CurveP256": "P-256",
    "CurveP384": "P-384",
    "CurveP521": "P-521",
    "X25519": "X25519",
    "X25519MLKEM768": "X25519MLKEM768",
    "P-256": "P-256",
    "P-384": "P-384",
    "P-521": "P-521",
}


@dataclass(slots=True, frozen=True)
class TLSSettings:
    """What ``<PREFIX>TLS_*`` ask for (None: the library default)."""

    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    max_version: ssl.TLSVersion | None = None
    ciphers: tuple[str, ...] | None = None  # OpenSSL names of the TLS 1.2 suites allowed
    curves: tuple[str, ...] | None = None  # OpenSSL group names, in preference order


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def settings_from_env(env: Mapping[str, str], prefix: str) -> TLSSettings:
    """Read ``<prefix>TLS_*`` as knative.dev/pkg/network/tls does; ConfigError names the
    variable (empty values mean the default, as in Go)."""

    def version(key: str) -> ssl.TLSVersion | None:
        name = prefix + key
        v = env.get(name, "")
        if not v:
            return None
        if v not in _VERSIONS:
            raise ConfigError(
                f'invalid {name} "{v}": unsupported TLS version "{v}": must be "1.2" or "1.3"'
            )
        return _VERSIONS[v]

    lo = version("TLS_MIN_VERSION")
    hi = version("TLS_MAX_VERSION")
    ciphers: tuple[str, ...] | None = None
    name = prefix + "TLS_CIPHER_SUITES"
    if env.get(name, ""):
        out = []
        for s in _names(env[name]):
            if s not in _SUITES:
                raise ConfigError(f'invalid {name}: unknown cipher suite "{s}"')
            ossl = _SUITES[s]
            if ossl is not None:
                out.append(ossl)
        ciphers = tuple(out)
    curves: tuple[str, ...] | None = None
    name = prefix + "TLS_CURVE_PREFERENCES"
    if env.get(name, ""):
        groups = []
        for c in _names(env[name]):
            if c not in _CURVES:
                raise ConfigError(f'invalid {name}: unknown curve "{c}"')
            groups.append(_CURVES[c])
        curves = tuple(groups) or None
        if curves is not None:
            try:  # this OpenSSL may lack a group Go has (X25519MLKEM768 needs OpenSSL 3.5)
                _set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), curves)
            except (ConfigError, ssl.SSLError, ValueError) as e:
                raise ConfigError(f"invalid {name}: {e}") from None
    return TLSSettings(
        min_version=lo if lo is not None else ssl.TLSVersion.TLSv1_3,
        max_version=hi,
        ciphers=ciphers,
        curves=curves,
    )


def _set_groups(ctx: ssl.SSLContext, groups: tuple[str, ...]) -> None:
    """Restrict the key-exchange groups to ``groups`` in that order.

    Python 3.11's ``ssl`` sets one curve only (``set_ecdh_curve``); Go takes a preference list.
    For a list, OpenSSL's ``SSL_CTX_set1_groups_list`` is called through ctypes on the
    context's ``SSL_CTX`` (the first field of CPython's SSLContext object), after checking that
    pointer against the context's options so a layout change fails loudly, not wrongly."""
    if len(groups) == 1 and groups[0] != "X25519MLKEM768":
        ossl = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
        ctx.set_ecdh_curve(ossl.get(groups[0], groups[0]))
        return
    import _ssl
    import ctypes

    lib = ctypes.CDLL(_ssl.__file__)
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    get_options = lib.SSL_CTX_get_options
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    if not ptr or get_options(ptr) != int(ctx.options):
        raise ConfigError("a curve list cannot be set through this Python build's ssl module")
    ctrl = lib.SSL_CTX_ctrl
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    set_groups_list = 92  # SSL_CTRL_SET_GROUPS_LIST
    if ctrl(ptr, set_groups_list, 0, ":".join(groups).encode()) != 1:
        raise ConfigError(f"{','.join(groups)} not supported by {ssl.OPENSSL_VERSION}")


def _apply(ctx: ssl.SSLContext, settings: TLSSettings) -> None:
    ctx.minimum_version = settings.min_version
    if settings.max_version is not None:
        ctx.maximum_version = settings.max_version
    if settings.ciphers is not None:
        if settings.ciphers:
            ctx.set_ciphers(":".join(settings.ciphers))
        elif ctx.minimum_version < ssl.TLSVersion.TLSv1_3:
            # Only TLS 1.3 suites listed: Go has no TLS 1.2 suite left to agree on.
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if settings.curves is not None:
        _set_groups(ctx, settings.curves)


def server_context(
    settings: TLSSettings, cert: str, key: str, alpn: tuple[str, ...] = ("h2", "http/1.1")
) -> ssl.SSLContext:
    """A server context holding the ``cert``/``key`` pair (ssl.SSLError/OSError if it does not
    load). ALPN offers what Go's net/http server offers: h2 and http/1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply(ctx, settings)
    ctx.set_alpn_protocols(list(alpn))
    ctx.load_cert_chain(cert, key)
    return ctx


def _digest(path: str) -> bytes:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


class CertWatcher:
    """A server certificate pair on disk, re-read on a period (Knative's CertWatcher).

    ``context`` is the context to listen with. Its SNI callback (called for every handshake,
    with or without SNI) moves the handshake to the newest context, so a rotation needs no new
    listener and drops no connection."""

    def __init__(
        self,
        settings: TLSSettings,
        cert: str,
        key: str,
        *,
        alpn: tuple[str, ...] = ("h2", "http/1.1"),
    ) -> None:
        self.settings = settings
        self.cert = cert
        self.key = key
        self.alpn = alpn
        self._sums = (_digest(cert), _digest(key))
        self.context = server_context(settings, cert, key, alpn)
        self.current = self.context
        self.context.sni_callback = self._sni
        self.reloads = 0

    def _sni(self, sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        cur = self.current
        if cur is not ctx:
            sslobj.context = cur

    def check(self) -> bool:
        """Re-read the pair if either file changed; True when a new pair was swapped in."""
        try:
            sums = (_digest(self.cert), _digest(self.key))
        except OSError as e:
            log.error("failed to read the certificate or key in %s: %s", self.cert, e)
            return False
        if sums == self._sums:
            return False
        try:
            ctx = server_context(self.settings, self.cert, self.key, self.alpn)
        except (OSError, ssl.SSLError) as e:
            # A rotation caught between its two files: keep serving the previous pair.
            log.error("failed to parse certificate %s: %s (keeping the previous one)", self.cert, e)
            return False
        self._sums = sums
        self.current = ctx
        self.reloads += 1
        log.info("Certificate and/or key have changed on disk and were reloaded.")
        return True


def data_plane_user_san(namespace: str) -> str:
    """The SAN a queue-proxy certificate of ``namespace`` carries (DataPlaneUserSAN)."""
    return "kn-user-" + namespace.lower()


def peer_dns_names(transport: Any) -> list[str]:
    cert = transport.get_extra_info("peercert") or {}
    return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


def _client_context(ca_pem: bytes, alpn: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    ctx.set_alpn_protocols([alpn])
    return ctx


class ClientTLS:
    """The activator's TLS to queue-proxies: one client context for the CA in ``ca_path``
    (re-read when it changes), ServerName ``data-plane.knative.dev``, TLS 1.3 at least."""

    def __init__(self, ca_path: str, port: int = 8112) -> None:
        self.ca_path = ca_path
        self.port = port
        self.server_name = DATA_PLANE_NAME
        self._sum = b""
        self.h2_context: ssl.SSLContext
        self.context = self._load()

    def _load(self) -> ssl.SSLContext:
        """The HTTP/1.1 context (returned) and the HTTP/2 one (``h2_context``, ALPN h2: the
        activator's multiplexed gRPC/h2c connections), both from the CA file as it is now."""
        with open(self.ca_path, "rb") as f:
            pem = f.read()
        ctx = _client_context(pem, "http/1.1")
        h2 = _client_context(pem, "h2")
        self.h2_context = h2
        self._sum = hashlib.sha256(pem).digest()
        return ctx

    def check(self) -> bool:
        """Re-read the CA if it changed (new dials use it); True when it was swapped."""
        try:
            with open(self.ca_path, "rb") as f:
                changed = hashlib.sha256(f.read()).digest() != self._sum
            if not changed:
                return False
            self.context = self._load()
        except (OSError, ssl.SSLError, ValueError) as e:
            log.error("failed to load the CA in %s: %s (keeping the previous one)", self.ca_path, e)
            return False
        log.info("CA in %s changed and was reloaded", self.ca_path)
        return True

    def for_namespace(self, namespace: str) -> UpstreamTLS:
        return UpstreamTLS(self, data_plane_user_san(namespace))


class UpstreamTLS:
    """What an upstream pool needs to dial one revision's pods over TLS."""

    __slots__ = ("client", "san")

    def __init__(self, client: ClientTLS, san: str) -> None:
        self.client = client
        self.san = san

    @property
    def context(self) -> ssl.SSLContext:
        return self.client.context

    @property
    def h2_context(self) -> ssl.SSLContext:
        return self.client.h2_context

    @property
    def server_name(self) -> str:
        return self.client.server_name

    def verify(self, transport: Any) -> str | None:
        """None if the peer's certificate names our SAN, else the error (Go's wording)."""
        names = peer_dns_names(transport)
        if self.san in names:
            return None
        if not names and transport.get_extra_info("peercert") is None:
            return "no PeerCertificates provided"
        return f'san "{self.san}" does not have a matching name in [{" ".join(names)}]'


def periodic(loop: Any, interval: float, fn: Callable[[], object]) -> Callable[[], None]:
    """Call ``fn`` every ``interval`` seconds on ``loop``; returns a function that stops it."""
    handle: list[Any] = [None]

    def tick() -> None:
        try:
            fn()
        except Exception:
            log.exception("periodic TLS check failed")
        handle[0] = loop.call_later(interval, tick)

    handle[0] = loop.call_later(interval, tick)

    def stop() -> None:
        if handle[0] is not None:
            handle[0].cancel()
            handle[0] = None

    return stop

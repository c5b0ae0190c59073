"""Certificates for TLS tests, made with the openssl CLI: a CA, and leaf certificates it
signs with the SANs a test asks for (Knative's: ``kn-user-<ns>`` and ``data-plane.knative.dev``).
EC P-256 keys keep generation fast."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

KN_SANS = ("kn-user-default", "data-plane.knative.dev")


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    assert exe is not None, "the openssl CLI is needed to make test certificates"
    subprocess.run([exe, *args], check=True, capture_output=True)


class CA:
    def __init__(self, workdir: Path, name: str = "test-ca") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.cert = workdir / f"{name}.crt"
        self.key = workdir / f"{name}.key"
        self._n = 0
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", str(self.key), "-out", str(self.cert),
        )  # fmt: skip

    def pem(self) -> bytes:
        return self.cert.read_bytes()

    def issue(
        self, sans: tuple[str, ...] = KN_SANS, cn: str = "queue-proxy"
    ) -> tuple[bytes, bytes]:
        """A new leaf certificate and its key (PEM), signed by this CA."""
        self._n += 1
        base = self.dir / f"leaf{self._n}"
        csr, key, crt = (base.with_suffix(s) for s in (".csr", ".key", ".crt"))
        alt = ",".join(f"DNS:{s}" for s in sans)
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-subj", f"/CN={cn}", "-addext", f"subjectAltName={alt}",
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(1000 + self._n), "-days", "1", "-copy_extensions", "copyall",
            "-out", str(crt),
        )  # fmt: skip
        return crt.read_bytes(), key.read_bytes()

    def install(self, certdir: Path, sans: tuple[str, ...] = KN_SANS) -> int:
        """Write a new pair as ``certdir``/tls.crt, tls.key (and ca.crt); returns its serial."""
        crt, key = self.issue(sans)
        certdir.mkdir(parents=True, exist_ok=True)
        (certdir / "tls.crt").write_bytes(crt)
        (certdir / "tls.key").write_bytes(key)
        (certdir / "ca.crt").write_bytes(self.pem())
        return 1000 + self._n

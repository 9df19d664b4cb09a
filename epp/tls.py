"""TLS for the ext_proc port: a self-signed certificate made at start-up, or `tls.crt`/`tls.key` from
`--cert-path`, optionally reloaded when the files change (`--enable-cert-reload`).

The self-signed key is ECDSA P-256 rather than the reference's RSA 4096: Envoy does not verify the
EPP's certificate (empty validation context), and P-256 is generated in milliseconds.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("epp.tls")
RELOAD_DEBOUNCE_S = 0.25


def self_signed_pair() -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM), valid for 10 years, Organization "Inference Ext"."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Inference Ext")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _read_pair(cert_dir: Path) -> tuple[bytes, bytes]:
    cert_file, key_file = cert_dir / "tls.crt", cert_dir / "tls.key"
    missing = [str(p) for p in (cert_file, key_file) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--cert-path {cert_dir}: missing {', '.join(missing)} (expected tls.crt and tls.key)")
    return cert_file.read_bytes(), key_file.read_bytes()


class _ReloadingCertificates:
    """grpc calls `fetch` on every new TLS handshake; it returns a new config once the files changed
    and have been quiet for the debounce interval."""

    def __init__(self, cert_dir: Path) -> None:
        self._dir = cert_dir
        self._stamp = self._mtimes()
        self._changed_at: float | None = None
        self.reloads = 0

    def _mtimes(self) -> tuple[float, float]:
        try:
            return (os.stat(self._dir / "tls.crt").st_mtime, os.stat(self._dir / "tls.key").st_mtime)
        except FileNotFoundError:
            return (0.0, 0.0)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._mtimes()
        if stamp == self._stamp:
            self._changed_at = None
            return None
        now = time.monotonic()
        if self._changed_at is None:
            self._changed_at = now
        if now - self._changed_at < RELOAD_DEBOUNCE_S:
            return None
        try:
            cert, key = _read_pair(self._dir)
        except (OSError, ValueError) as exc:
            log.error("certificate reload failed, keeping the current certificate: %s", exc)
            return None
        self._stamp, self._changed_at = stamp, None
        self.reloads += 1
        log.info("reloaded TLS certificate from %s", self._dir)
        return grpc.ssl_server_certificate_configuration([(key, cert)])


def server_credentials(cert_path: str, reload: bool) -> grpc.ServerCredentials:
    if not cert_path:
        if reload:
            raise ValueError(
                "--enable-cert-reload needs --cert-path (there is nothing to reload for a self-signed cert)"
            )
        cert, key = self_signed_pair()
        return grpc.ssl_server_credentials([(key, cert)])
    directory = Path(cert_path)
    cert, key = _read_pair(directory)
    if not reload:
        return grpc.ssl_server_credentials([(key, cert)])
    initial = grpc.ssl_server_certificate_configuration([(key, cert)])
    # grpc accepts None from the fetcher ("no change"); its stubs say otherwise.
    return grpc.dynamic_ssl_server_credentials(initial, _ReloadingCertificates(directory).fetch)  # type: ignore[arg-type]

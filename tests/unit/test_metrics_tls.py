"""--metrics-cert-dir and --metrics-client-ca-file: the metrics port over TLS, and with client certificates."""

from __future__ import annotations

import datetime
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from epp.observability.server import server_tls_context, start_metrics_server
from kubesim.certs import make_serving_cert

_OPENER_PROXYLESS = urllib.request.ProxyHandler({})


def client_pair(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a client certificate (clientAuth) it signed: (ca.crt, client.crt, client.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scrapers-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.crt", directory / "client.crt", directory / "client.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def get(url: str, context: ssl.SSLContext) -> int:
    opener = urllib.request.build_opener(_OPENER_PROXYLESS, urllib.request.HTTPSHandler(context=context))
    with opener.open(url, timeout=5) as response:
        return int(response.status)


def test_metrics_over_tls_and_with_client_certificates(tmp_path: Path) -> None:
    # the server app.py builds from --metrics-cert-dir and --metrics-client-ca-file
    serving = make_serving_cert("127.0.0.1")
    (tmp_path / "tls.crt").write_bytes(serving.cert_pem)
    (tmp_path / "tls.key").write_bytes(serving.key_pem)
    ca, client_cert, client_key = client_pair(tmp_path)
    trust = ssl.create_default_context(cadata=serving.ca_pem.decode())

    server, _ = start_metrics_server(0, CollectorRegistry(), tls=server_tls_context(str(tmp_path)))
    try:
        assert get(f"https://127.0.0.1:{server.server_port}/metrics", trust) == 200
    finally:
        server.shutdown()
        server.server_close()

    server, _ = start_metrics_server(0, CollectorRegistry(), tls=server_tls_context(str(tmp_path), str(ca)))
    try:
        url = f"https://127.0.0.1:{server.server_port}/metrics"
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(url, trust)  # no client certificate
        trust.load_cert_chain(client_cert, client_key)
        assert get(url, trust) == 200
    finally:
        server.shutdown()
        server.server_close()


def test_cert_dir_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing .*tls\.crt, .*tls\.key"):
        server_tls_context(str(tmp_path))
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    with pytest.raises(ValueError, match=r"tls\.crt and tls\.key do not load"):
        server_tls_context(str(tmp_path))

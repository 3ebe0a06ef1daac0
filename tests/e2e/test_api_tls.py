"""The API over TLS: a certificate and key from the configuration, clients that verify it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import DaemonProcess


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1, made for this test run only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alarmd test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_api_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    d = DaemonProcess(tmp_path / "d", api_tls=(cert, key))
    d.start()
    try:
        assert d.api.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(d.api + "/health", context=context, timeout=10) as r:
            assert json.loads(r.read())["status"] == "ok"
        # a client that does not trust the certificate is refused
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(d.api + "/health", timeout=10)
        # plain HTTP on the TLS port gets nothing useful
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(d.api.replace("https", "http") + "/health", timeout=10)
        listed = d.alarmctl("events", env={"SSL_CERT_FILE": str(cert)})
        assert listed.returncode == 0, listed.stderr
    finally:
        d.terminate()


def test_half_a_tls_configuration_is_refused(tmp_path: Path) -> None:
    from alarmd.config import check_config

    cert, _key = self_signed(tmp_path)
    config = tmp_path / "alarmd.yaml"
    config.write_text(f"api:\n  listen: 127.0.0.1:0\n  tls_cert: {cert}\n")
    [problem] = check_config(config)
    assert "give both tls_cert and tls_key" in str(problem)

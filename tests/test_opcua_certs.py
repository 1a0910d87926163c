"""``plcbridge certs``: the generated application certificate (interop: test_opcua_interop)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from adapters.opcua.certs import generate_certificate


def test_certificate_carries_the_application_uri_and_a_private_key(tmp_path: Path) -> None:
    cert_path, key_path = generate_certificate(tmp_path / "pki", "urn:site:plcbridge",
                                               hostname="edge-1", days=30)
    cert = x509.load_der_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:site:plcbridge"]
    assert names.get_values_for_type(x509.DNSName) == ["edge-1"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days in (29, 30, 31)
    key = load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    cert_path, _ = generate_certificate(tmp_path, "urn:a")
    before = cert_path.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        generate_certificate(tmp_path, "urn:b")
    assert cert_path.read_bytes() == before
    generate_certificate(tmp_path, "urn:b", force=True, server=True)
    assert cert_path.read_bytes() != before

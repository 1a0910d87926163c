"""Trusting an OPC UA server's certificate: a folder of trusted certificates, or trust on first use.

Without a check, a secure channel proves only that *someone* holds a key: a machine that took
over the server's address would be accepted. The folder holds DER or PEM certificates; a
certificate the server offers is trusted when one of them has the same SHA-256. With trust on
first use the first certificate a device's server offers is saved as ``<device>.der`` and only
that one is accepted afterwards. A refused certificate is saved under ``rejected/`` so the
operator can inspect it and move it into the folder to trust it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["UntrustedCertificate", "check_server_certificate", "first_certificate"]

log = logging.getLogger("plcbridge.opcua")


class UntrustedCertificate(Exception):
    pass


def first_certificate(chain: bytes) -> bytes:
    """The first DER certificate of a chain (servers may send theirs with its issuers)."""
    if len(chain) < 2 or chain[0] != 0x30:
        raise UntrustedCertificate("the server offered no certificate")
    size = chain[1]
    if size < 0x80:
        return chain[:2 + size]
    count = size & 0x7F
    length = int.from_bytes(chain[2:2 + count], "big")
    return chain[:2 + count + length]


def _fingerprints(folder: Path) -> set[str]:
    found = set()
    for path in folder.iterdir():
        if not path.is_file() or path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        data = path.read_bytes()
        try:
            cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                    else x509.load_der_x509_certificate(data))
        except ValueError:
            log.warning("not a certificate, ignored file=%s", path)
            continue
        found.add(hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest())
    return found


def check_server_certificate(folder: Path, device: str, der: bytes, trust_on_first_use: bool) -> None:
    """Raise UntrustedCertificate unless ``der`` is trusted for ``device`` (see module doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(der).hexdigest()
    if digest in _fingerprints(folder):
        return
    own = folder / f"{device}.der"
    if trust_on_first_use and not own.exists():
        own.write_bytes(der)
        log.warning("server certificate trusted on first use device=%s sha256=%s saved=%s",
                    device, digest, own)
        return
    rejected = folder / "rejected" / f"{device}-{digest[:16]}.der"
    rejected.parent.mkdir(exist_ok=True)
    rejected.write_bytes(der)
    changed = " (it differs from the one trusted on first use)" if own.exists() else ""
    raise UntrustedCertificate(
        f"server certificate sha256 {digest[:16]}... is not trusted{changed}; saved as {rejected}: "
        f"move it into {folder} to trust it")

"""``plcbridge certs``: a self-signed OPC UA application certificate and its private key.

OPC UA servers check that the certificate's subjectAltName URI equals the application URI the
client announces (``application_uri`` in the device config; node-opcua refuses the session
otherwise), so the URI is the one thing that must be right. The certificate is written as DER
(what OPC UA exchanges and what servers put in their trust folders), the key as unencrypted
PKCS#8 PEM readable by its owner only. Existing files are never overwritten unless asked:
replacing a certificate means every server that trusts it must trust the new one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["describe_certificate", "generate_certificate", "load_certificate", "thumbprint"]


def generate_certificate(directory: Path, application_uri: str, *, hostname: str | None = None,
                         name: str = "plcbridge", server: bool = False, days: int = 730,
                         force: bool = False, ips: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``<name>_cert.der`` and ``<name>_key.pem`` into ``directory``; return their paths.

    ``server=True`` makes a server certificate (for ``[opcua_server]``), otherwise a client
    one. ``ips`` go into the subjectAltName too: servers that check the host a client connects
    from (or a client checking a server reached by address) need them. Raises FileExistsError
    when either file exists and ``force`` is false, ValueError for a bad ``ips`` entry."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    addresses: list[x509.GeneralName] = []
    for text in ips:
        try:
            addresses.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            raise ValueError(f"--ip {text!r} is not an IP address") from None
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}_cert.der", directory / f"{name}_key.pem"
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise FileExistsError(f"{path} exists (use --force to replace it)")
    host = hostname or socket.gethostname()
    key = generate_private_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = generate_self_signed_app_certificate(
        key, f"plcbridge@{host}", {"organizationName": "plcbridge"},
        [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host), *addresses], [usage],
        days=days)
    # The key is created 0600 from the start: never briefly world-readable.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path, key_path


def load_certificate(path: Path) -> x509.Certificate:
    """A DER or PEM certificate file. Raises OSError, ValueError."""
    data = path.read_bytes()
    return (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data))


def thumbprint(path: Path) -> str:
    """The SHA-1 thumbprint servers show in their certificate lists (UaExpert, Siemens,
    KEPServerEX): hex pairs with colons. Raises OSError, ValueError."""
    der = load_certificate(path).public_bytes(Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha1(der, usedforsecurity=False).digest())


_KINDS = {"UniformResourceIdentifier": "URI", "DNSName": "DNS", "IPAddress": "IP"}


def describe_certificate(path: Path) -> list[str]:
    """What an operator copies into a server's trust list and checks there: the file, its
    SHA-1 thumbprint, the names (URI, DNS, IP) and the validity."""
    cert = load_certificate(path)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = ", ".join(f"{_KINDS.get(type(n).__name__, type(n).__name__)}:{n.value}" for n in names)
    except x509.ExtensionNotFound:
        alt = "none"
    return [f"certificate {path}", f"  SHA-1 thumbprint {thumbprint(path)}",
            f"  names {alt}",
            f"  valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"]

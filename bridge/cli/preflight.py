"""Pre-flight: what a valid config still needs from this machine, checked before anything starts.

``plcbridge check --live``, ``run --check-only`` and ``run`` call :func:`preflight` after the
config validated and before the Bridge is built, so a data directory that is a file, a TLS key
that is not PEM, a port already taken or a host that does not resolve is a config error (exit 2,
one line naming the key), not a traceback from a half-started bridge that systemd restarts
every few seconds.

It touches the OS (binds and closes sockets, creates and removes a probe file), which is why
plain ``check`` does not run it: a config can be checked on a laptop for a box elsewhere.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
from pathlib import Path

from bridge.config import Config, server_sockets
from bridge.config.loader import MAX_CONFIG_BYTES
from bridge.core.errors import ConfigError
from bridge.core.files import read_text_file

__all__ = ["preflight"]


def preflight(config: Config) -> list[str]:
    """Every problem found, each ``key: message``; empty when the run can start."""
    errors = _check_data_dir(config.storage.data_dir)
    api = config.api
    if api.enabled:
        errors += _check_tls(api.tls_cert, api.tls_key)
        errors += _check_tokens(config)
    secrets = [("opcua_server.password_file", config.opcua_server.password_file)]
    if config.mqtt is not None:
        secrets.append(("mqtt.password_file", config.mqtt.password_file))
    for key, path in secrets:
        if path is not None:
            errors += _read_text(key, path)[1]
    for section, host, port in server_sockets(config):
        errors += _check_listen(section, host, port)
    return errors


def _read_text(key: str, path: Path) -> tuple[str, list[str]]:
    """The file's text, or the reason it cannot be used (``bridge.core.files``: a regular
    file, bounded, UTF-8), so a FIFO or a binary file cannot hang the start."""
    try:
        return read_text_file(key, path, MAX_CONFIG_BYTES), []
    except ValueError as exc:
        return "", [str(exc)]


def _check_data_dir(path: Path | None) -> list[str]:
    """The data directory exists or can be created, and a file can be created in it. What the
    probe creates is removed again: checking must not leave folders behind."""
    if path is None:
        return []
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        if path.exists() and not path.is_dir():
            return [f"storage.data_dir: {path} is not a directory"]
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return [f"storage.data_dir: {path} is not a writable directory ({exc.strerror or exc})"]
    finally:
        for created in missing:
            with contextlib.suppress(OSError):
                created.rmdir()
    return []


def _check_tls(cert: Path | None, key: Path | None) -> list[str]:
    """Both files PEM and a matching pair: uvicorn loads them only once the bridge is up."""
    if cert is None or key is None:
        return []
    cert_text, errors = _read_text("api.tls_cert", cert)
    key_text, key_errors = _read_text("api.tls_key", key)
    errors += key_errors
    if not errors and "-----BEGIN CERTIFICATE-----" not in cert_text:
        errors.append(f"api.tls_cert: {cert}: not a PEM certificate (no BEGIN CERTIFICATE)")
    if not errors and "PRIVATE KEY-----" not in key_text:
        errors.append(f"api.tls_key: {key}: not a PEM private key (no BEGIN ... PRIVATE KEY)")
    if not errors and "ENCRYPTED" in key_text:
        # uvicorn would prompt for its password on a terminal that a service does not have.
        errors.append(f"api.tls_key: {key}: an encrypted key is not supported (no password key)")
    if errors:
        return errors
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password: should an encrypted key get past the test above, it fails here
        # instead of prompting.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        return [f"api.tls_key: {key} with {cert}: cannot be loaded "
                f"({getattr(exc, 'reason', None) or exc})"]
    return []


def _check_tokens(config: Config) -> list[str]:
    api = config.api
    if api.tokens_file is not None:
        errors = _read_text("api.tokens_file", api.tokens_file)[1]
        if errors:
            return errors
    from bridge.api.auth import load_tokens  # the one parser of the format

    try:
        load_tokens(api.tokens_file, api.tokens_env)
    except ConfigError as exc:
        return list(exc.errors)
    return []


def _check_listen(section: str, host: str, port: int) -> list[str]:
    """The host resolves and the port can be bound (then released at once). SO_REUSEADDR as
    asyncio and uvicorn set it: a socket in TIME_WAIT from the last run is no clash."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        return [f"{section}.host: {host!r} does not resolve ({getattr(exc, 'strerror', None) or exc})"]
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1)
    except OSError as exc:
        return [f"{section}.port: cannot listen on {host}:{port} ({exc.strerror or exc})"]
    return []

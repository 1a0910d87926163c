"""Real asyncua servers on free loopback ports for the OPC UA adapter tests.

A server runs in the test's own event loop (asyncua is asyncio-native): ``stop()`` closes its
listening socket and every session, exactly like a server process going away, and ``start()``
binds the same port again. Ports are picked by binding port 0 and closing the socket (asyncua
does not report the port it bound to); a start that loses the race retries on a new port.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from adapters.opcua.session import stop_server
from bridge.core.tags import Quality, Reading

NS_URI = "urn:plcbridge:test"
GUID = uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")
CLIENT_URI = "urn:plcbridge:client"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def make_cert(directory: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed application certificate (DER) and its key (PEM) for ``uri``."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}_key.pem", directory / f"{name}_cert.der"
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    await cert_gen.setup_self_signed_certificate(key, cert, uri, socket.gethostname(), use, {})
    return cert, key


class _Users:
    """Users by name and password, and users by certificate (DER bytes that must match)."""

    def __init__(self, users: dict[str, str], certificates: list[bytes]) -> None:
        self.users = users
        self.certificates = certificates

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User)
        if certificate is not None:
            der = certificate if isinstance(certificate, bytes) else \
                certificate.public_bytes(serialization.Encoding.DER)
            if der in self.certificates:
                return User(role=UserRole.User)
        return None


@dataclass
class OpcuaTestServer:
    """Variables: ``ns=N;s=Pump1.Pressure``, ``ns=N;s=Pump1.Flow``, ``ns=N;i=1001`` (Running,
    bool), ``ns=N;g=<GUID>`` (Temperature); writable ``Bridge.Score`` (Float),
    ``Bridge.Anomaly`` (Boolean), ``Bridge.Heartbeat`` (UInt16) and read-only
    ``Bridge.ReadOnly``; plus ``extra`` numbered ``ns=N;s=Bulk.<i>``. Browse names are the
    short names (``N:Pump1/N:pressure``); ``prefix`` changes the string NodeIds, as a server
    that renumbers its nodes after a restart would."""

    port: int = 0
    users: dict[str, str] | None = None
    security: tuple[Path, Path] | None = None  # server cert, key: secure endpoints only
    extra: int = 0
    user_certificates: list[Path] | None = None  # certificate user identities accepted
    prefix: str = ""
    server: Server | None = None
    ns: int = 2
    nodes: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/plc"

    def node_id(self, name: str) -> str:
        node = self.nodes[name]
        return str(node.nodeid.to_string())

    async def start(self) -> OpcuaTestServer:
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            try:
                await self._start_once()
                break
            except OSError:
                self.port = 0  # lost the race for the port: take another
        else:
            raise RuntimeError("no free port for the OPC UA test server")
        await self.wait_ready()
        return self

    async def _start_once(self) -> None:
        certificates = [p.read_bytes() for p in self.user_certificates or []]
        identified = self.users is not None or self.user_certificates is not None
        server = Server(user_manager=_Users(self.users or {}, certificates) if identified else None)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("plcbridge test server")
        tokens: list[type] = []
        if self.users is not None:
            tokens.append(ua.UserNameIdentityToken)
        if self.user_certificates is not None:
            tokens.append(ua.X509IdentityToken)
        if tokens:
            server.set_identity_tokens(tokens)
        if self.security is not None:
            await server.load_certificate(str(self.security[0]))
            await server.load_private_key(str(self.security[1]))
            server.set_security_policy([
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
            ])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.ns = await server.register_namespace(NS_URI)
        objects = server.nodes.objects
        pump = await objects.add_object(ua.NodeId("Pump1", self.ns), f"{self.ns}:Pump1")
        stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        specs: list[tuple[str, ua.NodeId, Any, ua.VariantType]] = [
            ("pressure", ua.NodeId(f"{self.prefix}Pump1.Pressure", self.ns), 4.25, ua.VariantType.Double),
            ("flow", ua.NodeId(f"{self.prefix}Pump1.Flow", self.ns), 12, ua.VariantType.Int32),
            ("running", ua.NodeId(1001, self.ns), True, ua.VariantType.Boolean),
            ("temperature", ua.NodeId(GUID, self.ns), 41.5, ua.VariantType.Float),
        ]
        writable = [
            ("score", ua.NodeId("Bridge.Score", self.ns), 0.0, ua.VariantType.Float),
            ("anomaly", ua.NodeId("Bridge.Anomaly", self.ns), False, ua.VariantType.Boolean),
            ("heartbeat", ua.NodeId("Bridge.Heartbeat", self.ns), 0, ua.VariantType.UInt16),
            ("readonly", ua.NodeId("Bridge.ReadOnly", self.ns), 0.0, ua.VariantType.Double),
        ]
        specs += writable
        specs += [(f"bulk{i}", ua.NodeId(f"Bulk.{i}", self.ns), float(i), ua.VariantType.Double)
                  for i in range(self.extra)]
        self.nodes = {}
        for name, node_id, value, kind in specs:
            node = await pump.add_variable(node_id, f"{self.ns}:{name}", ua.Variant(value, kind))
            await node.write_value(ua.DataValue(ua.Variant(value, kind), SourceTimestamp=stamp,
                                                ServerTimestamp=stamp))
            self.nodes[name] = node
        for name, *_ in writable[:3]:
            await self.nodes[name].set_writable()
        await server.start()
        self.server = server

    async def wait_ready(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def set(self, name: str, value: Any, *, status: int = ua.StatusCodes.Good,
                  source_time: datetime | None = None) -> None:
        node = self.nodes[name]
        kind = await node.read_data_type_as_variant_type()
        await node.write_value(ua.DataValue(
            ua.Variant(value, kind), StatusCode=ua.StatusCode(status),
            SourceTimestamp=source_time or datetime.now(UTC), ServerTimestamp=datetime.now(UTC)))

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await stop_server(server)
        # Sessions whose client vanished outlive Server.stop() (they wait for their session
        # timeout to allow a reconnect): a stopped process would not keep them, neither do we.
        leftovers = [t for t in asyncio.all_tasks() if not t.done() and _is_server_task(t)]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=2.0)


def _is_server_task(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "asyncua/server/" in code.co_filename.replace("\\", "/")


class Collected:
    """An ``on_readings`` callback for subscribe-mode adapters: keeps every Reading pushed."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def __call__(self, readings: list[Reading]) -> None:
        self.readings.extend(readings)

    def latest(self, tag: str) -> Reading | None:
        return next((r for r in reversed(self.readings) if r.tag == tag), None)

    def values(self, tag: str) -> list[Any]:
        return [r.value for r in self.readings if r.tag == tag and r.quality is Quality.GOOD]


class FreezableProxy:
    """A TCP relay in front of a server. ``frozen = True`` makes it a black hole: connections
    stay open and bytes are swallowed, like a server process stopped with SIGSTOP."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink), name="test-proxy-pump")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.frozen:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()

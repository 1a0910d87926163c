"""plcbridge's own OPC UA server: a Sink that serves scores and device health to SCADA.

Address space (namespace ``namespace_uri``; clients should resolve its index by URI):

    Objects/plcbridge/Models/<model>/  Score (Double), Threshold (Double), Anomaly (Boolean),
                                       WindowValid (Boolean), Version (String)
    Objects/plcbridge/Devices/<device>/ Connected (Boolean), LastSuccess (DateTime),
                                       ErrorCount (UInt32)

NodeIds are strings that never depend on config order: ``ns=<i>;s=Models.<model>.Score``,
``ns=<i>;s=Devices.<device>.Connected``; a SCADA project that points at them survives edits.

``on_score`` only records the Score and wakes one named task: asyncua's server-side writes
are coroutines (they run the subscriptions' change callbacks), and ``on_score`` must never
await. The same task refreshes the device nodes every ``refresh_interval``. A Score that was
not computed (invalid window) is published as NaN with status ``BadNoData`` and its reason
is not lost: it stays on ``/api/v1/models/<name>/score``. Every node is read-only for clients
(AccessLevel CurrentRead): asyncua answers a Write with ``BadUserAccessDenied``.

Hostile clients (issue 14): asyncua buffers whatever a chunk header announces (2 GiB) before
it looks at any limit, keeps up to 1,000 connections and 100 MB messages, and logs each
refusal (a refused Write is an ERROR). The guards are all in the section "hostile clients"
below, the one place this module reaches into asyncua's internals: ``_GuardedProtocol``
checks every chunk header against the pre-Hello cap or the negotiated receive buffer before
anything is buffered and evicts the oldest connection without a session when full; the
server's transport limits are lowered to ``max_message_size``; ``_AsyncuaNoise`` turns
asyncua's per-client log lines into one summary a minute.

Alarms & Conditions (``alarms = true``, adapters/opcua/alarms.py): one AlarmConditionType
condition per model, ``Models.<model>.Alarm``, reached from the model's folder by HasCondition;
its events (anomaly start and end, acknowledgement) come through the Server object and the
model's folder. ``on_score`` only queues the transition; the update task sends it after the
scores, so an event never delays or breaks a score update.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncua.server.server as asyncua_server
from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.opcua.alarms import Alarms, CallerRuleset
from adapters.opcua.session import stop_server
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.core.aio import cancel_and_wait
from bridge.core.errors import ConfigError
from bridge.core.files import read_text_file
from bridge.core.scores import Score
from bridge.ports import BridgeView, SinkBase

__all__ = ["OpcuaServerSink", "free_tcp_port"]

log = logging.getLogger("plcbridge.opcua_server")

_POLICIES: dict[tuple[str, str], ua.SecurityPolicyType] = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"):
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"):
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
_MODEL_VARIABLES: tuple[tuple[str, ua.VariantType, Any], ...] = (
    ("Score", ua.VariantType.Double, math.nan),
    ("Threshold", ua.VariantType.Double, math.nan),
    ("Anomaly", ua.VariantType.Boolean, False),
    ("WindowValid", ua.VariantType.Boolean, False),
    ("Version", ua.VariantType.String, ""),
)
_DEVICE_VARIABLES: tuple[tuple[str, ua.VariantType, Any], ...] = (
    ("Connected", ua.VariantType.Boolean, False),
    ("LastSuccess", ua.VariantType.DateTime, None),
    ("ErrorCount", ua.VariantType.UInt32, 0),
)


class _Users(UserManager):
    """asyncua user manager: the configured user, and anonymous when allowed. Never an
    admin: nobody gets write access to the address space.

    On a secure endpoint it also vets the secure channel the session is activated on.
    asyncua does not: it accepts a SecurityPolicy#None channel from anyone (GetEndpoints
    needs one) and then creates and activates sessions on it although no None endpoint is
    offered, and its certificate validator sees only the certificate a client *claims* in
    CreateSession (and is skipped when that is empty), not the one that signs the channel."""

    def __init__(self, config: OpcuaServerConfig, password: str | None,
                 trusted: set[bytes] | None) -> None:
        self._username = config.username
        self._password = password
        self._anonymous = config.allow_anonymous
        self._secure = config.security_policy != "None"
        self._trusted = trusted

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        # ``certificate`` is the secure channel's client certificate (DER; b"" on a
        # SecurityPolicy#None channel), not a user identity: X509 identity tokens are not
        # offered, so no username means an anonymous token.
        if self._secure and not certificate:
            log.warning("session refused: unsecured channel on a secure endpoint user=%s", username)
            raise ServiceError(ua.StatusCodes.BadSecurityModeRejected)
        if self._secure and self._trusted is not None and certificate not in self._trusted:
            log.warning("session refused: channel certificate not in trusted_clients user=%s",
                        username)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        if username is None:
            return User(role=UserRole.User) if self._anonymous else None
        if (username is not None and username == self._username and password is not None
                and self._password is not None
                and hmac.compare_digest(password.encode(), self._password.encode())):
            return User(role=UserRole.User, name=username)
        return None


def _password(config: OpcuaServerConfig) -> str | None:
    if config.username is None:
        return None
    if config.password_env is not None:
        value = os.environ.get(config.password_env)
        if value is None:
            raise ConfigError([f"opcua_server.password_env: environment variable "
                               f"{config.password_env} is not set"])
        return value
    assert config.password_file is not None
    try:
        return read_text_file("opcua_server.password_file", config.password_file).rstrip("\r\n")
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None


def _load_trusted(folder: Path) -> set[bytes]:
    """DER bytes of every certificate (DER or PEM) in ``folder``."""
    trusted: set[bytes] = set()
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        raise ConfigError([f"opcua_server.trusted_clients: cannot read {folder} "
                           f"({exc.strerror or exc})"]) from None
    for path in files:
        data = path.read_bytes()
        try:
            cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data))
        except ValueError:
            log.warning("not a certificate, ignored path=%s", path)
            continue
        trusted.add(cert.public_bytes(Encoding.DER))
    return trusted


# -- hostile clients ------------------------------------------------------------------------

# A Hello is 32 bytes and an endpoint URL of at most 4096 (Part 6 7.1.2.3): nothing longer
# comes before the limits are negotiated.
PRE_HELLO_MAX = 8192
_SUMMARY_EVERY = 60.0


@dataclass(frozen=True)
class _Guard:
    max_connections: int


class _GuardedProtocol(OPCUAProtocol):
    """asyncua's connection protocol with limits checked before data is buffered."""

    guard: _Guard  # set per server by _GuardedBinaryServer
    _hello_seen = False
    _made_at = 0.0
    _evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.clients) >= self.guard.max_connections:
            # Full: close the oldest connection that has no activated session (a SCADA
            # client with a session is never the one to go), else refuse this one.
            idle = [c for c in self.clients if isinstance(c, _GuardedProtocol) and not c._evicted
                    and (c.processor is None or c.processor.session is None
                         or not c.processor.session.is_activated())]
            _NOISE.count("over_max_connections")
            if not idle:
                transport.abort()  # type: ignore[attr-defined]
                return
            victim = min(idle, key=lambda c: c._made_at)
            victim._evicted = True
            self.clients.remove(victim)  # at once: the next accept must not count it
            if victim.transport is not None:
                victim.transport.abort()
        self._made_at = time.monotonic()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # refused or closed: nothing more is kept
        reason = self._oversized(self._buffer + data)
        if reason is not None:
            _NOISE.count(reason)
            self._buffer = b""
            self.transport.abort()
            return
        super().data_received(data)

    def _oversized(self, pending: bytes) -> str | None:
        """Why the chunks in ``pending`` (starting at a chunk boundary, as asyncua keeps its
        buffer) may not be buffered, or None. Each header's size is checked before its body."""
        offset = 0
        while len(pending) - offset >= 8:
            size = int.from_bytes(pending[offset + 4 : offset + 8], "little")
            if not self._hello_seen:
                limit, reason = PRE_HELLO_MAX, "oversized_pre_hello_chunk"
            else:
                assert self.processor is not None
                limit, reason = self.processor._limits.max_recv_buffer, "oversized_chunk"
            if size < 8 or size > limit:
                return reason
            if pending[offset : offset + 3] == b"HEL":
                self._hello_seen = True
            offset += size
        return None


class _GuardedBinaryServer(BinaryServer):
    def _make_protocol(self) -> OPCUAProtocol:
        guard = getattr(self.iserver, "plcbridge_guard", None)
        if guard is None:  # another asyncua server started meanwhile: as asyncua made it
            return super()._make_protocol()
        protocol = _GuardedProtocol(iserver=self.iserver, policies=self._policies,
                                    clients=self.clients, closing_tasks=self.closing_tasks,
                                    limits=self.limits)
        protocol.guard = guard
        return protocol


@contextlib.contextmanager
def _guarded_start() -> Iterator[None]:
    """asyncua's ``Server.start`` builds its ``BinaryServer`` by module name and hands its
    protocol factory to the event loop: the only hook is that name, swapped for the start.
    A server without ``iserver.plcbridge_guard`` still gets asyncua's own protocol."""
    original = asyncua_server.BinaryServer
    asyncua_server.BinaryServer = _GuardedBinaryServer  # type: ignore[misc]
    try:
        yield
    finally:
        asyncua_server.BinaryServer = original  # type: ignore[misc]


class _AsyncuaNoise(logging.Filter):
    """Counts asyncua's per-client log lines (refused writes, malformed or oversized
    messages, refused connections, with their tracebacks) instead of letting each through,
    and logs one summary at most every minute. Installed on asyncua's server-side loggers."""

    LOGGERS = ("asyncua.server.uaprocessor", "asyncua.server.binary_server_asyncio",
               "asyncua.common.connection")

    def __init__(self) -> None:
        super().__init__()
        self._counts: Counter[str] = Counter()
        self._last = -math.inf
        self.total: Counter[str] = Counter()

    def install(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = str(record.msg).split(":")[0].split("%")[0].strip()[:60]
        if record.args and "service fault" in kind:  # name the status: BadUserAccessDenied
            kind = f"{kind} {record.args[-1]}"  # type: ignore[index]
        self.count(kind)
        return False

    def count(self, reason: str) -> None:
        self._counts[reason] += 1
        self.total[reason] += 1
        if time.monotonic() - self._last >= _SUMMARY_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._counts:
            log.warning("opcua server refused or dropped client input (%s; next summary in "
                        "%.0f s at most)", "; ".join(f"{k}: {n}" for k, n in sorted(self._counts.items())),
                        _SUMMARY_EVERY)
            self._counts.clear()
        self._last = time.monotonic()


_NOISE = _AsyncuaNoise()


def free_tcp_port(host: str) -> int:
    """A port that was free a moment ago (bind 0, close)."""
    # asyncua advertises the configured port in its endpoints; with port 0 that would be
    # "opc.tcp://host:0". Pick the port first so the endpoints name the real one.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _data_value(value: Any, kind: ua.VariantType, status: int = ua.StatusCodes.Good,
                source_time: datetime | None = None) -> ua.DataValue:
    now = datetime.now(UTC)
    variant = ua.Variant(value, kind) if value is not None else ua.Variant()  # null: no value
    return ua.DataValue(variant, StatusCode=ua.StatusCode(ua.UInt32(status)),
                        SourceTimestamp=source_time or now, ServerTimestamp=now)  # type: ignore[arg-type]


class OpcuaServerSink(SinkBase):
    """Serves the bridge's Scores and device health over OPC UA. ``port`` is the bound port
    once started (``port = 0`` in the config picks a free one)."""

    name = "opcua_server"

    def __init__(self, config: OpcuaServerConfig) -> None:
        self.config = config
        self.port: int | None = None
        self._password = _password(config)  # a missing env var fails at construction, as MQTT
        self._trusted = _load_trusted(config.trusted_clients) if config.trusted_clients else None
        self._view: BridgeView | None = None
        self._models: frozenset[str] = frozenset()  # the nodes built at start
        self._server: Server | None = None
        self._ns = 0
        self._pending: dict[str, Score] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.alarms: Alarms | None = None  # built at start when config.alarms

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.config.host}:{self.port}/plcbridge"

    def node_id(self, path: str) -> ua.NodeId:
        """NodeId of e.g. ``Models.pump.Score`` in the results namespace."""
        return ua.NodeId(ua.String(path), ua.Int16(self._ns))

    def _qname(self, name: str) -> ua.QualifiedName:
        # Browse names in the results namespace, so Objects/<ns>:plcbridge/... resolves.
        return ua.QualifiedName(name, ua.UInt16(self._ns))

    # -- Sink -----------------------------------------------------------------------------

    def on_score(self, score: Score) -> None:
        if score.model not in self._models:
            return
        self._pending[score.model] = score  # only the latest matters to a subscriber
        if self.alarms is not None:  # but every anomaly start and end is an alarm event
            self.alarms.observe(score)
        self._wake.set()

    async def start(self, view: BridgeView) -> None:
        self._view = view
        self._models = frozenset(view.models())
        port = self.config.port
        for attempt in range(5):
            self.port = port or free_tcp_port(self.config.host)
            try:
                self._server = await self._make_server()
                break
            except OSError:
                if port or attempt == 4:  # a configured port that is taken is the operator's
                    raise
        self._task = asyncio.create_task(self._run(), name="plcbridge[opcua_server].update")
        log.info("opcua server listening endpoint=%s security=%s/%s anonymous=%s models=%d "
                 "devices=%d", self.url, self.config.security_policy,
                 self.config.effective_security_mode, self.config.allow_anonymous,
                 len(self._models), len(view.devices()))

    async def stop(self) -> None:
        """Stop updating and serving; close client sessions. Idempotent."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        server, self._server = self._server, None
        if server is not None:
            await stop_server(server)
        _NOISE.flush()

    @property
    def refusals(self) -> dict[str, int]:
        """Counts of refused or dropped client input since the process started (all servers)."""
        return dict(_NOISE.total)

    # -- the address space ----------------------------------------------------------------

    async def _make_server(self) -> Server:
        config = self.config
        server = Server(user_manager=_Users(config, self._password, self._trusted))
        await server.init()
        # Transport limits before any client: chunks of at most 64 KiB (asyncua's default),
        # messages of at most max_message_size (asyncua: 100 MB), connections and the seconds
        # a connection may go without an activated session.
        server.limits.max_message_size = config.max_message_size
        server.limits.max_chunk_count = math.ceil(config.max_message_size / server.limits.max_recv_buffer)
        server.iserver.max_connections = config.max_connections
        server.iserver.max_pending_activation_seconds = config.activation_timeout
        server.iserver.max_pending_messages_per_connection = 32
        server.iserver.plcbridge_guard = _Guard(config.max_connections)  # type: ignore[attr-defined]
        _NOISE.install()
        # No session transfer to a new secure channel (Part 4 6.7): asyncua binds the session
        # named by an AuthenticationToken (sequential, guessable) to the new connection before
        # the ActivateSession is vetted, and keeps it bound after a refusal, so any channel,
        # a None one included, could read through a trusted client's session. A client whose
        # channel broke creates a new session instead (plcbridge's own client always does).
        server.iserver.lookup_external_session = lambda auth_token: None  # type: ignore[method-assign]
        server.set_endpoint(self.url)
        server.set_server_name("plcbridge")
        await server.set_application_uri(config.application_uri)
        server.allow_remote_admin(False)
        tokens: list[type] = [ua.AnonymousIdentityToken] if config.allow_anonymous else []
        if config.username is not None:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        # asyncua's permission rules, unchanged; the ruleset also notes the caller of a
        # method for the alarms' Acknowledge (adapters/opcua/alarms.py).
        if config.security_policy == "None":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity], CallerRuleset())
        else:
            assert config.certificate is not None and config.private_key is not None
            await server.load_certificate(str(config.certificate))
            await server.load_private_key(str(config.private_key))
            server.set_security_policy(
                [_POLICIES[(config.security_policy, config.effective_security_mode)]],
                CallerRuleset())
            if self._trusted is not None:
                server.set_certificate_validator(self._validate_client)
        self._ns = await server.register_namespace(config.namespace_uri)
        await self._build(server)
        try:
            with _guarded_start():
                await server.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        return server

    async def _validate_client(self, cert: x509.Certificate,
                               description: ua.ApplicationDescription) -> None:
        """Only client certificates found in ``trusted_clients`` open a session."""
        der = cert.public_bytes(Encoding.DER)
        if self._trusted is None or der not in self._trusted:
            log.warning("client certificate not trusted application_uri=%s subject=%s",
                        description.ApplicationUri, cert.subject.rfc4514_string())
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async def _build(self, server: Server) -> None:
        view = self._view
        assert view is not None
        models = view.models()
        root = await server.nodes.objects.add_folder(self.node_id("plcbridge"), self._qname("plcbridge"))
        for kind, names, variables in (("Models", list(models), _MODEL_VARIABLES),
                                       ("Devices", list(view.devices()), _DEVICE_VARIABLES)):
            folder = await root.add_folder(self.node_id(kind), self._qname(kind))
            for name in names:
                item = await folder.add_folder(self.node_id(f"{kind}.{name}"), self._qname(name))
                for variable, vtype, initial in variables:
                    # add_variable leaves AccessLevel at CurrentRead: read-only for clients.
                    await item.add_variable(self.node_id(f"{kind}.{name}.{variable}"), self._qname(variable),
                                            ua.Variant(initial, vtype), varianttype=vtype)
        if self.config.alarms:
            self.alarms = Alarms(self.config, self.node_id, self._qname, _NOISE.count)
            await self.alarms.build(server, models)
        for name, model in models.items():
            latest = view.latest_score(name)
            if latest is not None:
                self._pending[name] = latest
                if self.alarms is not None:  # an anomaly already on is an active alarm
                    self.alarms.observe(latest)
            else:  # the threshold and version are known before the first score
                await self._write(server, f"Models.{name}.Threshold", model.threshold,
                                  ua.VariantType.Double)
                await self._write(server, f"Models.{name}.Version", model.version,
                                  ua.VariantType.String)
                await self._write(server, f"Models.{name}.Score", None, ua.VariantType.Double,
                                  ua.StatusCodes.BadWaitingForInitialData)
        await self._refresh_devices(server)

    async def _write(self, server: Server, path: str, value: Any, kind: ua.VariantType,
                     status: int = ua.StatusCodes.Good, source_time: datetime | None = None) -> None:
        await server.write_attribute_value(self.node_id(path),
                                           _data_value(value, kind, status, source_time))

    # -- updates ----------------------------------------------------------------------------

    async def _publish_score(self, server: Server, score: Score) -> None:
        base = f"Models.{score.model}"
        when = datetime.fromtimestamp(score.time, UTC)
        if score.score is None or not math.isfinite(score.score):
            await self._write(server, f"{base}.Score", None, ua.VariantType.Double,
                              ua.StatusCodes.BadNoData, when)
        else:
            await self._write(server, f"{base}.Score", score.score, ua.VariantType.Double,
                              source_time=when)
        await self._write(server, f"{base}.Threshold", score.threshold, ua.VariantType.Double,
                          source_time=when)
        await self._write(server, f"{base}.Anomaly", score.anomaly, ua.VariantType.Boolean,
                          source_time=when)
        await self._write(server, f"{base}.WindowValid", score.window_valid,
                          ua.VariantType.Boolean, source_time=when)
        await self._write(server, f"{base}.Version", score.version, ua.VariantType.String,
                          source_time=when)

    async def _refresh_devices(self, server: Server) -> None:
        view = self._view
        assert view is not None
        for name, status in view.devices().items():
            base = f"Devices.{name}"
            await self._write(server, f"{base}.Connected", status.connected, ua.VariantType.Boolean)
            if status.last_success is not None:
                await self._write(server, f"{base}.LastSuccess",
                                  datetime.fromtimestamp(status.last_success, UTC),
                                  ua.VariantType.DateTime)
            else:
                await self._write(server, f"{base}.LastSuccess", None, ua.VariantType.DateTime,
                                  ua.StatusCodes.BadWaitingForInitialData)
            await self._write(server, f"{base}.ErrorCount", min(status.error_count, 2**32 - 1),
                              ua.VariantType.UInt32)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.config.refresh_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_refresh - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            server = self._server
            if server is None:
                continue
            try:
                pending, self._pending = self._pending, {}
                for score in pending.values():
                    await self._publish_score(server, score)
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + self.config.refresh_interval
                    await self._refresh_devices(server)
            except Exception:  # a bug here must not take the server down; log it each time
                log.exception("opcua server update failed")
            if self.alarms is not None:
                try:  # after the scores, apart from them: an event fault never costs a score
                    await self.alarms.send_pending()
                except Exception:
                    log.exception("opcua alarm event failed")


"""OPC UA client adapter: the only module that talks to asyncua (2.x).

Design choices, and why:

* One asyncua ``Client`` per device and per session. A lost session is never patched up in
  place: the client is torn down (all its tasks cancelled) and a fresh one connects, with
  a fresh subscription and fresh monitored items. Old subscriptions therefore cannot deliver
  late or duplicate notifications, and the server sends an initial value for every monitored
  item of the new subscription, so no change is silently lost across an outage.
* asyncua's own supervisor (``auto_reconnect=False``) is used for detection only: it probes
  the server every ``keepalive_interval`` and reports a closed socket at once; its report
  wakes our reconnect loop. Reconnect timing is ``bridge.core.backoff.Backoff`` (capped,
  jittered), shared with other adapters.
* ``read`` (mode "poll") never raises for device faults: every tag gets a Reading, bad with a
  reason (StatusCode name, "not connected: ...", "timeout"). It reconnects inline, at most
  once per backoff delay, bounded by ``timeout``.
* ``subscribe`` (mode "subscribe") starts one supervisor task that connects, subscribes,
  pushes every data change, pushes bad quality for every tag when the session is lost, and
  resubscribes after reconnect. While the subscription is alive, the latest value of every
  tag is pushed again every ``poll_interval`` (with its original source time): an unchanged
  value on a live subscription is current, and windows must not call it stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent, Subscription
from asyncua.crypto import security_policies
from asyncua.ua.relative_path import RelativePathFormatter

from adapters.opcua.certs import thumbprint
from adapters.opcua.convert import (
    classify_connect_error,
    quality_of,
    reading_from,
    status_name,
    to_value,
)
from adapters.opcua.session import (
    OperationLimits,
    chunks,
    monitored_item_requests,
    read_operation_limits,
    resolve_browse_paths,
    teardown,
)
from adapters.opcua.trust import UntrustedCertificate, check_server_certificate, first_certificate
from adapters.opcua.write import encode_for, variant_type_of
from bridge.config import NodeTarget, OpcuaDeviceConfig
from bridge.config.opcua import NAMESPACE_URI_IN_PATH, path_with_indexes
from bridge.core.backoff import Backoff
from bridge.core.errors import DeviceExceptionError, DeviceTimeoutError, NotConnectedError
from bridge.core.files import read_text_file
from bridge.core.tags import Part, Reading, bad
from bridge.ports import DeviceStatus, OnReadings

__all__ = ["OpcuaAdapter", "OpcuaConnectError", "quality_of", "to_value"]

log = logging.getLogger("plcbridge.opcua")

# asyncua logs every publish at INFO and whole requests at DEBUG, ActivateSession included,
# i.e. the user's password. Unless the operator configured the "asyncua" logger on purpose,
# keep it to warnings and errors.
_asyncua_log = logging.getLogger("asyncua")
if _asyncua_log.level == logging.NOTSET:
    _asyncua_log.setLevel(logging.WARNING)


def _not_a_lost_connection(record: logging.LogRecord) -> bool:
    """asyncua's publish loop logs ERROR with a traceback for every lost connection; the
    adapter logs the outage itself, once."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, ConnectionError | OSError)


logging.getLogger("asyncua.client.ua_session.UaSession").addFilter(_not_a_lost_connection)

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_QUEUE_MAX = 100_000  # subscription events buffered before asyncua forces a reconnect


class OpcuaConnectError(NotConnectedError):
    """A session could not be opened. ``kind`` is one of unreachable, timeout,
    authentication, security, protocol; ``detail`` says what the operator should check."""

    def __init__(self, device: str, kind: str, detail: str) -> None:
        super().__init__(device, detail)
        self.kind = kind


def explain_status(name: str, config: OpcuaDeviceConfig) -> str:
    """What to do about a Bad* StatusCode that refused a session, in the operator's terms
    (empty when there is nothing more to say than its name)."""
    cert = config.certificate
    if name in ("BadSecurityChecksFailed", "BadCertificateUntrusted") and cert is not None:
        try:
            thumb = f" (SHA-1 thumbprint {thumbprint(cert)})"
        except (OSError, ValueError):
            thumb = ""
        return (f"the server has not trusted our certificate: copy {cert}{thumb} into its "
                "trusted list (a server usually puts it under rejected/ first), then connect "
                "again")
    if name == "BadSecurityChecksFailed":
        return "the server refused the secure channel: check security_policy/security_mode " \
               f"with `plcbridge probe opcua {config.endpoint}`"
    if name == "BadCertificateUriInvalid":
        return (f"application_uri {config.application_uri!r} must equal the URI in our "
                f"certificate: `plcbridge certs --application-uri {config.application_uri} --force`")
    if name == "BadCertificateHostNameInvalid":
        return ("the certificate does not name the host the server sees: `plcbridge certs "
                "--ip ADDRESS --force` adds this machine's address")
    if name in ("BadCertificateTimeInvalid", "BadCertificateIssuerTimeInvalid"):
        return "a certificate is expired or not yet valid: check both clocks, or renew it"
    if name in ("BadSecurityPolicyRejected", "BadSecurityModeRejected"):
        return (f"the server does not offer {config.security_policy}/"
                f"{config.effective_security_mode}: `plcbridge probe opcua {config.endpoint}` "
                "lists what it offers")
    if name in ("BadIdentityTokenInvalid", "BadIdentityTokenRejected", "BadUserAccessDenied"):
        return (f"`plcbridge probe opcua {config.endpoint}` lists the user token types the "
                "server accepts")
    if name == "BadTooManySessions":
        return "the server's session limit is reached: close other clients (e.g. UaExpert)"
    return ""


# --------------------------------------------------------------------------- adapter


class OpcuaAdapter:
    """One OPC UA server endpoint."""

    def __init__(self, config: OpcuaDeviceConfig) -> None:
        self.config = config
        self.name = config.name
        self.status = DeviceStatus(config.name)
        # Per tag: its NodeId, or None while its browse path is unresolved (reason in
        # _unresolved). Browse paths are resolved again for every session.
        self._node_ids: list[ua.NodeId | None] = [
            ua.NodeId.from_string(tag.node_id) if tag.node_id is not None else None
            for tag in config.tags]
        # NodeIds and browse paths that name a namespace by URI (``nsu=``, ``{URI}``): the
        # index behind a URI is the server's to choose, so it is looked up on every session.
        self._by_uri = {i: node for i, node in enumerate(self._node_ids)
                        if node is not None and getattr(node, "NamespaceUri", None)}
        self._path_texts = {i: tag.browse_path for i, tag in enumerate(config.tags)
                            if tag.browse_path is not None}
        self._paths = {i: RelativePathFormatter.parse(text).build()
                       for i, text in self._path_texts.items()
                       if not NAMESPACE_URI_IN_PATH.search(text)}
        self._unresolved: dict[int, str] = {i: "browse path not resolved yet" for i in self._path_texts}
        for i in self._by_uri:
            self._node_ids[i] = None
            self._unresolved[i] = "namespace URI not resolved yet"
        self._limits = OperationLimits()
        self._next_resolve = 0.0  # monotonic time of the next try for unresolved browse paths
        self._backoff = Backoff(initial=config.reconnect_min, maximum=config.reconnect_max)
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._on_readings: OnReadings | None = None
        self._lost: asyncio.Event | None = None
        self._attempts = 0
        self._next_attempt = 0.0  # monotonic time before which poll-mode reads do not reconnect
        self._failing = False
        self._closed = False
        self._latest: dict[str, Reading] = {}
        self.sessions = 0  # sessions opened so far (tests and diagnostics)
        self._write_types: dict[str, ua.VariantType | None] = {}  # node -> type, read once

    # ---- session lifecycle

    def _password(self) -> str:
        config = self.config
        if config.password_env is not None:
            value = os.environ.get(config.password_env)
            if value is None:
                raise OpcuaConnectError(self.name, "authentication",
                                        f"environment variable {config.password_env} is not set")
            return value
        assert config.password_file is not None
        try:
            return read_text_file("password_file", config.password_file).rstrip("\r\n")
        except ValueError as exc:
            raise OpcuaConnectError(self.name, "authentication", str(exc)) from None

    async def _open(self) -> None:
        """Open a session (raises OpcuaConnectError). Bounded by about twice ``timeout``."""
        config = self.config
        lost = self._lost = asyncio.Event()
        client = Client(config.endpoint, timeout=config.timeout,
                        watchdog_intervall=config.keepalive_interval)
        client.application_uri = config.application_uri
        client.name = client.description = f"plcbridge {config.name}"
        # A dead client's session should not outlive it on the server for an hour.
        client.session_timeout = max(10_000, int(config.keepalive_interval * 10_000))
        if config.username is not None:
            client.set_user(config.username)
            client.set_password(self._password())
        if config.user_certificate is not None:
            await self._load_user_certificate(client)

        async def on_lost(exc: Exception) -> None:
            log.debug("session lost device=%s error=%r", self.name, exc)
            lost.set()

        client.connection_lost_callback = on_lost
        mode = config.effective_security_mode
        try:
            async with asyncio.timeout(config.timeout * 2):
                if config.security_policy != "None":
                    assert config.certificate is not None and config.private_key is not None
                    await client.set_security(
                        _POLICIES[config.security_policy], str(config.certificate),
                        str(config.private_key),
                        server_certificate=await self._server_certificate(mode),
                        mode=getattr(ua.MessageSecurityMode, mode))
                await client.connect()
                self._limits = await read_operation_limits(client)
                if self._by_uri or len(self._paths) != len(self._path_texts):
                    self._resolve_namespaces(await client.get_namespace_array())
                if self._paths:  # a new session may have renumbered every node: all again
                    self._adopt(await resolve_browse_paths(client, self._paths,
                                                           self._limits.nodes_per_translate))
        except asyncio.CancelledError:
            await teardown(client, 0.0)  # closed while connecting: leave nothing behind
            raise
        except UntrustedCertificate as exc:
            await teardown(client, 0.0)
            raise OpcuaConnectError(self.name, "security", f"{config.endpoint}: {exc}") from None
        except (Exception, TimeoutError) as exc:
            await teardown(client, 0.0)
            identity = ("user_certificate (is it trusted by the server?)"
                        if config.user_certificate is not None
                        else "username and password" if config.username is not None
                        else "the user: the server refuses anonymous sessions")
            kind, detail = classify_connect_error(exc, config.endpoint, config.security_policy, mode,
                                                  identity)
            fix = explain_status(status_name(exc), config)
            raise OpcuaConnectError(self.name, kind, f"{detail}: {fix}" if fix else detail) from None
        self._client = client
        if self.sessions:
            self.status.reconnects += 1
        self.sessions += 1
        self.status.connected = True

    async def _load_user_certificate(self, client: Client) -> None:
        """Certificate user identity (X509IdentityToken): read the files for every session,
        so a renewed certificate is picked up on the next reconnect."""
        config = self.config
        assert config.user_certificate is not None and config.user_private_key is not None
        loaders: tuple[tuple[str, Path, Callable[[Path], Awaitable[None]]], ...] = (
            ("user_certificate", config.user_certificate,
             lambda path: client.load_client_certificate(str(path))),
            ("user_private_key", config.user_private_key, client.load_private_key))
        for key, path, load in loaders:
            try:
                await load(path)
            except (OSError, ValueError, TypeError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise OpcuaConnectError(self.name, "authentication",
                                        f"cannot load {key} {path} ({detail})") from None

    def _resolve_namespaces(self, namespaces: list[str]) -> None:
        """``nsu=`` NodeIds and ``{URI}`` browse paths -> namespace indexes of this session;
        a URI the server does not have leaves its tag bad, with the URI in the reason."""
        for i, node in self._by_uri.items():
            uri = node.NamespaceUri  # type: ignore[attr-defined]
            if uri in namespaces:
                self._node_ids[i] = ua.NodeId(node.Identifier, ua.Int16(namespaces.index(uri)),
                                             node.NodeIdType)
                self._unresolved.pop(i, None)
            else:
                self._node_ids[i] = None
                self._unresolved[i] = f"namespace {uri} is not in the server's namespace array"
        for i, text in self._path_texts.items():
            if not NAMESPACE_URI_IN_PATH.search(text):
                continue
            try:
                self._paths[i] = RelativePathFormatter.parse(path_with_indexes(text, namespaces)).build()
            except KeyError as exc:
                self._paths.pop(i, None)
                self._node_ids[i] = None
                self._unresolved[i] = (f"browse path not resolved: namespace {exc.args[0]} is "
                                       "not in the server's namespace array")

    async def session(self) -> Client:
        """The connected asyncua client (connecting first): for ``plcbridge probe``, which
        browses with the device's own security and identity."""
        await self.connect()
        assert self._client is not None
        return self._client

    def _adopt(self, resolved: dict[int, ua.NodeId | str]) -> list[int]:
        """Take browse-path results (for some or all path tags); warn when the set of failures
        changes. Returns the indexes of tags that resolved and were not resolved before."""
        before = dict(self._unresolved)
        newly = []
        for index, result in resolved.items():
            if isinstance(result, ua.NodeId):
                if self._node_ids[index] is None:
                    newly.append(index)
                self._node_ids[index] = result
                self._unresolved.pop(index, None)
            else:
                self._node_ids[index] = None
                self._unresolved[index] = f"browse path not resolved: {result}"
        # Nodes that appear later (a PLC runtime loading after its OPC UA server) are found
        # by trying again, without waiting for a new session.
        self._next_resolve = time.monotonic() + self.config.reconnect_max
        tags = self.config.tags
        if self._unresolved and self._unresolved != before:
            log.warning("browse paths not resolved device=%s %s", self.name, ", ".join(
                f"{tags[i].name}={tags[i].address} ({reason})"
                for i, reason in self._unresolved.items()))
        if newly and before:
            log.info("browse paths resolved device=%s %s", self.name,
                     ", ".join(f"{tags[i].name}={self._node_ids[i]}" for i in newly))
        return newly

    async def _retry_unresolved(self) -> list[int]:
        """Try the unresolved browse paths again when their time has come; the newly
        resolved tag indexes (raises like any request on a broken session)."""
        if not self._unresolved or time.monotonic() < self._next_resolve:
            return []
        client = self._client
        assert client is not None
        async with asyncio.timeout(self.config.timeout):
            resolved = await resolve_browse_paths(client, {i: self._paths[i] for i in self._unresolved
                                                           if i in self._paths},
                                                  self._limits.nodes_per_translate)
        return self._adopt(resolved)

    async def _server_certificate(self, mode: str) -> str | bytes:
        """The server certificate to talk to: pinned, or offered by the server and checked
        against ``trusted_servers`` (the config requires one of the two with a policy)."""
        config = self.config
        if config.server_certificate is not None:
            return str(config.server_certificate)
        assert config.trusted_servers is not None
        probe = Client(config.endpoint, timeout=config.timeout)
        endpoints = await probe.connect_and_get_server_endpoints()
        endpoint = Client.find_endpoint(endpoints, getattr(ua.MessageSecurityMode, mode),
                                        _POLICIES[config.security_policy].URI)
        der = first_certificate(endpoint.ServerCertificate)
        await asyncio.to_thread(check_server_certificate, config.trusted_servers, self.name, der,
                                config.trust_on_first_use)
        return der

    async def _drop(self, graceful: bool = True) -> None:
        """Forget the session: stop consuming, tear the client down (cancels its tasks).
        ``graceful=False`` (the session is already known lost) skips waiting for CloseSession."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        self._subscription = None
        client, self._client = self._client, None
        self.status.connected = False
        if client is not None:
            await teardown(client, min(self.config.timeout, 2.0) if graceful else 0.0)

    async def connect(self) -> None:
        """Open the session now. Raises OpcuaConnectError (a NotConnectedError) naming the
        device and the cause: unreachable, timeout, authentication, security."""
        if self._client is not None:
            return
        try:
            await self._open()
        except OpcuaConnectError as exc:
            self._failed(exc.kind, f"not connected: {exc.detail}")
            raise
        self._recovered()

    async def close(self) -> None:
        """Stop the subscription supervisor and close the session. Idempotent."""
        self._closed = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        await self._drop()

    # ---- status and logging

    def _failed(self, kind: str, reason: str) -> None:
        """Count a failure; log it once (ERROR), then DEBUG while it lasts."""
        self.status.record_error(kind, reason)
        self.status.connected = self._client is not None and kind not in ("not_connected", "timeout")
        self._attempts += 1
        self._next_attempt = time.monotonic() + self._backoff.delay(self._attempts)
        if not self._failing:
            self._failing = True
            log.error("device failing device=%s endpoint=%s kind=%s reason=%r",
                      self.name, self.config.endpoint, kind, reason)
        else:
            log.debug("device still failing device=%s kind=%s reason=%r", self.name, kind, reason)

    def _recovered(self, latency: float = 0.0) -> None:
        self.status.record_success(latency)
        self._attempts = 0
        self._next_attempt = 0.0
        if self._failing:
            self._failing = False
            log.info("device recovered device=%s endpoint=%s", self.name, self.config.endpoint)

    def _bad_all(self, reason: str) -> list[Reading]:
        now = time.time()
        return [bad(tag.name, reason, received_time=now) for tag in self.config.tags]

    # ---- poll mode

    async def poll(self) -> list[Part]:
        """``read()``: OPC UA values arrive one by one, so there are no columns to gain."""
        return list(await self.read())

    async def read(self) -> list[Reading]:
        """One Reading per tag, in config order, from one batched Read (split to respect the
        server's MaxNodesPerRead). Never raises for device faults."""
        started = time.monotonic()
        if self._client is not None and self._lost is not None and self._lost.is_set():
            await self._drop(graceful=False)  # the keepalive saw it go: reconnect right away
        if self._client is None:
            if started < self._next_attempt:
                reason = self.status.last_error or "not connected"
                self._failed("not_connected", reason)
                return self._bad_all(reason)
            try:
                await self._open()
            except OpcuaConnectError as exc:
                reason = f"not connected: {exc.detail}"
                self._failed(exc.kind, reason)
                return self._bad_all(reason)
        try:
            await self._retry_unresolved()
            values = await self._read_values()
        except (TimeoutError, ConnectionError, OSError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else f"not connected: {exc}"
            await self._drop(graceful=False)
            self._failed("timeout" if isinstance(exc, TimeoutError) else "not_connected", reason)
            return self._bad_all(reason)
        except ua.UaError as exc:
            reason = status_name(exc) or str(exc)
            self._failed("protocol", reason)
            return self._bad_all(reason)
        received = time.time()
        readings = [reading_from(tag, values[i], received) if i not in self._unresolved
                    else bad(tag.name, self._unresolved[i], received_time=received)
                    for i, tag in enumerate(self.config.tags)]
        self._recovered(time.monotonic() - started)
        return readings

    async def _read_values(self) -> dict[int, ua.DataValue]:
        """Tag index -> DataValue for every resolved tag, in Reads of at most
        ``max_nodes_per_read`` (config) and the server's MaxNodesPerRead, the smaller one."""
        client = self._client
        assert client is not None
        ids = [(i, n) for i, n in enumerate(self._node_ids) if n is not None]
        values: list[ua.DataValue] = []
        async with asyncio.timeout(self.config.timeout):
            limits = [n for n in (self.config.max_nodes_per_read, self._limits.nodes_per_read) if n]
            for part in chunks(len(ids), min(limits, default=0)):
                params = ua.ReadParameters()
                params.TimestampsToReturn = ua.TimestampsToReturn.Both
                for position in part:
                    item = ua.ReadValueId()
                    item.NodeId = ids[position][1]
                    item.AttributeId = ua.AttributeIds.Value
                    params.NodesToRead.append(item)
                values.extend(await client.uaclient.read(params))
        if len(values) != len(ids):
            raise ua.UaError(f"asked {len(ids)} values, got {len(values)}")
        return {i: value for (i, _), value in zip(ids, values, strict=True)}

    # ---- subscribe mode

    @property
    def requests_per_poll(self) -> int:
        # One Read service call per poll; splitting by the server's MaxNodesPerRead happens
        # inside it and the whole poll shares one timeout.
        return 1

    async def subscribe(self, on_readings: OnReadings) -> bool:
        """Mode "subscribe": push Readings to ``on_readings`` from now on and return True.
        Mode "poll": return False (the runtime polls ``read``)."""
        if self.config.mode != "subscribe":
            return False
        if self._supervisor is None:
            self._on_readings = on_readings
            self._closed = False
            self._supervisor = asyncio.create_task(self._supervise(),
                                                   name=f"plcbridge[{self.name}].opcua")
        return True

    def _push(self, readings: list[Reading]) -> None:
        for reading in readings:
            self._latest[reading.tag] = reading
        if self._on_readings is not None and readings:
            try:
                self._on_readings(readings)
            except Exception:
                log.exception("on_readings failed device=%s", self.name)

    async def _supervise(self) -> None:
        """Connect, subscribe, watch; on loss push bad quality, back off and start again."""
        config = self.config
        while not self._closed:
            if self._client is None:
                try:
                    await self._open()
                except OpcuaConnectError as exc:
                    reason = f"not connected: {exc.detail}"
                    self._failed(exc.kind, reason)
                    self._push(self._bad_all(reason))
                    await asyncio.sleep(max(0.0, self._next_attempt - time.monotonic()))
                    continue
            started = time.monotonic()
            try:
                await self._start_subscription()
            except (Exception, TimeoutError) as exc:
                reason = f"subscribe failed: {status_name(exc) or exc!r}"
                await self._drop(graceful=False)
                self._failed("subscribe", reason)
                self._push(self._bad_all(reason))
                await asyncio.sleep(max(0.0, self._next_attempt - time.monotonic()))
                continue
            self._recovered(time.monotonic() - started)
            lost = self._lost
            assert lost is not None
            while not lost.is_set():
                try:
                    async with asyncio.timeout(config.poll_interval):
                        await lost.wait()
                except TimeoutError:
                    self._refresh()
                    await self._monitor_late_paths()
            # Bad quality first: tearing down a hung session may take a moment.
            reason = "not connected: session lost"
            self._push(self._bad_all(reason))
            self._failed("not_connected", reason)
            await self._drop(graceful=False)
            await asyncio.sleep(max(0.0, self._next_attempt - time.monotonic()))

    def _refresh(self) -> None:
        """Re-push the latest value of every tag: on a live subscription it is current."""
        now = time.time()
        held = [Reading(r.tag, r.value, r.quality, now, r.source_time, r.reason)
                for r in self._latest.values()]
        self._push(held)

    async def _monitor_late_paths(self) -> None:
        """Subscribe the tags whose browse paths resolve only now. A failure here is left to
        the keepalive: it is logged, the tags stay bad, the next tick tries again."""
        try:
            newly = await self._retry_unresolved()
            if newly:
                async with asyncio.timeout(self.config.timeout):
                    await self._monitor(newly)
        except (Exception, TimeoutError) as exc:
            log.debug("late browse paths not subscribed device=%s error=%r", self.name, exc)

    async def _start_subscription(self) -> None:
        client = self._client
        assert client is not None
        config = self.config
        async with asyncio.timeout(config.timeout * 2):
            subscription = await client.create_subscription(
                config.publishing_interval * 1000, None, queue_maxsize=_QUEUE_MAX,
                overflow=OverflowPolicy.DISCONNECT)
            # The consumer starts before the items exist: initial values follow at once.
            self._subscription = subscription
            self._consumer = asyncio.create_task(self._consume(subscription),
                                                 name=f"plcbridge[{self.name}].opcua.changes")
            await self._monitor([i for i, n in enumerate(self._node_ids) if n is not None])
        now = time.time()
        tags = config.tags
        self._push([bad(tags[i].name, reason, received_time=now)
                    for i, reason in self._unresolved.items()])

    async def _monitor(self, indexes: list[int]) -> None:
        """Monitored items for the tags at ``indexes`` (resolved), in CreateMonitoredItems
        calls of at most the server's MaxMonitoredItemsPerCall; refused items read bad."""
        subscription = self._subscription
        assert subscription is not None
        config = self.config
        sampling_ms = (config.sampling_interval if config.sampling_interval is not None
                       else config.publishing_interval) * 1000
        requests = monitored_item_requests(config, [(i, self._node_ids[i]) for i in indexes],
                                           sampling_ms)
        results: list[object] = []
        for part in chunks(len(requests), self._limits.monitored_items_per_call):
            results += await subscription.create_monitored_items([requests[i] for i in part])
        now = time.time()
        tags = config.tags
        refused = [bad(tags[request.RequestedParameters.ClientHandle - 1].name, result.name,
                        received_time=now)
                    for request, result in zip(requests, results, strict=True)
                    if isinstance(result, ua.StatusCode)]
        if refused:
            log.warning("monitored items refused device=%s %s", self.name,
                        ", ".join(f"{r.tag}={r.reason}" for r in refused))
            self._push(refused)

    async def _consume(self, subscription: Subscription) -> None:
        tags = self.config.tags
        async for event in subscription:
            if isinstance(event, DataChangeEvent):
                handle = event.data.monitored_item.ClientHandle
                if 1 <= handle <= len(tags):
                    self._push([reading_from(tags[handle - 1], event.data.monitored_item.Value,
                                             time.time())])
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if status is not None and not status.is_good():
                    log.debug("subscription status device=%s status=%s", self.name, status.name)
                    if self._lost is not None:
                        self._lost.set()

    # ---- write-back

    async def write(self, target: NodeTarget, value: float) -> None:
        """Write ``value`` to one node ``target``; see write_many."""
        await self.write_many([(target, value)])

    async def write_many(self, items: Sequence[tuple[NodeTarget, float]]) -> None:
        """Write several nodes in one Write request, each value encoded as its node's DataType
        (read once per node and cached) and checked against the target's ``min``/``max``
        Nothing is sent if any value is refused
        (WriteRefusedError). Raises NotConnectedError, DeviceTimeoutError, or
        DeviceExceptionError(code = the StatusCode) for device failures."""
        if not items:
            return
        node_ids: list[ua.NodeId] = []
        for target, _ in items:
            node_ids.append(ua.NodeId.from_string(target.node_id))
        if self._client is None or (self._lost is not None and self._lost.is_set()):
            await self._drop(graceful=False)
            await self._open()  # raises OpcuaConnectError (a NotConnectedError)
        client = self._client
        assert client is not None
        try:
            async with asyncio.timeout(self.config.timeout):
                unknown = list({n.to_string(): n for n in node_ids
                                if n.to_string() not in self._write_types}.values())
                if unknown:
                    types = await client.uaclient.read_attributes(unknown, ua.AttributeIds.DataType)
                    for node_id, data in zip(unknown, types, strict=True):
                        if data.StatusCode is not None and not data.StatusCode.is_good():
                            raise DeviceExceptionError(self.name, int(data.StatusCode.value),
                                                       f"{node_id.to_string()}: "
                                                       f"{data.StatusCode.name}")
                        kind = data.Value.Value if data.Value is not None else None
                        self._write_types[node_id.to_string()] = (
                            variant_type_of(kind) if isinstance(kind, ua.NodeId) else None)
                values = [
                    ua.DataValue(encode_for(f"{self.name} {n.to_string()}",
                                            self._write_types[n.to_string()], value,
                                            target.min, target.max))
                    for n, (target, value) in zip(node_ids, items, strict=True)]
                results = await client.uaclient.write_attributes(node_ids, values,
                                                                 ua.AttributeIds.Value)
        except TimeoutError:
            raise DeviceTimeoutError(self.name, "write") from None
        except (ConnectionError, OSError) as exc:
            await self._drop(graceful=False)
            raise NotConnectedError(self.name, str(exc)) from None
        except ua.UaStatusCodeError as exc:
            raise DeviceExceptionError(self.name, int(exc.code), status_name(exc)) from None
        for node_id, result in zip(node_ids, results, strict=True):
            if not result.is_good():
                raise DeviceExceptionError(self.name, int(result.value),
                                           f"{node_id.to_string()}: {result.name}")

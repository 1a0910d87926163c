"""The OPC UA server sink: a bridge on the simulated plant serves its results over OPC UA.

Both the plant and the bridge run ``SPEED`` times faster than real time (as in test_e2e);
an asyncua client subscribes to the sink like a SCADA would.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.client.ua_client import UaClient
from pydantic import ValidationError

from adapters.opcua.server import OpcuaServerSink
from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.cli.demo import demo_config
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.core.errors import ConfigError
from bridge.runtime.bridge import Bridge
from tests.opcua_servers import CLIENT_URI, free_port, make_cert
from tests.waiting import until

SPEED = 10.0
NS_URI = "urn:plcbridge:results"
pytestmark = pytest.mark.timeout(60)


def sink_config(**options: Any) -> OpcuaServerConfig:
    return OpcuaServerConfig.model_validate({"enabled": True, "port": 0, "refresh_interval": 0.1,
                                             **options})


@pytest_asyncio.fixture
async def plant() -> AsyncIterator[tuple[SimulatorHandle, Bridge]]:
    sim = await start_simulator("127.0.0.1", 0, seed=11, step=0.01, speed=SPEED)
    bridge = Bridge(demo_config(sim.port, api_port=0), speed=SPEED)
    try:
        yield sim, bridge
    finally:
        await bridge.stop()
        await sim.stop()


async def started(bridge: Bridge, config: OpcuaServerConfig) -> OpcuaServerSink:
    sink = OpcuaServerSink(config)
    bridge.sinks.append(sink)
    await bridge.start()
    return sink


class Changes:
    """asyncua subscription handler: every Score change the server sends."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.values.append(value)


async def test_scada_subscribes_to_score_and_reads_results(
        plant: tuple[SimulatorHandle, Bridge]) -> None:
    _, bridge = plant
    sink = await started(bridge, sink_config())
    async with Client(sink.url, timeout=5) as client:
        ns = await client.get_namespace_index(NS_URI)
        objects = client.nodes.objects
        score = await objects.get_child([f"{ns}:plcbridge", f"{ns}:Models", f"{ns}:pump",
                                         f"{ns}:Score"])
        assert score.nodeid == ua.NodeId("Models.pump.Score", ns)  # browse path = stable NodeId
        changes = Changes()
        subscription = await client.create_subscription(20, changes)
        await subscription.subscribe_data_change(score)

        def served_latest() -> bool:
            latest = bridge.scores.latest("pump")
            return (latest is not None and latest.score is not None and bool(changes.values)
                    and changes.values[-1] == latest.score)

        await until(served_latest, 20, "the bridge's latest score on the subscription")
        distinct = {v for v in changes.values if isinstance(v, float) and math.isfinite(v)}
        await until(lambda: len({v for v in changes.values if isinstance(v, float)
                                 and math.isfinite(v)} - distinct) >= 2, 20, "new scores")
        await until(served_latest, 5, "the latest score again")

        runner = bridge.runners["pump"]
        model = [f"{ns}:plcbridge", f"{ns}:Models", f"{ns}:pump"]
        values = {name: await (await objects.get_child([*model, f"{ns}:{name}"])).read_value()
                  for name in ("Threshold", "Anomaly", "WindowValid", "Version")}
        assert values["Threshold"] == pytest.approx(runner.threshold)
        assert isinstance(values["Anomaly"], bool) and values["WindowValid"] is True
        assert values["Version"] == runner.detector.version

        device = [f"{ns}:plcbridge", f"{ns}:Devices", f"{ns}:plant"]
        connected = await objects.get_child([*device, f"{ns}:Connected"])
        last = await objects.get_child([*device, f"{ns}:LastSuccess"])
        errors = await objects.get_child([*device, f"{ns}:ErrorCount"])
        assert await connected.read_value() is True
        assert (await last.read_value()).timestamp() > bridge.started_at
        assert (await errors.read_data_value()).Value.VariantType == ua.VariantType.UInt32

        # Read-only for clients: the Write is refused and the value stays the bridge's.
        for node, value in ((score, ua.Variant(1.0, ua.VariantType.Double)),
                            (connected, ua.Variant(False, ua.VariantType.Boolean))):
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await node.write_value(value)
            assert ua.StatusCode(refused.value.code).name in ("BadNotWritable", "BadUserAccessDenied")
        assert await connected.read_value() is True
        await subscription.delete()


async def _read_score(url: str, configure: Callable[[Client], Any]) -> Any:
    client = Client(url, timeout=5)
    await configure(client)
    async with client:
        ns = await client.get_namespace_index(NS_URI)
        return await client.get_node(ua.NodeId("Models.pump.Threshold", ns)).read_value()


async def test_secure_endpoint_with_user_and_trusted_clients(
        plant: tuple[SimulatorHandle, Bridge], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, bridge = plant
    server_cert, server_key = await make_cert(tmp_path / "server", "server",
                                              "urn:plcbridge:server", server=True)
    trusted_cert, trusted_key = await make_cert(tmp_path / "trusted", "client", CLIENT_URI,
                                                server=False)
    stranger_cert, stranger_key = await make_cert(tmp_path / "other", "client", CLIENT_URI,
                                                  server=False)
    monkeypatch.setenv("PLCBRIDGE_TEST_SINK_PW", "pw-1")
    sink = await started(bridge, sink_config(
        security_policy="Basic256Sha256", certificate=server_cert, private_key=server_key,
        trusted_clients=tmp_path / "trusted", allow_anonymous=False, username="scada",
        password_env="PLCBRIDGE_TEST_SINK_PW"))

    def login(cert: Path, key: Path, password: str) -> Callable[[Client], Any]:
        async def configure(client: Client) -> None:
            client.application_uri = CLIENT_URI
            client.set_user("scada")
            client.set_password(password)
            await client.set_security_string(
                f"Basic256Sha256,SignAndEncrypt,{cert},{key},{server_cert}")
        return configure

    threshold = await _read_score(sink.url, login(trusted_cert, trusted_key, "pw-1"))
    assert threshold == pytest.approx(bridge.runners["pump"].threshold)
    with pytest.raises(Exception, match=r"BadCertificateUntrusted|BadSecurityChecksFailed"):
        await _read_score(sink.url, login(stranger_cert, stranger_key, "pw-1"))
    with pytest.raises(ua.UaStatusCodeError, match=r"BadUserAccessDenied|BadIdentityToken"):
        await _read_score(sink.url, login(trusted_cert, trusted_key, "wrong"))

    async def anonymous_none(client: Client) -> None:
        return None

    with pytest.raises(Exception):  # noqa: B017 - no None endpoint: asyncua's own error text
        await _read_score(sink.url, anonymous_none)


def test_config_rejects_contradictions(tmp_path: Path) -> None:
    cert = tmp_path / "c.der"
    for options, message in (
            ({"security_policy": "Basic256Sha256"}, "certificate: required"),
            ({"security_policy": "Basic256Sha256", "certificate": cert, "private_key": cert},
             "trusted_clients"),
            ({"certificate": cert}, "certificate: has no meaning"),
            ({"allow_anonymous": False}, "needs a username"),
            ({"username": "x"}, "username: needs a security_policy"),
            ({"username": "x", "security_policy": "Basic256Sha256", "certificate": cert,
              "private_key": cert, "accept_any_client_certificate": True},
             "password_env: give exactly one"),
            ({"password_env": "X"}, "password_env: has no meaning"),
            ({"bogus": 1}, "Extra inputs are not permitted")):
        with pytest.raises(ValidationError, match=message):
            OpcuaServerConfig.model_validate(options)
    assert OpcuaServerConfig().port == 4841 and OpcuaServerConfig().host == "127.0.0.1"


def test_missing_password_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLCBRIDGE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="PLCBRIDGE_NOT_SET"):
        OpcuaServerSink(sink_config(username="u", password_env="PLCBRIDGE_NOT_SET",
                                    security_policy="Basic256Sha256", certificate=Path("c"),
                                    private_key=Path("k"), accept_any_client_certificate=True))


async def test_stop_is_idempotent_and_leaves_nothing_running(
        plant: tuple[SimulatorHandle, Bridge]) -> None:
    _, bridge = plant
    sink = await started(bridge, sink_config())
    await sink.stop()
    await sink.stop()
    await asyncio.sleep(0)


@pytest.mark.parametrize("attack", ["none-channel-anonymous", "none-channel-user",
                                    "untrusted-cert-claims-none", "untrusted-cert-claims-trusted"])
async def test_secure_sink_vets_the_channel_not_the_claim(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: str) -> None:
    """Clients that skip their own endpoint check must still be refused: asyncua lets a
    session be activated on a SecurityPolicy#None channel, and validates only the
    certificate claimed in CreateSession."""
    server_cert, server_key = await make_cert(tmp_path / "s", "server", "urn:plcbridge:server", True)
    good_cert, _ = await make_cert(tmp_path / "c", "client", CLIENT_URI, False)
    bad_cert, bad_key = await make_cert(tmp_path / "x", "client", CLIENT_URI, False)
    (tmp_path / "trusted").mkdir()
    shutil.copy(good_cert, tmp_path / "trusted")
    monkeypatch.setenv("PLCBRIDGE_TEST_SINK_PW", "pw-1")
    user = attack != "none-channel-anonymous"
    options: dict[str, Any] = {"enabled": True, "port": 0, "security_policy": "Basic256Sha256",
                               "certificate": server_cert, "private_key": server_key,
                               "trusted_clients": tmp_path / "trusted"}
    if user:
        options |= {"allow_anonymous": False, "username": "scada",
                    "password_env": "PLCBRIDGE_TEST_SINK_PW"}
    bridge = Bridge(demo_config(free_port(), api_port=0))
    sink = OpcuaServerSink(OpcuaServerConfig.model_validate(options))
    await sink.start(bridge.view)
    try:
        client = Client(sink.url, timeout=5)
        client.application_uri = CLIENT_URI
        if user:
            client.set_user("scada")
            client.set_password("pw-1")
        if attack.startswith("none-channel"):  # skip asyncua's client-side endpoint match
            monkeypatch.setattr(Client, "find_endpoint",
                                staticmethod(lambda endpoints, mode, uri: next(iter(endpoints))))
        else:
            await client.set_security_string(
                f"Basic256Sha256,SignAndEncrypt,{bad_cert},{bad_key},{server_cert}")
            claim = None if attack == "untrusted-cert-claims-none" else good_cert.read_bytes()
            real = UaClient.create_session

            async def claiming(self: UaClient, params: Any) -> Any:
                params.ClientCertificate = claim
                return await real(self, params)

            monkeypatch.setattr(UaClient, "create_session", claiming)
        with pytest.raises(ua.UaStatusCodeError,
                           match=r"BadSecurityModeRejected|BadCertificateUntrusted"):
            async with client:
                ns = await client.get_namespace_index("urn:plcbridge:results")
                await client.get_node(ua.NodeId("Models.pump.Threshold", ns)).read_value()
    finally:
        await sink.stop()
        await bridge.stop()


async def test_a_refused_activation_cannot_borrow_a_trusted_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An attacker on a SecurityPolicy#None channel names a trusted client's session (its
    AuthenticationToken: sequential in asyncua, so guessable) in ActivateSession. The
    activation is refused, and the connection must not be able to read through that session."""
    server_cert, server_key = await make_cert(tmp_path / "s", "server", "urn:plcbridge:server", True)
    good_cert, good_key = await make_cert(tmp_path / "c", "client", CLIENT_URI, False)
    (tmp_path / "trusted").mkdir()
    shutil.copy(good_cert, tmp_path / "trusted")
    monkeypatch.setenv("PLCBRIDGE_TEST_SINK_PW", "pw-1")
    bridge = Bridge(demo_config(free_port(), api_port=0))
    sink = OpcuaServerSink(OpcuaServerConfig.model_validate({
        "enabled": True, "port": 0, "security_policy": "Basic256Sha256", "security_mode": "Sign",
        "certificate": server_cert, "private_key": server_key, "trusted_clients": tmp_path / "trusted",
        "allow_anonymous": False, "username": "scada", "password_env": "PLCBRIDGE_TEST_SINK_PW"}))
    await sink.start(bridge.view)
    legit = Client(sink.url, timeout=5)
    evil = Client(sink.url, timeout=5)
    try:
        legit.application_uri = CLIENT_URI
        legit.set_user("scada")
        legit.set_password("pw-1")
        await legit.set_security_string(f"Basic256Sha256,Sign,{good_cert},{good_key},{server_cert}")
        await legit.connect()
        ns = await legit.get_namespace_index("urn:plcbridge:results")
        threshold = ua.NodeId("Models.pump.Threshold", ns)
        assert math.isfinite(await legit.get_node(threshold).read_value())  # the session works

        await evil.connect_socket()
        await evil.send_hello()
        await evil.open_secure_channel()
        evil.uaclient.protocol.authentication_token = legit.uaclient.protocol.authentication_token
        params = ua.ActivateSessionParameters()
        params.UserIdentityToken = ua.AnonymousIdentityToken()
        params.UserIdentityToken.PolicyId = "anonymous"
        with pytest.raises(ua.UaStatusCodeError):
            await evil.uaclient.activate_session(params)
        read = ua.ReadParameters()
        item = ua.ReadValueId()
        item.NodeId, item.AttributeId = threshold, ua.AttributeIds.Value
        read.NodesToRead.append(item)
        try:
            values: list[ua.DataValue] | None = await evil.uaclient.read(read)
        except (ua.UaStatusCodeError, ConnectionError):
            values = None  # refused: no session on this connection
        assert values is None or not values[0].StatusCode.is_good(), values
        assert math.isfinite(await legit.get_node(threshold).read_value())  # still works
    finally:
        evil.uaclient.disconnect_socket()
        await legit.disconnect()
        await sink.stop()
        await bridge.stop()


async def test_clients_cannot_change_the_address_space() -> None:
    """SCADA reads; nobody adds, deletes, relinks or rewrites nodes (asyncua refuses every
    node-management service and attribute write to a non-admin user: checked, not assumed)."""
    bridge = Bridge(demo_config(free_port(), api_port=0))
    sink = OpcuaServerSink(sink_config())
    await sink.start(bridge.view)
    try:
        async with Client(sink.url, timeout=5) as client:
            ns = await client.get_namespace_index(NS_URI)
            threshold = client.get_node(ua.NodeId("Models.pump.Threshold", ns))
            before = await threshold.read_value()
            attempts = {
                "AddNodes": lambda: client.nodes.objects.add_object(ns, "Intruder"),
                "DeleteNodes": lambda: client.delete_nodes([threshold]),
                "AddReferences": lambda: client.nodes.objects.add_reference(
                    threshold.nodeid, ua.ObjectIds.Organizes),
                "Write AccessLevel": lambda: threshold.write_attribute(
                    ua.AttributeIds.AccessLevel, ua.DataValue(ua.Variant(3, ua.VariantType.Byte))),
            }
            for service, attempt in attempts.items():
                with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                    await attempt()
                    pytest.fail(f"{service} was accepted")
            assert await threshold.read_value() == before
            children = await client.nodes.objects.get_children()
            assert "Intruder" not in [(await c.read_browse_name()).Name for c in children]
    finally:
        await sink.stop()
        await bridge.stop()

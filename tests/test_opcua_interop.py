"""plcbridge's OPC UA client against an independent implementation: a node-opcua server.

asyncua talking to asyncua proves little (both sides share the same encoder, the same
crypto and the same misreadings of the spec). ``tests/opcua_peer/server.mjs`` is a
node-opcua server started as a subprocess; ``.ci/run`` installs it with
``npm ci --prefix tests/opcua_peer``. Without node or that folder these tests skip.

The node server's readiness is its "READY" line (written to a file, polled with a deadline:
no pipe to block on, no thread). Certificates are generated into tmp folders for each run.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.opcua.client import OpcuaAdapter, OpcuaConnectError
from bridge.config import NodeTarget, OpcuaDeviceConfig, OpcuaTagConfig
from bridge.core.errors import DeviceExceptionError
from bridge.core.tags import Quality, Reading
from tests.opcua_servers import CLIENT_URI, Collected, free_port, make_cert
from tests.waiting import until

PEER = Path(__file__).resolve().parent / "opcua_peer"
NODE = shutil.which("node")
PEER_URI = "urn:plcbridge:peer"
USER, PASSWORD, PASSWORD_ENV = "op", "s3cret-op", "PLCBRIDGE_TEST_PEER_PASSWORD"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(NODE is None, reason="node (Debian package nodejs) is not installed"),
    pytest.mark.skipif(not (PEER / "node_modules" / "node-opcua").is_dir(),
                       reason="node-opcua is not installed: npm ci --prefix tests/opcua_peer"),
]


@dataclass
class Certs:
    client_cert: Path
    client_key: Path
    server_der: Path
    server_pem: Path
    server_key: Path
    user_cert: Path  # a certificate user identity the peer trusts
    user_key: Path
    stranger_cert: Path  # one it does not
    stranger_key: Path


def _make_certs(folder: Path) -> Certs:
    async def make() -> Certs:
        client_cert, client_key = await make_cert(folder, "client", CLIENT_URI, server=False)
        server_der, server_key = await make_cert(folder, "peer", PEER_URI, server=True)
        server_pem = folder / "peer_cert.pem"
        pem = x509.load_der_x509_certificate(server_der.read_bytes()).public_bytes(Encoding.PEM)
        server_pem.write_bytes(pem)
        user = await make_cert(folder, "user", "urn:plcbridge:user:alice", server=False)
        stranger = await make_cert(folder, "stranger", "urn:plcbridge:user:mallory", server=False)
        return Certs(client_cert, client_key, server_der, server_pem, server_key, *user, *stranger)

    return asyncio.run(make())


class NodePeer:
    """The node-opcua server process. ``start`` binds ``port`` (a free one when 0) and
    waits for its READY line; ``kill`` is a crash (SIGKILL), ``stop`` a clean shutdown."""

    def __init__(self, folder: Path, certs: Certs) -> None:
        self.folder = folder
        self.certs = certs
        self.port = 0
        self.ns = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = folder / "peer.log"

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        self.port = self.port or free_port()
        assert NODE is not None
        trusted_users = self.folder / "user-pki" / "trusted" / "certs"
        trusted_users.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.certs.user_cert, trusted_users / "alice.der")
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                [NODE, str(PEER / "server.mjs"), "--port", str(self.port),
                 "--pki", str(self.folder / "pki"), "--cert", str(self.certs.server_pem),
                 "--key", str(self.certs.server_key), "--user", f"{USER}:{PASSWORD}",
                 "--user-pki", str(self.folder / "user-pki")],
                stdout=log, stderr=subprocess.STDOUT, cwd=PEER)

    def _ready(self) -> bool:
        match = re.search(r"READY port=(\d+) ns=(\d+)", self._log.read_text(errors="replace"))
        if match:
            self.ns = int(match.group(2))
            return True
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"node-opcua peer exited: {self._log.read_text(errors='replace')}")
        return False

    def start(self, timeout: float = 20.0) -> NodePeer:
        self._spawn()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node-opcua peer not ready: {self._log.read_text(errors='replace')}")
            time.sleep(0.02)
        return self

    async def start_async(self, timeout: float = 20.0) -> None:
        """``start`` without blocking the event loop (the adapter keeps running meanwhile)."""
        self._spawn()
        await until(self._ready, timeout, "node-opcua peer READY")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def node(self, name: str) -> str:
        return f"ns={self.ns};s={name}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return _make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[NodePeer]:
    """One node-opcua server shared by the tests that do not stop it (it starts in ~1-2 s)."""
    server = NodePeer(tmp_path_factory.mktemp("peer"), certs).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


TAGS = ["Pump.Pressure", "Pump.Flow", "Pump.Running", "Pump.Name", "Pump.Counter"]


def device(peer: NodePeer, **options: Any) -> OpcuaDeviceConfig:
    names = options.pop("names", TAGS)
    data = {"name": "peer1", "protocol": "opcua", "endpoint": peer.url, "mode": "poll",
            "timeout": 3.0, "keepalive_interval": 0.2, "reconnect_min": 0.05,
            "reconnect_max": 0.2, "tags": [{"name": n, "node_id": peer.node(n)} for n in names],
            **options}
    return OpcuaDeviceConfig.model_validate(data)


def secure(certs: Certs, policy: str, mode: str) -> dict[str, Any]:
    return {"security_policy": policy, "security_mode": mode, "certificate": certs.client_cert,
            "private_key": certs.client_key, "server_certificate": certs.server_der,
            "application_uri": CLIENT_URI}


def assert_fixed_values(readings: dict[str, Reading]) -> None:
    assert all(r.quality is Quality.GOOD for r in readings.values()), readings
    assert readings["Pump.Pressure"].value == 4.25                   # Double
    assert readings["Pump.Flow"].value == 12.0                       # Int32 -> float
    assert readings["Pump.Running"].value is True                    # Boolean stays bool
    assert readings["Pump.Name"].value == "P-101"                    # String stays str
    assert readings["Pump.Pressure"].source_time is not None


async def test_poll_reads_node_opcua_values(peer: NodePeer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(peer))
    adapters.append(adapter)
    await adapter.connect()
    first = {r.tag: r for r in await adapter.read()}
    assert_fixed_values(first)
    counter = first["Pump.Counter"].value
    assert isinstance(counter, float)

    async def counter_moved() -> bool:  # the peer's counter ticks every 50 ms on its own clock
        value = {r.tag: r for r in await adapter.read()}["Pump.Counter"].value
        return isinstance(value, float) and value > counter

    await until(counter_moved, 5, "a newer counter value")


async def test_subscribe_receives_node_opcua_changes(peer: NodePeer,
                                                     adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(peer, mode="subscribe", publishing_interval=0.05,
                                  sampling_interval=0.0, queue_size=10, poll_interval=30))
    adapters.append(adapter)
    sink = Collected()
    assert await adapter.subscribe(sink) is True
    await until(lambda: all(sink.latest(t) is not None for t in TAGS), 5, "initial values")
    assert_fixed_values({t: r for t in TAGS if (r := sink.latest(t)) is not None})
    await until(lambda: len(set(sink.values("Pump.Counter"))) >= 5, 5, "counter changes")
    counts = sink.values("Pump.Counter")
    assert counts == sorted(counts), "changes arrive in order"


SECURITY = [(policy, mode) for policy in ("Basic256Sha256", "Aes128_Sha256_RsaOaep",
                                          "Aes256_Sha256_RsaPss")
            for mode in ("Sign", "SignAndEncrypt")]


@pytest.mark.parametrize(("policy", "mode"), SECURITY, ids=[f"{p}-{m}" for p, m in SECURITY])
async def test_secure_channel_with_user_password(peer: NodePeer, certs: Certs,
                                                 adapters: list[OpcuaAdapter],
                                                 policy: str, mode: str) -> None:
    adapter = OpcuaAdapter(device(peer, username=USER, password_env=PASSWORD_ENV,
                                  **secure(certs, policy, mode)))
    adapters.append(adapter)
    await adapter.connect()
    assert_fixed_values({r.tag: r for r in await adapter.read()})


async def test_secure_subscription(peer: NodePeer, certs: Certs,
                                   adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(peer, mode="subscribe", publishing_interval=0.05,
                                  poll_interval=30, names=["Pump.Counter"],
                                  **secure(certs, "Basic256Sha256", "SignAndEncrypt")))
    adapters.append(adapter)
    sink = Collected()
    await adapter.subscribe(sink)
    await until(lambda: len(set(sink.values("Pump.Counter"))) >= 3, 5, "encrypted changes")


async def test_user_password_on_an_unsecured_channel(peer: NodePeer,
                                                     adapters: list[OpcuaAdapter]) -> None:
    # node-opcua asks for the password to be encrypted with its certificate even here.
    adapter = OpcuaAdapter(device(peer, username=USER, password_env=PASSWORD_ENV))
    adapters.append(adapter)
    await adapter.connect()
    assert_fixed_values({r.tag: r for r in await adapter.read()})


async def test_wrong_password_is_a_named_authentication_error(
        peer: NodePeer, certs: Certs, adapters: list[OpcuaAdapter],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    for options in ({}, secure(certs, "Basic256Sha256", "SignAndEncrypt")):
        adapter = OpcuaAdapter(device(peer, username=USER, password_env=PASSWORD_ENV, **options))
        adapters.append(adapter)
        with pytest.raises(OpcuaConnectError) as caught:
            await adapter.connect()
        assert caught.value.kind == "authentication"
        assert "peer1" in str(caught.value) and "wrong" not in str(caught.value)
        [reading, *_] = await adapter.read()
        assert reading.quality is Quality.BAD and "authentication failed" in reading.reason


async def test_write_many_to_node_opcua(peer: NodePeer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(peer, names=["Bridge.Score"]))
    adapters.append(adapter)
    await adapter.write_many([(NodeTarget(node_id=peer.node("Bridge.Score")), 1.5)])
    [reading] = await adapter.read()
    assert reading.value == 1.5
    with pytest.raises(DeviceExceptionError, match=r"BadNotWritable|BadUserAccessDenied"):
        await adapter.write(NodeTarget(node_id=peer.node("Bridge.ReadOnly")), 1.0)


async def test_resubscribe_after_node_opcua_restart(tmp_path: Path, certs: Certs,
                                                    adapters: list[OpcuaAdapter]) -> None:
    """Kill the node-opcua process (a crash, not a goodbye) and start a new one on the same
    port: the outage shows as bad quality and values flow again within a bounded time."""
    server = NodePeer(tmp_path, certs)
    await server.start_async()
    try:
        adapter = OpcuaAdapter(device(server, mode="subscribe", publishing_interval=0.05,
                                      poll_interval=30, names=["Pump.Counter", "Pump.Pressure"]))
        adapters.append(adapter)
        sink = Collected()
        await adapter.subscribe(sink)
        await until(lambda: len(sink.values("Pump.Counter")) >= 2, 5, "counter before the crash")

        server.kill()
        lost = await until(lambda: all((r := sink.latest(t)) is not None
                                       and r.quality is Quality.BAD
                                       for t in ("Pump.Counter", "Pump.Pressure")),
                           5, "bad quality after the crash")
        outage = sink.latest("Pump.Counter")
        assert outage is not None and outage.reason.startswith("not connected")

        await server.start_async()          # same port, a fresh process (counter from 0)
        ready = time.monotonic()
        before = len(sink.readings)
        await until(lambda: any(r.tag == "Pump.Counter" and r.quality is Quality.GOOD
                                for r in sink.readings[before:]), 10, "values after restart")
        resumed = time.monotonic() - ready
        assert adapter.sessions == 2
        print(f"\nnode-opcua crash detected in {lost:.3f} s (keepalive 0.2 s); values flow "
              f"{resumed:.3f} s after the restarted server is ready")
        assert resumed < 5.0
    finally:
        server.stop()



async def test_plcbridge_certs_output_is_accepted_and_the_uri_matters(
        peer: NodePeer, tmp_path: Path, adapters: list[OpcuaAdapter]) -> None:
    """A certificate from ``plcbridge certs`` opens a SignAndEncrypt session; node-opcua
    checks its URI against the client's application_uri, which is why certs asks for it."""
    from adapters.opcua.certs import generate_certificate

    cert, key = generate_certificate(tmp_path, "urn:site:edge-7")
    options = {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
               "certificate": cert, "private_key": key,
               "server_certificate": peer.certs.server_der}
    good = OpcuaAdapter(device(peer, application_uri="urn:site:edge-7", **options))
    adapters.append(good)
    await good.connect()
    assert_fixed_values({r.tag: r for r in await good.read()})
    wrong = OpcuaAdapter(device(peer, application_uri="urn:site:other", **options))
    adapters.append(wrong)
    with pytest.raises(OpcuaConnectError, match="peer1"):
        await wrong.connect()


async def test_certificate_user_identity_trusted_by_node_opcua(
        peer: NodePeer, certs: Certs, adapters: list[OpcuaAdapter]) -> None:
    """node-opcua checks the X509IdentityToken's signature and the certificate against its
    user PKI: the trusted user reads, a stranger is refused with one named error."""
    options = secure(certs, "Basic256Sha256", "SignAndEncrypt")
    alice = OpcuaAdapter(device(peer, user_certificate=certs.user_cert,
                                user_private_key=certs.user_key, **options))
    adapters.append(alice)
    await alice.connect()
    assert_fixed_values({r.tag: r for r in await alice.read()})

    stranger = OpcuaAdapter(device(peer, name="line4", user_certificate=certs.stranger_cert,
                                   user_private_key=certs.stranger_key, **options))
    adapters.append(stranger)
    with pytest.raises(OpcuaConnectError) as info:
        await stranger.connect()
    assert info.value.kind == "authentication", info.value
    assert str(info.value).startswith("line4: not connected") and "user_certificate" in str(info.value)


async def test_browse_paths_resolve_on_node_opcua(peer: NodePeer,
                                                  adapters: list[OpcuaAdapter]) -> None:
    """Browse names with a '.' need the '&' escape of the relative path syntax."""
    ns = peer.ns
    config = device(peer).model_copy(update={"tags": [
        OpcuaTagConfig(name=name, browse_path=f"/{ns}:Pump/{ns}:{name.replace('.', '&.')}")
        for name in TAGS[:4]]})
    adapter = OpcuaAdapter(config)
    adapters.append(adapter)
    assert_fixed_values({r.tag: r for r in await adapter.read()})


async def test_percent_and_absolute_deadbands_are_applied_by_node_opcua(
        peer: NodePeer, adapters: list[OpcuaAdapter]) -> None:
    """Pump.Level ramps 0..99 by 1 every 20 ms; its EURange is 0..200. A 10 % deadband must
    suppress every change of 20 or less (10 or less if it were taken as absolute), an absolute
    one of 25 every change of 25 or less, and no deadband lets (almost) every step through."""
    collected: dict[str, Collected] = {}
    for label, options in (("none", {}),
                           ("percent", {"deadband_type": "percent", "deadband_value": 10.0}),
                           ("absolute", {"deadband_type": "absolute", "deadband_value": 25.0})):
        adapter = OpcuaAdapter(device(peer, name=f"level_{label}", names=["Pump.Level"],
                                      mode="subscribe", publishing_interval=0.05,
                                      sampling_interval=0.0, queue_size=100, poll_interval=60,
                                      **options))
        adapters.append(adapter)
        collected[label] = Collected()
        await adapter.subscribe(collected[label])
    await until(lambda: all(len(c.values("Pump.Level")) >= 6 for c in collected.values()), 10,
                "six notifications on every subscription")

    def steps(label: str) -> list[float]:
        values = collected[label].values("Pump.Level")
        return [abs(b - a) for a, b in itertools.pairwise(values)]

    assert min(steps("percent")) > 20, collected["percent"].values("Pump.Level")
    assert min(steps("absolute")) > 25, collected["absolute"].values("Pump.Level")
    # Without a deadband every sample is reported: steps of a few ticks (sampling ~50 ms).
    assert sorted(steps("none"))[len(steps("none")) // 2] <= 5, collected["none"].values("Pump.Level")

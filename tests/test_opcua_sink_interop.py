"""plcbridge's own OPC UA server sink read by an independent client: node-opcua.

test_opcua_server.py checks the sink with asyncua clients, which share the server's encoder,
crypto and reading of the spec. ``tests/opcua_peer/client.mjs`` is a node-opcua client (a
SCADA stand-in): it browses Objects/plcbridge/..., reads every variable with its DataType,
subscribes to Score, tries a Write and prints one JSON object. It runs as an asyncio
subprocess, so the event loop keeps serving the sink meanwhile; its "CHANGE <n>" lines on
stderr let a test feed the next Score only once the previous one has arrived. Without node or
tests/opcua_peer/node_modules these tests skip (``.ci/run`` installs both).

The bridge is the demo config's, built but not started: no plant and no scheduler, so every
Score the sink serves is one the test chose, handed over as ``Bridge.score_model`` does
(``scores.put`` then ``sink.on_score``). Device health is the adapter's DeviceStatus, set
directly. Certificates are generated into tmp folders; each side trusts exactly the other's
certificate (the sink through ``trusted_clients``, node-opcua through ``<pki>/trusted/certs``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.opcua.server import OpcuaServerSink
from bridge.cli.demo import demo_config
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.core.scores import Score
from bridge.runtime.bridge import Bridge
from tests.opcua_servers import CLIENT_URI, free_port, make_cert
from tests.waiting import until

PEER = Path(__file__).resolve().parent / "opcua_peer"
NODE = shutil.which("node")
NS_URI = "urn:plcbridge:results"
MODEL, DEVICE = "pump", "plant"
USER, PASSWORD = "scada", "pw-sink-1"
SINK_PASSWORD_ENV = "PLCBRIDGE_TEST_SINK_PASSWORD"   # read by the sink
CLIENT_PASSWORD_ENV = "PLCBRIDGE_TEST_PEER_PASSWORD"  # read by client.mjs
CLIENT_TIMEOUT = 30.0  # client.mjs has its own 20 s hard timeout; this one is for a hung node

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(NODE is None, reason="node (Debian package nodejs) is not installed"),
    pytest.mark.skipif(not (PEER / "node_modules" / "node-opcua").is_dir(),
                       reason="node-opcua is not installed: npm ci --prefix tests/opcua_peer"),
]

MODEL_TYPES = {"Score": "Double", "Threshold": "Double", "Anomaly": "Boolean",
               "WindowValid": "Boolean", "Version": "String"}
DEVICE_TYPES = {"Connected": "Boolean", "LastSuccess": "DateTime", "ErrorCount": "UInt32"}
CURRENT_READ = 1  # AccessLevel bit 0: CurrentRead only, no CurrentWrite

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fed score times are T0 + i
LAST_SUCCESS = T0 - 0.25


def score(index: int, value: float | None, *, anomaly: bool = False) -> Score:
    """The index-th fed Score; ``None`` or NaN is a window that was not scored."""
    valid = value is not None and math.isfinite(value)
    return Score(MODEL, T0 + index, value, threshold=1.75, anomaly=anomaly, window_valid=valid,
                 reason="" if valid else "window invalid: stale input", version="pump-v3")


FIRST = score(0, 2.5, anomaly=True)                  # served before the client connects
FED = [score(1, 0.5), score(2, math.nan), score(3, 0.75), score(4, 3.0, anomaly=True)]


# -- certificates -----------------------------------------------------------------------------

@dataclass
class Certs:
    server_cert: Path   # the sink's application certificate (DER) and key
    server_key: Path
    client_pem: Path    # node-opcua's client certificate and key (PEM)
    client_key: Path
    trusted: Path       # the sink's trusted_clients folder: the client certificate only
    stranger_pem: Path  # a client certificate the sink does not trust (same URI)
    stranger_key: Path


def _pem(der: Path) -> Path:
    pem = der.with_suffix(".pem")
    pem.write_bytes(x509.load_der_x509_certificate(der.read_bytes()).public_bytes(Encoding.PEM))
    return pem


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("sink-certs")

    async def make() -> Certs:
        server_cert, server_key = await make_cert(folder / "server", "server",
                                                  "urn:plcbridge:server", server=True)
        client_cert, client_key = await make_cert(folder / "client", "client", CLIENT_URI,
                                                  server=False)
        stranger_cert, stranger_key = await make_cert(folder / "stranger", "client", CLIENT_URI,
                                                      server=False)
        trusted = folder / "trusted"
        trusted.mkdir()
        shutil.copy(client_cert, trusted / client_cert.name)
        return Certs(server_cert, server_key, _pem(client_cert), client_key, trusted,
                     _pem(stranger_cert), stranger_key)

    return asyncio.run(make())


def pki(folder: Path, certs: Certs, trust_server: bool = True) -> Path:
    """A node-opcua PKI folder for one client run; it trusts the sink's certificate."""
    trusted = folder / "pki" / "trusted" / "certs"
    trusted.mkdir(parents=True)
    if trust_server:
        shutil.copy(certs.server_cert, trusted / certs.server_cert.name)
    return folder / "pki"


# -- the sink on a bridge that is not started ---------------------------------------------------

@pytest_asyncio.fixture
async def idle_bridge(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bridge]:
    monkeypatch.setenv(SINK_PASSWORD_ENV, PASSWORD)
    bridge = Bridge(demo_config(free_port(), api_port=0))  # nothing connects to that port
    try:
        yield bridge
    finally:
        for sink in bridge.sinks:  # an unstarted bridge does not stop its sinks itself
            await sink.stop()
        await bridge.stop()


async def serve(bridge: Bridge, **options: Any) -> OpcuaServerSink:
    config = OpcuaServerConfig.model_validate({"enabled": True, "port": 0,
                                               "refresh_interval": 0.1, **options})
    sink = OpcuaServerSink(config)
    bridge.sinks.append(sink)
    await sink.start(bridge.view)
    return sink


def secure_options(certs: Certs, policy: str, mode: str) -> dict[str, Any]:
    return {"security_policy": policy, "security_mode": mode, "certificate": certs.server_cert,
            "private_key": certs.server_key, "trusted_clients": certs.trusted,
            "allow_anonymous": False, "username": USER, "password_env": SINK_PASSWORD_ENV}


async def served(sink: OpcuaServerSink, path: str) -> Any:
    """What the sink's address space holds now (the server side, no client involved)."""
    assert sink._server is not None
    return await sink._server.get_node(sink.node_id(path)).read_data_value(raise_on_bad_status=False)


def feed(bridge: Bridge, sink: OpcuaServerSink, item: Score) -> None:
    bridge.scores.put(item)
    sink.on_score(item)


async def feed_first_score_and_health(bridge: Bridge, sink: OpcuaServerSink) -> None:
    status = bridge.adapters[DEVICE].status
    status.connected = True
    status.last_success = LAST_SUCCESS
    status.errors = {"timeout": 3, "decode": 2}
    feed(bridge, sink, FIRST)

    async def published() -> bool:
        score_now = await served(sink, f"Models.{MODEL}.Score")
        errors_now = await served(sink, f"Devices.{DEVICE}.ErrorCount")
        return bool(score_now.Value.Value == FIRST.score and errors_now.Value.Value == 5)

    await until(published, 5, "the first score and the device health in the address space")


# -- the node-opcua client ------------------------------------------------------------------------

class NodeClient:
    """client.mjs as an asyncio subprocess. stderr lines are collected as they arrive (the
    progress lines and any error); stdout is the JSON result."""

    def __init__(self, sink: OpcuaServerSink, folder: Path, *args: str,
                 password: str | None = None) -> None:
        self.args = ["--endpoint", sink.url, "--ns-uri", NS_URI, "--model", MODEL,
                     "--device", DEVICE, "--pki", str(folder / "pki"), *args]
        self.env = dict(os.environ)
        if password is not None:
            self.env[CLIENT_PASSWORD_ENV] = password
            self.args += ["--user", USER, "--password-env", CLIENT_PASSWORD_ENV]
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._stdout: asyncio.Task[bytes] | None = None
        self._stderr: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NodeClient:
        assert NODE is not None
        self.process = await asyncio.create_subprocess_exec(
            NODE, str(PEER / "client.mjs"), *self.args, cwd=PEER, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        self._stdout = asyncio.create_task(self.process.stdout.read(), name="node-client-stdout")
        self._stderr = asyncio.create_task(self._read_stderr(), name="node-client-stderr")
        return self

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, line: str, timeout: float = 15.0) -> None:
        async def seen() -> bool:
            assert self.process is not None and self._stderr is not None
            if line not in self.lines and self.process.returncode is not None:
                await asyncio.wait([self._stderr], timeout=5)  # read stderr to its end first
                if line not in self.lines:
                    raise AssertionError(f"client.mjs exited {self.process.returncode} before "
                                         f"{line!r}:\n{self.stderr}")
            return line in self.lines

        await until(seen, timeout, f"{line!r} from client.mjs")

    async def finish(self) -> tuple[int, dict[str, Any] | None]:
        """Exit code and the JSON result (None when the client failed)."""
        assert self.process is not None and self._stdout is not None and self._stderr is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), CLIENT_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"client.mjs hung:\n{self.stderr}") from None
        out = await self._stdout
        await self._stderr
        return code, (json.loads(out) if code == 0 else None)

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for task in (self._stdout, self._stderr):
            if task is not None:
                await asyncio.wait([task], timeout=5)


async def run_client(sink: OpcuaServerSink, folder: Path, *args: str,
                     password: str | None = None) -> tuple[int, dict[str, Any] | None, str]:
    async with NodeClient(sink, folder, *args, password=password) as client:
        code, result = await client.finish()
        return code, result, client.stderr


# -- assertions on the JSON --------------------------------------------------------------------

def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()  # node-opcua: ms precision, "Z"


def assert_browsed(result: dict[str, Any]) -> int:
    """Every node was found by browsing, under the stable string NodeIds; returns the index."""
    ns = result["namespaceIndex"]
    browsed = result["browsed"]
    assert browsed["Objects"]["children"].count("plcbridge") == 1
    assert sorted(browsed["Objects/plcbridge"]["children"]) == ["Devices", "Models"]
    assert browsed["Objects/plcbridge/Models"]["children"] == [MODEL]
    assert browsed["Objects/plcbridge/Devices"]["children"] == [DEVICE]
    assert sorted(browsed[f"Models/{MODEL}"]["children"]) == sorted(MODEL_TYPES)
    assert sorted(browsed[f"Devices/{DEVICE}"]["children"]) == sorted(DEVICE_TYPES)
    for kind, name, types in (("Models", MODEL, MODEL_TYPES), ("Devices", DEVICE, DEVICE_TYPES)):
        section = result["model" if kind == "Models" else "device"]
        for variable, data_type in types.items():
            node = section[variable]
            assert node["nodeId"] == f"ns={ns};s={kind}.{name}.{variable}"
            assert node["nodeClass"] == "Variable"
            assert node["dataType"] == data_type, (variable, node)
            assert node["dataTypeId"] is not None and node["dataTypeId"].startswith("ns=0;")
            assert node["accessLevel"] == node["userAccessLevel"] == CURRENT_READ, (variable, node)
    return int(ns)


def assert_good(node: dict[str, Any], value: Any, variant: str) -> None:
    assert node["status"] == "Good", node
    assert node["variantType"] == variant, node
    assert node["value"] == value, node


def assert_first_score_and_health(result: dict[str, Any]) -> None:
    model, device = result["model"], result["device"]
    assert_good(model["Score"], FIRST.score, "Double")
    assert_good(model["Threshold"], FIRST.threshold, "Double")
    assert_good(model["Anomaly"], True, "Boolean")
    assert_good(model["WindowValid"], True, "Boolean")
    assert_good(model["Version"], "pump-v3", "String")
    for name in MODEL_TYPES:  # every model variable carries the score's own time
        assert epoch(model[name]["sourceTimestamp"]) == pytest.approx(FIRST.time, abs=1e-3)
    assert_good(device["Connected"], True, "Boolean")
    assert_good(device["ErrorCount"], 5, "UInt32")
    assert device["LastSuccess"]["variantType"] == "DateTime"
    assert epoch(device["LastSuccess"]["value"]) == pytest.approx(LAST_SUCCESS, abs=1e-3)


def assert_subscription(result: dict[str, Any]) -> None:
    """The initial value, then every fed Score once, in order; the NaN one is BadNoData."""
    changes = result["subscription"]["changes"]
    seen = [(c["status"], c["value"], round(epoch(c["sourceTimestamp"]) - T0, 3)) for c in changes]
    expected = [("Good", s.score, float(i)) if s.window_valid else ("BadNoData", None, float(i))
                for i, s in enumerate([FIRST, *FED])]
    assert seen == expected
    bad = changes[2]
    assert bad["variantType"] == "Null"  # no value at all, not a NaN that looks like one


def assert_write_refused(result: dict[str, Any]) -> None:
    write = result["write"]
    assert write["status"] in ("BadNotWritable", "BadUserAccessDenied"), write
    assert_good(write["after"], FED[-1].score, "Double")  # still the bridge's value


async def subscribe_and_feed(bridge: Bridge, sink: OpcuaServerSink, client: NodeClient) -> None:
    """Feed each Score once the client has the previous one: the sink keeps only the latest
    pending Score per model, so feeding faster would (correctly) skip some."""
    await client.wait_line("SUBSCRIBED")
    await client.wait_line("CHANGE 1")  # FIRST, the value at subscription time
    for index, item in enumerate(FED, start=2):
        feed(bridge, sink, item)
        await client.wait_line(f"CHANGE {index}")


# -- the tests ----------------------------------------------------------------------------------

SECURITY = [("None", "None"), ("Basic256Sha256", "SignAndEncrypt"),
            ("Aes256_Sha256_RsaPss", "Sign"), ("Aes128_Sha256_RsaOaep", "SignAndEncrypt")]


@pytest.mark.parametrize(("policy", "mode"), SECURITY, ids=[f"{p}-{m}" for p, m in SECURITY])
async def test_node_opcua_browses_reads_subscribes_and_cannot_write(
        idle_bridge: Bridge, certs: Certs, tmp_path: Path, policy: str, mode: str) -> None:
    """A SCADA on node-opcua sees exactly what the bridge served: None is anonymous, every
    secure endpoint needs the username and the trusted client certificate."""
    if policy == "None":
        sink = await serve(idle_bridge)
        args: list[str] = []
        password = None
    else:
        sink = await serve(idle_bridge, **secure_options(certs, policy, mode))
        args = ["--policy", policy, "--mode", mode, "--cert", str(certs.client_pem),
                "--key", str(certs.client_key)]
        password = PASSWORD
    await feed_first_score_and_health(idle_bridge, sink)
    pki(tmp_path, certs)
    count = 1 + len(FED)
    async with NodeClient(sink, tmp_path, *args, "--subscribe-seconds", "15",
                          "--subscribe-count", str(count), "--write-test",
                          password=password) as client:
        await subscribe_and_feed(idle_bridge, sink, client)
        code, result = await client.finish()
    assert code == 0 and result is not None, client.stderr
    assert (result["securityPolicy"], result["securityMode"]) == (policy, mode)
    assert result["user"] == (None if policy == "None" else USER)
    assert assert_browsed(result) == sink.node_id("plcbridge").NamespaceIndex
    assert_first_score_and_health(result)
    assert_subscription(result)
    assert_write_refused(result)


async def test_before_the_first_score(idle_bridge: Bridge, certs: Certs, tmp_path: Path) -> None:
    """Nothing scored and the device never answered: Score and LastSuccess are
    BadWaitingForInitialData (typed, no value); Threshold and Version are already known."""
    sink = await serve(idle_bridge)
    pki(tmp_path, certs)
    code, result, stderr = await run_client(sink, tmp_path)
    assert code == 0 and result is not None, stderr
    assert_browsed(result)
    model, device = result["model"], result["device"]
    runner = idle_bridge.runners[MODEL]
    for node in (model["Score"], device["LastSuccess"]):
        assert node["status"] == "BadWaitingForInitialData" and node["value"] is None, node
    assert model["Threshold"]["status"] == "Good"
    assert model["Threshold"]["value"] == pytest.approx(runner.threshold)
    assert_good(model["Version"], runner.detector.version, "String")
    assert_good(device["Connected"], False, "Boolean")
    assert_good(device["ErrorCount"], 0, "UInt32")
    assert result["subscription"] is None and result["write"] is None


async def test_wrong_password_fails_and_names_authentication(
        idle_bridge: Bridge, certs: Certs, tmp_path: Path) -> None:
    sink = await serve(idle_bridge, **secure_options(certs, "Basic256Sha256", "SignAndEncrypt"))
    pki(tmp_path, certs)
    code, result, stderr = await run_client(
        sink, tmp_path, "--policy", "Basic256Sha256", "--mode", "SignAndEncrypt",
        "--cert", str(certs.client_pem), "--key", str(certs.client_key), password="wrong-pw")
    assert code == 1 and result is None
    assert "error: create session: authentication failed" in stderr, stderr
    assert "BadUserAccessDenied" in stderr or "BadIdentityToken" in stderr, stderr
    assert "wrong-pw" not in stderr


async def test_sink_refuses_an_untrusted_client_certificate(
        idle_bridge: Bridge, certs: Certs, tmp_path: Path) -> None:
    sink = await serve(idle_bridge, **secure_options(certs, "Basic256Sha256", "SignAndEncrypt"))
    pki(tmp_path, certs)
    code, result, stderr = await run_client(
        sink, tmp_path, "--policy", "Basic256Sha256", "--mode", "SignAndEncrypt",
        "--cert", str(certs.stranger_pem), "--key", str(certs.stranger_key), password=PASSWORD)
    assert code == 1 and result is None
    assert "BadCertificateUntrusted" in stderr or "BadSecurityChecksFailed" in stderr, stderr


async def test_node_opcua_refuses_an_unknown_sink_certificate(
        idle_bridge: Bridge, certs: Certs, tmp_path: Path) -> None:
    """The positive tests' trust is real: without the sink's certificate in its trusted
    folder node-opcua refuses the server (and files the certificate under rejected/)."""
    sink = await serve(idle_bridge, **secure_options(certs, "Basic256Sha256", "SignAndEncrypt"))
    folder = pki(tmp_path, certs, trust_server=False)
    code, result, stderr = await run_client(
        sink, tmp_path, "--policy", "Basic256Sha256", "--mode", "SignAndEncrypt",
        "--cert", str(certs.client_pem), "--key", str(certs.client_key), password=PASSWORD)
    assert code == 1 and result is None
    assert "error: connect:" in stderr and "BadCertificateUntrusted" in stderr, stderr
    assert list((folder / "rejected").iterdir()), "the sink's certificate is filed as rejected"

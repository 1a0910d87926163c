"""OPC UA adapter against real asyncua servers on loopback ports.

Everything waits for state with a deadline (``until``); nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua

from adapters import create_adapter
from adapters.opcua.client import OpcuaAdapter, OpcuaConnectError, quality_of
from bridge.config import OpcuaDeviceConfig, parse_config
from bridge.core.errors import DeviceExceptionError, NotConnectedError, WriteRefusedError
from bridge.core.tags import Quality, Reading
from tests.opcua_servers import (
    CLIENT_URI,
    Collected,
    FreezableProxy,
    OpcuaTestServer,
    free_port,
    make_cert,
)

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
    """Wait until ``predicate()`` holds; return the seconds it took. Fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return loop.time() - start


def device(server: OpcuaTestServer, **options: Any) -> OpcuaDeviceConfig:
    names = options.pop("names", ["pressure", "flow", "running", "temperature"])
    tags = options.pop("tags", [{"name": n, "node_id": server.node_id(n)} for n in names])
    data = {"name": "plc1", "protocol": "opcua", "endpoint": server.url, "mode": "poll",
            "timeout": 2.0, "keepalive_interval": 0.2, "reconnect_min": 0.05, "reconnect_max": 0.2,
            "tags": tags, **options}
    return OpcuaDeviceConfig.model_validate(data)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[OpcuaTestServer]:
    srv = await OpcuaTestServer().start()
    yield srv
    await srv.stop()


# --------------------------------------------------------------------------- poll mode


async def test_poll_reads_values_types_and_source_timestamps(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(server))
    adapters.append(adapter)
    await adapter.connect()
    readings = {r.tag: r for r in await adapter.read()}
    assert [r.quality for r in readings.values()] == [Quality.GOOD] * 4
    assert readings["pressure"].value == 4.25                       # ns=2;s=...
    assert readings["flow"].value == 12.0 and isinstance(readings["flow"].value, float)  # Int32
    assert readings["running"].value is True                        # ns=2;i=1001, bool stays bool
    assert readings["temperature"].value == 41.5                    # ns=2;g=<GUID>, Float
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert all(r.source_time == stamp for r in readings.values())
    assert adapter.status.connected and adapter.status.last_latency is not None

    fresh = datetime(2026, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
    await server.set("pressure", 7.5, source_time=fresh)
    reading = {r.tag: r for r in await adapter.read()}["pressure"]
    assert (reading.value, reading.source_time) == (7.5, fresh.timestamp())


STATUSES = [
    (ua.StatusCodes.Good, Quality.GOOD, ""),
    (ua.StatusCodes.GoodLocalOverride, Quality.GOOD, ""),
    (ua.StatusCodes.Uncertain, Quality.UNCERTAIN, "Uncertain"),
    (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN, "UncertainLastUsableValue"),
    (ua.StatusCodes.UncertainSensorNotAccurate, Quality.UNCERTAIN, "UncertainSensorNotAccurate"),
    (ua.StatusCodes.UncertainEngineeringUnitsExceeded, Quality.UNCERTAIN,
     "UncertainEngineeringUnitsExceeded"),
    (ua.StatusCodes.UncertainSubstituteValue, Quality.UNCERTAIN, "UncertainSubstituteValue"),
    (ua.StatusCodes.Bad, Quality.BAD, "Bad"),
    (ua.StatusCodes.BadSensorFailure, Quality.BAD, "BadSensorFailure"),
    (ua.StatusCodes.BadCommunicationError, Quality.BAD, "BadCommunicationError"),
    (ua.StatusCodes.BadOutOfService, Quality.BAD, "BadOutOfService"),
    (ua.StatusCodes.BadDeviceFailure, Quality.BAD, "BadDeviceFailure"),
    (ua.StatusCodes.BadWaitingForInitialData, Quality.BAD, "BadWaitingForInitialData"),
]


async def test_every_status_maps_to_quality_with_its_name(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    # One server for all codes: an asyncua server takes ~1.5 s to start.
    adapter = OpcuaAdapter(device(server, names=["pressure"]))
    adapters.append(adapter)
    for status, quality, reason in STATUSES:
        await server.set("pressure", 3.0, status=status)
        [reading] = await adapter.read()
        assert (reading.quality, reading.reason) == (quality, reason), hex(status)
        if quality is Quality.GOOD:
            assert reading.value == 3.0 and reading.numeric() == 3.0
        else:
            assert reading.numeric() is None  # never enters a window


def test_status_info_bits_do_not_change_the_name() -> None:
    # Low 16 bits carry info (overflow, limits); the name is the code's.
    code = ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue | 0x0480)
    assert quality_of(code) == (Quality.UNCERTAIN, "UncertainLastUsableValue")
    assert quality_of(None) == (Quality.GOOD, "")


async def test_unknown_node_and_range_checks_are_bad_per_tag(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    tags = [{"name": "pressure", "node_id": server.node_id("pressure"), "valid_max": 4.0},
            {"name": "ghost", "node_id": f"ns={server.ns};s=No.Such.Node"},
            {"name": "flow", "node_id": server.node_id("flow"), "valid_min": 0, "valid_max": 100}]
    adapter = OpcuaAdapter(device(server, tags=tags))
    adapters.append(adapter)
    readings = {r.tag: r for r in await adapter.read()}
    assert readings["pressure"].quality is Quality.BAD
    assert readings["pressure"].reason == "out of range: 4.25 > valid_max 4.0"
    assert (readings["ghost"].quality, readings["ghost"].reason) == (Quality.BAD, "BadNodeIdUnknown")
    assert readings["flow"].quality is Quality.GOOD


async def test_reads_are_split_by_max_nodes_per_read(adapters: list[OpcuaAdapter]) -> None:
    srv = await OpcuaTestServer(extra=120).start()
    try:
        tags = [{"name": f"b{i}", "node_id": srv.node_id(f"bulk{i}")} for i in range(120)]
        adapter = OpcuaAdapter(device(srv, tags=tags, max_nodes_per_read=50))
        adapters.append(adapter)
        await adapter.connect()
        assert adapter._client is not None
        calls: list[int] = []
        original = adapter._client.uaclient.read

        async def counting(params: ua.ReadParameters) -> Any:
            calls.append(len(params.NodesToRead))
            return await original(params)

        adapter._client.uaclient.read = counting  # type: ignore[method-assign]
        readings = await adapter.read()
        assert calls == [50, 50, 20]
        assert [r.value for r in readings] == [float(i) for i in range(120)]
    finally:
        await srv.stop()


async def test_poll_outage_reads_bad_then_recovers_on_same_port(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter],
        caplog: pytest.LogCaptureFixture) -> None:
    adapter = OpcuaAdapter(device(server))
    adapters.append(adapter)
    caplog.set_level(logging.DEBUG, logger="plcbridge.opcua")
    assert all(r.quality is Quality.GOOD for r in await adapter.read())
    await server.stop()
    for _ in range(3):
        down = await adapter.read()
        assert all(r.quality is Quality.BAD and r.reason.startswith(("not connected", "timeout"))
                   for r in down), down
    assert not adapter.status.connected
    await server.start()
    readings: list[Reading] = []

    async def poll() -> bool:
        readings[:] = await adapter.read()
        return all(r.quality is Quality.GOOD for r in readings)

    deadline = time.monotonic() + 5
    while not await poll():
        assert time.monotonic() < deadline, readings
        await asyncio.sleep(0.02)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "recovered" in r.message]
    assert len(errors) == 1 and "plc1" in errors[0].getMessage()   # logged once, not per poll
    assert len(infos) == 1


# --------------------------------------------------------------------------- errors


async def test_unreachable_endpoint_is_one_named_error(adapters: list[OpcuaAdapter]) -> None:
    config = OpcuaDeviceConfig.model_validate({
        "name": "deadplc", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
        "mode": "poll", "timeout": 1.0, "tags": [{"name": "p", "node_id": "ns=2;i=1"}]})
    adapter = OpcuaAdapter(config)
    adapters.append(adapter)
    with pytest.raises(OpcuaConnectError) as info:
        await adapter.connect()
    assert info.value.kind == "unreachable"
    assert str(info.value).startswith("deadplc: not connected (opc.tcp://127.0.0.1:")
    [reading] = await adapter.read()
    assert reading.quality is Quality.BAD and reading.reason.startswith("not connected")


async def test_username_password_from_env_and_file(tmp_path: Path, adapters: list[OpcuaAdapter],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    srv = await OpcuaTestServer(users={"operator": "s3cret-pw"}).start()
    caplog.set_level(logging.DEBUG)
    try:
        monkeypatch.setenv("PLC_PW", "s3cret-pw")
        good = OpcuaAdapter(device(srv, username="operator", password_env="PLC_PW"))
        adapters.append(good)
        await good.connect()
        assert all(r.quality is Quality.GOOD for r in await good.read())

        (tmp_path / "pw").write_text("s3cret-pw\n")
        from_file = OpcuaAdapter(device(srv, username="operator", password_file=tmp_path / "pw"))
        adapters.append(from_file)
        await from_file.connect()

        monkeypatch.setenv("PLC_PW", "wrong-pw")
        wrong = OpcuaAdapter(device(srv, username="operator", password_env="PLC_PW"))
        adapters.append(wrong)
        with pytest.raises(OpcuaConnectError) as info:
            await wrong.connect()
        assert info.value.kind == "authentication"
        assert "plc1" in str(info.value) and "BadUserAccessDenied" in str(info.value)
        [reading, *_] = await wrong.read()
        assert reading.quality is Quality.BAD and "authentication failed" in reading.reason

        monkeypatch.delenv("PLC_PW")
        unset = OpcuaAdapter(device(srv, username="operator", password_env="PLC_PW"))
        adapters.append(unset)
        with pytest.raises(OpcuaConnectError, match="PLC_PW is not set"):
            await unset.connect()
    finally:
        await srv.stop()
    assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text


async def test_secure_policies_and_modes_with_generated_certificates(
        tmp_path: Path, adapters: list[OpcuaAdapter]) -> None:
    server_cert = await make_cert(tmp_path, "server", "urn:freeopcua:python:server", server=True)
    client_cert, client_key = await make_cert(tmp_path, "client", CLIENT_URI, server=False)
    srv = await OpcuaTestServer(security=server_cert).start()
    try:
        for policy in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"):
            for mode in ("Sign", "SignAndEncrypt"):
                adapter = OpcuaAdapter(device(srv, security_policy=policy, security_mode=mode,
                                              certificate=client_cert, private_key=client_key,
                                              server_certificate=server_cert[0],
                                              application_uri=CLIENT_URI))
                adapters.append(adapter)
                await adapter.connect()
                assert adapter._client is not None
                active = adapter._client.security_policy
                assert active.Mode == getattr(ua.MessageSecurityMode, mode)
                assert active.URI.endswith("#" + policy)
                assert all(r.quality is Quality.GOOD for r in await adapter.read())
                await adapter.close()

        # The same server refuses an unsecured session: one named error, not a hang.
        plain = OpcuaAdapter(device(srv, name="plain"))
        adapters.append(plain)
        with pytest.raises(OpcuaConnectError) as info:
            await plain.connect()
        assert str(info.value).startswith("plain: not connected") and info.value.kind == "security"
        assert "no endpoint offers None/None" in str(info.value)  # the wrong policy, named
    finally:
        await srv.stop()


# --------------------------------------------------------------------------- subscribe mode


async def test_subscribe_delivers_initial_values_and_every_change(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(server, mode="subscribe", publishing_interval=0.02,
                                  sampling_interval=0.0, queue_size=100, poll_interval=30))
    adapters.append(adapter)
    sink = Collected()
    assert await adapter.subscribe(sink) is True
    await until(lambda: {r.tag for r in sink.readings} >= {"pressure", "flow", "running", "temperature"},
                what="initial values")
    for value in (5.0, 6.0, 7.0, 8.0):
        await server.set("pressure", value)
        await until(lambda v=value: sink.values("pressure")[-1:] == [v], what=f"pressure {value}")
    assert sink.values("pressure") == [4.25, 5.0, 6.0, 7.0, 8.0]
    when = datetime(2026, 3, 3, 3, 3, 3, tzinfo=UTC)
    await server.set("flow", 99, source_time=when, status=ua.StatusCodes.UncertainSubstituteValue)
    await until(lambda: (latest := sink.latest("flow")) is not None and latest.value == 99.0,
                what="flow change")
    flow = sink.latest("flow")
    assert flow is not None
    assert (flow.quality, flow.reason, flow.source_time) == (
        Quality.UNCERTAIN, "UncertainSubstituteValue", when.timestamp())


async def test_absolute_deadband_and_refused_items(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    tags = [{"name": "pressure", "node_id": server.node_id("pressure")},
            {"name": "ghost", "node_id": f"ns={server.ns};s=No.Such.Node"}]
    adapter = OpcuaAdapter(device(server, mode="subscribe", publishing_interval=0.02,
                                  sampling_interval=0.0, poll_interval=30, tags=tags,
                                  deadband_type="absolute", deadband_value=1.0))
    adapters.append(adapter)
    sink = Collected()
    await adapter.subscribe(sink)
    await until(lambda: sink.values("pressure") == [4.25], what="initial value")
    ghost = sink.latest("ghost")
    assert ghost is not None and (ghost.quality, ghost.reason) == (Quality.BAD, "BadNodeIdUnknown")
    for value in (4.5, 4.75, 6.0):   # +0.25 and +0.5 are inside the deadband; +1.75 is not
        await server.set("pressure", value)
    await until(lambda: sink.values("pressure")[-1:] == [6.0], what="change beyond the deadband")
    assert sink.values("pressure") == [4.25, 6.0]


async def test_poll_mode_does_not_subscribe(adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(OpcuaDeviceConfig.model_validate({
        "name": "p", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:9", "mode": "poll"}))
    adapters.append(adapter)
    assert await adapter.subscribe(Collected()) is False
    assert adapter.sessions == 0


async def test_subscription_resumes_after_server_restart_without_duplicates(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(server, mode="subscribe", publishing_interval=0.02,
                                  poll_interval=30, names=["pressure", "flow"]))
    adapters.append(adapter)
    sink = Collected()
    await adapter.subscribe(sink)
    await until(lambda: len(sink.values("pressure")) == 1, what="initial value")

    await server.stop()
    lost = await until(lambda: all((r := sink.latest(t)) is not None and r.quality is Quality.BAD
                                   for t in ("pressure", "flow")), timeout=5, what="bad quality")
    assert not adapter.status.connected
    outage = sink.latest("pressure")
    assert outage is not None and outage.reason.startswith("not connected")

    await server.start()   # same port; a fresh server (values reset to their initial ones)
    restarted = time.monotonic()  # from the moment it answers (asyncua needs ~1.5 s to start)
    resumed = await until(lambda: (r := sink.latest("pressure")) is not None
                          and r.quality is Quality.GOOD, timeout=5, what="values after restart")
    resumed = time.monotonic() - restarted
    assert adapter.sessions == 2
    await server.set("pressure", 9.5)
    await until(lambda: sink.values("pressure")[-1:] == [9.5], what="change after restart")
    # Exactly one callback per change: settle one more change, then count.
    await server.set("pressure", 10.5)
    await until(lambda: sink.values("pressure")[-1:] == [10.5], what="second change")
    assert sink.values("pressure")[-3:] == [4.25, 9.5, 10.5]
    assert sink.values("pressure").count(9.5) == 1 and sink.values("pressure").count(10.5) == 1
    print(f"\nsession lost detected in {lost:.3f} s; values flow {resumed:.3f} s after restart")
    assert resumed < 3.0


async def test_hung_server_is_detected_by_keepalive_and_recovered(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    proxy = await FreezableProxy(server.port).start()
    try:
        adapter = OpcuaAdapter(device(server, mode="subscribe", publishing_interval=0.05,
                                      poll_interval=30, names=["pressure"], timeout=1.0,
                                      endpoint=f"opc.tcp://127.0.0.1:{proxy.port}/plc"))
        adapters.append(adapter)
        sink = Collected()
        await adapter.subscribe(sink)
        await until(lambda: len(sink.values("pressure")) == 1, what="initial value")

        proxy.frozen = True   # TCP stays open, nothing answers
        detected = await until(lambda: (r := sink.latest("pressure")) is not None
                               and r.quality is Quality.BAD, timeout=5, what="hang detected")
        # Stay hung through at least one reconnect attempt: it must time out, not hang.
        await until(lambda: adapter.status.errors.get("timeout", 0) >= 1, timeout=5,
                    what="a reconnect attempt timing out")
        proxy.frozen = False
        await server.set("pressure", 5.5)
        recovered = await until(lambda: sink.values("pressure")[-1:] == [5.5], timeout=8,
                                what="values after the hang")
        print(f"\nhang detected in {detected:.3f} s (keepalive 0.2 s); "
              f"values flow {recovered:.3f} s after the server answers again")
        assert detected < 2.0
        assert sink.values("pressure").count(5.5) == 1
        assert adapter.sessions == 2 and adapter.status.connected
    finally:
        await proxy.stop()


async def test_subscribed_values_are_refreshed_while_the_session_lives(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(server, mode="subscribe", publishing_interval=0.02,
                                  poll_interval=0.1, names=["pressure"]))
    adapters.append(adapter)
    sink = Collected()
    await adapter.subscribe(sink)
    await until(lambda: len(sink.readings) >= 3, what="refreshes")
    first, *rest = sink.readings[:3]
    assert all(r.value == first.value and r.source_time == first.source_time for r in rest)
    assert rest[-1].received_time > first.received_time


async def test_dead_endpoint_does_not_slow_a_live_device(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    # A "hung" peer: accepts TCP and never answers a byte.
    hung = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        dead = OpcuaAdapter(OpcuaDeviceConfig.model_validate({
            "name": "hung", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}",
            "mode": "poll", "timeout": 1.0, "tags": [{"name": "x", "node_id": "i=1"}]}))
        live = OpcuaAdapter(device(server))
        adapters.extend([dead, live])
        await live.connect()
        started = time.monotonic()
        dead_read = asyncio.create_task(dead.read())
        latencies = []
        while not dead_read.done():
            t0 = time.monotonic()
            assert all(r.quality is Quality.GOOD for r in await live.read())
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)
        [reading] = dead_read.result()
        elapsed = time.monotonic() - started
        assert reading.quality is Quality.BAD and "timeout" in reading.reason
        assert elapsed < 3.5      # bounded by the dead device's own timeout (connect: 2 x 1 s)
        assert max(latencies) < 0.25, latencies
    finally:
        hung.close()
        await hung.wait_closed()


# --------------------------------------------------------------------------- write-back


@dataclass(frozen=True)
class NodeTarget:
    node_id: str
    min: float | None = None
    max: float | None = None


async def test_write_many_encodes_by_node_datatype_and_checks_ranges(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(server))
    adapters.append(adapter)
    score, flag, beat = (NodeTarget(server.node_id(n)) for n in ("score", "anomaly", "heartbeat"))
    await adapter.write_many([(score, 1.5), (flag, 1.0), (beat, 7.0)])
    assert await server.nodes["score"].read_value() == 1.5
    assert await server.nodes["anomaly"].read_value() is True
    assert await server.nodes["heartbeat"].read_value() == 7
    assert (await server.nodes["heartbeat"].read_data_value()).Value.VariantType == ua.VariantType.UInt16

    refusals = [((beat, 70000.0), "outside 0..65535"), ((beat, 1.5), "not an integer"),
                ((flag, 2.0), "not 0 or 1"), ((score, float("nan")), "not finite"),
                ((NodeTarget(server.node_id("score"), max=1.0), 2.0), "above configured max")]
    for item, message in refusals:
        with pytest.raises(WriteRefusedError, match=message):
            # A refused value stops the whole batch: the valid first item is not written either.
            await adapter.write_many([(score, 9.0), item])
        assert await server.nodes["score"].read_value() == 1.5

    with pytest.raises(DeviceExceptionError, match=r"BadNotWritable|BadUserAccessDenied"):
        await adapter.write(NodeTarget(server.node_id("readonly")), 1.0)
    with pytest.raises(DeviceExceptionError, match="BadNodeIdUnknown"):
        await adapter.write(NodeTarget(f"ns={server.ns};s=No.Such.Node"), 1.0)


async def test_write_to_a_stopped_server_is_not_connected(
        server: OpcuaTestServer, adapters: list[OpcuaAdapter]) -> None:
    adapter = OpcuaAdapter(device(server, timeout=1.0))
    adapters.append(adapter)
    await adapter.write(NodeTarget(server.node_id("score")), 2.0)
    await server.stop()
    with pytest.raises(NotConnectedError, match="plc1"):
        await adapter.write(NodeTarget(server.node_id("score")), 3.0)


# --------------------------------------------------------------------------- wiring


async def test_bridge_runs_a_subscribed_opcua_device(server: OpcuaTestServer) -> None:
    from bridge.runtime.bridge import Bridge

    config = parse_config({"api": {"enabled": False}, "devices": [{
        "name": "plc1", "protocol": "opcua", "endpoint": server.url, "mode": "subscribe",
        "publishing_interval": 0.02, "tags": [{"name": "pressure", "node_id": server.node_id("pressure"),
                                                "unit": "bar"}]}, {
        "name": "plc1-polled", "protocol": "opcua", "endpoint": server.url, "mode": "poll",
        "poll_interval": 0.05, "tags": [{"name": "flow", "node_id": server.node_id("flow")}]}]})
    bridge = Bridge(config)
    await bridge.start()
    try:
        await until(lambda: (r := bridge.store.latest("pressure")) is not None and r.value == 4.25,
                    what="initial value in the store")
        await server.set("pressure", 6.0)
        await until(lambda: (r := bridge.store.latest("pressure")) is not None and r.value == 6.0,
                    what="change in the store")
        await server.set("flow", 33)
        await until(lambda: (r := bridge.store.latest("flow")) is not None and r.value == 33.0,
                    what="polled value in the store")
        assert bridge.adapters["plc1"].status.connected
        assert bridge.adapters["plc1-polled"].status.polls > 1
    finally:
        await bridge.stop()


def test_registry_builds_opcua_adapter_and_modbus_only_never_imports_asyncua() -> None:
    config = parse_config({"devices": [{"name": "o", "protocol": "opcua",
                                        "endpoint": "opc.tcp://127.0.0.1:4840"}]})
    assert isinstance(create_adapter(config.devices[0]), OpcuaAdapter)
    code = ("import sys; from bridge.config import load_config; from bridge.runtime.bridge import Bridge; "
            "from adapters import create_adapter; "
            f"c = load_config({str(ROOT / 'config.example.toml')!r}); "
            "[create_adapter(d) for d in c.devices]; "
            "assert 'asyncua' not in sys.modules, 'asyncua imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_check_prints_opcua_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main

    (tmp_path / "c.toml").write_text(
        '[[devices]]\nname = "line2"\nprotocol = "opcua"\nendpoint = "opc.tcp://10.0.0.5:4840"\n'
        'username = "op"\npassword_env = "PW"\n'
        '[[devices.tags]]\nname = "p"\nnode_id = "ns=2;s=Pump1.Pressure"\nunit = "bar"\n')
    assert main(["check", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out
    assert "device line2: opcua subscribe opc.tcp://10.0.0.5:4840 (None/None, user op)" in out
    assert "ns=2;s=Pump1.Pressure [bar]" in out


async def test_server_certificate_trust_folder_and_trust_on_first_use(
        tmp_path: Path, adapters: list[OpcuaAdapter]) -> None:
    server_cert, server_key = await make_cert(tmp_path, "server", "urn:freeopcua:python:server",
                                              server=True)
    impostor_cert = await make_cert(tmp_path / "impostor", "server", "urn:freeopcua:python:server",
                                    server=True)
    client_cert, client_key = await make_cert(tmp_path, "client", CLIENT_URI, server=False)
    secure = {"security_policy": "Basic256Sha256", "certificate": client_cert,
              "private_key": client_key, "application_uri": CLIENT_URI}
    trusted = tmp_path / "trusted"
    srv = await OpcuaTestServer(security=(server_cert, server_key)).start()
    try:
        # An empty trust folder: refused, named, and the offered certificate kept for review.
        refused = OpcuaAdapter(device(srv, trusted_servers=trusted, **secure))
        adapters.append(refused)
        with pytest.raises(OpcuaConnectError) as info:
            await refused.connect()
        assert str(info.value).startswith("plc1: not connected") and "is not trusted" in str(info.value)
        [rejected] = (trusted / "rejected").iterdir()
        # The operator moves it into the folder: trusted from then on.
        rejected.rename(trusted / "plc1-server.der")
        ok = OpcuaAdapter(device(srv, trusted_servers=trusted, **secure))
        adapters.append(ok)
        await ok.connect()
        assert all(r.quality is Quality.GOOD for r in await ok.read())
        await ok.close()

        # Trust on first use: the first certificate is saved, a different one later is refused.
        tofu_folder = tmp_path / "tofu"
        first = OpcuaAdapter(device(srv, trusted_servers=tofu_folder, trust_on_first_use=True, **secure))
        adapters.append(first)
        await first.connect()
        assert (tofu_folder / "plc1.der").is_file()
        await first.close()
    finally:
        await srv.stop()
    impostor = await OpcuaTestServer(port=srv.port, security=impostor_cert).start()
    try:
        again = OpcuaAdapter(device(impostor, trusted_servers=tofu_folder, trust_on_first_use=True,
                                    **secure))
        adapters.append(again)
        with pytest.raises(OpcuaConnectError, match="differs from the one trusted on first use"):
            await again.connect()
    finally:
        await impostor.stop()

"""``plcbridge simulate --opcua``: the simulated pump station served over OPC UA.

The OPC UA adapter subscribes to it like to any plant server; writing Pump.FaultCode injects
a fault exactly like holding register 200 on the Modbus side; the demo model scores it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from adapters.opcua.client import OpcuaAdapter
from adapters.sim.opcua import OpcuaSimulatorHandle, opcua_demo_config, start_opcua_simulator
from bridge.config import NodeTarget, OpcuaDeviceConfig
from bridge.core.errors import DeviceExceptionError
from bridge.core.tags import Quality, Reading
from bridge.runtime.bridge import Bridge
from tests.waiting import until

SPEED = 10.0
SIGNALS = {"pressure": (0.5, 10.0), "flow": (1.0, 200.0), "current": (1.0, 100.0),
           "temperature": (10.0, 120.0), "vibration": (0.0, 20.0)}
pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[OpcuaSimulatorHandle]:
    handle = await start_opcua_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=SPEED)
    yield handle
    await handle.stop()


def device(sim: OpcuaSimulatorHandle) -> OpcuaDeviceConfig:
    tags = [{"name": n, "node_id": sim.node_id(f"Pump.{n.capitalize()}")} for n in SIGNALS]
    tags += [{"name": "running", "node_id": sim.node_id("Pump.Running")},
             {"name": "fault", "node_id": sim.node_id("Pump.FaultCode")}]
    return OpcuaDeviceConfig.model_validate({
        "name": "sim", "protocol": "opcua", "endpoint": sim.url, "mode": "subscribe",
        "publishing_interval": 0.02, "poll_interval": 30, "timeout": 2.0, "tags": tags})


async def test_subscribe_reads_plausible_values_and_fault_code_injects(
        sim: OpcuaSimulatorHandle) -> None:
    assert sim.node_id("Pump.Pressure") == "ns=2;s=Pump.Pressure"
    adapter = OpcuaAdapter(device(sim))
    latest: dict[str, Reading] = {}
    changes: dict[str, int] = {}

    def on_readings(readings: list[Reading]) -> None:
        for reading in readings:
            latest[reading.tag] = reading
            changes[reading.tag] = changes.get(reading.tag, 0) + 1

    try:
        assert await adapter.subscribe(on_readings)
        await until(lambda: all(changes.get(n, 0) >= 5 for n in SIGNALS), 10, "changing values")
        for name, (low, high) in SIGNALS.items():
            reading = latest[name]
            assert reading.quality is Quality.GOOD and isinstance(reading.value, float)
            assert low <= reading.value <= high, (name, reading.value)
        assert latest["running"].value is True and latest["fault"].value == 0.0

        await adapter.write(NodeTarget(node_id=sim.node_id("Pump.FaultCode")), 4)        # cavitation
        assert sim.modbus.plant.active_fault == "cavitation"
        assert sim.modbus.holding(200) == [4]                               # same plant as Modbus
        await until(lambda: latest["fault"].value == 4.0, 5, "fault code read back")
        with pytest.raises(DeviceExceptionError, match="BadOutOfRange"):
            await adapter.write(NodeTarget(node_id=sim.node_id("Pump.FaultCode")), 7)
        assert sim.modbus.plant.active_fault == "cavitation"
        await adapter.write(NodeTarget(node_id=sim.node_id("Pump.FaultCode")), 0)
        assert sim.modbus.plant.active_fault is None
        with pytest.raises(DeviceExceptionError, match=r"BadNotWritable|BadUserAccessDenied"):
            await adapter.write(NodeTarget(node_id=sim.node_id("Pump.Pressure")), 1.0)
    finally:
        await adapter.close()


async def test_demo_model_scores_the_opcua_plant(sim: OpcuaSimulatorHandle) -> None:
    bridge = Bridge(opcua_demo_config(sim.port, api_port=0), speed=SPEED)
    await bridge.start()
    try:
        await until(lambda: (s := bridge.scores.latest("pump")) is not None and s.window_valid,
                    20, "a valid window scored from OPC UA readings")
    finally:
        await bridge.stop()


async def test_cli_simulate_opcua_takes_speed() -> None:
    # `simulate --opcua --speed` ran the plant at 1x, the option silently ignored.
    import asyncio
    import os
    import sys
    from pathlib import Path

    from tests.mqtt_broker import free_port

    root = Path(__file__).resolve().parent.parent
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "simulate", "--opcua", "--port", str(free_port()),
        "--opcua-port", str(free_port()), "--speed", "50", stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    finally:
        proc.terminate()
        await proc.wait()
    assert "step=0.1s of plant time every 0.002s" in banner, banner

"""Write-back safety end to end, against the simulator's registers over Modbus TCP."""

from __future__ import annotations

import logging
import struct
import tomllib
from typing import Any

import pytest

from adapters.sim.modbus import start_simulator
from bridge.cli.demo import DEMO_TOML
from bridge.config import parse_config
from bridge.runtime.bridge import Bridge
from tests.fault_proxy import fault_proxy
from tests.waiting import until

SPEED = 10.0
pytestmark = pytest.mark.timeout(60)


def _config(source_port: int, plc_port: int, mode: str, score: dict[str, Any]) -> Any:
    """The demo plant read through ``source_port``; results written to ``plc_port`` directly,
    so the source can die while the write-back path stays up."""
    data = tomllib.loads(DEMO_TOML.format(port=source_port))
    data["writeback"]["mode"] = mode
    data["api"] = {"enabled": False}
    data["devices"].append({"name": "plc", "host": "127.0.0.1", "port": plc_port,
                            "poll_interval": 1.0, "tags": []})
    data["models"][0]["writeback"] = {
        "device": "plc", "score": {"address": 100, "type": "float32", **score},
        "anomaly": {"address": 102, "fail_safe": 1}, "heartbeat": {"address": 103},
        "window_valid": {"address": 104}}
    return parse_config(data)


def _float32(registers: list[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *registers))[0]
    return value


async def test_fail_safe_appears_when_the_source_device_dies() -> None:
    sim = await start_simulator("127.0.0.1", 0, seed=21, step=0.01, speed=SPEED)
    try:
        async with fault_proxy(sim.port) as proxy:
            bridge = Bridge(_config(proxy.port, sim.port, "on", {"fail_safe": -1.0}), speed=SPEED)
            await bridge.start()
            try:
                await until(lambda: sim.holding(104) == [1], 20, "a valid window written")
                assert sim.holding(102) == [0] and 0 <= _float32(sim.holding(100, 2)) < 1
                proxy.set("drop")
                await until(lambda: sim.holding(104) == [0], 10, "window_valid = 0")
                await until(lambda: sim.holding(102) == [1], 5, "anomaly fail-safe 1")
                assert _float32(sim.holding(100, 2)) == -1.0
                beat = sim.holding(103)[0]
                await until(lambda: sim.holding(103)[0] != beat, 5, "heartbeat still counting")
                proxy.set("pass")
                await until(lambda: sim.holding(104) == [1], 20, "recovery after the source returns")
            finally:
                await bridge.stop()
    finally:
        await sim.stop()


async def test_dry_run_writes_nothing_and_audits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plcbridge.audit")
    sim = await start_simulator("127.0.0.1", 0, seed=22, step=0.01, speed=SPEED)
    try:
        bridge = Bridge(_config(sim.port, sim.port, "dry-run", {}), speed=SPEED)
        await bridge.start()
        try:
            await until(lambda: bridge.writebacks["pump"].stats.dry_run >= 8, 20, "dry-run writes")
        finally:
            await bridge.stop()
        assert sim.holding(100, 5) == [0, 0, 0, 0, 0]
        lines = [r.getMessage() for r in caplog.records if r.name == "plcbridge.audit"]
        assert any(line.startswith("dry-run model=pump device=plc target=heartbeat at=holding 103")
                   for line in lines)
    finally:
        await sim.stop()


async def test_out_of_range_value_is_refused_and_audited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plcbridge.audit")
    sim = await start_simulator("127.0.0.1", 0, seed=23, step=0.01, speed=SPEED)
    try:
        # Any real score is above 1e-9: every score write must be refused, the rest written.
        bridge = Bridge(_config(sim.port, sim.port, "on", {"max": 1e-9}), speed=SPEED)
        await bridge.start()
        try:
            await until(lambda: bridge.writebacks["pump"].stats.refused >= 2, 20, "refusals")
            await until(lambda: sim.holding(104) == [1], 5, "the other targets written")
        finally:
            await bridge.stop()
        assert sim.holding(100, 2) == [0, 0]
        refusals = [r.getMessage() for r in caplog.records
                    if r.name == "plcbridge.audit" and r.levelno == logging.WARNING]
        assert refusals and "above configured max 1e-09" in refusals[0]
    finally:
        await sim.stop()

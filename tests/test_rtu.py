"""RTU on a serial line (socat pty pair) and RTU-over-TCP, several unit ids on one line."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.modbus.client import ModbusAdapter, open_lines
from bridge.config import ModbusDeviceConfig, RegisterTarget
from bridge.core.tags import Quality
from tests.modbus_servers import Unit, serial_server, socat_pair, tcp_server

pytestmark = pytest.mark.timeout(30)

UNITS = {
    1: Unit(holding={0: 0x4049, 1: 0x0FDB, 2: 101}, coils={0: True}),
    2: Unit(holding={0: 0xC020, 1: 0x0000, 2: 202}, coils={0: False}),
}
TAGS = [
    {"name": "f", "address": 0, "type": "float32"},
    {"name": "n", "address": 2, "type": "uint16"},
    {"name": "c", "table": "coil", "address": 0},
]
EXPECTED = {1: (pytest.approx(3.1415927), 101, True), 2: (-2.5, 202, False)}


def tagged(unit: int) -> list[dict[str, Any]]:
    return [{**tag, "name": f"u{unit}.{tag['name']}"} for tag in TAGS]


def values(readings: list[Any], unit: int) -> tuple[Any, ...]:
    got = {r.tag: r for r in readings}
    assert all(r.quality is Quality.GOOD for r in readings), readings
    return tuple(got[f"u{unit}.{name}"].value for name in ("f", "n", "c"))


needs_socat = pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat not installed (apt-get install socat): needed for pty pairs")


@needs_socat
@pytest.mark.asyncio
async def test_two_units_share_one_serial_client(tmp_path: Path) -> None:
    with socat_pair(tmp_path) as (server_end, client_end):
        async with serial_server(UNITS, server_end, probe_path=client_end):
            adapters = [
                ModbusAdapter(ModbusDeviceConfig(
                    name=f"rtu{unit}", transport="rtu", serial_port=client_end, unit_id=unit,
                    # ptys refuse parity changes (termios EINVAL); real RS-485 lines usually use E.
                    parity="N", timeout=1.0, inter_request_delay_ms=5, tags=tagged(unit)))
                for unit in (1, 2)
            ]
            try:
                for adapter in adapters:
                    await adapter.connect()
                assert open_lines() == [f"rtu:{client_end}"]
                for _ in range(5):
                    first, second = await asyncio.gather(*(a.read() for a in adapters))
                    assert values(first, 1) == EXPECTED[1]
                    assert values(second, 2) == EXPECTED[2]
                await adapters[1].write(RegisterTarget(address=2, type="uint16"), 303)
                assert values(await adapters[1].read(), 2)[1] == 303
                assert values(await adapters[0].read(), 1)[1] == 101
            finally:
                for adapter in adapters:
                    await adapter.close()
            assert open_lines() == []


@needs_socat
@pytest.mark.asyncio
async def test_inter_request_delay_spaces_requests_on_the_bus(tmp_path: Path) -> None:
    delay_ms = 40
    with socat_pair(tmp_path) as (server_end, client_end):
        async with serial_server(UNITS, server_end, probe_path=client_end):
            adapter = ModbusAdapter(ModbusDeviceConfig(
                name="rtu1", transport="rtu", serial_port=client_end, unit_id=1, parity="N",
                inter_request_delay_ms=delay_ms, tags=tagged(1)))
            try:
                await adapter.read()
                started = time.monotonic()
                for _ in range(3):  # 2 requests per read (registers, coils): 6 requests
                    await adapter.read()
                elapsed = time.monotonic() - started
            finally:
                await adapter.close()
    assert len(adapter.plan) == 2
    assert elapsed >= 6 * delay_ms / 1000 * 0.95, elapsed


@pytest.mark.asyncio
async def test_rtu_over_tcp_two_units() -> None:
    async with tcp_server(UNITS, rtu_framer=True) as server:
        adapters = [
            ModbusAdapter(ModbusDeviceConfig(
                name=f"gw{unit}", transport="rtu-over-tcp", host="127.0.0.1", port=server.port,
                unit_id=unit, timeout=1.0, tags=tagged(unit)))
            for unit in (1, 2)
        ]
        try:
            for _ in range(3):
                first, second = await asyncio.gather(*(a.read() for a in adapters))
                assert values(first, 1) == EXPECTED[1]
                assert values(second, 2) == EXPECTED[2]
            assert open_lines() == [f"rtu-over-tcp:127.0.0.1:{server.port}"]
            await adapters[0].write(RegisterTarget(address=0, type="float32"), 1.5)
            assert await server.holding(1, 0, 2) == [0x3FC0, 0x0000]
        finally:
            for adapter in adapters:
                await adapter.close()

"""The pump-station Modbus simulator, exercised over real TCP with a pymodbus client."""

from __future__ import annotations

import asyncio
import csv
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient

from adapters.sim.modbus import (
    SKAB_COLUMNS,
    SimulatorHandle,
    registers_to_float32,
    run_simulator_forever,
    start_simulator,
)

SKAB_FILE = Path("/work/shared/data/skab/valve1/0.csv")
RANGES = [(3.0, 6.5), (18.0, 42.0), (9.0, 16.0), (38.0, 62.0), (1.3, 3.0)]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    handle = await start_simulator("127.0.0.1", 0, seed=1, step=0.02)
    try:
        yield handle
    finally:
        await handle.stop()


@pytest_asyncio.fixture
async def client(sim: SimulatorHandle) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2)
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


async def read_signals(client: AsyncModbusTcpClient) -> list[float]:
    rr = await client.read_input_registers(0, count=10, device_id=1)
    assert not rr.isError(), rr
    return [registers_to_float32(rr.registers[i : i + 2]) for i in range(0, 10, 2)]


async def test_port_zero_binds_a_real_port_and_float32_values_are_plausible(
    sim: SimulatorHandle, client: AsyncModbusTcpClient
) -> None:
    assert sim.port > 0
    values = await read_signals(client)
    for value, (lo, hi) in zip(values, RANGES, strict=True):
        assert lo < value < hi, values
    # Input 20 is temperature × 10 as int16, from the same sample as the float.
    rr = await client.read_input_registers(0, count=21, device_id=1)
    temperature = registers_to_float32(rr.registers[6:8])
    assert abs(rr.registers[20] / 10.0 - temperature) <= 0.051
    coils = await client.read_coils(0, count=1, device_id=1)
    assert coils.bits[0] is True  # motor running


async def test_values_change_as_the_plant_steps(sim: SimulatorHandle, client: AsyncModbusTcpClient) -> None:
    first = await read_signals(client)

    async def changed() -> bool:
        return await read_signals(client) != first

    await wait_for(changed, what="input registers to change")
    assert sim.samples >= 2
    before = sim.samples
    await sim.wait_samples(3)
    assert sim.samples >= before + 3


async def test_fault_register_injects_reads_back_and_clears(
    sim: SimulatorHandle, client: AsyncModbusTcpClient
) -> None:
    rr = await client.read_holding_registers(200, count=1, device_id=1)
    assert rr.registers == [0]
    assert not (await client.write_register(200, 2, device_id=1)).isError()
    assert sim.plant.active_fault == "stuck"
    assert (await client.read_holding_registers(200, count=1, device_id=1)).registers == [2]

    # The stuck sensor (flow, input 2-3) freezes while the others move on.
    frozen = (await client.read_input_registers(0, count=4, device_id=1)).registers
    start = sim.samples

    async def stepped() -> bool:
        return sim.samples >= start + 5

    await wait_for(stepped, what="5 plant steps")
    now = (await client.read_input_registers(0, count=4, device_id=1)).registers
    assert now[2:4] == frozen[2:4] and now[0:2] != frozen[0:2]

    assert not (await client.write_register(200, 0, device_id=1)).isError()
    assert sim.plant.active_fault is None
    assert (await client.read_holding_registers(200, count=1, device_id=1)).registers == [0]


async def test_bad_fault_code_is_refused_with_illegal_value(
    sim: SimulatorHandle, client: AsyncModbusTcpClient
) -> None:
    rr = await client.write_register(200, 9, device_id=1)
    assert rr.isError() and rr.exception_code == 3
    assert sim.plant.active_fault is None


async def test_handle_inject_is_visible_in_the_fault_register(
    sim: SimulatorHandle, client: AsyncModbusTcpClient
) -> None:
    await sim.inject("cavitation")
    assert (await client.read_holding_registers(200, count=1, device_id=1)).registers == [4]
    assert sim.holding(200) == [4]
    await sim.inject("drift", duration=0.05)  # plant seconds: clears itself after a few steps

    async def cleared() -> bool:
        return (await client.read_holding_registers(200, count=1, device_id=1)).registers == [0]

    await wait_for(cleared, what="a timed fault to clear itself")


async def test_write_back_area_is_writable_and_readable(
    sim: SimulatorHandle, client: AsyncModbusTcpClient
) -> None:
    score = list(struct.unpack(">HH", struct.pack(">f", 1.25)))
    rr = await client.write_registers(100, [*score, 1, 77, 1], device_id=1)
    assert not rr.isError(), rr
    assert sim.holding(100, 5) == [*score, 1, 77, 1]
    assert registers_to_float32(sim.holding(100, 2)) == 1.25
    back = await client.read_holding_registers(100, count=10, device_id=1)
    assert back.registers == [*score, 1, 77, 1, 0, 0, 0, 0, 0]
    assert not (await client.write_register(103, 78, device_id=1)).isError()
    assert sim.holding(103) == [78]
    # Outside the map: Modbus exception 2, never a silent zero.
    rr = await client.read_holding_registers(150, count=1, device_id=1)
    assert rr.isError() and rr.exception_code == 2
    rr = await client.read_input_registers(40, count=1, device_id=1)
    assert rr.isError() and rr.exception_code == 2
    rr = await client.write_register(0, 1, device_id=1)
    assert rr.isError() and rr.exception_code == 2


def _skab_rows(n: int) -> list[dict[str, str]]:
    with SKAB_FILE.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        return [next(reader) for _ in range(n)]


@pytest.mark.skipif(not SKAB_FILE.exists(), reason="SKAB data not present")
async def test_replay_puts_the_first_csv_row_into_the_input_registers() -> None:
    sim = await start_simulator("127.0.0.1", 0, replay=SKAB_FILE, replay_speed=0.01)  # 100 s per row
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2)
    try:
        assert await client.connect()
        rr = await client.read_input_registers(0, count=33, device_id=1)
        assert not rr.isError(), rr
        row = _skab_rows(1)[0]
        got = [registers_to_float32(rr.registers[2 * i : 2 * i + 2]) for i in range(8)]
        want = [float(np.float32(row[c])) for c in SKAB_COLUMNS]
        assert got == want
        assert rr.registers[30] == int(float(row["anomaly"])) and rr.registers[32] == 0
    finally:
        client.close()
        await sim.stop()


@pytest.mark.skipif(not SKAB_FILE.exists(), reason="SKAB data not present")
async def test_replay_advances_one_row_per_interval() -> None:
    sim = await start_simulator("127.0.0.1", 0, replay=SKAB_FILE, replay_speed=50.0)
    try:

        async def third_row() -> bool:
            return sim.inputs(32)[0] >= 3

        await wait_for(third_row, what="the replay to reach row 3")
        regs = sim.inputs(0, 33)
        index = regs[32]
        row = _skab_rows(index + 1)[index]
        assert registers_to_float32(regs[6:8]) == float(np.float32(row["Pressure"]))
    finally:
        await sim.stop()


async def test_run_simulator_forever_prints_address_and_stops_on_cancel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = asyncio.create_task(
        run_simulator_forever("127.0.0.1", 0, 3, [(0.0, "spike")], None, 1.0), name="test.simulate"
    )
    out = ""

    async def printed() -> bool:
        nonlocal out
        out += capsys.readouterr().out
        return "fault=spike" in out

    try:
        await wait_for(printed, what="the listening line")
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", out)
        assert match, out
        client = AsyncModbusTcpClient("127.0.0.1", port=int(match.group(1)), timeout=2)
        assert await client.connect()
        rr = await client.read_holding_registers(200, count=1, device_id=1)
        client.close()
        assert rr.registers == [1]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "stopped" in capsys.readouterr().err

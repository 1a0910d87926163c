"""plcbridge's own Modbus server, read by an independent client (libmodbus' ``mbpoll``) and
by pymodbus, against a real bridge polling the simulated plant.

Values change every scoring cycle, so each check reads a whole model block in one request
(a consistent snapshot) and finds the Score it came from by its heartbeat: the heartbeat
counts scoring cycles, so heartbeat n is the n-th Score in the bridge's (and the REST API's)
score history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import shutil
import struct
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient

from adapters.modbus.register_map import (
    format_register_table,
    model_fingerprint,
    register_map,
    registers_command,
)
from adapters.modbus.server import ModbusServerSink
from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.api.app import create_app
from bridge.cli.demo import DEMO_TOML
from bridge.config import DEFAULT_MODEL, Config, parse_config
from bridge.config.servers import ModbusServerConfig, check_modbus_server
from bridge.core.scores import Score
from bridge.runtime.bridge import Bridge
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)
MBPOLL = shutil.which("mbpoll")
needs_mbpoll = pytest.mark.skipif(
    MBPOLL is None, reason="mbpoll is not installed (Debian package mbpoll; .ci/run installs it)")
SPEED = 10.0
PUMP_INPUTS = ["pressure", "flow", "current", "temperature", "vibration"]
PUMP_BLOCK = 1000  # base_address 0 + 1000 + 20 * slot 0


def _config(sim_port: int, *, second_model_first: bool = False) -> Config:
    data: dict[str, Any] = tomllib.loads(DEMO_TOML.format(port=sim_port))
    data["api"] = {"host": "127.0.0.1", "port": 0}
    if second_model_first:
        # A new model inserted *before* pump in [[models]]: its slot, not its position, counts.
        data["models"].insert(0, {"name": "pump2", "inputs": PUMP_INPUTS, "threshold": 0.5})
    return parse_config(data)


def _server(**kw: Any) -> ModbusServerConfig:
    values: dict[str, Any] = {"enabled": True, "port": 0, "refresh_interval": 0.05,
                              "models": {"pump": 0}, "devices": {"plant": 0}}
    return ModbusServerConfig(**(values | kw))


@dataclass
class Running:
    sim: SimulatorHandle
    bridge: Bridge
    sink: ModbusServerSink
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def running(server: ModbusServerConfig, *, second_model_first: bool = False,
                  ) -> AsyncIterator[Running]:
    sim = await start_simulator("127.0.0.1", 0, seed=5, step=0.01, speed=SPEED)
    bridge = Bridge(_config(sim.port, second_model_first=second_model_first), speed=SPEED)
    sink = ModbusServerSink(server)
    bridge.sinks.append(sink)
    transport = httpx.ASGITransport(app=create_app(bridge))
    try:
        await bridge.start()
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
            await until(lambda: (s := bridge.scores.latest("pump")) is not None and s.window_valid,
                        20, "a valid pump window")
            yield Running(sim, bridge, sink, http)
    finally:
        await bridge.stop()
        await sim.stop()


@pytest_asyncio.fixture
async def plant() -> AsyncIterator[Running]:
    async with running(_server()) as plant:
        yield plant


async def mbpoll(port: int, *args: str) -> tuple[int, str]:
    """Run mbpoll once (``-1``) against 127.0.0.1:port; returns (exit status, output)."""
    assert MBPOLL is not None
    process = await asyncio.create_subprocess_exec(
        MBPOLL, "-m", "tcp", "-a", "1", "-p", str(port), "-o", "2", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return int(process.returncode or 0), out.decode(errors="replace")


def _values(output: str) -> dict[int, str]:
    """mbpoll prints one ``[reference]: value`` line per value (1-based references)."""
    return {int(ref): value for ref, value in re.findall(r"^\[(\d+)\]:\s+(\S+)", output, re.M)}


async def mbpoll_words(port: int, table: str, address: int, count: int) -> list[int]:
    # -r is a 1-based reference (mbpoll's default): wire address + 1.
    status, out = await mbpoll(port, "-1", "-t", table, "-r", str(address + 1), "-c", str(count),
                               "127.0.0.1")
    assert status == 0, out
    values = _values(out)
    return [int(values[address + 1 + i]) & 0xFFFF for i in range(count)]


def _f32(words: list[int], big: bool = True) -> float:
    hi, lo = (words[0], words[1]) if big else (words[1], words[0])
    value: float = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    return value


def _u32(words: list[int], big: bool = True) -> int:
    hi, lo = (words[0], words[1]) if big else (words[1], words[0])
    return hi << 16 | lo


def _as_f32(value: float) -> float:
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


async def _check_block(plant: Running, model: str, words: list[int], big: bool = True) -> None:
    """A 14-word model block equals the Score (REST and in memory) its heartbeat points to."""
    heartbeat = words[6]
    assert heartbeat > 0
    history = (await plant.http.get(f"/api/v1/models/{model}/scores",
                                    params={"limit": 10_000})).json()
    assert len(history) >= heartbeat, "history shorter than the heartbeat: it must count every cycle"
    rest = history[heartbeat - 1]
    score = plant.bridge.scores.history(model, limit=10_000)[heartbeat - 1]
    assert rest["score"] == score.score and rest["anomaly"] == score.anomaly
    if score.score is None:
        assert math.isnan(_f32(words[0:2], big))
    else:
        assert _f32(words[0:2], big) == _as_f32(score.score)
    assert _f32(words[2:4], big) == _as_f32(score.threshold) == _as_f32(rest["threshold"])
    assert words[4] == int(score.anomaly) and words[5] == int(score.window_valid)
    runner = plant.bridge.runners[model]
    assert words[7] == model_fingerprint(runner.detector.path)
    assert _u32(words[8:10], big) == int(score.time)
    # Counters are refreshed at scoring and every refresh_interval: never ahead of the runner.
    assert 0 < _u32(words[10:12], big) <= runner.scored
    assert _u32(words[12:14], big) <= runner.anomalies


# -- with mbpoll (libmodbus) ------------------------------------------------------------------


@needs_mbpoll
async def test_mbpoll_reads_scores_equal_to_rest(plant: Running) -> None:
    port = plant.sink.port
    assert port
    for table in ("3", "4"):  # the same image as input and as holding registers
        words = await mbpoll_words(port, table, PUMP_BLOCK, 14)
        await _check_block(plant, "pump", words)
    # mbpoll's own float decoding (-B: big-endian word order) agrees on the threshold.
    status, out = await mbpoll(port, "-1", "-t", "3:float", "-B", "-r", str(PUMP_BLOCK + 3), "-c", "1",
                               "127.0.0.1")
    assert status == 0, out
    assert float(_values(out)[PUMP_BLOCK + 3]) == plant.bridge.runners["pump"].threshold
    # Header and device block.
    header = await mbpoll_words(port, "3", 0, 6)
    assert header[0] == 1 and header[4] == 1 and header[5] == 1  # layout version, 1 model, 1 device
    await until(lambda: plant.sink.registers(1)[0] > 1, 5, "the alive counter to count")
    device = await mbpoll_words(port, "4", 100, 7)
    status_now = plant.bridge.adapters["plant"].status
    assert device[0] == 1 and _u32(device[1:3]) == status_now.error_count == 0
    assert 0 < _u32(device[3:5]) <= status_now.polls
    assert device[5] >= 1 and device[6] < 5  # latency ms; seconds since the last good poll


@needs_mbpoll
async def test_mbpoll_writes_and_unserved_addresses_are_refused(plant: Running) -> None:
    port = plant.sink.port
    assert port
    before = plant.sink.registers(PUMP_BLOCK + 4, 1)
    status, out = await mbpoll(port, "-t", "4", "-r", str(PUMP_BLOCK + 5), "127.0.0.1", "1")
    assert status != 0 and "Illegal data address" in out, out
    status, out = await mbpoll(port, "-t", "0", "-r", "1", "127.0.0.1", "1")  # a coil
    assert status != 0 and "Illegal data address" in out, out
    assert plant.sink.registers(PUMP_BLOCK + 4, 1) == before
    # Slot 1 is not configured: reading it fails loudly instead of returning zeros.
    status, out = await mbpoll(port, "-1", "-t", "3", "-r", str(PUMP_BLOCK + 20 + 1), "127.0.0.1")
    assert status != 0 and "Illegal data address" in out, out


@needs_mbpoll
async def test_little_word_order_and_base_address_with_mbpoll() -> None:
    async with running(_server(word_order="little", base_address=5000)) as plant:
        port = plant.sink.port
        assert port
        words = await mbpoll_words(port, "4", 5000 + PUMP_BLOCK, 14)
        await _check_block(plant, "pump", words, big=False)
        # mbpoll's default float word order is little (CDAB): no -B.
        status, out = await mbpoll(port, "-1", "-t", "4:float", "-r", str(5000 + PUMP_BLOCK + 3),
                                   "127.0.0.1")
        assert status == 0, out
        assert float(_values(out)[5000 + PUMP_BLOCK + 3]) == plant.bridge.runners["pump"].threshold
        status, out = await mbpoll(port, "-1", "-t", "3", "-r", "1", "127.0.0.1")  # below base
        assert status != 0 and "Illegal data address" in out, out


# -- with pymodbus' client --------------------------------------------------------------------


async def test_pymodbus_client_reads_scores_and_cannot_write(plant: Running) -> None:
    assert plant.sink.port
    client = AsyncModbusTcpClient("127.0.0.1", port=plant.sink.port, timeout=2, retries=0)
    try:
        assert await client.connect()
        for read in (client.read_input_registers, client.read_holding_registers):
            response = await read(PUMP_BLOCK, count=14, device_id=1)
            assert not response.isError(), response
            await _check_block(plant, "pump", list(response.registers))
        for write in (client.write_register(PUMP_BLOCK + 4, 1, device_id=1),
                      client.write_registers(PUMP_BLOCK, [0, 0], device_id=1),
                      client.write_coil(0, True, device_id=1)):
            response = await write
            assert response.isError() and response.exception_code == 2, response
        wrong_unit = await client.read_input_registers(0, count=1, device_id=2)
        assert wrong_unit.isError()
    finally:
        client.close()


async def test_adding_a_model_keeps_every_address() -> None:
    one = _server()
    two = _server(models={"pump": 0, "pump2": 1})
    rows_one = register_map(one, ["pump"], ["plant"])
    rows_two = register_map(two, ["pump2", "pump"], ["plant"])  # new model listed first
    assert set(rows_one) <= set(rows_two)
    assert {r.name: r.address for r in rows_two if r.name.startswith("model.pump2.")}["model.pump2.score"] \
        == PUMP_BLOCK + 20

    # And on the wire: pump's block is where it was, pump2's is the next slot.
    async with running(two, second_model_first=True) as plant:
        assert list(plant.bridge.runners) == ["pump2", "pump"]
        await until(lambda: (s := plant.bridge.scores.latest("pump2")) is not None and s.window_valid,
                    20, "a valid pump2 window")
        client = AsyncModbusTcpClient("127.0.0.1", port=plant.sink.port or 0, timeout=2, retries=0)
        try:
            assert await client.connect()
            for model, address in (("pump", PUMP_BLOCK), ("pump2", PUMP_BLOCK + 20)):
                response = await client.read_input_registers(address, count=14, device_id=1)
                assert not response.isError(), response
                await _check_block(plant, model, list(response.registers))
            threshold = await client.read_input_registers(PUMP_BLOCK + 22, count=2, device_id=1)
            assert _f32(list(threshold.registers)) == 0.5  # pump2's configured threshold
        finally:
            client.close()


async def test_scores_before_start_and_unslotted_models_are_harmless() -> None:
    sink = ModbusServerSink(_server())
    assert math.isnan(_f32(sink.registers(PUMP_BLOCK, 2)))  # not scored yet is not 0.0
    sink.on_score(Score("pump", 1_700_000_000.5, 0.25, 1.0, False, True))
    sink.on_score(Score("other", 1_700_000_000.5, 9.0, 1.0, True, True))  # no slot: ignored
    words = sink.registers(PUMP_BLOCK, 10)
    assert _f32(words[0:2]) == 0.25 and _f32(words[2:4]) == 1.0
    assert words[4:7] == [0, 1, 1] and _u32(words[8:10]) == 1_700_000_000
    await sink.stop()  # never started: nothing to stop, no error


# -- config and the printed table --------------------------------------------------------------


def test_config_rejects_duplicate_slots_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError, match="slot 0 is already used by model 'a'"):
        ModbusServerConfig(models={"a": 0, "b": 0})
    for bad in ({"models": {"a": 100}}, {"devices": {"d": 90}}, {"base_address": 62537},
                {"word_order": "middle"}, {"unit_id": 0}, {"colour": "red"}):
        with pytest.raises(ValidationError):
            ModbusServerConfig(**bad)
    assert ModbusServerConfig(base_address=62536).base_address == 62536


def test_cross_check_names_missing_and_unknown_slots() -> None:
    config = ModbusServerConfig(enabled=True, models={"pump": 0, "gone": 3}, devices={})
    errors = check_modbus_server(config, ["pump", "fan"], ["plant"])
    assert errors == [
        "modbus_server.models.gone: 'gone' is not a configured model (one of pump, fan)",
        "modbus_server.models: model 'fan' has no slot; add fan = 1 (slots keep the register map stable)",
        "modbus_server.devices: device 'plant' has no slot; add plant = 0 (slots keep the register map "
        "stable)",
    ]
    assert check_modbus_server(config.model_copy(update={"enabled": False}), ["fan"], []) == []


def test_register_table_for_scada() -> None:
    rows = register_map(_server(), ["pump"], ["plant"], versions={"pump": 0x1A2B})
    table = format_register_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["address", "input", "(FC4)", "holding", "(FC3)"]
    score = next(line for line in lines if "model.pump.score " in line)
    assert score.split()[:6] == ["1000-1001", "31001-31002", "41001-41002", "2", "float32", "ABCD"]
    assert "now 6699 = 0x1a2b" in next(line for line in lines if "model_version" in line)
    connected = next(line for line in lines if "device.plant.connected" in line)
    assert connected.split()[:4] == ["100", "30101", "40101", "1"]
    # Past 9998 the vendor numbering needs six digits.
    wide = format_register_table(register_map(_server(base_address=20000, word_order="little"),
                                              ["pump"], []))
    assert "321001-321002" in wide and "421001-421002" in wide and "float32 CDAB" in wide
    digest = hashlib.sha256(DEFAULT_MODEL.read_bytes()).digest()
    assert model_fingerprint(DEFAULT_MODEL) == digest[0] << 8 | digest[1]


def test_registers_command_prints_the_map(capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(5020)
    # Config carries [modbus_server] once wired; model_copy stands in for that here.
    wired = config.model_copy(update={"modbus_server": _server(port=5020, word_order="little")})
    assert registers_command(wired) == 0
    out = capsys.readouterr().out
    assert out.startswith("Modbus TCP server 127.0.0.1:5020 unit 1: enabled\n")
    assert "word order CDAB, low word first" in out and "not served" not in out
    fingerprint = model_fingerprint(DEFAULT_MODEL)
    assert f"now {fingerprint} = 0x{fingerprint:04x}" in out
    assert format_register_table(register_map(wired.modbus_server, ["pump"], ["plant"],  # type: ignore[attr-defined]
                                              versions={"pump": fingerprint})) in out
    # Without slots (or before [modbus_server] exists) the header is all it serves, and it says so.
    assert registers_command(config) == 0
    out = capsys.readouterr().out
    assert "disabled" in out and "not served (no slot" in out and "pump, plant" in out

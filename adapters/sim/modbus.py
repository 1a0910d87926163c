"""A Modbus TCP server ("slave") that serves the simulated pump station, or replays a CSV.

The simulator's datastore code lives here, server start/stop in ``adapters.modbus.datastore``
(shared with ``adapters.modbus.server``; pymodbus changes its datastore API between
versions; 3.16 already warns that ``ModbusSequentialDataBlock``/``ModbusDeviceContext`` go
away in v4).  This module uses the v4-style ``SimDevice``/``SimData`` directly, with
*separate* blocks for coils, discrete inputs, holding and input registers, and one ``action``
hook that serves live values and reacts to the fault-command register.

Register map (zero-based protocol addresses, i.e. what goes on the wire; in 3xxxx/4xxxx
documentation numbering add 30001/40001):

Plant mode (default)
    ====================  =====================================================================
    input   0-1           pressure, bar           float32, ABCD (big-endian words and bytes)
    input   2-3           flow, m3/h              float32, ABCD
    input   4-5           current, A              float32, ABCD
    input   6-7           temperature, °C         float32, ABCD
    input   8-9           vibration, mm/s         float32, ABCD
    input   20            temperature × 10        int16 (two's complement)
    coil    0             motor running           1 (read-only)
    holding 100-101       anomaly score           float32 ABCD   (write-back area, written by
    holding 102           anomaly flag            uint16          the bridge; the simulator
    holding 103           heartbeat               uint16          only stores it)
    holding 104           window valid            uint16
    holding 105-109       spare                   uint16
    holding 200           fault command           write 1-4 to inject (1 spike, 2 stuck,
                                                  3 drift, 4 cavitation), 0 to clear; reads
                                                  back the active fault code
    ====================  =====================================================================

Replay mode (``replay=FILE.csv``, SKAB format: ``;``-separated, header ``datetime;
Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;Voltage;
Volume Flow RateRMS;anomaly;changepoint``): one CSV row per second / ``replay_speed``,
looping at the end of the file.

    ====================  =====================================================================
    input   0-1           Accelerometer1RMS, g     float32 ABCD
    input   2-3           Accelerometer2RMS, g     float32 ABCD
    input   4-5           Current, A               float32 ABCD
    input   6-7           Pressure, bar            float32 ABCD
    input   8-9           Temperature, °C          float32 ABCD
    input   10-11         Thermocouple, °C         float32 ABCD
    input   12-13         Voltage, V               float32 ABCD
    input   14-15         Volume Flow RateRMS, l/min  float32 ABCD
    input   30            anomaly label            uint16 0/1
    input   31            changepoint label        uint16 0/1
    input   32            row index in the file    uint16 (wraps at 65536)
    ====================  =====================================================================

    In replay mode coil 0 and holding registers behave as above; the fault command is
    stored and read back but does not change the replayed data.

Only ``unit_id`` (default 1) is served; pymodbus 3.16 answers other unit ids with exception 4.

Unmapped addresses inside the blocks (e.g. input 10-19 in plant mode) read as 0; addresses
outside them (input >= 40, holding < 100, 110-199, > 200) answer exception 2 (illegal address).
"""

from __future__ import annotations

import asyncio
import csv
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.modbus.datastore import start_tcp_server, stop_server
from adapters.sim.plant import FAULT_NAMES, FAULTS, SIGNALS, PumpPlant
from bridge.core.aio import cancel_and_wait

__all__ = [
    "FAULT_REGISTER",
    "INPUT_COUNT",
    "PLANT_STEP",
    "SKAB_COLUMNS",
    "SimulatorHandle",
    "float32_to_registers",
    "read_skab_csv",
    "registers_to_float32",
    "run_simulator_forever",
    "start_simulator",
]

INPUT_COUNT = 40  # input registers 0..39
WRITEBACK_START, WRITEBACK_COUNT = 100, 10
FAULT_REGISTER = 200
# Plant seconds per update of `plcbridge simulate`: finer than any poll interval a bridge
# sensibly uses, so every poll sees a fresh value at any speed.
PLANT_STEP = 0.1
TEMPERATURE_X10_REGISTER = 20
SKAB_COLUMNS: tuple[str, ...] = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
SKAB_ANOMALY_REGISTER, SKAB_CHANGEPOINT_REGISTER, SKAB_ROW_REGISTER = 30, 31, 32

_FC_READ_COILS = 1
_FC_READ_INPUT = 4
_HOLDING_FCS = (3, 6, 16, 22, 23)


def float32_to_registers(value: float) -> list[int]:
    """IEEE float32, ABCD: high word first, big-endian bytes in each word."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def registers_to_float32(regs: Sequence[int]) -> float:
    """Inverse of ``float32_to_registers``."""
    return float(struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0])


def _int16(value: float) -> int:
    """Round, clamp to int16 and return the register (uint16) bit pattern."""
    v = max(-32768, min(32767, round(value)))
    return v & 0xFFFF


def plant_registers(values: dict[str, float]) -> list[int]:
    """Input-register image [0, INPUT_COUNT) for one plant sample."""
    regs = [0] * INPUT_COUNT
    for i, name in enumerate(SIGNALS):
        regs[2 * i : 2 * i + 2] = float32_to_registers(values[name])
    regs[TEMPERATURE_X10_REGISTER] = _int16(values["temperature"] * 10.0)
    return regs


@dataclass(frozen=True)
class SkabRow:
    values: tuple[float, ...]  # the 8 numeric columns in SKAB_COLUMNS order
    anomaly: int
    changepoint: int


def read_skab_csv(path: Path) -> list[SkabRow]:
    """Read a SKAB CSV; ValueError names the file and line on a bad header or value."""
    rows: list[SkabRow] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        missing = [c for c in (*SKAB_COLUMNS, "anomaly", "changepoint") if c not in (reader.fieldnames or [])]
        # anomaly-free.csv has no labels: treat them as 0 rather than refusing the file.
        if any(c in SKAB_COLUMNS for c in missing):
            raise ValueError(f"{path}: missing columns {missing} (header {reader.fieldnames})")
        for line, rec in enumerate(reader, start=2):
            try:
                rows.append(
                    SkabRow(
                        tuple(float(rec[c]) for c in SKAB_COLUMNS),
                        int(float(rec.get("anomaly") or 0)),
                        int(float(rec.get("changepoint") or 0)),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from exc
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return rows


def skab_registers(row: SkabRow, index: int) -> list[int]:
    """Input-register image for one SKAB row."""
    regs = [0] * INPUT_COUNT
    for i, value in enumerate(row.values):
        regs[2 * i : 2 * i + 2] = float32_to_registers(value)
    regs[SKAB_ANOMALY_REGISTER] = row.anomaly & 0xFFFF
    regs[SKAB_CHANGEPOINT_REGISTER] = row.changepoint & 0xFFFF
    regs[SKAB_ROW_REGISTER] = index & 0xFFFF
    return regs


@dataclass
class SimulatorHandle:
    """A running simulator: its address, the plant, and helpers for tests and the CLI."""

    host: str
    port: int
    unit_id: int
    plant: PumpPlant
    replay: Path | None
    _server: ModbusTcpServer = field(repr=False)
    _inputs: list[int] = field(repr=False)
    _holding: dict[int, int] = field(repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _samples: int = field(default=0, repr=False)

    @property
    def samples(self) -> int:
        """Plant steps (or replayed rows) served so far."""
        return self._samples

    async def wait_samples(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``n`` more samples have been served (TimeoutError after ``timeout`` s).

        For tests that poll faster than the plant steps: back-to-back polls of one sample are
        a flat window, which a model rightly scores as a stuck sensor.
        """
        target = self._samples + n
        async with asyncio.timeout(timeout):
            while self._samples < target:
                await asyncio.sleep(0.005)

    async def inject(self, fault: str | int, duration: float | None = None) -> None:
        """Inject a fault by name or code (0 / "none" clears) — same effect as writing register 200."""
        code = FAULTS[fault] if isinstance(fault, str) else fault
        if code == 0:
            self.plant.clear()
        else:
            self.plant.inject(FAULT_NAMES[code], duration)
        self._holding[FAULT_REGISTER] = code

    async def clear(self) -> None:
        await self.inject(0)

    def holding(self, address: int, count: int = 1) -> list[int]:
        """Current holding registers (what a client would read), e.g. the write-back area."""
        return [self._holding_value(a) for a in range(address, address + count)]

    def inputs(self, address: int, count: int = 1) -> list[int]:
        """Current input registers."""
        return list(self._inputs[address : address + count])

    def _holding_value(self, address: int) -> int:
        if address == FAULT_REGISTER and self.replay is None:
            return self.plant.fault_code  # faults with a duration clear themselves
        return self._holding.get(address, 0)

    async def stop(self) -> None:
        """Stop stepping and serving; close client connections. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await cancel_and_wait(self._task)
        await stop_server(self._server)

    async def __aenter__(self) -> SimulatorHandle:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # Called by pymodbus for every request, before it reads or writes its own registers.
    async def _action(
        self,
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if func_code == _FC_READ_INPUT:
            # Serve the latest sample: copy it into pymodbus' register list for this request.
            offset = address - start_address
            registers[offset : offset + count] = self._inputs[address : address + count]
            return None
        if func_code not in _HOLDING_FCS:
            return None
        if set_values:
            values = [int(v) for v in set_values]
            if address <= FAULT_REGISTER < address + len(values):
                code = values[FAULT_REGISTER - address]
                if code not in FAULT_NAMES:
                    return ExcCodes.ILLEGAL_VALUE
                self.plant.inject_code(code)
            for i, v in enumerate(values):
                self._holding[address + i] = v
        # Reads (and the read part of fc 23) see the live fault code.
        offset = FAULT_REGISTER - start_address
        if 0 <= offset < len(registers):
            registers[offset] = self._holding_value(FAULT_REGISTER)
        return None

    def _update_plant(self, step: float) -> None:
        self._inputs[:] = plant_registers(self.plant.step(step))
        self._samples += 1

    def _update_replay(self, rows: list[SkabRow]) -> None:
        index = self._samples % len(rows)  # loop at the end of the file
        self._inputs[:] = skab_registers(rows[index], index)
        self._samples += 1

    async def _run(self, interval: float, plant_dt: float, rows: list[SkabRow] | None) -> None:
        """Update the input image every ``interval`` s (the first sample is already there)."""
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            # Absolute schedule: a slow iteration does not stretch plant time.
            next_t += interval
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            if rows is None:
                self._update_plant(plant_dt)
            else:
                self._update_replay(rows)


def _device(unit_id: int, action: object) -> SimDevice:
    regs = DataType.REGISTERS
    return SimDevice(
        id=unit_id,
        simdata=(
            [SimData(0, values=[True] + [False] * 15, datatype=DataType.BITS, readonly=True)],  # coils
            [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)],  # discrete inputs
            [
                SimData(WRITEBACK_START, count=WRITEBACK_COUNT, values=0, datatype=regs),
                SimData(FAULT_REGISTER, values=0, datatype=regs),
            ],
            [SimData(0, count=INPUT_COUNT, values=0, datatype=regs, readonly=True)],
        ),
        action=action,  # type: ignore[arg-type]
    )


async def start_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int = 0,
    step: float = 0.1,
    unit_id: int = 1,
    replay: Path | None = None,
    replay_speed: float = 1.0,
    speed: float = 1.0,
) -> SimulatorHandle:
    """Start serving; returns once the port is bound and the first sample is in the registers.

    ``port=0`` binds a free port: read it from ``handle.port``.  Every ``step`` wall-clock
    seconds the plant advances by ``step * speed`` seconds of plant time (``speed`` > 1 runs
    the plant faster than real time, for tests).  With ``replay`` a SKAB CSV is played instead of the plant,
    one row per ``1 / replay_speed`` seconds.
    """
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    if replay_speed <= 0:
        raise ValueError(f"replay_speed must be > 0, got {replay_speed}")
    rows = read_skab_csv(Path(replay)) if replay is not None else None
    plant = PumpPlant(seed)
    handle_box: list[SimulatorHandle] = []

    async def action(
        fc: int, start: int, address: int, count: int, regs: list[int], values: list[int] | list[bool] | None
    ) -> ExcCodes | None:
        return await handle_box[0]._action(fc, start, address, count, regs, values)

    server, bound_port = await start_tcp_server(_device(unit_id, action), host, port)
    handle = SimulatorHandle(
        host=host,
        port=bound_port,
        unit_id=unit_id,
        plant=plant,
        replay=Path(replay) if replay is not None else None,
        _server=server,
        _inputs=[0] * INPUT_COUNT,
        _holding={},
    )
    handle_box.append(handle)
    # First sample before returning, so a client connecting right away never reads zeros.
    if rows is None:
        handle._update_plant(step * speed)
        interval, what = step, "plant"
    else:
        handle._update_replay(rows)
        interval, what = 1.0 / replay_speed, "replay"
    handle._task = asyncio.create_task(
        handle._run(interval, step * speed, rows), name=f"plcbridge[simulator:{bound_port}].{what}"
    )
    return handle


async def run_simulator_forever(
    host: str = "127.0.0.1",
    port: int = 5020,
    seed: int = 0,
    fault_schedule: list[tuple[float, str]] | None = None,
    replay: Path | None = None,
    replay_speed: float = 1.0,
    *,
    step: float | None = None,
    unit_id: int = 1,
    speed: float = 1.0,
) -> None:
    """Entry point for ``plcbridge simulate``: serve until cancelled (Ctrl-C), then stop cleanly.

    ``fault_schedule`` is a list of ``(wall-clock seconds after start, fault name or "none")``.
    ``step`` (wall seconds between updates) defaults to ``PLANT_STEP`` of plant time at any
    ``speed`` (at most 0.1 s of wall time).
    """
    if step is None:
        # A fixed wall step would advance a sped-up plant in jumps (20 s at 200x): a recorder
        # or bridge sampling it every plant second at the same speed would read each value
        # many times over, a staircase no model trained on the plant calls normal.
        step = PLANT_STEP / max(speed, 1.0)
    sim = await start_simulator(
        host, port, seed=seed, step=step, unit_id=unit_id, replay=replay, replay_speed=replay_speed,
        speed=speed,
    )
    mode = (f"replaying {replay} at {replay_speed:g}x" if replay
            else f"pump plant seed={seed} step={step * speed:g}s of plant time every {step:g}s")
    print(f"plcbridge simulator listening on {sim.host}:{sim.port} unit={unit_id} ({mode})", flush=True)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at, fault in sorted(fault_schedule or []):
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            await sim.inject(fault)
            print(f"t={at:g}s fault={fault}", flush=True)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await sim.stop()
        print("plcbridge simulator stopped", file=sys.stderr, flush=True)

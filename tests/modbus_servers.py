"""Real pymodbus servers for tests, started in-process on free loopback ports or ptys.

All server-side datastore code lives here (pymodbus 3.16 warns that its datastore classes
change in v4). We use ``SimDevice``/``SimData`` directly: their addresses are protocol
addresses (SimData(0) serves wire address 0), unlike the deprecated
``ModbusSequentialDataBlock`` whose first address must be 1 to serve address 0.

Usage::

    async with tcp_server({1: Unit(holding={0: 1, 1: 2})}) as server:
        ...  # server.port, await server.holding(1, 0, 2)

Every context manager waits until the server answers a real request before yielding, and
shuts it down (no tasks left) on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.modbus.frames import crc16

__all__ = [
    "RunningServer",
    "Unit",
    "dead_port",
    "serial_server",
    "silent_tcp_server",
    "socat_pair",
    "tcp_server",
]

READY_TIMEOUT = 5.0


@dataclass
class Unit:
    """Contents of one unit id. Addresses not given are unmapped (exception code 2)."""

    holding: Mapping[int, int] = field(default_factory=dict)
    input: Mapping[int, int] = field(default_factory=dict)
    coils: Mapping[int, bool] = field(default_factory=dict)
    discrete: Mapping[int, bool] = field(default_factory=dict)


def _runs(values: Mapping[int, int] | Mapping[int, bool], datatype: DataType) -> list[SimData]:
    """Contiguous address runs -> one SimData each."""
    blocks: list[SimData] = []
    run: list[int | bool] = []
    start = previous = -2
    for address in sorted(values):
        if address != previous + 1 and run:
            blocks.append(SimData(start, values=run, datatype=datatype))
            run = []
        if not run:
            start = address
        run.append(values[address])
        previous = address
    if run:
        blocks.append(SimData(start, values=run, datatype=datatype))
    return blocks


def _device(unit_id: int, unit: Unit) -> SimDevice:
    # A pymodbus block list may not be empty: park a one-value block far away.
    def blocks(values: Mapping[int, int] | Mapping[int, bool], datatype: DataType) -> list[SimData]:
        found = _runs(values, datatype)
        if not found:
            filler: int | bool = False if datatype == DataType.BITS else 0
            found = [SimData(65535, values=[filler], datatype=datatype)]
        return found

    return SimDevice(
        id=unit_id,
        # Separate blocks per table: (coils, discrete inputs, holding, input registers).
        simdata=(blocks(unit.coils, DataType.BITS), blocks(unit.discrete, DataType.BITS),
                 blocks(unit.holding, DataType.REGISTERS), blocks(unit.input, DataType.REGISTERS)),
    )


@dataclass
class RunningServer:
    """A started server. ``port`` is 0 for serial servers; ``path`` is set for them."""

    server: ModbusTcpServer | ModbusSerialServer
    port: int = 0
    path: str = ""

    async def holding(self, unit_id: int, address: int, count: int = 1) -> list[int]:
        """Current holding registers of the server's datastore (e.g. after a write)."""
        return [int(v) for v in await self.server.async_getValues(unit_id, 3, address, count)]

    async def set_holding(self, unit_id: int, address: int, values: list[int]) -> None:
        await self.server.async_setValues(unit_id, 16, address, values)


def _probe_frame(unit_id: int, rtu: bool) -> bytes:
    # FC3, address 0, count 1: any answer (registers or an exception) proves the server is up.
    pdu = bytes([unit_id, 3, 0, 0, 0, 1])
    if rtu:
        return pdu + crc16(pdu).to_bytes(2, "little")
    return bytes([0, 1, 0, 0, 0, len(pdu)]) + pdu


async def _wait_tcp_answers(port: int, unit_id: int, rtu: bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
            try:
                writer.write(_probe_frame(unit_id, rtu))
                await writer.drain()
                if await asyncio.wait_for(reader.read(256), 1):
                    return
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.02)
    raise RuntimeError(f"modbus server on port {port} did not answer within {READY_TIMEOUT} s: {last}")


def _probe_unit(units: Mapping[int, Unit]) -> int:
    return next(iter(units))


@contextlib.asynccontextmanager
async def tcp_server(units: Mapping[int, Unit], *, rtu_framer: bool = False,
                     port: int = 0) -> AsyncIterator[RunningServer]:
    """A Modbus TCP server on 127.0.0.1; ``rtu_framer`` for RTU-over-TCP.

    ``port=0`` (the default) picks a free port; pass a port only to restart a server where a
    client already points (reconnect tests).
    """
    framer = FramerType.RTU if rtu_framer else FramerType.SOCKET
    server = ModbusTcpServer([_device(uid, unit) for uid, unit in units.items()],
                             framer=framer, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        await _wait_tcp_answers(port, _probe_unit(units), rtu_framer)
        yield RunningServer(server, port=port)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def serial_server(units: Mapping[int, Unit], path: str, *, probe_path: str | None = None,
                        ) -> AsyncIterator[RunningServer]:
    """A Modbus RTU server on serial device ``path`` (one end of a socat pty pair).

    If ``probe_path`` (the other end) is given, wait until a request written there is
    answered, then drain it so the client starts with a clean line.
    """
    server = ModbusSerialServer([_device(uid, unit) for uid, unit in units.items()],
                                framer=FramerType.RTU, port=path, baudrate=19200, timeout=1,
                                reconnect_delay=0)
    await server.serve_forever(background=True)
    try:
        if probe_path is not None:
            await _wait_serial_answers(probe_path, _probe_unit(units))
        yield RunningServer(server, path=path)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def _wait_serial_answers(path: str, unit_id: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    try:
        def drain() -> None:
            os.read(fd, 256)
            got.set()

        loop.add_reader(fd, drain)
        deadline = time.monotonic() + READY_TIMEOUT
        while not got.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError(f"serial modbus server on {path} did not answer")
            os.write(fd, _probe_frame(unit_id, rtu=True))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got.wait(), 0.5)
        # Let the rest of the answer arrive and be drained by the reader before leaving.
        quiet_deadline = time.monotonic() + 0.2
        while time.monotonic() < quiet_deadline:
            got.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got.wait(), 0.05)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@contextlib.contextmanager
def socat_pair(directory: Path) -> Iterator[tuple[str, str]]:
    """Two linked ptys (``directory/a`` <-> ``directory/b``) made by socat; killed on exit."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed")
    a, b = str(directory / "a"), str(directory / "b")
    process = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not (os.path.exists(a) and os.path.exists(b)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not create {a} and {b}")
            time.sleep(0.01)  # polling a file system condition, not a fixed wait
        yield a, b
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def dead_port() -> int:
    """A loopback port nobody listens on: bound, then closed (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[int]:
    """Accepts TCP connections and never answers: a hung device. Yields the port."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()

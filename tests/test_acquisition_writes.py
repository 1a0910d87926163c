"""Issue 13.6, the device side of write-back: FC06 for devices that refuse FC16, an optional
read-back check (a mismatch is counted and audited), and writes before queued polls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator

import pytest

from adapters.modbus.client import ModbusAdapter
from bridge.config import ModbusDeviceConfig, RegisterTarget
from bridge.core.errors import DeviceExceptionError
from tests.modbus_servers import RunningServer, Unit, tcp_server

pytestmark = pytest.mark.timeout(30)


class OddGateway:
    """Forwards Modbus TCP frames to a real server, except: ``refuse_fc16`` answers FC16 with
    exception 1 (illegal function), ``swallow_writes`` acknowledges writes without passing
    them on, ``delay`` holds every request that long. Records each request's function code."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.refuse_fc16 = self.swallow_writes = False
        self.delay = 0.0
        self.functions: list[int] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                function = pdu[0]
                self.functions.append(function)
                if self.delay:
                    await asyncio.sleep(self.delay)  # a slow line: each request takes this long
                if function == 16 and self.refuse_fc16:
                    body = bytes([0x90, 1])
                elif function in (6, 16) and self.swallow_writes:
                    body = pdu[:5]  # the echo a device sends after a successful write
                else:
                    up_writer.write(header + pdu)
                    up_header = await up_reader.readexactly(7)
                    body = await up_reader.readexactly(struct.unpack(">H", up_header[4:6])[0] - 1)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        up_writer.close()
        writer.close()


@contextlib.asynccontextmanager
async def odd_gateway() -> AsyncIterator[tuple[OddGateway, RunningServer, int]]:
    async with tcp_server({1: Unit(holding={a: 0 for a in range(20)})}) as server:
        gateway = OddGateway(server.port)
        listener = await asyncio.start_server(gateway.handle, "127.0.0.1", 0)
        try:
            yield gateway, server, listener.sockets[0].getsockname()[1]
        finally:
            listener.close()


def _adapter(port: int, name: str = "plc", **extra: object) -> ModbusAdapter:
    return ModbusAdapter(ModbusDeviceConfig(
        name=name, host="127.0.0.1", port=port, timeout=1.0, retries=0,
        tags=[{"name": f"{name}.v", "address": 0, "type": "uint16"}], **extra))


FLOAT = RegisterTarget(address=10, type="float32")
FLAG = RegisterTarget(address=12)


async def test_fc06_for_a_device_that_refuses_fc16() -> None:
    async with odd_gateway() as (gateway, server, port):
        gateway.refuse_fc16 = True
        plain, fc06 = _adapter(port), _adapter(port, "plc6", write_function="fc06")
        try:
            with pytest.raises(DeviceExceptionError, match="illegal function"):
                await plain.write_many([(FLOAT, 1.5), (FLAG, 1)])
            gateway.functions.clear()
            await fc06.write_many([(FLOAT, 1.5), (FLAG, 1)])
            assert gateway.functions == [6, 6, 6]  # one register per request, in order
            assert await server.holding(1, 10, 3) == [0x3FC0, 0x0000, 1]
        finally:
            await plain.close()
            await fc06.close()


async def test_read_back_mismatch_is_counted_and_audited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plcbridge.audit")
    async with odd_gateway() as (gateway, _server, port):
        adapter = _adapter(port, write_verify=True)
        try:
            await adapter.write_many([(FLAG, 7)])
            assert adapter.status.write_mismatches == 0 and gateway.functions == [16, 3]
            gateway.swallow_writes = True  # the gateway acknowledges, the PLC never sees it
            await adapter.write_many([(FLAG, 9)])
            assert adapter.status.write_mismatches == 1
            assert adapter.status.errors == {"write_mismatch": 1}
            (line,) = [r.getMessage() for r in caplog.records if "read-back mismatch" in r.getMessage()]
            assert line == "read-back mismatch device=plc at=holding 12 wrote=[9] read=[7]"
        finally:
            await adapter.close()


async def test_write_goes_before_queued_polls() -> None:
    async with odd_gateway() as (gateway, _server, port):
        gateway.delay = 0.05
        # Five units' worth of polls on one line, then a write-back.
        pollers = [_adapter(port, f"u{i}") for i in range(5)]
        writer = _adapter(port, "w")
        done: list[str] = []
        try:
            async def poll(adapter: ModbusAdapter) -> None:
                await adapter.read()
                done.append(adapter.name)

            async def write() -> None:
                await writer.write(FLAG, 3)
                done.append("write")

            tasks = [asyncio.create_task(poll(a)) for a in pollers]
            await asyncio.sleep(0)  # the polls queue on the line first (one is on the wire)
            tasks.append(asyncio.create_task(write()))
            await asyncio.gather(*tasks)
            assert done.index("write") <= 1, done  # after at most the poll already on the wire
        finally:
            for adapter in [*pollers, writer]:
                await adapter.close()

"""Misbehaving devices: a raw Modbus TCP peer on loopback that answers with exception codes,
short or long replies, wrong unit or transaction ids, NaN/Inf floats. Every one becomes a
bad-quality reading with a reason and the device keeps being polled."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.modbus.client import ModbusAdapter
from bridge.config import ModbusDeviceConfig
from bridge.core.tags import Quality

pytestmark = pytest.mark.timeout(30)


class RawPeer:
    """Answers FC3 requests for two registers according to ``behaviour``."""

    def __init__(self) -> None:
        self.behaviour = "ok"
        self.registers = [0x4148, 0x0000]  # 12.5 as float32 ABCD
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                writer.write(self.reply(tid, unit, pdu))
                await writer.drain()

    def reply(self, tid: int, unit: int, pdu: bytes) -> bytes:
        function, _, count = struct.unpack(">BHH", pdu[:5])
        regs = self.registers[:count]
        body = struct.pack(">BB", function, 2 * count) + struct.pack(f">{count}H", *regs)
        kind, _, arg = self.behaviour.partition(":")
        if kind == "exception":
            body = struct.pack(">BB", function | 0x80, int(arg))
        elif kind == "short":
            body = struct.pack(">BB", function, 2 * count) + struct.pack(">H", regs[0])
        elif kind == "long":
            body = struct.pack(">BB", function, 2 * count + 2) + struct.pack(f">{count + 1}H", *regs, 7)
        elif kind == "wrong_unit":
            unit = (unit + 1) % 256
        elif kind == "wrong_tid":
            tid = (tid + 1000) % 65536
        elif kind == "wrong_fc":  # FC3 <-> FC4, right length: only the function code is wrong
            body = struct.pack(">BB", function ^ 7, 2 * count) + struct.pack(f">{count}H", *regs)
        elif kind == "pid":
            return struct.pack(">HHHB", tid, 7, len(body) + 1, unit) + body
        elif kind == "float":
            value = {"nan": float("nan"), "inf": float("inf"), "big": 1e6}[arg]
            body = struct.pack(">BB", function, 4) + struct.pack(">f", value)
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body


@contextlib.asynccontextmanager
async def raw_peer() -> AsyncIterator[tuple[RawPeer, int]]:
    peer = RawPeer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    try:
        yield peer, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


def _adapter(port: int) -> ModbusAdapter:
    return ModbusAdapter(ModbusDeviceConfig(
        name="odd", host="127.0.0.1", port=port, timeout=0.3, retries=0,
        tags=[{"name": "v", "address": 0, "type": "float32", "valid_min": 0, "valid_max": 100}]))


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("exception:1", "exception code 1 (illegal function)"),
    ("exception:2", "exception code 2 (illegal data address)"),
    ("exception:3", "exception code 3 (illegal data value)"),
    ("exception:4", "exception code 4 (server device failure)"),
    ("exception:10", "exception code 10 (gateway path unavailable)"),
    ("exception:11", "exception code 11 (gateway target device failed to respond)"),
    ("short", "bad reply: byte count 4 but 2 data bytes follow"),
    ("long", "decode error: reply carries 3 registers, asked for 2"),
    ("wrong_unit", "bad reply: reply from unit 2 to a request for unit 1"),
    ("wrong_tid", "bad reply: reply to transaction"),
    ("wrong_fc", "bad reply: function code 4 in reply to function code 3"),
    ("pid", "bad reply: protocol id 7 is not Modbus (0)"),
    ("float:nan", "not finite"),
    ("float:inf", "not finite"),
    ("float:big", "out of range"),
])
async def test_bad_reply_is_bad_quality_then_polling_goes_on(
        behaviour: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    async with raw_peer() as (peer, port):
        adapter = _adapter(port)
        try:
            await adapter.connect()
            good = (await adapter.read())[0]
            assert good.quality is Quality.GOOD and good.value == 12.5
            peer.behaviour = behaviour
            (reading,) = await adapter.read()
            assert reading.quality is Quality.BAD, reading
            assert reading.reason.startswith(reason) and reading.reason
            assert adapter.status.error_count >= 1
            peer.behaviour = "ok"
            # The device keeps being polled and recovers (a reconnect may take one poll).
            values: list[Any] = []
            for _ in range(3):
                values.append((await adapter.read())[0])
                if values[-1].quality is Quality.GOOD:
                    break
            assert values[-1].quality is Quality.GOOD and values[-1].value == 12.5, values
        finally:
            await adapter.close()
    # A broken reply is one clean line from the adapter, never an asyncio traceback.
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage() or r.exc_info]


async def test_input_read_answered_with_holding_reply_is_bad() -> None:
    """Issue 14.7: an FC4 read answered by an FC3 reply of the right length was good data."""
    async with raw_peer() as (peer, port):
        adapter = ModbusAdapter(ModbusDeviceConfig(
            name="odd", host="127.0.0.1", port=port, timeout=0.3, retries=0,
            tags=[{"name": "pressure", "table": "input", "address": 0, "type": "float32"}]))
        try:
            peer.behaviour = "wrong_fc"
            (reading,) = await adapter.read()
            assert reading.quality is Quality.BAD
            assert reading.reason == "bad reply: function code 3 in reply to function code 4"
            assert adapter.status.errors == {"bad_reply": 1}
        finally:
            await adapter.close()

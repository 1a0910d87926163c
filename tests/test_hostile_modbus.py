"""Hostile clients on plcbridge's own Modbus TCP server (issue 14, item 4), on real sockets
against a bridge polling the simulated plant: connection floods, idle and half-sent frames,
``length = 65535`` headers, malformed frames, pipelined requests, FC 17; and a bounded fuzz
target of random frames. Every attack ends with the bridge still polling and scoring."""

from __future__ import annotations

import asyncio
import logging
import random
import struct

import pytest
from pymodbus.client import AsyncModbusTcpClient

from tests.hostile import (
    FUZZ_CASES,
    Flood,
    Plant,
    assert_alive,
    check_fuzz_outcome,
    descriptors,
    hostile_plant,
    rss_mb,
)
from tests.waiting import until

pytestmark = pytest.mark.timeout(90 + FUZZ_CASES // 5)  # make fuzz raises FUZZ_CASES
PUMP_BLOCK = 1000


def read_request(tid: int, address: int = PUMP_BLOCK, count: int = 14, fc: int = 4,
                 unit: int = 1) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, address, count)


async def read_frame(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(7)
        length = struct.unpack(">H", header[4:6])[0]
        return header + await reader.readexactly(length - 1)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closes the connection within ``timeout`` s (reads EOF or reset)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def port_of(plant: Plant) -> int:
    assert plant.modbus is not None and plant.modbus.port
    return plant.modbus.port


async def test_connection_flood_is_capped_and_the_bridge_keeps_working(
        caplog: pytest.LogCaptureFixture) -> None:
    """1,100 silent connections: the server holds at most max_connections of them, so the
    descriptors stay bounded; SCADA still reads; the bridge still polls and scores; no
    traceback, one summary line."""
    caplog.set_level(logging.WARNING)
    async with hostile_plant(modbus={"max_connections": 16}) as plant:
        port = port_of(plant)
        baseline_fds, baseline_rss = descriptors(), rss_mb()
        async with Flood(port, 1100):
            await until(lambda: plant.modbus is not None and plant.modbus.connections <= 16, 5,
                        "the server to hold at most max_connections")
            flood_fds, flood_rss = descriptors(), rss_mb()
            assert flood_fds <= baseline_fds + 16 + 8, (baseline_fds, flood_fds)
            await assert_alive(plant)
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
            await client.connect()
            try:
                reply = await client.read_input_registers(PUMP_BLOCK, count=14, device_id=1)
                assert not reply.isError() and len(reply.registers) == 14
            finally:
                client.close()
        await until(lambda: descriptors() <= baseline_fds + 2, 5, "descriptors back to baseline")
        print(f"\nmodbus flood 1100: fds {baseline_fds} -> {flood_fds}, rss {baseline_rss:.0f} -> "
              f"{flood_rss:.0f} MB, server connections <= 16")
        await assert_alive(plant)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    summaries = [r for r in caplog.records if "modbus server refused" in r.getMessage()]
    assert 1 <= len(summaries) <= 3, [r.getMessage() for r in summaries]


async def test_idle_connections_and_half_frames_are_closed() -> None:
    """Silent connections close after idle_timeout; a half-sent frame and a header announcing
    65535 bytes close after frame_timeout; an active client is untouched."""
    async with hostile_plant(modbus={"idle_timeout": 1.0, "frame_timeout": 0.3}) as plant:
        port = port_of(plant)
        idle = await asyncio.open_connection("127.0.0.1", port)
        half = await asyncio.open_connection("127.0.0.1", port)
        huge = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(read_request(1)[:9])
        huge[1].write(struct.pack(">HHHB", 2, 0, 65535, 1) + b"\x03")
        assert await closed_by_server(half[0], 1.5), "half frame held"
        assert await closed_by_server(huge[0], 1.5), "length 65535 header held"
        assert await closed_by_server(idle[0], 3.0), "idle connection held"
        for _, writer in (idle, half, huge):
            writer.close()
        await until(lambda: plant.modbus is not None and plant.modbus.connections == 0, 2,
                    "no connection left")
        await assert_alive(plant)


async def test_pipelined_requests_are_each_answered_in_order() -> None:
    async with hostile_plant(modbus={}) as plant:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(plant))
        try:
            for burst in range(2, 11):
                tids = [burst * 100 + i for i in range(burst)]
                writer.write(b"".join(read_request(t, 0, 6, fc=3 + i % 2) for i, t in enumerate(tids)))
                answers = [await read_frame(reader) for _ in tids]
                assert [struct.unpack(">H", a[:2])[0] for a in answers] == tids
                assert all(a[7] in (3, 4) and a[8] == 12 for a in answers)  # 6 words each
        finally:
            writer.close()


async def test_unserved_function_codes_say_nothing_about_the_stack() -> None:
    """FC 17 (report server id) and FC 43 (device identification) are exception 1, and say
    nothing like "Pymodbus"; so is any function code the map does not serve."""
    async with hostile_plant(modbus={}) as plant:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(plant))
        try:
            for tid, pdu in enumerate((b"\x11", b"\x2b\x0e\x01\x00", b"\x08\x00\x00\x12\x34",
                                       b"\x07", b"\x41\x00"), start=1):
                writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, 1) + pdu)
                answer = await read_frame(reader)
                assert answer[7] == pdu[0] | 0x80 and answer[8] == 1, answer.hex()
                assert b"ymodbus" not in answer.lower()
        finally:
            writer.close()


async def test_malformed_frames_do_not_amplify_into_logs(caplog: pytest.LogCaptureFixture) -> None:
    """1,000 twelve-byte frames (half random bytes, half a valid header with a random PDU and
    unit id): a few summary lines, no traceback, no hex dump."""
    caplog.set_level(logging.DEBUG, logger="plcbridge")
    caplog.set_level(logging.WARNING)
    rng = random.Random(14)
    frames = [rng.randbytes(12) if i % 2 else
              struct.pack(">HHHB", i, 0, 6, rng.choice([1, 1, 0, 2, 255])) + rng.randbytes(5)
              for i in range(1000)]
    async with hostile_plant(modbus={"frame_timeout": 0.3}) as plant:
        port = port_of(plant)
        caplog.clear()

        async def send(chunk: list[bytes]) -> None:
            for frame in chunk:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(frame)
                writer.write_eof()
                await closed_by_server(reader, 5)
                writer.close()

        await asyncio.gather(*(send(frames[i::20]) for i in range(20)))
        await assert_alive(plant)
    text = "\n".join(r.getMessage() for r in caplog.records) + "".join(
        str(r.exc_info) for r in caplog.records if r.exc_info)
    print(f"\nmodbus 1000 malformed frames: {len(caplog.records)} log records, {len(text)} chars")
    assert len(text) < 2000, text[:2000]
    assert "Traceback" not in text and not any(r.exc_info for r in caplog.records)


async def test_fuzz_random_frames() -> None:
    """FUZZ_CASES random frames (valid-looking headers with random PDUs, random lengths,
    truncations, protocol ids): each answered or the connection closed, nothing hangs."""
    rng = random.Random(1414)
    cases = 0
    failures: list[str] = []
    async with hostile_plant(modbus={"frame_timeout": 0.1}) as plant:
        port = port_of(plant)
        baseline = descriptors()
        start_rss = rss_mb()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for case in range(FUZZ_CASES):
            kind = rng.random()
            pdu = bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(0, 12))
            if kind < 0.6:  # well framed, random content: must be answered
                frame = struct.pack(">HHHB", case & 0xFFFF, 0, len(pdu) + 1, 1) + pdu
                writer.write(frame)
                try:
                    answer = await read_frame(reader)
                    assert answer[:2] == frame[:2] and answer[7] & 0x7F == pdu[0] & 0x7F
                except (AssertionError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    failures.append(f"{frame.hex()}: {exc!r}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
            else:  # broken framing: the server closes (at once or after frame_timeout)
                length = rng.choice([0, 1, 255, 65535, len(pdu) + 1 + rng.randrange(1, 50)])
                protocol = rng.choice([0, 0, 1, 0xFFFF])
                writer.write(struct.pack(">HHHB", case & 0xFFFF, protocol, length, 1) + pdu)
                if not await closed_by_server(reader, 2):
                    failures.append(f"not closed: protocol {protocol} length {length} pdu {pdu.hex()}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            cases += 1
        writer.close()
        await check_fuzz_outcome(plant, "modbus", cases, failures, baseline, start_rss)


def test_systemd_unit_raises_the_descriptor_limit() -> None:
    """The unit raises the 1024 default far above the sum of the servers' largest caps."""
    from pathlib import Path

    unit = (Path(__file__).resolve().parent.parent / "packaging" / "plcbridge.service").read_text()
    values = [int(line.split("=", 1)[1]) for line in unit.splitlines()
              if line.startswith("LimitNOFILE=")]
    assert values == [8192]

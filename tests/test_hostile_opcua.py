"""Hostile clients on plcbridge's own OPC UA server (issue 14, item 5), on real sockets
against a bridge polling the simulated plant: chunk headers announcing 2 GiB before and
after Hello, a connection flood, refused writes in the log; and a bounded fuzz target of
random chunks. Every attack ends with the bridge still polling and scoring."""

from __future__ import annotations

import asyncio
import logging
import random
import struct

import pytest
from asyncua import Client, ua

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
from tests.test_hostile_modbus import closed_by_server
from tests.waiting import until

pytestmark = pytest.mark.timeout(90 + FUZZ_CASES // 5)  # make fuzz raises FUZZ_CASES
NS_URI = "urn:plcbridge:results"


def port_of(plant: Plant) -> int:
    assert plant.opcua is not None and plant.opcua.port
    return plant.opcua.port


def hello(url: str) -> bytes:
    body = struct.pack("<IIIII", 0, 65535, 65535, 0, 0) + struct.pack("<i", len(url)) + url.encode()
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


async def stream_until_closed(port: int, first: bytes, megabytes: int) -> bool:
    """Send ``first`` then up to ``megabytes`` MB of filler; True when the server closed the
    connection before all of it was accepted."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    filler = b"\0" * 65536
    try:
        writer.write(first)
        for _ in range(megabytes * 16):
            writer.write(filler)
            await asyncio.wait_for(writer.drain(), 5)
            if reader.at_eof():
                return True
        return await closed_by_server(reader, 2)
    except (ConnectionError, TimeoutError):
        return True
    finally:
        writer.close()


async def test_oversized_chunks_are_refused_before_buffering() -> None:
    """4 connections announce a 2 GiB chunk before Hello, 4 more after a valid Hello, and
    stream 16 MB each: every one is closed at once and memory stays put."""
    async with hostile_plant(opcua={}) as plant:
        port = port_of(plant)
        url = f"opc.tcp://127.0.0.1:{port}/plcbridge"
        baseline_fds, baseline_rss = descriptors(), rss_mb()
        giant = b"MSGF" + struct.pack("<I", 2**31)
        attacks = [giant for _ in range(4)]
        attacks += [hello(url) + giant for _ in range(4)]
        closed = await asyncio.gather(*(stream_until_closed(port, a, 16) for a in attacks))
        peak_rss = rss_mb()
        assert all(closed), closed
        await until(lambda: descriptors() <= baseline_fds + 1, 5, "descriptors back to baseline")
        print(f"\nopcua 2 GiB chunks x8 (16 MB sent each): rss {baseline_rss:.0f} -> "
              f"{peak_rss:.0f} MB, fds {baseline_fds} -> {descriptors()}")
        assert peak_rss - baseline_rss < 40
        assert plant.opcua is not None and plant.opcua.refusals.get("oversized_pre_hello_chunk", 0) >= 4
        assert plant.opcua.refusals.get("oversized_chunk", 0) >= 4
        await assert_alive(plant)


async def test_connection_flood_keeps_scada_sessions(caplog: pytest.LogCaptureFixture) -> None:
    """400 silent connections (asyncua listens with a backlog of 100: more only make the
    test slower, as the kernel drops SYNs): at most max_connections are kept, the oldest without a
    session go first, so a SCADA session keeps reading; no log line per connection."""
    caplog.set_level(logging.WARNING)
    async with hostile_plant(opcua={"max_connections": 16}) as plant:
        port = port_of(plant)
        assert plant.opcua is not None
        async with Client(plant.opcua.url, timeout=5) as scada:
            ns = await scada.get_namespace_index(NS_URI)
            threshold = scada.get_node(ua.NodeId("Models.pump.Threshold", ns))
            baseline_fds, baseline_rss = descriptors(), rss_mb()
            async with Flood(port, 400):
                await until(lambda: descriptors() <= baseline_fds + 16 + 8, 10,
                            "the server to hold at most max_connections")
                flood_fds, flood_rss = descriptors(), rss_mb()
                assert (await threshold.read_value()) > 0
                await assert_alive(plant)
            await until(lambda: descriptors() <= baseline_fds + 2, 10, "descriptors back to baseline")
            print(f"\nopcua flood 400: fds {baseline_fds} -> {flood_fds}, rss {baseline_rss:.0f} -> "
                  f"{flood_rss:.0f} MB")
            assert (await threshold.read_value()) > 0
    lines = [r for r in caplog.records if r.name.startswith("asyncua")]
    assert len(lines) < 20, [r.getMessage() for r in lines[:5]]


async def test_refused_writes_stay_out_of_the_error_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with hostile_plant(opcua={}) as plant:
        assert plant.opcua is not None
        async with Client(plant.opcua.url, timeout=5) as client:
            ns = await client.get_namespace_index(NS_URI)
            node = client.get_node(ua.NodeId("Models.pump.Threshold", ns))
            for i in range(10):  # value writes, and writes to the address space (a service fault)
                with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                    await node.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
                with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                    await client.nodes.objects.add_object(ns, f"Intruder{i}")
                with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                    await client.delete_nodes([node])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]
    server_lines = [r for r in caplog.records if r.name.startswith("asyncua.server")
                    and r.levelno >= logging.WARNING]
    assert not server_lines, [r.getMessage() for r in server_lines[:3]]


def _random_chunk(rng: random.Random, url: str) -> bytes:
    kind = rng.random()
    if kind < 0.2:
        return rng.randbytes(rng.randrange(1, 300))
    message = rng.choice([b"HEL", b"ACK", b"ERR", b"OPN", b"MSG", b"CLO", b"RHE", b"XYZ"])
    chunk = rng.choice([b"F", b"C", b"A", b"?"])
    body = rng.randbytes(rng.randrange(0, 200))
    size = rng.choice([8 + len(body), 8 + len(body), 0, 7, 2**31, 2**32 - 1, 65536, 70000])
    frame = message + chunk + struct.pack("<I", size) + body
    return hello(url) + frame if kind < 0.6 else frame


async def test_fuzz_random_chunks(caplog: pytest.LogCaptureFixture) -> None:
    """FUZZ_CASES random chunks (with and without a Hello first): each answered or closed
    within a bound, no traceback, memory and descriptors back, the bridge still scoring."""
    caplog.set_level(logging.WARNING)
    rng = random.Random(5)
    failures: list[str] = []
    async with hostile_plant(opcua={"activation_timeout": 1.0}) as plant:
        port = port_of(plant)
        url = f"opc.tcp://127.0.0.1:{port}/plcbridge"
        baseline, start_rss = descriptors(), rss_mb()

        async def one(data: bytes) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(data)
                # Closed by the server (refused, or no session within activation_timeout).
                if not await closed_by_server(reader, 4):
                    failures.append(f"held: {data[:40]!r}")
            finally:
                writer.close()

        chunks = [_random_chunk(rng, url) for _ in range(FUZZ_CASES)]
        for start in range(0, len(chunks), 100):
            await asyncio.gather(*(one(c) for c in chunks[start:start + 100]))
        await check_fuzz_outcome(plant, "opcua", len(chunks), failures, baseline, start_rss)
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[:3]

"""ModbusAdapter against real pymodbus servers: faults, isolation, sharing, write-back."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any

import pytest

from adapters import ADAPTERS, create_adapter
from adapters.modbus.client import ModbusAdapter, open_lines
from adapters.modbus.plan import plan_reads
from bridge.config import ModbusDeviceConfig, RegisterTarget
from bridge.core.errors import DeviceExceptionError, DeviceTimeoutError, NotConnectedError
from bridge.core.tags import Quality, Reading
from bridge.ports import Adapter
from tests.modbus_servers import Unit, dead_port, silent_tcp_server, tcp_server
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)


def device(port: int, tags: list[dict[str, Any]] | None = None, **kw: Any) -> ModbusDeviceConfig:
    kw.setdefault("name", "dev")
    kw.setdefault("timeout", 1.0)
    if tags is None:
        tags = [{"name": "x", "address": 0, "type": "uint16"}]
    return ModbusDeviceConfig(host="127.0.0.1", port=port, tags=tags, **kw)


def by_tag(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


def other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


# --------------------------------------------------------------------------- errors per request


@pytest.mark.asyncio
async def test_exception_response_marks_only_that_request_bad() -> None:
    async with tcp_server({1: Unit(holding={0: 7, 1: 8})}) as server:
        adapter = ModbusAdapter(device(server.port, [
            {"name": "ok", "address": 0, "type": "uint16"},
            {"name": "ok2", "address": 1, "type": "uint16"},
            {"name": "unmapped", "address": 100, "type": "uint16"},
        ]))
        await adapter.connect()
        got = by_tag(await adapter.read())
        await adapter.close()
    assert got["unmapped"].quality is Quality.BAD
    assert got["unmapped"].reason == "exception code 2 (illegal data address)"
    assert (got["ok"].value, got["ok2"].value) == (7, 8)
    assert got["ok"].quality is Quality.GOOD
    assert adapter.status.errors == {"exception": 1}
    assert not other_tasks()


@pytest.mark.asyncio
async def test_timeout_is_bad_quality_and_bounded() -> None:
    async with silent_tcp_server() as port:
        adapter = ModbusAdapter(device(port, [
            {"name": "a", "address": 0, "type": "uint16"},
            {"name": "b", "address": 1000, "type": "uint16"},  # a second request
        ], timeout=0.2, retries=1))
        started = time.monotonic()
        got = by_tag(await adapter.read())
        elapsed = time.monotonic() - started
        await adapter.close()
    assert got["a"].reason == "timeout"
    assert got["b"].quality is Quality.BAD and got["b"].reason.startswith("timeout")
    # timeout * (retries + 1), and the second request is not tried again after the first.
    assert 0.35 <= elapsed < 0.9, elapsed
    assert adapter.status.errors == {"timeout": 1}
    assert adapter.status.connected is False


@pytest.mark.asyncio
async def test_closed_port_returns_quickly_then_reconnects_and_logs_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plcbridge.modbus")
    port = dead_port()
    adapter = ModbusAdapter(device(port, timeout=1.0, retries=2, reconnect_min=0.1,
                                   reconnect_max=0.4))
    try:
        with pytest.raises(NotConnectedError):
            await adapter.connect()
        for _ in range(3):
            started = time.monotonic()
            reading = (await adapter.read())[0]
            assert time.monotonic() - started < 0.5
            assert reading.quality is Quality.BAD
            assert reading.reason.startswith("not connected: ")
        # Polls inside the backoff delay do not even try to connect.
        assert "next attempt in" in reading.reason
        async with tcp_server({1: Unit(holding={0: 42})}, port=port):
            # Back within the backoff cap (0.4 s, +20 % jitter at most).
            readings: list[Reading] = []

            async def good_again() -> bool:
                readings.append((await adapter.read())[0])
                return readings[-1].quality is Quality.GOOD

            assert await until(good_again, 0.4 * 1.2 + 0.3, "reconnect") <= 0.8
            assert readings[-1].value == 42
        # Server gone again: the open connection is lost; the adapter notices without
        # waiting out its timeout (pymodbus would leave the request pending).
        started = time.monotonic()
        reading = (await adapter.read())[0]
        assert time.monotonic() - started < 0.5
        assert reading.quality is Quality.BAD
        assert reading.reason.startswith("not connected: "), reading.reason
    finally:
        await adapter.close()
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "plcbridge.modbus"]
    levels = [level for level, message in records if "device" in message]
    assert levels.count("ERROR") == 2  # started failing, and failing again after recovery
    assert levels.count("INFO") == 1
    assert levels[:3] == ["ERROR", "DEBUG", "DEBUG"]
    assert adapter.status.errors["not_connected"] >= 3
    assert adapter.status.last_success is not None


# --------------------------------------------------------------------------- isolation


async def _poll_for(adapter: ModbusAdapter, seconds: float, pause: float = 0.0) -> int:
    """Poll back to back (or every ``pause`` s) until the deadline; count good polls."""
    good = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings = await adapter.read()
        good += all(r.quality is Quality.GOOD for r in readings)
        if pause:
            await asyncio.sleep(pause)  # a poll interval, not a wait for state
    return good


@pytest.mark.serial  # good polls in fixed 1 s spans, alone and beside the dead device
@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["closed-port", "hung"])
async def test_dead_device_does_not_slow_a_live_one(fault: str) -> None:
    async with tcp_server({1: Unit(holding={i: i for i in range(10)})}) as server, \
            silent_tcp_server() as silent_port:
        live = ModbusAdapter(device(server.port, [{"name": "v", "address": 0, "type": "float32"}],
                                    name="live"))
        bad_port = dead_port() if fault == "closed-port" else silent_port
        dead = ModbusAdapter(device(bad_port, [{"name": "d", "address": 0, "type": "uint16"}],
                                    name="dead", timeout=0.3, retries=1))
        try:
            # Paced polls (every 5 ms): this measures whether the dead device holds the live
            # one up, not how two busy loops share a CPU that other processes also load.
            alone = await _poll_for(live, 1.0, pause=0.005)
            together, _ = await asyncio.gather(_poll_for(live, 1.0, pause=0.005),
                                               _poll_for(dead, 1.0, pause=0.01))
        finally:
            await live.close()
            await dead.close()
    assert alone > 20
    assert together >= 0.8 * alone, (together, alone)
    assert dead.status.error_count > 0 and dead.status.last_success is None


# --------------------------------------------------------------------------- shared lines


@pytest.mark.asyncio
async def test_devices_on_one_line_share_one_client() -> None:
    units = {1: Unit(holding={0: 11}), 2: Unit(holding={0: 22})}
    async with tcp_server(units) as server:
        one = ModbusAdapter(device(server.port, [{"name": "one", "address": 0, "type": "uint16"}],
                                   name="one", unit_id=1))
        two = ModbusAdapter(device(server.port, [{"name": "two", "address": 0, "type": "uint16"}],
                                   name="two", unit_id=2))
        await one.connect()
        await two.connect()
        assert open_lines() == [f"tcp:127.0.0.1:{server.port}"]
        for _ in range(3):
            first, second = await asyncio.gather(one.read(), two.read())
            assert (first[0].value, second[0].value) == (11, 22)
        await one.close()
        await one.close()  # idempotent
        assert (await two.read())[0].value == 22  # the line stays open for the other device
        await two.close()
        assert open_lines() == []
    assert not other_tasks()


# --------------------------------------------------------------------------- reply bytes


def test_word_replies_keep_bytes_and_build_registers_only_when_asked() -> None:
    from pymodbus.exceptions import ModbusIOException

    from adapters.modbus.replies import HoldingWords, InputWords

    reply = HoldingWords()
    reply.decode(bytes([4, 0x00, 0x01, 0xFF, 0xFE]))
    assert reply.words == bytes([0x00, 0x01, 0xFF, 0xFE]) and reply._registers is None
    assert reply.registers == [1, 0xFFFE]  # the stock response's attribute, decoded on demand
    assert (reply.function_code, InputWords.function_code) == (3, 4)
    assert "bytes=4" in str(reply)
    with pytest.raises(ModbusIOException, match="byte_count 9"):
        HoldingWords().decode(bytes([9, 0, 1]))  # the byte count promises more than the frame holds
    built = InputWords(registers=[7, 8])  # pymodbus builds responses this way too
    assert (built.registers, built.words) == ([7, 8], b"")


@pytest.mark.asyncio
async def test_polls_decode_from_the_reply_bytes_of_a_real_server() -> None:
    """Holding and input registers, through the line's client: the reply classes are the ones
    registered on it, every tag decodes as before, and a write's read-back still compares."""
    from adapters.modbus.replies import HoldingWords, InputWords

    f32 = struct.unpack(">HH", struct.pack(">f", -2.5))
    unit = Unit(holding={0: 0xFFFF, 1: f32[0], 2: f32[1], 100: 0}, input={5: 1234})
    async with tcp_server({1: unit}) as server:
        adapter = ModbusAdapter(device(server.port, [
            {"name": "i16", "address": 0, "type": "int16"},
            {"name": "f", "address": 1, "type": "float32"},
            {"name": "in", "table": "input", "address": 5, "type": "uint16", "scale": 0.1},
        ], write_verify=True))
        await adapter.connect()
        got = by_tag(await adapter.read())
        seen: list[type] = []
        words = await adapter._execute(lambda c: c.read_holding_registers(0, count=3, device_id=1))
        seen.append(type(words))
        words = await adapter._execute(lambda c: c.read_input_registers(5, count=1, device_id=1))
        seen.append(type(words))
        await adapter.write_many([(RegisterTarget(address=100), 42)])  # read back through HoldingWords
        written = await server.holding(1, 100, 1)
        await adapter.close()
    assert {t: (r.value, r.quality) for t, r in got.items()} == {
        "i16": (-1, Quality.GOOD), "f": (-2.5, Quality.GOOD), "in": (pytest.approx(123.4), Quality.GOOD)}
    assert seen == [HoldingWords, InputWords]
    assert written == [42] and adapter.status.write_mismatches == 0


# --------------------------------------------------------------------------- write-back


def test_adjacent_write_targets_merge_into_one_request() -> None:
    adapter = ModbusAdapter(device(1))
    blocks = adapter._write_blocks([
        (RegisterTarget(address=102), 1), (RegisterTarget(address=100, type="float32"), 0.75),
        (RegisterTarget(address=103), 7), (RegisterTarget(address=110), 1),
    ])
    hi, lo = struct.unpack(">HH", struct.pack(">f", 0.75))
    assert blocks == [(100, [hi, lo, 1, 7]), (110, [1])]
    with pytest.raises(ValueError, match="overlap at holding 101"):
        adapter._write_blocks([(RegisterTarget(address=100, type="float32"), 1.0),
                               (RegisterTarget(address=101), 1)])


@pytest.mark.asyncio
async def test_write_many_writes_targets_only() -> None:
    async with tcp_server({1: Unit(holding={i: 9 for i in range(100, 112)})}) as server:
        adapter = ModbusAdapter(device(server.port))
        await adapter.connect()
        await adapter.write_many([(RegisterTarget(address=100, type="float32"), 1.5),
                                  (RegisterTarget(address=102), 1), (RegisterTarget(address=110), 3)])
        regs = await server.holding(1, 100, 12)
        await adapter.close()
    assert regs == [*struct.unpack(">HH", struct.pack(">f", 1.5)), 1, 9, 9, 9, 9, 9, 9, 9, 3, 9]


@pytest.mark.asyncio
@pytest.mark.parametrize(("byte_order", "word_order"), [("big", "big"), ("big", "little")])
async def test_write_round_trip(byte_order: str, word_order: str) -> None:
    async with tcp_server({1: Unit(holding={i: 0 for i in range(10)})}) as server:
        adapter = ModbusAdapter(device(server.port, byte_order=byte_order, word_order=word_order))
        await adapter.connect()
        await adapter.write(RegisterTarget(address=2, type="float32"), 0.75)
        await adapter.write(RegisterTarget(address=5, type="uint16"), 4321)
        await adapter.write(RegisterTarget(address=7, type="float32", word_order="big"), -2.5)
        regs = await server.holding(1, 0, 10)
        await adapter.close()
    hi, lo = struct.unpack(">HH", struct.pack(">f", 0.75))
    assert regs[2:4] == ([hi, lo] if word_order == "big" else [lo, hi])
    assert regs[5] == 4321
    assert regs[7:9] == list(struct.unpack(">HH", struct.pack(">f", -2.5)))
    # Only the target registers were written.
    assert regs[0:2] == [0, 0] and regs[4] == 0 and regs[6] == 0 and regs[9] == 0


@pytest.mark.asyncio
async def test_write_failures_raise_typed_errors() -> None:
    async with tcp_server({1: Unit(holding={0: 0})}) as server:
        adapter = ModbusAdapter(device(server.port))
        await adapter.connect()
        with pytest.raises(DeviceExceptionError) as info:
            await adapter.write(RegisterTarget(address=300, type="uint16"), 1)
        assert info.value.code == 2
        with pytest.raises(ValueError, match="nan"):
            await adapter.write(RegisterTarget(address=0, type="uint16"), float("nan"))
        with pytest.raises(ValueError, match="70000"):
            await adapter.write(RegisterTarget(address=0, type="uint16"), 70000)
        assert await server.holding(1, 0) == [0]
        await adapter.close()
    dead = ModbusAdapter(device(dead_port()))
    with pytest.raises(NotConnectedError):
        await dead.write(RegisterTarget(address=0), 1)
    await dead.close()
    async with silent_tcp_server() as port:
        hung = ModbusAdapter(device(port, timeout=0.2, retries=0))
        with pytest.raises(DeviceTimeoutError):
            await hung.write(RegisterTarget(address=0), 1)
        await hung.close()


# --------------------------------------------------------------------------- registry


@pytest.mark.asyncio
async def test_registry_builds_a_modbus_adapter_with_its_plan() -> None:
    config = device(dead_port(), [{"name": "a", "address": 0, "type": "float32"},
                                  {"name": "b", "address": 4, "type": "uint16"}])
    adapter = create_adapter(config)
    assert isinstance(adapter, ModbusAdapter) and isinstance(adapter, Adapter)
    assert adapter.plan == plan_reads(config.tags)
    assert ADAPTERS["modbus"] == "adapters.modbus.client:ModbusAdapter"
    with pytest.raises(ValueError, match="'bacnet' is not one of modbus, opcua"):
        create_adapter(type("Cfg", (), {"protocol": "bacnet"})())
    await adapter.close()


# --------------------------------------------------------------------------- compiled decoders


def _reference(adapter: ModbusAdapter, values: list[int], received: float) -> list[Reading]:
    """What the generic, tag-by-tag decode path makes of one reply per request."""
    out: list[Reading] = []
    for request in adapter.plan:
        chunk = values[request.address:request.address + request.count]
        out += [adapter._decode(tag, chunk[offset:offset + tag.registers], received)
                for tag, offset in request.tags]
    return out


def _compiled(adapter: ModbusAdapter, values: list[int], received: float) -> list[Reading]:
    out: list[Reading] = []
    for request, decoder in zip(adapter.plan, adapter._decoders, strict=True):
        chunk = values[request.address:request.address + request.count]
        out += adapter._decode_request(decoder, struct.pack(f">{len(chunk)}H", *chunk), received)
    return out


def _same(a: list[Reading], b: list[Reading]) -> bool:
    # NaN != NaN: compare the text of each Reading instead.
    return [repr(r) for r in a] == [repr(r) for r in b]


def test_compiled_decoders_match_the_generic_decode_path() -> None:
    """Every type, order, scale/offset, bit, string, valid range, overlap and gap: the per-request
    fast path gives exactly the Readings (and value counters) of the tag-by-tag path."""
    import random

    tags: list[dict[str, Any]] = []
    address = 0
    kinds = [("int16", 1), ("uint16", 1), ("int32", 2), ("uint32", 2), ("int64", 4), ("uint64", 4),
             ("float32", 2), ("float64", 4)]
    for kind, width in kinds:
        for byte_order in ("big", "little"):
            for word_order in ((None,) if width == 1 else ("big", "little")):
                tag: dict[str, Any] = {"name": f"{kind}.{byte_order}.{word_order}", "address": address,
                                       "type": kind, "byte_order": byte_order}
                if word_order is not None:
                    tag["word_order"] = word_order
                tags.append(tag)
                tags.append({**tag, "name": tag["name"] + ".scaled", "scale": 0.5, "offset": -3.0,
                             "valid_min": -1e6, "valid_max": 1e6})
                address += width + 1  # a gap of one register
    tags += [{"name": f"bit{b}", "address": address, "type": "bit", "bit": b} for b in (0, 7, 15)]
    tags += [{"name": "bitle", "address": address, "type": "bit", "bit": 3, "byte_order": "little"}]
    tags += [{"name": "text", "address": address + 1, "type": "string", "length": 3},
             {"name": "ranged", "address": address + 4, "type": "int16", "valid_min": -10, "valid_max": 10},
             {"name": "overlap", "address": address + 4, "type": "uint32"}]
    mixed = ModbusDeviceConfig(host="127.0.0.1", port=502, name="dev", tags=tags, word_order="little",
                               max_gap=4)
    # Big-endian only, no overlap: the whole reply is one struct unpack.
    plain = [{k: v for k, v in t.items() if k not in ("byte_order", "word_order")} for t in tags
             if t.get("byte_order", "big") == "big" and t.get("word_order", "big") == "big"
             and t["type"] != "string" and t["name"] not in ("overlap", "bitle", "bit7", "bit15")]
    unique: dict[int, dict[str, Any]] = {}
    for t in plain:
        unique.setdefault(t["address"], dict(t))  # one tag per address: no overlap
    plain = list(unique.values())
    for t in plain[1::2]:
        t.update(scale=0.25, offset=1.0)
    big = ModbusDeviceConfig(host="127.0.0.1", port=502, name="dev", tags=plain, max_gap=4,
                             max_registers=40)
    # Unscaled, unchecked integers only: Readings straight from the unpacked tuple.
    ints = ModbusDeviceConfig(host="127.0.0.1", port=502, name="dev", max_gap=4, tags=[
        t for t in plain if t["type"] in ("int16", "uint16", "int32", "uint32", "int64", "uint64")
        and "scale" not in t and "valid_min" not in t])
    rng = random.Random(7)
    specials = [0x7FC0, 0x7F80, 0xFF80, 0x0000, 0xFFFF, 0x8000, 0x7FFF]
    for config, combined in ((mixed, False), (big, True), (ints, True)):
        fast = ModbusAdapter(config)
        slow = ModbusAdapter(config)
        assert all((d.combined is not None) == combined for d in fast._decoders)
        assert all(not d.special for d in fast._decoders) == (config is ints)
        size = max(r.end for r in fast.plan)
        for _ in range(300):
            values = [rng.choice(specials) if rng.random() < 0.3 else rng.randrange(0x10000)
                      for _ in range(size)]
            # (A value beyond 0xFFFF cannot reach this path: it takes the reply's bytes.)
            assert _same(_compiled(fast, values, 1.5), _reference(slow, values, 1.5)), values
        assert fast.status.errors == slow.status.errors
        assert bool(fast.status.errors) == (config is not ints)  # NaN/Inf, out-of-range values met


def test_compiled_decoders_follow_a_replaced_plan() -> None:
    config = device(502, [{"name": "a", "address": 0, "type": "uint16"},
                          {"name": "b", "address": 1, "type": "int16", "scale": 2.0}])
    adapter = ModbusAdapter(config)
    adapter.plan = [r for r in plan_reads(config.tags, max_gap=0)][:1]
    assert len(adapter._decoders) == 1
    assert _same(_compiled(adapter, [5, 0xFFFF], 0.0), _reference(adapter, [5, 0xFFFF], 0.0))


def test_compiled_decoders_for_coils() -> None:
    config = device(502, [{"name": "c0", "table": "coil", "address": 0},
                          {"name": "c3", "table": "coil", "address": 3}])
    adapter = ModbusAdapter(config)
    bits = [True, False, False, True, False, False, False, False]
    readings = adapter._decode_request(adapter._decoders[0], bits, 2.0)
    assert [(r.tag, r.value, r.quality) for r in readings] == [("c0", True, Quality.GOOD),
                                                                ("c3", True, Quality.GOOD)]

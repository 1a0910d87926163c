"""Codec: every data type x byte order x word order, through a real server and pure."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from adapters.modbus.client import ModbusAdapter
from adapters.modbus.codec import (
    VENDOR_ORDERS,
    EncodeError,
    decode,
    decode_raw,
    encode_saturating,
    encode_strict,
)
from bridge.config import ModbusDeviceConfig, ModbusTagConfig
from bridge.core.datatypes import TYPES
from bridge.core.errors import DecodeError
from bridge.core.tags import Quality, Reading
from tests.modbus_servers import Unit, tcp_server

ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
ORDER_IDS = ["ABCD", "CDAB", "BADC", "DCBA"]

# (type, value, struct code): negative values for every signed type, extremes for unsigned.
NUMERIC_CASES: list[tuple[str, float | int, str]] = [
    ("int16", -12345, "h"),
    ("uint16", 54321, "H"),
    ("int32", -123456789, "i"),
    ("uint32", 3_000_000_000, "I"),
    ("int64", -1234567890123456789, "q"),
    ("uint64", 12345678901234567890, "Q"),
    ("float32", -3.5, "f"),
    ("float64", -1234.5678, "d"),
]


def wire_registers(code: str, value: float | int, byte_order: str, word_order: str) -> list[int]:
    """What a device with these orders puts on the wire, derived independently of the codec:
    little byte order = the value packed little-endian; word order then reverses the words."""
    data = struct.pack((">" if byte_order == "big" else "<") + code, value)
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    # Packing little-endian already reversed the words; undo that unless DCBA/CDAB wants it.
    flip = (byte_order == "little") != (word_order == "little")
    return words[::-1] if flip else words


def string_registers(text: str, registers: int, byte_order: str) -> list[int]:
    data = text.encode("latin-1").ljust(registers * 2, b"\x00")
    pairs = [data[i:i + 2] for i in range(0, len(data), 2)]
    return [int.from_bytes(p if byte_order == "big" else p[::-1], "big") for p in pairs]


def device(port: int, tags: list[dict[str, Any]], **kw: Any) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(name="dev", host="127.0.0.1", port=port, timeout=2, tags=tags, **kw)


async def read_all(units: dict[int, Unit], config_kw: dict[str, Any],
                   tags: list[dict[str, Any]]) -> dict[str, Reading]:
    async with tcp_server(units) as server:
        adapter = ModbusAdapter(device(server.port, tags, **config_kw))
        try:
            await adapter.connect()
            readings = await adapter.read()
        finally:
            await adapter.close()
    assert sorted(r.tag for r in readings) == sorted(t["name"] for t in tags)  # one per tag
    return {r.tag: r for r in readings}


def test_vendor_vocabulary_golden_float32() -> None:
    # 123456.0 = 0x47F12000: the table every PLC manual prints.
    expected = {"ABCD": [0x47F1, 0x2000], "CDAB": [0x2000, 0x47F1],
                "BADC": [0xF147, 0x0020], "DCBA": [0x0020, 0xF147]}
    for name, (byte_order, word_order) in VENDOR_ORDERS.items():
        assert encode_strict("float32", 123456.0, byte_order, word_order) == expected[name], name
        assert decode_raw(expected[name], "float32", byte_order, word_order) == 123456.0
        assert wire_registers("f", 123456.0, byte_order, word_order) == expected[name]


# --------------------------------------------------------------------------- real server


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize(("data_type", "value", "code"), NUMERIC_CASES,
                         ids=[c[0] for c in NUMERIC_CASES])
async def test_numeric_type_and_order_through_server(data_type: str, value: float, code: str,
                                                     byte_order: str, word_order: str) -> None:
    registers = wire_registers(code, value, byte_order, word_order)
    holding = {10 + i: r for i, r in enumerate(registers)}
    inputs = {20 + i: r for i, r in enumerate(registers)}
    tags = [
        {"name": "h", "address": 10, "type": data_type},
        {"name": "i", "table": "input", "address": 20, "type": data_type},
    ]
    got = await read_all({1: Unit(holding=holding, input=inputs)},
                         {"byte_order": byte_order, "word_order": word_order}, tags)
    for name in ("h", "i"):
        assert got[name].quality is Quality.GOOD, got[name]
        assert got[name].value == value
        assert type(got[name].value) is type(value)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS, ids=ORDER_IDS)
async def test_tag_orders_override_device_defaults(byte_order: str, word_order: str) -> None:
    # The device says the opposite; the tag's own orders must win.
    registers = wire_registers("i", -7654321, byte_order, word_order)
    opposite = {"big": "little", "little": "big"}
    got = await read_all(
        {1: Unit(holding={0: registers[0], 1: registers[1]})},
        {"byte_order": opposite[byte_order], "word_order": opposite[word_order]},
        [{"name": "x", "address": 0, "type": "int32", "byte_order": byte_order, "word_order": word_order}])
    assert got["x"].value == -7654321


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS, ids=ORDER_IDS)
async def test_strings_bits_coils_through_server(byte_order: str, word_order: str) -> None:
    holding: dict[int, int] = {}
    for i, reg in enumerate(string_registers("ABC", 2, byte_order)):  # odd length, NUL padded
        holding[0 + i] = reg
    for i, reg in enumerate(string_registers("PUMP-7  ", 4, byte_order)):  # trailing spaces
        holding[2 + i] = reg
    holding[6] = 0x8001 if byte_order == "big" else 0x0180  # bits 0 and 15 set
    tags = [
        {"name": "s3", "address": 0, "type": "string", "length": 2},
        {"name": "s8", "address": 2, "type": "string", "length": 4},
        {"name": "b0", "address": 6, "type": "bit", "bit": 0},
        {"name": "b1", "address": 6, "type": "bit", "bit": 1},
        {"name": "b15", "address": 6, "type": "bit", "bit": 15},
        {"name": "c0", "table": "coil", "address": 0},
        {"name": "c1", "table": "coil", "address": 1},
        {"name": "c17", "table": "coil", "address": 17},
        {"name": "d3", "table": "discrete", "address": 3},
        {"name": "d4", "table": "discrete", "address": 4},
    ]
    unit = Unit(holding=holding, coils={0: True, 1: False, 17: True},
                discrete={3: False, 4: True})
    got = await read_all({1: unit}, {"byte_order": byte_order, "word_order": word_order}, tags)
    assert got["s3"].value == "ABC"
    assert got["s8"].value == "PUMP-7"
    assert (got["b0"].value, got["b1"].value, got["b15"].value) == (True, False, True)
    assert (got["c0"].value, got["c1"].value, got["c17"].value) == (True, False, True)
    assert (got["d3"].value, got["d4"].value) == (False, True)
    assert all(r.quality is Quality.GOOD for r in got.values()), got


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_non_finite_floats_are_bad_quality() -> None:
    nan32 = wire_registers("f", math.nan, "big", "big")
    inf32 = wire_registers("f", math.inf, "big", "big")
    nan64 = wire_registers("d", math.nan, "big", "big")
    holding = {0: nan32[0], 1: nan32[1], 2: inf32[0], 3: inf32[1]}
    holding.update({4 + i: r for i, r in enumerate(nan64)})
    holding.update({8: 0x3F80, 9: 0x0000})  # 1.0f, to show the neighbours stay good
    got = await read_all({1: Unit(holding=holding)}, {}, [
        {"name": "nan", "address": 0, "type": "float32"},
        {"name": "inf", "address": 2, "type": "float32"},
        {"name": "nan64", "address": 4, "type": "float64", "scale": 2.0},
        {"name": "one", "address": 8, "type": "float32"},
    ])
    for name in ("nan", "inf", "nan64"):
        assert got[name].quality is Quality.BAD
        assert got[name].reason == "not finite"
    assert got["one"].quality is Quality.GOOD and got["one"].value == 1.0


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_scale_offset_and_valid_range() -> None:
    holding = {0: (-100) & 0xFFFF, 1: 250, 2: 999, 3: 0x0000, 4: 0x1000}
    got = await read_all({1: Unit(holding=holding)}, {}, [
        {"name": "temp", "address": 0, "type": "int16", "scale": 0.1, "offset": 5.0},
        {"name": "raw", "address": 1, "type": "uint16"},
        {"name": "limited", "address": 2, "type": "uint16", "valid_max": 500},
        {"name": "big", "address": 3, "type": "uint32", "scale": 0.5, "valid_min": 0},
    ])
    assert got["temp"].value == pytest.approx(-5.0)
    assert isinstance(got["raw"].value, int) and got["raw"].value == 250
    assert got["limited"].quality is Quality.BAD
    assert got["limited"].reason.startswith("out of range")
    assert got["limited"].value == 999
    assert got["big"].value == pytest.approx(0x1000 * 0.5)


# --------------------------------------------------------------------------- pure


def _tag(data_type: str, **kw: Any) -> ModbusTagConfig:
    return ModbusTagConfig(name="t", address=0, type=data_type, **kw)


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("data_type", ["int16", "uint16", "int32", "uint32", "float32", "float64"])
def test_encode_decode_round_trip_at_limits(data_type: str, byte_order: str, word_order: str) -> None:
    info = TYPES[data_type]
    values: list[float] = [0, 1, -1.5, 3.25e9, -2.0e-3] if info.is_float else \
        [info.min or 0, info.max or 0, 0, 1]
    for value in values:
        registers = encode_strict(data_type, value, byte_order, word_order)
        assert len(registers) == info.registers
        assert all(0 <= r <= 0xFFFF for r in registers)
        back = decode(registers, _tag(data_type), byte_order, word_order)
        if data_type == "float32":
            assert back == struct.unpack(">f", struct.pack(">f", value))[0]
        else:
            assert back == value


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("data_type", ["int64", "uint64"])
def test_64_bit_round_trip(data_type: str, byte_order: str, word_order: str) -> None:
    info = TYPES[data_type]
    assert info.min is not None and info.max is not None
    for value in (info.min, info.max, 0, 0x0102030405060708):
        registers = encode_strict(data_type, value, byte_order, word_order)
        assert decode(registers, _tag(data_type), byte_order, word_order) == value


@pytest.mark.parametrize(("value", "data_type", "message"), [
    (math.nan, "uint16", "not finite"),
    (math.inf, "int32", "not finite"),
    (65536, "uint16", "outside uint16 range"),
    (-1, "uint16", "outside uint16 range"),
    (-32769, "int16", "outside int16 range"),
    (2 ** 31, "int32", "outside int32 range"),
    (1.5, "uint16", "not an integer"),
    (1e39, "float32", "does not fit in float32"),
    (1.0, "string", "cannot encode"),
])
def test_encode_refuses_bad_values(value: float, data_type: str, message: str) -> None:
    with pytest.raises(EncodeError, match=message) as info:
        encode_strict(data_type, value)
    assert repr(value) in str(info.value) or data_type == "string"
    assert isinstance(info.value, ValueError) and isinstance(info.value, DecodeError)


def test_encode_accepts_nan_for_floats_and_bools_for_ints() -> None:
    back = decode_raw(encode_strict("float32", math.nan), "float32")
    assert isinstance(back, float) and math.isnan(back)
    assert encode_strict("uint16", True) == [1]
    assert encode_strict("int16", 3.0) == [3]


# --------------------------------------------------------------------------- the two encoders
#
# encode_strict (write-back to a PLC) refuses what does not fit; encode_saturating (the served
# register map) pulls it to the nearest limit. Same arguments, same results inside the range.

INTEGER_TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64"]
FLOAT32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]


@pytest.mark.parametrize("data_type", INTEGER_TYPES)
def test_encoders_at_and_just_beyond_integer_limits(data_type: str) -> None:
    info = TYPES[data_type]
    assert info.min is not None and info.max is not None
    for limit, beyond in ((info.max, info.max + 1), (info.min, info.min - 1)):
        at = encode_strict(data_type, limit)
        assert encode_saturating(data_type, limit) == at
        assert decode_raw(at, data_type) == limit
        with pytest.raises(EncodeError, match=f"outside {data_type} range"):
            encode_strict(data_type, beyond)
        assert encode_saturating(data_type, beyond) == at
    assert encode_saturating(data_type, math.inf) == encode_strict(data_type, info.max)
    assert encode_saturating(data_type, -math.inf) == encode_strict(data_type, info.min)


def test_encoders_at_and_just_beyond_float32_limits() -> None:
    # 2**128 is where the float32 after FLT_MAX would be: the first value that cannot round down.
    for sign in (1.0, -1.0):
        at = encode_strict("float32", sign * FLOAT32_MAX)
        assert decode_raw(at, "float32") == sign * FLOAT32_MAX
        assert encode_saturating("float32", sign * FLOAT32_MAX) == at
        with pytest.raises(EncodeError, match="does not fit in float32"):
            encode_strict("float32", sign * 2.0 ** 128)
        assert encode_saturating("float32", sign * 2.0 ** 128) == at
        assert encode_saturating("float32", sign * 1e300) == at
    # Not finite stays not finite: SCADA shows it as invalid rather than as a huge score.
    assert decode_raw(encode_saturating("float32", math.inf), "float32") == math.inf
    assert math.isnan(float(decode_raw(encode_saturating("float32", math.nan), "float32")))


def test_saturating_truncates_and_refuses_only_nan_as_an_integer() -> None:
    assert encode_saturating("uint16", 12.9) == [12]
    assert encode_saturating("int16", -12.9) == [(-12) & 0xFFFF]
    with pytest.raises(EncodeError, match="not a number"):
        encode_saturating("uint32", math.nan)
    with pytest.raises(EncodeError, match="cannot encode"):
        encode_saturating("string", 1.0)
    with pytest.raises(EncodeError, match="not an integer"):
        encode_strict("uint16", 12.9)


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("data_type", [*INTEGER_TYPES, "float32", "float64"])
def test_encoders_agree_inside_the_range(data_type: str, byte_order: str, word_order: str) -> None:
    for value in (0, 1, 100, 12345):
        assert encode_saturating(data_type, value, byte_order, word_order) == \
            encode_strict(data_type, value, byte_order, word_order)


def test_saturating_word_order_of_the_served_map() -> None:
    # The served map's 32-bit values: big = high word first (ABCD), little = CDAB.
    assert encode_saturating("uint32", 0x12345678, word_order="big") == [0x1234, 0x5678]
    assert encode_saturating("uint32", 0x12345678, word_order="little") == [0x5678, 0x1234]
    assert encode_saturating("float32", 123456.0, word_order="little") == [0x2000, 0x47F1]


def test_decode_rejects_wrong_register_counts_and_values() -> None:
    with pytest.raises(DecodeError, match="needs 2 registers"):
        decode([1], _tag("float32"), "big", "big")
    with pytest.raises(DecodeError, match="16-bit"):
        decode([70000], _tag("uint16"), "big", "big")
    with pytest.raises(ValueError, match="byte_order"):
        decode_raw([1], "uint16", "middle", "big")


def test_decode_strings_are_safe_for_any_bytes() -> None:
    tag = _tag("string", length=2)
    assert decode([0x4142, 0x4300], tag, "big", "big") == "ABC"
    assert decode([0x4241, 0x0043], tag, "little", "big") == "ABC"
    assert decode([0xFFFE, 0x2020], tag, "big", "big") == "\xff\xfe"  # latin-1, never raises
    assert decode([0x0000, 0x0000], tag, "big", "big") == ""


def test_decode_applies_scale_only_to_numbers() -> None:
    assert decode([100], _tag("uint16", scale=0.5, offset=1.0), "big", "big") == 51.0
    assert decode([0x0004], _tag("bit", bit=2), "big", "big") is True
    assert decode([0x0400], _tag("bit", bit=2), "little", "big") is True
    bool_tag = ModbusTagConfig(name="c", table="coil", address=0)
    assert decode([1], bool_tag, "big", "big") is True

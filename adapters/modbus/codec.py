"""Registers <-> values: the byte/word order rules over the data types of ``bridge.core.datatypes``.

Orders, in the vocabulary of vendor manuals (value bytes A B C D, A most significant)::

    byte_order  word_order  vendor name   registers on the wire
    big         big         ABCD          [AB, CD]
    big         little      CDAB          [CD, AB]
    little      big         BADC          [BA, DC]
    little      little      DCBA          [DC, BA]

``byte_order`` is the order of the two bytes inside each 16-bit register (``AB`` vs ``BA``);
``word_order`` is the order of the registers of a multi-register type (big = most significant
word first). 64-bit types extend the same rule to four registers.

Strings hold two characters per register; ``byte_order`` says which character comes first in a
register. ``word_order`` does not apply to strings: devices that swap words of numbers still
store text in reading order, and the device-level default must not scramble every string.

Everything here is pure and pymodbus-free, so it is tested without a device.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bridge.config import ModbusTagConfig
from bridge.core.datatypes import TYPES, DataTypeInfo, Order
from bridge.core.errors import DecodeError
from bridge.core.tags import BOOL as BOOL_VALUE
from bridge.core.tags import FLOAT as FLOAT_VALUE
from bridge.core.tags import INT as INT_VALUE
from bridge.core.tags import OTHER as OTHER_VALUE

__all__ = [
    "BIT",
    "BOOL",
    "GENERIC",
    "RAW",
    "VENDOR_ORDERS",
    "EncodeError",
    "FieldDecoder",
    "RequestDecoder",
    "compile_field",
    "decode",
    "decode_raw",
    "encode_saturating",
    "encode_strict",
    "words_to_registers",
]


class EncodeError(DecodeError, ValueError):
    """A value cannot be written as the requested type (NaN, out of range, not integral).

    Both a ``DecodeError`` (the codec's error family) and a ``ValueError`` (a caller mistake),
    so callers can catch whichever they already handle.
    """


VENDOR_ORDERS: dict[str, tuple[Order, Order]] = {
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
}


def _check_registers(registers: Sequence[int], expected: int, what: str) -> None:
    if len(registers) != expected:
        raise DecodeError(f"{what} needs {expected} registers, got {len(registers)}")
    for value in registers:
        if not 0 <= value <= 0xFFFF:
            raise DecodeError(f"register value {value!r} is not a 16-bit unsigned integer")


def _to_bytes(registers: Sequence[int], byte_order: str, word_order: str) -> bytes:
    """Registers as they came off the wire -> the value's big-endian (ABCD) bytes."""
    words = list(registers)
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return b"".join(w.to_bytes(2, "big") for w in words)


def _to_registers(data: bytes, byte_order: str, word_order: str) -> list[int]:
    """The value's big-endian (ABCD) bytes -> registers in wire order (inverse of _to_bytes)."""
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word_order == "little":
        words.reverse()
    return words


def _check_order(byte_order: str, word_order: str) -> None:
    # An unknown order would otherwise silently behave as "big".
    if byte_order not in ("big", "little") or word_order not in ("big", "little"):
        raise ValueError("byte_order/word_order must be 'big' or 'little', "
                         f"got {byte_order!r}/{word_order!r}")


def decode_raw(registers: Sequence[int], data_type: str, byte_order: str = "big",
               word_order: str = "big", *, bit: int | None = None,
               length: int | None = None) -> float | int | bool | str:
    """Decode registers (or one 0/1 bit for ``bool``) without scale/offset."""
    _check_order(byte_order, word_order)
    info = TYPES.get(data_type)
    if info is None:
        raise DecodeError(f"unknown data type {data_type!r}")
    if data_type == "bool":
        if len(registers) != 1:
            raise DecodeError(f"bool needs 1 bit, got {len(registers)}")
        return bool(registers[0])
    if data_type == "string":
        count = length or 1
        _check_registers(registers, count, "string")
        # Two characters per register; word order deliberately ignored (see module doc).
        data = _to_bytes(registers, byte_order, "big")
        # latin-1 maps every byte to a character, so junk from a device never raises.
        return data.rstrip(b"\x00 ").decode("latin-1")
    _check_registers(registers, info.registers, data_type)
    assert info.pack is not None
    value = info.pack.unpack(_to_bytes(registers, byte_order, word_order))[0]
    if data_type == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise DecodeError(f"bit: {bit!r} is not 0..15")
        return bool((value >> bit) & 1)
    return value  # type: ignore[no-any-return]


def decode(registers: Sequence[int], tag: ModbusTagConfig, byte_order: str,
           word_order: str) -> float | int | bool | str:
    """Decode a tag's registers (or bit) and apply its scale/offset.

    ``byte_order``/``word_order`` are the effective orders (the tag's, else the device's).
    Integers stay ``int`` when scale is 1 and offset 0, so 64-bit counters keep every digit.
    Non-finite floats are returned as they are; the adapter marks them bad.
    """
    raw = decode_raw(registers, tag.data_type, byte_order, word_order, bit=tag.bit, length=tag.length)
    if not TYPES[tag.data_type].numeric or isinstance(raw, bool | str):
        return raw
    if tag.scale == 1.0 and tag.offset == 0.0:
        return raw
    return raw * tag.scale + tag.offset


def _encodable(data_type: str, byte_order: str, word_order: str) -> tuple[DataTypeInfo, struct.Struct]:
    _check_order(byte_order, word_order)
    info = TYPES.get(data_type)
    if info is None or not info.numeric or info.pack is None:
        raise EncodeError(f"cannot encode to type {data_type!r}")
    return info, info.pack


def encode_strict(data_type: str, value: float, byte_order: str = "big",
                  word_order: str = "big") -> list[int]:
    """Encode ``value`` as registers in wire order, or refuse it: for write-back to a PLC,
    where a clamped or rounded value would be a silent lie to the control program.

    Integer types refuse NaN/Inf, values outside the type's limits and non-integral values;
    float32 refuses finite values it cannot represent. Raises EncodeError (a ValueError)
    naming the value.
    """
    info, pack = _encodable(data_type, byte_order, word_order)
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float):
        raise EncodeError(f"value {value!r} is not a number")
    if info.is_float:
        try:
            data = pack.pack(float(value))
        except (OverflowError, struct.error):
            raise EncodeError(f"value {value!r} does not fit in {data_type}") from None
        return _to_registers(data, byte_order, word_order)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodeError(f"value {value!r} cannot be written as {data_type} (not finite)")
        if not value.is_integer():
            raise EncodeError(f"value {value!r} is not an integer; {data_type} needs one")
    number = int(value)
    assert info.min is not None and info.max is not None
    if not info.min <= number <= info.max:
        raise EncodeError(f"value {value!r} is outside {data_type} range {info.min}..{info.max}")
    return _to_registers(pack.pack(number), byte_order, word_order)


def encode_saturating(data_type: str, value: float, byte_order: str = "big",
                      word_order: str = "big") -> list[int]:
    """Encode ``value`` as registers in wire order, pulled into the type's range: for values
    served to SCADA (counters, ages, scores), where a wrapped error count would look like a
    recovery and refusing would leave a stale value in place.

    Integers are truncated towards zero and clamped to the type's limits (infinities to the
    nearest limit). Floats keep NaN and infinities (SCADA shows them as invalid); a finite
    value beyond float32 becomes the largest float32 of its sign. Raises EncodeError only for
    NaN as an integer (no limit is nearer than another) and for a non-numeric type.
    """
    info, pack = _encodable(data_type, byte_order, word_order)
    number = float(value)
    if info.is_float:
        assert info.float_max is not None
        if math.isfinite(number):
            number = max(-info.float_max, min(info.float_max, number))
        return _to_registers(pack.pack(number), byte_order, word_order)
    if math.isnan(number):
        raise EncodeError(f"value {value!r} cannot be written as {data_type} (not a number)")
    # Clamped before int(), which raises for an infinity.
    return _to_registers(pack.pack(int(info.clamp(value))), byte_order, word_order)


# --------------------------------------------------------------------------- request decoders
#
# The poll loop's fast path. ``decode`` above is the reference: general, checked, one tag at a
# time. A ``RequestDecoder`` is compiled once per planned request and turns the whole reply into
# raw values with one ``struct`` pack and (usually) one unpack, with every per-tag decision
# (struct format, byte/word order, bit, scale/offset, valid range) taken at compile time. Tags it
# cannot decode directly (strings, and the mixed orders CDAB and BADC of multi-register types)
# are marked GENERIC and go through ``decode``; so does the whole reply if a register is not a
# 16-bit unsigned integer, so errors read exactly as ``decode``'s.

RAW = 0  # a number: raw struct value, then scale/offset if any
BIT = 1  # one bit of a register
BOOL = 2  # a coil or discrete input
GENERIC = 3  # via ``decode``


@dataclass(frozen=True, slots=True)
class FieldDecoder:
    """One tag of a request, with everything the poll loop needs precomputed."""

    tag: ModbusTagConfig
    name: str
    kind: int  # RAW, BIT, BOOL or GENERIC
    offset: int  # registers (or bits) into the reply
    registers: int
    unpack: struct.Struct | None  # RAW/BIT: reads the value at byte 2*offset of the reply's bytes
    bit: int
    scaled: bool  # scale != 1 or offset != 0
    scale: float
    add: float
    check_finite: bool  # the value can be a float (float type, or scaled)
    valid_min: float | None
    valid_max: float | None
    byte_order: str  # effective orders, for GENERIC
    word_order: str

    @property
    def finite_only(self) -> bool:
        """A float read as is: good unless it is not finite."""
        return (self.kind == RAW and not self.scaled and self.check_finite
                and self.valid_min is None and self.valid_max is None)

    @property
    def plain(self) -> bool:
        """The raw value is the value and is always good (an unscaled, unchecked integer)."""
        return (self.kind == RAW and not self.scaled and not self.check_finite
                and self.valid_min is None and self.valid_max is None)


def _direct_code(info: DataTypeInfo, byte_order: str, word_order: str) -> str | None:
    """struct byte-order prefix that reads the type straight off the reply's big-endian bytes,
    or None when the registers need reordering (CDAB, BADC of multi-register types)."""
    if info.registers == 1 or byte_order == word_order:
        return ">" if byte_order == "big" else "<"
    return None


def compile_field(tag: ModbusTagConfig, offset: int, byte_order: str, word_order: str) -> FieldDecoder:
    """``byte_order``/``word_order``: the device's defaults (the tag's own win)."""
    byte_order = tag.byte_order or byte_order
    word_order = tag.word_order or word_order
    data_type = tag.data_type
    info = TYPES.get(data_type)
    kind, unpack = GENERIC, None
    if data_type == "bool":
        kind = BOOL
    elif (info is not None and info.pack is not None and byte_order in ("big", "little")
          and word_order in ("big", "little")):
        prefix = _direct_code(info, byte_order, word_order)
        if prefix is not None:
            kind = BIT if data_type == "bit" else RAW
            unpack = _struct(prefix + info.struct_code)
    if kind == BIT and (tag.bit is None or not 0 <= tag.bit <= 15):
        kind, unpack = GENERIC, None  # decode() says why
    numeric = info is not None and info.numeric
    scaled = numeric and (tag.scale != 1.0 or tag.offset != 0.0)
    return FieldDecoder(
        tag=tag, name=tag.name, kind=kind, offset=offset, registers=tag.registers, unpack=unpack,
        bit=tag.bit or 0, scaled=scaled, scale=tag.scale, add=tag.offset,
        check_finite=bool(info is not None and info.is_float) or scaled,
        valid_min=tag.valid_min, valid_max=tag.valid_max, byte_order=byte_order, word_order=word_order)


class RequestDecoder:
    """All tags of one planned request. ``raw(data)`` -> one raw value per tag (None for
    GENERIC tags) from a register reply's bytes; bit replies are read tag by tag.

    Built for the poll loop of many devices: per tag it keeps only the name; tags that need
    more than "the raw value, good" (bits, scaled, checked, GENERIC) get a FieldDecoder in
    ``special``. Fewer long-lived objects means cheaper full garbage collections.
    """

    __slots__ = ("combined", "finite", "finite_at", "kinds", "names", "special", "special_at", "tags",
                 "unpackers", "wide_at")

    def __init__(self, tags: Sequence[tuple[ModbusTagConfig, int]], count: int, *, is_bits: bool,
                 byte_order: str, word_order: str) -> None:
        self.tags = tags  # the request's own (tag, offset) pairs, shared with the plan
        self.names = tuple(tag.name for tag, _ in tags)
        self.combined: struct.Struct | None = None
        self.unpackers: tuple[tuple[struct.Struct | None, int], ...] = ()
        self.special_at: tuple[int, ...] = ()
        self.special: tuple[FieldDecoder, ...] = ()
        # Floats whose only check is "finite": checked together (map in C), not one by one.
        self.finite_at: tuple[int, ...] = ()
        self.finite: tuple[FieldDecoder, ...] = ()
        # What the TagStore's columns hold per value (``bridge.core.tags``), and the 64-bit
        # integers that may not fit float64 exactly (checked per reply; see _value_kind).
        self.kinds = np.full(len(tags), BOOL_VALUE, dtype=np.uint8)
        self.wide_at: tuple[int, ...] = ()
        if is_bits:
            return
        fields = [compile_field(tag, offset, byte_order, word_order) for tag, offset in tags]
        self.kinds = np.array([_value_kind(f) for f in fields], dtype=np.uint8)
        self.wide_at = tuple(i for i, f in enumerate(fields)
                             if self.kinds[i] == INT_VALUE and f.registers == 4)
        keep = [(i, f) for i, f in enumerate(fields) if not f.plain and not f.finite_only]
        self.special_at = tuple(i for i, _ in keep)
        self.special = tuple(f for _, f in keep)
        finite = [(i, f) for i, f in enumerate(fields) if f.finite_only]
        self.finite_at = tuple(i for i, _ in finite)
        self.finite = tuple(f for _, f in finite)
        self.combined = _combined(fields, count)
        if self.combined is None:
            self.unpackers = tuple((f.unpack, 2 * f.offset) for f in fields)

    def raw(self, data: bytes) -> Sequence[float | int | None]:
        """``data``: the reply's register bytes (length checked by the caller)."""
        if self.combined is not None:
            return self.combined.unpack(data)
        return [unpack.unpack_from(data, at)[0] if unpack is not None else None
                for unpack, at in self.unpackers]


def words_to_registers(data: bytes) -> list[int]:
    """Big-endian register bytes (a reply's data) -> register values."""
    return list(_struct(f">{len(data) // 2}H").unpack(data))


def _value_kind(f: FieldDecoder) -> int:
    """How the TagStore holds this field's good value (GENERIC fields never reach it as columns)."""
    if f.kind == BIT:
        return BOOL_VALUE
    if f.kind != RAW:
        return OTHER_VALUE
    return FLOAT_VALUE if f.check_finite else INT_VALUE


_STRUCTS: dict[str, struct.Struct] = {}


def _struct(fmt: str) -> struct.Struct:
    """One shared Struct per format (the formats of fields and replies are few)."""
    found = _STRUCTS.get(fmt)
    if found is None:
        found = _STRUCTS[fmt] = struct.Struct(fmt)
    return found


def _combined(fields: Sequence[FieldDecoder], count: int) -> struct.Struct | None:
    """One big-endian format for the whole reply when every field is direct big-endian and the
    fields follow each other without overlap (pad bytes for gaps)."""
    parts = [">"]
    position = 0
    for f in fields:
        if f.unpack is None or not f.unpack.format.startswith(">") or f.offset < position:
            return None
        if f.offset > position:
            parts.append(f"{2 * (f.offset - position)}x")
        parts.append(f.unpack.format[1:])
        position = f.offset + f.registers
    if position < count:
        parts.append(f"{2 * (count - position)}x")
    combined = struct.Struct("".join(parts))
    return combined if combined.size == 2 * count else None

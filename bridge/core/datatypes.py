"""The one table of Modbus data types: widths, struct codes, limits and which orders apply.

Config (register counts, which keys a tag may set), the codec (decode, both encoders) and
write-back's range check all read this table, so a type's width or limits are stated once.
Standard library only: loading a config must not need pydantic's or pymodbus' view of types.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "TYPES",
    "DataTypeInfo",
    "DataTypeName",
    "Order",
    "range_problem",
    "register_count",
]

DataTypeName = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "string", "bit", "bool",
]
Order = Literal["big", "little"]


@dataclass(frozen=True, slots=True)
class DataTypeInfo:
    """One data type; built once at import."""

    name: str
    registers: int  # 0 = variable (string: the tag's ``length``); bool: one bit of a bit table
    struct_code: str  # "" for string / bool
    signed: bool
    is_float: bool
    numeric: bool  # scale/offset apply
    min: int | None  # integer limits, None for floats and non-numeric types
    max: int | None
    float_max: float | None  # largest finite magnitude of a float type
    byte_order: bool  # byte_order applies (every register type; not a coil/discrete bit)
    word_order: bool  # word_order applies (numbers of two or more registers; never strings)
    pack: struct.Struct | None  # big-endian ("ABCD") packer, precompiled

    def clamp(self, value: float) -> float:
        """``value`` pulled into the integer limits (an integer type only); an ``int`` stays
        exact, since Python compares ints with ints and floats without rounding."""
        assert self.min is not None and self.max is not None
        return max(self.min, min(self.max, value))


# 0x7F7FFFFF: the largest finite float32, computed rather than typed as a decimal literal.
_FLOAT32_MAX: float = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]


def _info(name: str, registers: int, code: str, *, signed: bool = False,
          is_float: bool = False, numeric: bool = True, byte_order: bool = True) -> DataTypeInfo:
    lo = hi = None
    if numeric and not is_float:
        bits = registers * 16
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    float_max = (_FLOAT32_MAX if registers == 2 else sys.float_info.max) if is_float else None
    return DataTypeInfo(
        name=name, registers=registers, struct_code=code, signed=signed, is_float=is_float,
        numeric=numeric, min=lo, max=hi, float_max=float_max, byte_order=byte_order,
        word_order=numeric and registers >= 2,
        pack=struct.Struct(">" + code) if code else None)


TYPES: dict[str, DataTypeInfo] = {
    info.name: info
    for info in (
        _info("int16", 1, "h", signed=True),
        _info("uint16", 1, "H"),
        _info("int32", 2, "i", signed=True),
        _info("uint32", 2, "I"),
        _info("int64", 4, "q", signed=True),
        _info("uint64", 4, "Q"),
        _info("float32", 2, "f", signed=True, is_float=True),
        _info("float64", 4, "d", signed=True, is_float=True),
        _info("string", 0, "", numeric=False),
        _info("bit", 1, "H", numeric=False),  # one bit of a holding/input register
        _info("bool", 1, "", numeric=False, byte_order=False),  # a coil or discrete input
    )
}


def register_count(data_type: str, length: int | None = None) -> int:
    """Registers (or bits, for ``bool``) a value of ``data_type`` occupies; a string's
    ``length`` is its register count."""
    info = TYPES[data_type]
    return (length or 1) if info.registers == 0 else info.registers


def range_problem(data_type: str | None, value: float) -> str | None:
    """Why ``value`` cannot be stored as ``data_type`` (worded to follow "value X "), or None.
    The one rule for both sides of a write: the config check of a fail-safe value and the
    write-back check of every value at run time, so a value ``check`` accepts is written."""
    info = TYPES.get(data_type) if data_type is not None else None
    if info is None:
        return None
    if info.min is not None and info.max is not None:
        if value != int(value):
            return f"is not an integer ({data_type} target)"
        if not info.min <= value <= info.max:
            return f"is outside {data_type} range {info.min}..{info.max}"
    elif info.float_max is not None and abs(value) > info.float_max:
        return f"does not fit {data_type}"
    return None

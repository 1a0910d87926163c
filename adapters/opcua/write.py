"""Write-back values for OPC UA nodes: the node's DataType decides the encoding (pure)."""

from __future__ import annotations

import math

from asyncua import ua

from bridge.core.datatypes import TYPES
from bridge.core.errors import WriteRefusedError

__all__ = ["encode_for", "variant_type_of"]


def _limits(name: str) -> tuple[int, int]:
    info = TYPES[name]
    assert info.min is not None and info.max is not None
    return info.min, info.max


# OPC UA's integer DataTypes by the limits of plcbridge's type table (8-bit ones are OPC UA's own).
_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: _limits("int16"),
    ua.VariantType.UInt16: _limits("uint16"),
    ua.VariantType.Int32: _limits("int32"),
    ua.VariantType.UInt32: _limits("uint32"),
    ua.VariantType.Int64: _limits("int64"),
    ua.VariantType.UInt64: _limits("uint64"),
}
_FLOAT32_MAX = TYPES["float32"].float_max or 0.0


def variant_type_of(data_type: ua.NodeId) -> ua.VariantType | None:
    """The built-in VariantType of a DataType NodeId (ns=0;i=1..25), else None."""
    if data_type.NamespaceIndex != 0 or not isinstance(data_type.Identifier, int):
        return None
    try:
        return ua.VariantType(data_type.Identifier)
    except ValueError:
        return None


def encode_for(where: str, kind: ua.VariantType | None, value: float,
               low: float | None = None, high: float | None = None) -> ua.Variant:
    """``value`` as a Variant of the node's type; WriteRefusedError if it does not fit."""
    if not math.isfinite(value):
        raise WriteRefusedError(f"{where}: value {value!r} is not finite")
    if low is not None and value < low:
        raise WriteRefusedError(f"{where}: value {value!r} below configured min {low}")
    if high is not None and value > high:
        raise WriteRefusedError(f"{where}: value {value!r} above configured max {high}")
    if kind is ua.VariantType.Boolean:
        if value not in (0.0, 1.0):
            raise WriteRefusedError(f"{where}: value {value!r} is not 0 or 1 for a Boolean node")
        return ua.Variant(bool(value), kind)
    limits = _INT_RANGES.get(kind) if kind is not None else None
    if kind is not None and limits is not None:
        if value != int(value):
            raise WriteRefusedError(f"{where}: value {value!r} is not an integer ({kind.name} node)")
        if not limits[0] <= value <= limits[1]:
            raise WriteRefusedError(f"{where}: value {value!r} outside {limits[0]}..{limits[1]} "
                                    f"({kind.name} node)")
        return ua.Variant(int(value), kind)
    if kind is ua.VariantType.Float:
        if abs(value) > _FLOAT32_MAX:
            raise WriteRefusedError(f"{where}: value {value!r} does not fit a Float node")
        return ua.Variant(value, kind)
    if kind is ua.VariantType.Double:
        return ua.Variant(value, kind)
    name = kind.name if kind is not None else "non built-in"
    raise WriteRefusedError(f"{where}: cannot write a number to a {name} node")

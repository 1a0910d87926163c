"""``plcbridge probe modbus``: read a range once and show every way it can be decoded.

A float served in CDAB and read as ABCD decodes to a tiny number with good quality, so the
encoding of a device must be found, not guessed. This module reads a range of registers (only
reads: a probe never writes to a device) through the ordinary ``ModbusAdapter``, so timeouts,
retries, serial lines and error reasons are the bridge's own, and decodes it at every offset as
every numeric type in every order with the codec the bridge polls with
(``adapters.modbus.codec.decode_raw``). With an expected value it ranks the decodings that
match, scaled integers included, and writes the TOML of a tag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.modbus.client import ModbusAdapter
from adapters.modbus.codec import VENDOR_ORDERS, decode_raw
from bridge.config import ModbusDeviceConfig, ModbusTagConfig
from bridge.config.modbus import BIT_TABLES, vendor_register
from bridge.core.datatypes import TYPES
from bridge.core.errors import DecodeError
from bridge.core.tags import Quality

__all__ = [
    "PROBE_TYPES",
    "Decoding",
    "Match",
    "ProbeError",
    "decode_all",
    "format_strings",
    "format_table",
    "rank",
    "read_range",
    "tag_toml",
]

# Every numeric register type, narrowest first: the order of the table's rows and of ties.
PROBE_TYPES = tuple(name for name, info in TYPES.items()
                    if info.numeric and info.registers >= 1 and name != "bit")
# Integer readings are often sent scaled (229.01 V as 22901): these scales are tried too.
SCALES = (1.0, 0.1, 0.01, 0.001, 10.0)


class ProbeError(Exception):
    """The device did not answer the probe's read; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Decoding:
    """One way to read the registers at ``offset``: a type in a vendor order (ABCD, CDAB,
    BADC, DCBA; one-register types only ABCD and BADC, i.e. AB and BA)."""

    offset: int
    data_type: str
    order: str
    value: int | float


@dataclass(frozen=True, slots=True)
class Match:
    """A decoding that matches the expected value, times ``scale``."""

    decoding: Decoding
    scale: float
    value: float
    error: float  # relative to the expected value


async def read_range(device: ModbusDeviceConfig, table: str, address: int,
                     count: int) -> list[int]:
    """``count`` registers (or bits, as 0/1) from ``address`` on: one poll of a copy of
    ``device`` whose only tags are the range. Raises ProbeError with the device's reason."""
    kind = "bool" if table in BIT_TABLES else "uint16"
    # Validated like a config file's tags: the table name comes from the command line.
    tags = [ModbusTagConfig.model_validate({"name": f"{table}[{a}]", "table": table, "address": a,
                                            "type": None if kind == "bool" else kind})
            for a in range(address, address + count)]
    adapter = ModbusAdapter(device.model_copy(update={"tags": tags, "max_gap": 0}))
    try:
        await adapter.connect()
        readings = await adapter.read()
    except Exception as exc:  # connect raises NotConnectedError; say it as the reason
        raise ProbeError(str(exc)) from None
    finally:
        await adapter.close()
    values = {r.tag: r for r in readings}
    result = []
    for tag in tags:
        reading = values[tag.name]
        if reading.quality is not Quality.GOOD:
            raise ProbeError(f"{tag.name}: {reading.reason}")
        result.append(int(reading.value))  # type: ignore[arg-type]
    return result


def _orders(data_type: str) -> tuple[str, ...]:
    return tuple(VENDOR_ORDERS) if TYPES[data_type].word_order else ("ABCD", "BADC")


def decode_all(registers: Sequence[int]) -> list[Decoding]:
    """Every numeric type in every order at every offset where it fits."""
    found = []
    for offset in range(len(registers)):
        for data_type in PROBE_TYPES:
            width = TYPES[data_type].registers
            if offset + width > len(registers):
                continue
            for order in _orders(data_type):
                byte_order, word_order = VENDOR_ORDERS[order]
                value = decode_raw(registers[offset:offset + width], data_type, byte_order, word_order)
                assert isinstance(value, int | float)
                found.append(Decoding(offset, data_type, order, value))
    return found


def _show(value: float) -> str:
    return f"{value:.7g}" if isinstance(value, float) else str(value)


def format_table(registers: Sequence[int], table: str, address: int) -> list[str]:
    """The registers in hex and decimal, then one row per offset and type with a column per
    order (AB and BA for one-register types)."""
    lines = [f"{'address':>7} {'register':>8}  {'hex':>6} {'decimal':>7}"]
    for i, value in enumerate(registers):
        lines.append(f"{address + i:>7} {vendor_register(table, address + i):>8}  "
                     f"0x{value:04X} {value:>7}")
    if table in BIT_TABLES:
        return lines
    lines += ["", f"{'address':>7} {'type':<8} " + " ".join(f"{o:>24}" for o in VENDOR_ORDERS)]
    by_key = {(d.offset, d.data_type, d.order): d.value for d in decode_all(registers)}
    for offset in range(len(registers)):
        for data_type in PROBE_TYPES:
            if (offset, data_type, "ABCD") not in by_key:
                continue
            cells = [_show(by_key[(offset, data_type, o)]) if (offset, data_type, o) in by_key
                     else "" for o in VENDOR_ORDERS]
            lines.append(f"{address + offset:>7} {data_type:<8} " + " ".join(f"{c:>24}" for c in cells))
    return lines


def format_strings(registers: Sequence[int]) -> list[str]:
    """The whole range as text, both byte orders (two characters per register)."""
    lines = []
    for order, byte_order in (("AB", "big"), ("BA", "little")):
        try:
            text = decode_raw(registers, "string", byte_order, length=len(registers))
        except DecodeError:
            continue
        lines.append(f"string {order}: {text!r}")
    return lines


def rank(decodings: Sequence[Decoding], expect: float, tolerance: float) -> list[Match]:
    """Decodings within ``tolerance`` (relative) of ``expect``, best first: smallest error
    (below 1e-6 all equal), then unscaled before scaled, narrow types before wide, the order table's order."""
    matches = []
    scale_of = {s: i for i, s in enumerate(SCALES)}
    for d in decodings:
        scales = (1.0,) if TYPES[d.data_type].is_float else SCALES
        for scale in scales:
            value = d.value * scale
            if not math.isfinite(value):
                continue
            error = abs(value - expect) / max(abs(expect), 1e-12)
            if error <= tolerance:
                matches.append(Match(d, scale, value, error))
    orders = list(VENDOR_ORDERS)
    # Within float32's precision every match is exact: then simpler readings come first.
    matches.sort(key=lambda m: (max(m.error, 1e-6), scale_of[m.scale],
                                TYPES[m.decoding.data_type].registers,
                                PROBE_TYPES.index(m.decoding.data_type),
                                orders.index(m.decoding.order), m.decoding.offset))
    return matches


def tag_toml(name: str, table: str, address: int, match: Match) -> str:
    """The ``[[devices.tags]]`` table that reads ``match``."""
    d = match.decoding
    byte_order, word_order = VENDOR_ORDERS[d.order]
    where = address + d.offset
    lines = ["[[devices.tags]]", f'name = "{name}"', f'table = "{table}"',
             f"address = {where}".ljust(26) + f"# {vendor_register(table, where)} in vendor notation",
             f'type = "{d.data_type}"', f'byte_order = "{byte_order}"']
    if TYPES[d.data_type].word_order:
        lines.append(f'word_order = "{word_order}"'.ljust(26) + f"# {d.order}")
    if match.scale != 1.0:
        lines.append(f"scale = {match.scale:g}")
    return "\n".join(lines)

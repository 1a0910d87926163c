"""The read planner: which Modbus requests cover a device's tags. A pure function.

Per table, tags are sorted by address and neighbours are merged into one request while the
hole between them is at most ``max_gap`` addresses and the merged span fits the protocol limit
(``max_registers`` for holding/input, ``max_bits`` for coil/discrete; the gap of bit tables
is counted in bits). A tag is never split across two requests, so every tag decodes from one
response. Reading a few unused addresses is cheaper than another round trip, but a gap can
also hit unmapped addresses that make the device answer with an exception: ``max_gap = 0``
is the escape hatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.config import BIT_TABLES, TABLES, ModbusTagConfig

__all__ = ["ReadRequest", "describe", "plan_reads"]

_ADDRESS_SPACE = 65536


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` registers (or bits) of ``table`` from ``address``.

    ``tags`` pairs each tag with its offset inside the response.
    """

    table: str
    address: int
    count: int
    tags: tuple[tuple[ModbusTagConfig, int], ...]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.address + self.count

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


def plan_reads(tags: Sequence[ModbusTagConfig], *, max_registers: int = 125, max_bits: int = 2000,
               max_gap: int = 8) -> list[ReadRequest]:
    """Group ``tags`` into as few requests as the limits allow.

    Raises ValueError naming the tag when a tag cannot be read by one request (wider than the
    limit or running past address 65535).
    """
    if not 1 <= max_registers <= 125:
        raise ValueError(f"max_registers: {max_registers} is not 1..125")
    if not 1 <= max_bits <= 2000:
        raise ValueError(f"max_bits: {max_bits} is not 1..2000")
    if max_gap < 0:
        raise ValueError(f"max_gap: {max_gap} is negative")
    requests: list[ReadRequest] = []
    for table in TABLES:  # a fixed order, so a plan (and the `check` printout) is deterministic
        limit = max_bits if table in BIT_TABLES else max_registers
        unit = "bits" if table in BIT_TABLES else "registers"
        members = sorted((t for t in tags if t.table == table), key=lambda t: (t.address, t.registers))
        current: list[ModbusTagConfig] = []
        start = end = 0
        for tag in members:
            width = tag.registers
            if width > limit:
                raise ValueError(f"tag {tag.name!r}: {width} {unit} do not fit in one request "
                                 f"(limit {limit})")
            if tag.address + width > _ADDRESS_SPACE:
                raise ValueError(f"tag {tag.name!r}: {table} {tag.address}..{tag.address + width - 1} "
                                 "runs past address 65535")
            tag_end = tag.address + width
            # Overlapping tags (a bit and its register) give a negative gap: always merge.
            if current and tag.address - end <= max_gap and max(end, tag_end) - start <= limit:
                current.append(tag)
                end = max(end, tag_end)
                continue
            if current:
                requests.append(_request(table, start, end, current))
            current, start, end = [tag], tag.address, tag_end
        if current:
            requests.append(_request(table, start, end, current))
    return requests


def _request(table: str, start: int, end: int, tags: list[ModbusTagConfig]) -> ReadRequest:
    return ReadRequest(table, start, end - start, tuple((t, t.address - start) for t in tags))


def describe(requests: Sequence[ReadRequest]) -> list[str]:
    """One line per request, e.g. ``holding 0..9 (10 registers): pump.pressure, pump.flow``."""
    lines = []
    for request in requests:
        unit = "bit" if request.is_bits else "register"
        plural = "" if request.count == 1 else "s"
        names = ", ".join(tag.name for tag, _ in request.tags)
        lines.append(f"{request.table} {request.address}..{request.end - 1} "
                     f"({request.count} {unit}{plural}): {names}")
    return lines

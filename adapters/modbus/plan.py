"""The read planner: which Modbus requests cover a device's tags. A pure function.

Per table, tags are sorted by address and neighbours are merged into one request while the
hole between them is at most ``max_gap`` addresses and the merged span fits the protocol limit
(``max_registers`` for holding/input, ``max_bits`` for coil/discrete; the gap of bit tables
is counted in bits). A tag is never split across two requests, so every tag decodes from one
response. Reading a few unused addresses is cheaper than another round trip, but a gap can
also hit unmapped addresses that make the device answer with an exception: the adapter then
learns those ``holes`` (by bisecting the failed read) and plans again, never merging across a
hole and reading a tag that sits in one on its own. ``max_gap = 0`` stays the static escape
hatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.config import BIT_TABLES, TABLES, ModbusTagConfig

__all__ = ["Holes", "ReadRequest", "describe", "describe_holes", "plan_reads", "request_for"]

_ADDRESS_SPACE = 65536
# Per table, half-open address ranges [start, end) the device refused to read.
Holes = Mapping[str, Sequence[tuple[int, int]]]


def _hits(ranges: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    return any(a < end and start < b for a, b in ranges)


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
               max_gap: int = 8, holes: Holes | None = None,
               limits: Mapping[str, int] | None = None) -> list[ReadRequest]:
    """Group ``tags`` into as few requests as the limits allow.

    ``holes``: learned unreadable ranges per table; no request spans one, and a tag inside one
    gets a request of its own. ``limits``: learned per-table request sizes (a device that
    answers exception 3 above its own maximum) that lower ``max_registers``/``max_bits``.

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
        learned = (limits or {}).get(table, limit)
        unit = "bits" if table in BIT_TABLES else "registers"
        refused = (holes or {}).get(table, ())
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
            if _hits(refused, tag.address, tag_end):
                # A tag the device refuses is read alone, so it cannot blank its neighbours.
                if current:
                    requests.append(_request(table, start, end, current))
                requests.append(_request(table, tag.address, tag_end, [tag]))
                current = []
                continue
            # Overlapping tags (a bit and its register) give a negative gap: always merge.
            if current and tag.address - end <= max_gap and max(end, tag_end) - start <= min(
                    limit, learned) and not _hits(refused, end, tag.address):
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


def request_for(table: str, tags: Sequence[ModbusTagConfig]) -> ReadRequest:
    """One request covering exactly ``tags`` (all of ``table``), e.g. half of a failed read."""
    start = min(t.address for t in tags)
    end = max(t.address + t.registers for t in tags)
    return _request(table, start, end, list(tags))


def describe_holes(holes: Holes) -> list[str]:
    """One entry per learned hole, e.g. ``holding 5..5``."""
    return [f"{table} {a}..{b - 1}" for table in TABLES for a, b in sorted(holes.get(table, ()))]


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

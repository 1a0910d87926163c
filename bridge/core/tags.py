"""Readings, their quality, and the TagStore: the only state shared by polling and scoring."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from itertools import repeat
from typing import NamedTuple

import numpy as np

__all__ = ["BOOL", "FLOAT", "INT", "NONE", "OTHER", "Columns", "Part", "Quality", "Reading", "TagStore",
           "Value", "bad", "expand", "good", "good_readings"]

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
# How a history slot holds its value: a number in the float64 array (a float, an int that
# float64 holds exactly, a bool), no value, or anything else (a string, a bigger int) as the
# Reading itself in a small side table. A reason (bad readings) is kept beside any of them.
FLOAT, INT, BOOL, NONE, OTHER = 0, 1, 2, 3, 4
# A slot's state: its kind (bits 0-2), quality (bits 3-4), and whether the source-time and
# reason columns hold something for it, so that writing a good number touches neither.
_QUALITY_SHIFT, _HAS_SOURCE, _HAS_REASON = 3, 32, 64
_KIND_AND_QUALITY = 31  # (state & this) < NONE: a good number
_EMPTY = 255  # the state of a slot never written
_EXACT = 2**53  # ints up to this magnitude round-trip through float64


class Columns(NamedTuple):
    """Good numeric readings of one reply, column-wise: the poll path's unit of work.

    A poll of 1,000 tags would otherwise build 1,000 Reading objects that the store takes
    apart again; ``TagStore.put_columns`` writes the whole reply with a few numpy operations
    and Readings are built only when someone asks (``latest``, ``history``, ``expand``).
    ``kinds`` holds one of FLOAT/INT/BOOL per value (precomputed per request by the adapter);
    every INT must be within +-2**53, so that float64 holds it exactly.
    """

    names: tuple[str, ...]
    values: Sequence[float | int | bool]
    kinds: np.ndarray  # uint8, one per value
    received: float

    def readings(self) -> list[Reading]:
        return good_readings(self.names, self.values, self.received)


def good_readings(names: Sequence[str], values: Sequence[Value], received: float) -> list[Reading]:
    """A good Reading per name, all received at ``received`` (built by ``map`` in C)."""
    return list(map(Reading, names, values, repeat(Quality.GOOD), repeat(received)))


Part = Reading | Columns


def expand(parts: Iterable[Part]) -> list[Reading]:
    """Readings of a poll's parts, in order (for callers that want objects, not columns)."""
    out: list[Reading] = []
    for part in parts:
        if type(part) is Columns:
            out.extend(part.readings())
        else:
            out.append(part)  # type: ignore[arg-type]
    return out


class TagStore:
    """Latest Reading per tag plus a bounded history per tag.

    Memory is bounded by ``len(tags) * history_size`` whatever the uptime, also while devices
    are down: a bad reading is a state code and the number of its (interned) reason, not an
    object. Everything lives in numpy ring buffers, slot-major (``[slot, tag]``), 28 bytes a
    reading instead of ~113 for a Reading object: at 1,000 tags the default 60 readings each
    are 1.7 MB. The latest reading of a tag is the newest slot of its ring, so a poll's values
    are written once, column-wise (``put_columns``: the tags of one reply are written
    together, so they share a slot and land in one contiguous row), and Readings are rebuilt
    only when asked for. Unknown tags are refused so that a typo in an adapter cannot grow the
    store.
    """

    def __init__(self, tags: Iterable[str], history_size: int = 60) -> None:
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        self._index = {name: i for i, name in enumerate(tags)}
        shape = (history_size, len(self._index))
        self._size = history_size
        self._value = np.zeros(shape, dtype=np.float64)
        self._received = np.zeros(shape, dtype=np.float64)
        self._source = np.zeros(shape, dtype=np.float64)  # read if _HAS_SOURCE
        self._state = np.full(shape, _EMPTY, dtype=np.uint8)
        self._reason = np.zeros(shape, dtype=np.uint32)  # _reasons.text[n], read if _HAS_REASON
        self._count = np.zeros(len(self._index), dtype=np.int64)
        self._reasons = _Reasons(self._reason)
        # (slot, row) -> Reading for OTHER slots (strings, huge ints: rare). An entry outlives
        # its slot's overwrite at most until the slot holds an OTHER again: bounded.
        self._other: dict[tuple[int, int], Reading] = {}
        self._rows: dict[tuple[str, ...], np.ndarray] = {}
        # names checked unique -> (slice or rows, rows); see _column_where
        self._column_rows: dict[tuple[str, ...], tuple[slice | np.ndarray, np.ndarray]] = {}
        self.updates = 0

    def __contains__(self, tag: object) -> bool:
        return tag in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def rows(self, tags: Sequence[str]) -> np.ndarray:
        """Row numbers of ``tags`` (cached per tuple of names: a reply's names never change).
        A tag may appear twice (a model may read one tag for two features)."""
        key = tuple(tags)
        found = self._rows.get(key)
        if found is None:
            unknown = [t for t in key if t not in self._index]
            if unknown:
                raise KeyError(f"unknown tag {unknown[0]!r}")
            found = self._rows[key] = np.array([self._index[t] for t in key], dtype=np.intp)
        return found

    def put(self, reading: Reading) -> None:
        row = self._index.get(reading.tag)
        if row is None:
            raise KeyError(f"unknown tag {reading.tag!r}")
        count = int(self._count[row])
        slot = count % self._size
        self._count[row] = count + 1
        self.updates += 1
        value = reading.value
        self._received[slot, row] = reading.received_time
        state = _QUALITY_CODE[reading.quality] << _QUALITY_SHIFT
        if reading.source_time is not None:
            self._source[slot, row] = reading.source_time
            state |= _HAS_SOURCE
        if reading.reason:
            self._reason[slot, row] = self._reasons.number(reading.reason)
            state |= _HAS_REASON
        cls = type(value)
        if cls is float:
            kind = FLOAT
        elif cls is int and -_EXACT <= value <= _EXACT:  # type: ignore[operator]
            kind = INT
        elif cls is bool:
            kind = BOOL
        elif value is None:
            kind = NONE
        else:
            kind = OTHER
            self._other[(slot, row)] = reading
        self._state[slot, row] = state | kind
        if kind < NONE:
            self._value[slot, row] = value

    def put_columns(self, columns: Columns) -> None:
        where = self._column_rows.get(columns.names)
        if where is None:
            where = self._column_rows[columns.names] = self._column_where(columns.names)
        whole, rows = where
        count = self._count[whole]
        first = count[0]
        if (count == first).all():  # the tags of one reply share a slot
            slot = first % self._size
            self._count[whole] = first + 1
            self._value[slot, whole] = columns.values
            self._state[slot, whole] = columns.kinds  # quality GOOD, no source time, no reason
            self._received[slot, whole] = columns.received
        else:  # they drifted apart (a re-plan split a reply): a slot per tag
            slots = count % self._size  # before the increment: ``count`` may be a view
            self._count[rows] = count + 1
            self._value[slots, rows] = columns.values
            self._state[slots, rows] = columns.kinds
            self._received[slots, rows] = columns.received
        self.updates += len(rows)

    def _column_where(self, names: tuple[str, ...]) -> tuple[slice | np.ndarray, np.ndarray]:
        """How ``put_columns`` indexes a reply's tags: a slice when their rows follow each other
        (the usual case: tags listed in address order), which numpy writes ~3x faster than the
        row numbers (measured: 4.5 against 13 us for 100 tags); the row numbers as well, for
        the per-tag slots."""
        # Checked once per set of names: a tag twice would be counted once by numpy.
        if len(set(names)) != len(names):
            raise ValueError("a tag appears twice in one set of columns")
        rows = self.rows(names)
        first = int(rows[0])
        if (rows == np.arange(first, first + len(rows))).all():
            return slice(first, first + len(rows)), rows
        return rows, rows

    def put_many(self, parts: Iterable[Part]) -> None:
        for part in parts:
            if type(part) is Columns:
                self.put_columns(part)
            else:
                self.put(part)  # type: ignore[arg-type]

    def latest(self, tag: str) -> Reading | None:
        row = self._index.get(tag)
        if row is None:
            raise KeyError(f"unknown tag {tag!r}")
        count = int(self._count[row])
        return self._reading(tag, row, (count - 1) % self._size) if count else None

    def latest_numbers(self, rows: np.ndarray, now: float, max_age: float) -> np.ndarray | None:
        """The latest values of ``rows`` as float64 when every one is a good, finite number
        received within ``max_age`` of ``now``; else None (ask ``latest`` for the reasons)."""
        slots = (self._count[rows] - 1) % self._size  # never written: state _EMPTY
        values: np.ndarray = self._value[slots, rows]
        if (((self._state[slots, rows] & _KIND_AND_QUALITY) < NONE).all() and np.isfinite(values).all()
                and (now - self._received[slots, rows]).max() <= max_age):
            return values
        return None

    def history(self, tag: str, since: float | None = None, limit: int | None = None) -> list[Reading]:
        """Readings of ``tag`` received after ``since``, oldest first, at most the newest ``limit``."""
        row = self._index[tag]
        count = int(self._count[row])
        slots = [(count - n) % self._size for n in range(min(count, self._size), 0, -1)]
        items = [self._reading(tag, row, slot) for slot in slots]
        if since is not None:
            items = [r for r in items if r.received_time > since]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

    def _reading(self, tag: str, row: int, slot: int) -> Reading:
        state = int(self._state[slot, row])
        kind = state & 7
        if kind == OTHER:
            return self._other[(slot, row)]
        number = float(self._value[slot, row])
        value: Value = (number if kind == FLOAT else int(number) if kind == INT else
                        bool(number) if kind == BOOL else None)
        source = float(self._source[slot, row]) if state & _HAS_SOURCE else None
        reason = self._reasons.text[self._reason[slot, row]] if state & _HAS_REASON else ""
        quality = _QUALITIES[(state >> _QUALITY_SHIFT) & 3]
        return Reading(tag, value, quality, float(self._received[slot, row]), source, reason)


class _Reasons:
    """Interned reason strings, numbered for the store's uint32 column. Bounded: reasons can
    embed values ("out of range: 7.2 > valid_max 5"), so once the table is full, numbers no
    slot holds any more are given back (a pass over the column, once per ``limit`` reasons)."""

    def __init__(self, column: np.ndarray, limit: int = 4096) -> None:
        self._column = column
        self._limit = limit
        self.text = [""]
        self._numbers: dict[str, int] = {}

    def number(self, reason: str) -> int:
        found = self._numbers.get(reason)
        if found is not None:
            return found
        if len(self.text) > self._limit:
            self._compact()
        self._numbers[reason] = len(self.text)
        self.text.append(reason)
        return len(self.text) - 1

    def _compact(self) -> None:
        # Numbers left behind in slots without _HAS_REASON only keep a few strings alive longer.
        used = np.unique(self._column)
        keep = [int(n) for n in used if n]
        renumber = np.zeros(len(self.text), dtype=np.uint32)
        renumber[keep] = np.arange(1, len(keep) + 1, dtype=np.uint32)
        self._column[...] = renumber[self._column]
        self.text = ["", *(self.text[n] for n in keep)]
        self._numbers = {text: n for n, text in enumerate(self.text) if n}
        self._limit = max(self._limit, 2 * len(self.text))  # all still in use: compact less often

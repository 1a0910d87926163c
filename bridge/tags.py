"""Readings, their quality, and the TagStore: the only state shared by polling and scoring."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Quality", "Reading", "TagStore", "Value", "bad", "good"]

Value = float | int | bool | str | None


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of one tag.

    Times are UTC epoch seconds (floats): cheap to compare in the hot path; the API renders
    them as ISO 8601. ``source_time`` is the device's own timestamp when it has one (OPC UA),
    else ``None``.
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


class TagStore:
    """Latest Reading per tag plus a bounded history per tag.

    Memory is bounded by ``len(tags) * history_size`` whatever the uptime. Unknown tags are
    refused so that a typo in an adapter cannot grow the store.
    """

    def __init__(self, tags: Iterable[str], history_size: int = 600) -> None:
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        self._history: dict[str, deque[Reading]] = {
            name: deque(maxlen=history_size) for name in tags
        }
        self._latest: dict[str, Reading] = {}
        self.updates = 0

    def __contains__(self, tag: object) -> bool:
        return tag in self._history

    def __iter__(self) -> Iterator[str]:
        return iter(self._history)

    def __len__(self) -> int:
        return len(self._history)

    def put(self, reading: Reading) -> None:
        history = self._history.get(reading.tag)
        if history is None:
            raise KeyError(f"unknown tag {reading.tag!r}")
        self._latest[reading.tag] = reading
        history.append(reading)
        self.updates += 1

    def put_many(self, readings: Iterable[Reading]) -> None:
        for reading in readings:
            self.put(reading)

    def latest(self, tag: str) -> Reading | None:
        if tag not in self._history:
            raise KeyError(f"unknown tag {tag!r}")
        return self._latest.get(tag)

    def history(self, tag: str, since: float | None = None, limit: int | None = None) -> list[Reading]:
        """Readings of ``tag`` received after ``since``, oldest first, at most the newest ``limit``."""
        items = list(self._history[tag])
        if since is not None:
            items = [r for r in items if r.received_time > since]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

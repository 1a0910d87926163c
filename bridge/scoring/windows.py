"""WindowBuilder: samples a model's input tags on the model's period into a fixed window.

Each ``sample()`` takes the latest Reading of every input (last-value hold) and appends one
row. A row is invalid when an input has no reading, a non-good or non-numeric value, or a
reading older than ``max_age``: holding a dead sensor's last value would present stale data
as fresh. A window is valid only when it is full and every row in it is valid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bridge.core.tags import TagStore

__all__ = ["Window", "WindowBuilder", "sample_row"]


@dataclass(frozen=True, slots=True)
class Window:
    time: float
    values: np.ndarray  # [length, features] float32, oldest row first
    valid: bool
    reason: str = ""


def sample_row(store: TagStore, tags: Sequence[str], now: float,
               max_age: float) -> tuple[list[float | None], str]:
    """One row of the latest readings: values (None = unusable: no reading, not a good
    finite number, or older than ``max_age``) and the first problem, named by tag."""
    values: list[float | None] = []
    problem = ""
    for tag in tags:
        reading = store.latest(tag)
        value = None if reading is None else reading.numeric()
        if reading is None:
            problem = problem or f"{tag}: no reading yet"
        elif value is None:
            problem = problem or f"{tag}: {reading.reason or f'quality {reading.quality.value}'}"
        elif now - reading.received_time > max_age:
            problem = problem or f"{tag}: stale ({now - reading.received_time:.1f} s old)"
            value = None
        values.append(value)
    return values, problem


class WindowBuilder:
    def __init__(self, store: TagStore, inputs: Sequence[str], length: int, max_age: float) -> None:
        missing = [tag for tag in inputs if tag not in store]
        if missing:
            raise KeyError(f"unknown input tags: {', '.join(missing)}")
        if length < 1:
            raise ValueError("window length must be >= 1")
        self._store = store
        self.inputs = tuple(inputs)
        self._input_rows = store.rows(self.inputs)
        self.length = length
        self.max_age = max_age
        self._rows = np.zeros((length, len(self.inputs)), dtype=np.float32)
        self._row_ok = np.zeros(length, dtype=bool)
        self._filled = 0
        self._head = 0  # index of the slot the next row goes into
        self._last_problem = ""

    def sample(self, now: float | None = None) -> Window:
        """Append one row from the store's latest readings and return the current window."""
        now = time.time() if now is None else now
        row = self._rows[self._head]
        problem = ""
        numbers = self._store.latest_numbers(self._input_rows, now, self.max_age)
        if numbers is not None:  # the usual case: every input good and fresh, no Reading built
            row[:] = numbers
        else:
            values, problem = sample_row(self._store, self.inputs, now, self.max_age)
            row[:] = [np.nan if v is None else v for v in values]
        self._row_ok[self._head] = not problem
        if problem:
            self._last_problem = problem
        self._head = (self._head + 1) % self.length
        self._filled = min(self._filled + 1, self.length)
        return self._window(now)

    def _window(self, now: float) -> Window:
        head = self._head
        values = np.concatenate((self._rows[head:], self._rows[:head]))  # oldest row first, a copy
        if self._filled < self.length:
            return Window(now, values, False, f"filling ({self._filled}/{self.length} samples)")
        bad_rows = self.length - int(np.count_nonzero(self._row_ok))
        if bad_rows:
            return Window(now, values, False,
                          f"{bad_rows}/{self.length} samples invalid; last: {self._last_problem}")
        return Window(now, values, True)

    def current(self, now: float | None = None) -> Window:
        """The window as it stands, without sampling a new row."""
        return self._window(time.time() if now is None else now)

    def adopt(self, other: WindowBuilder) -> bool:
        """Take over ``other``'s rows when both sample the same tags into the same length, so
        a model swapped in between cycles scores its first cycle on a full window."""
        if other.inputs != self.inputs or other.length != self.length:
            return False
        self._rows[:] = other._rows
        self._row_ok[:] = other._row_ok
        self._filled, self._head, self._last_problem = other._filled, other._head, other._last_problem
        return True

    def reset(self) -> None:
        self._row_ok[:] = False
        self._filled = 0

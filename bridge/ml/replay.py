"""Replay a recorded table through the live bridge's path: TagStore -> WindowBuilder.

Training and evaluation both use this, so a model never sees windows the bridge would not
build: rows become Readings (bad quality or empty cells become bad Readings), a simulated clock
samples the WindowBuilder on the model's period with last-value hold and the same max age as
the runtime, and each row gets the window the bridge held when that row was the newest input.
Only past rows are in a window (causal by construction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bridge.core.tags import Quality, Reading, TagStore
from bridge.ml.dataset import Table
from bridge.scoring.windows import Window, WindowBuilder

__all__ = ["OnWindow", "Replay", "default_max_age", "replay"]

# Ticks are on a float grid; a row stamped within this of a tick belongs to it.
_EPS = 1e-6


def default_max_age(period: float) -> float:
    """The runtime's default (bridge.runtime.bridge: 2.5 x the model period when polling is faster)."""
    return 2.5 * period


@dataclass(frozen=True)
class Replay:
    windows: np.ndarray  # [T, L, F] float32: the window sampled at the tick that took row i
    valid: np.ndarray  # [T] bool: that window was valid (full, every sample good and fresh)
    bad_rows: int  # rows with a bad-quality flag or an empty/non-finite selected cell


def _readings(tags: Sequence[str], row: np.ndarray, good: bool, when: float) -> list[Reading]:
    out = []
    for tag, value in zip(tags, row, strict=True):
        if not good:
            out.append(Reading(tag, None, Quality.BAD, when, None, "recorded with bad quality"))
        elif math.isnan(value):
            out.append(Reading(tag, None, Quality.BAD, when, None, "empty or non-finite value"))
        else:
            out.append(Reading(tag, float(value), Quality.GOOD, when))
    return out


# Called with every window the scheduler would sample, in order (also those no row is the newest
# of, and the invalid ones of a gap), and the rows [first, stop) that get it: what a stateful
# runner (alarm hysteresis, online adaptation) must see to match the live bridge.
OnWindow = Callable[[Window, int, int], None]


def replay(table: Table, inputs: Sequence[str], *, length: int, period: float,
           max_age: float | None = None, on_window: OnWindow | None = None) -> Replay:
    """Feed ``table`` into a TagStore and sample a WindowBuilder every ``period`` seconds."""
    values = table.select(inputs)
    tags = tuple(inputs)
    store = TagStore(tags, history_size=1)
    builder = WindowBuilder(store, tags, length, default_max_age(period) if max_age is None else max_age)
    n_rows = len(table)
    windows = np.zeros((n_rows, length, len(tags)), dtype=np.float32)
    valid = np.zeros(n_rows, dtype=bool)
    t0 = float(table.times[0])
    tick, row = 0, 0
    while row < n_rows:
        # Long gap: only the last `length` samples before the next row can still be in a window,
        # so sample just those (as the scheduler would) instead of looping over the whole gap.
        next_tick = math.ceil((table.times[row] - t0) / period - _EPS)
        if next_tick - tick > length:
            for k in range(next_tick - length, next_tick):
                gap_window = builder.sample(t0 + k * period)
                if on_window is not None:
                    on_window(gap_window, row, row)
            tick = next_tick
        now = t0 + tick * period
        first = row
        while row < n_rows and table.times[row] <= now + _EPS:
            store.put_many(_readings(tags, values[row], bool(table.good[row]), float(table.times[row])))
            row += 1
        window = builder.sample(now)
        # Several rows within one period: the bridge sees only the last, all get its window.
        windows[first:row] = window.values
        valid[first:row] = window.valid
        if on_window is not None:
            on_window(window, first, row)
        tick += 1
    bad = ~table.good | np.isnan(values).any(axis=1)
    return Replay(windows, valid, int(bad.sum()))

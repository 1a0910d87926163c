"""Train-time guards (issue 12, item 4): inputs a model cannot learn from, and data too short.

The model runs in float32 (ONNX ``window`` is float), so an input is judged by the float32
numbers the graph will see, not by the float64 numbers of the CSV. A constant tag, or one whose
only movement is below float32 resolution at its value (a scaled ``123.4`` jittering in the
16th digit), has a standard deviation of ~0: the front end divides by its floor (1e-6) and
float32 rounding becomes a z-score in the millions, so the threshold ends up at ~1e14 and every
window is flagged, on the very recording it was trained on. Such inputs are dropped with the
reason when ``train`` chose the inputs, and refused when the user named them (the model's
contract must then hold exactly those inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NEAR_CONSTANT_STEPS", "InputProblem", "bad_row_reasons", "input_problems", "min_rows"]

# An input whose standard deviation is below this many float32 steps at its value moves only
# by rounding noise of its own representation (relative sd < ~2e-6): no signal to learn.
NEAR_CONSTANT_STEPS = 16
# float64 movement the float32 cast distorts by more than this fraction of the sd is not
# the movement the model will see.
ROUNDING_SHARE = 0.01


@dataclass(frozen=True)
class InputProblem:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def input_problems(values: np.ndarray, names: Sequence[str]) -> list[InputProblem]:
    """Inputs of ``values`` [T, F] (good rows, float64; NaN = empty) that carry no usable signal."""
    problems = []
    for j, name in enumerate(names):
        v64 = values[:, j][np.isfinite(values[:, j])]
        if not len(v64):
            problems.append(InputProblem(name, "no good value in the training rows"))
            continue
        v32 = v64.astype(np.float32).astype(np.float64)  # what the graph sees
        sd64, sd32 = float(v64.std()), float(v32.std())
        level = float(np.abs(v32).max())
        step = float(np.spacing(np.float32(level)))
        if float(np.ptp(v64)) == 0.0:
            problems.append(InputProblem(name, f"constant ({v64[0]:.7g}) in all {len(v64)} good rows"))
        elif float(np.ptp(v32)) == 0.0 or float(np.abs(v64 - v32).max()) > ROUNDING_SHARE * sd64:
            problems.append(InputProblem(
                name, f"not exact in float32: it moves by sd {sd64:.3g} around {level:.7g}, where float32 "
                f"steps are {step:.3g}; the model (float32) would see rounding, not the signal"))
        elif sd32 < NEAR_CONSTANT_STEPS * step:
            problems.append(InputProblem(
                name, f"near-constant: sd {sd32:.3g} is less than {NEAR_CONSTANT_STEPS} float32 steps "
                f"({step:.3g}) at its value {level:.7g}"))
    return problems


def bad_row_reasons(good: np.ndarray, values: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Why rows are unusable: ``quality`` not good, or an empty cell per input (a row may count twice)."""
    reasons = {"quality not good": int((~good).sum())}
    for j, name in enumerate(names):
        reasons[f"empty {name}"] = int(np.isnan(values[:, j]).sum())
    return {why: n for why, n in reasons.items() if n}


def min_rows(window: int, calib_fraction: float, min_fit: int, min_calib: int) -> int:
    """Fewest rows that give ``min_fit`` fit and ``min_calib`` held-out windows (all rows good).

    Mirrors ``train``'s split: the first round(n (1 - c)) rows fit (their first window-1 rows
    are warm-up), and a calibration window must lie entirely after them.
    """
    n = max(min_fit + min_calib + 2 * (window - 1), 1)
    n = max(n, math.ceil((min_calib + window - 1) / calib_fraction) - 1)
    while True:
        n_fit = round(n * (1.0 - calib_fraction))
        if n_fit - (window - 1) >= min_fit and n - n_fit - (window - 1) >= min_calib:
            return n
        n += 1

"""Drift-robust, causal window features (issue 12, item 1): numpy twin and ONNX nodes.

The ``level`` front end (``bridge.ml.heads.graph``) describes a window only by each input's mean.
On SKAB the temperatures wander out of a 400-row training range within minutes, so a level
feature of a slow input turns drift into false alarms, and a fault that shows as variability
(vibration, cavitation) barely moves a mean. The ``dynamic`` front end describes each input of
the z-scored window ``z`` [L, F] by up to three numbers, all computed from the window's own rows
(causal: nothing after the newest sample):

- **level** ``mean_t z[t]``, only for inputs whose level holds still over the training part
  (``level_stable``: block means within ``DRIFT_LIMIT`` within-block sds) or whose reading is
  quantised coarser than its training spread (``quantum`` > training sd: a reading that
  dithers between two steps moves its block means by a step, which the drift statistic would
  read as drift); for the others the level is what drifts, and their dispersion and residual
  still see a fault;
- **dispersion** ``log(c + mean_t |z[t] - z[t-1]|)``, the mean absolute successive difference:
  noise on a steady signal, large when a signal starts to shake; the log makes its
  right-skewed law close to symmetric, which the squared statistics of the heads assume;
- **residual** ``mean(z[L-r..L-1]) - mean(z[0..L-r-1])`` with ``r = recent(L)`` (1 for L <= 9):
  the newest samples minus their trailing baseline (a prediction by the window's own past),
  so a step shows at once whatever the level has drifted to.

Every feature is then standardised on the training windows, as in the level front end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["DISPERSION_FLOOR", "DRIFT_BLOCKS", "DRIFT_LIMIT", "FEATURES", "QUANTUM_TOLERANCE", "Layout",
           "drift", "dynamic_features", "dynamic_nodes", "level_stable", "quantised", "quantum", "recent"]

FEATURES = ("level", "dynamic")
# Added to the mean absolute difference (z units) before the log: a quantised signal that did
# not move in a window has MASD 0, and log(0) would be an infinite feature.
DISPERSION_FLOOR = 0.1
# Level kept when the training part's block means stay within this many within-block standard
# deviations of each other (``drift``). Chosen on the design files only (valve1/0-7 and
# anomaly-free); the figures for the alternatives are in docs/skab.md's design section
# (``python -m models.recipes.skab_design``), not repeated here where they would go stale.
DRIFT_LIMIT = 0.5
# Contiguous blocks the training part is cut into for ``drift``.
DRIFT_BLOCKS = 4
# ``quantum``: distinct training values closer than this many training sd are one step (the
# jitter of a quantised reading, e.g. SKAB's flow reads 31.003, 31.004, 32.000, ...).
QUANTUM_TOLERANCE = 0.05


def drift(rows: np.ndarray, blocks: int = DRIFT_BLOCKS) -> np.ndarray:
    """Per input: range of the block means / pooled within-block sd, over good training rows
    [N, F] in time order. About 0.2-0.5 for a steady noisy signal, several for one that wanders
    (a warming temperature), whatever its units."""
    parts = np.array_split(rows, blocks)
    means = np.array([p.mean(axis=0) for p in parts])
    within = np.sqrt(np.mean([p.var(axis=0) for p in parts], axis=0))
    return np.ptp(means, axis=0) / np.maximum(within, 1e-12)  # type: ignore[no-any-return]


def quantum(values: np.ndarray) -> float:
    """The step of a quantised reading from its training values [N]: the median gap between
    consecutive distinct values, counting only gaps wider than ``QUANTUM_TOLERANCE`` training sd
    (narrower ones are jitter within one step); 0 when there is none. About the reading's
    resolution for a quantised input (SKAB's flow: 1 l/min at a 0.4 l/min sd), a small share of
    the sd for a continuous one (the gaps between its sparse tail values)."""
    steps = np.diff(np.unique(values))
    wide = steps[steps > QUANTUM_TOLERANCE * float(np.std(values))]
    return float(np.median(wide)) if len(wide) else 0.0


def quantised(rows: np.ndarray) -> np.ndarray:
    """Per input of good training rows [N, F]: whether its ``quantum`` exceeds its training sd.
    Such a reading spends stretches on one step or the next, so its block means move by a
    step without any drift, and 400 rows cannot tell that dither from a wandering level."""
    sd = rows.std(axis=0)
    return np.array([quantum(rows[:, j]) > sd[j] > 0 for j in range(rows.shape[1])], dtype=bool)


def level_stable(rows: np.ndarray, limit: float = DRIFT_LIMIT) -> tuple[int, ...]:
    """Indices of the inputs whose level feature is kept: ``drift`` within ``limit``, or a reading
    quantised coarser than its training sd (``quantised``)."""
    return tuple(int(j) for j in np.flatnonzero((drift(rows) <= limit) | quantised(rows)))


@dataclass(frozen=True)
class Layout:
    """Which features the dynamic front end computes, and which input each one belongs to."""

    n_inputs: int
    levels: tuple[int, ...]  # inputs with a level feature

    @property
    def owners(self) -> list[int]:
        """Input index of each feature, in feature order: levels, dispersions, residuals."""
        every = list(range(self.n_inputs))
        return [*self.levels, *every, *every]

    @property
    def drifting(self) -> tuple[int, ...]:
        """Inputs without a level feature (their level drifted over the training part)."""
        return tuple(j for j in range(self.n_inputs) if j not in self.levels)

    def names(self, inputs: Sequence[str]) -> list[str]:
        return ([f"level({inputs[j]})" for j in self.levels] + [f"masd({n})" for n in inputs]
                + [f"residual({n})" for n in inputs])


def recent(length: int) -> int:
    """Samples averaged on the newest side of the residual: one for short windows, a fifth of
    a long one (a single sample's noise would hide a small step)."""
    return max(1, length // 5)


def dynamic_features(z: np.ndarray, layout: Layout) -> np.ndarray:
    """z-scored windows [N, L, F] -> features [N, K] (numpy twin of ``dynamic_nodes``)."""
    level = z.mean(axis=1)[:, list(layout.levels)]
    masd = np.log(DISPERSION_FLOOR + np.abs(np.diff(z, axis=1)).mean(axis=1))
    r = recent(z.shape[1])
    residual = z[:, -r:, :].mean(axis=1) - z[:, :-r, :].mean(axis=1)
    return np.concatenate([level, masd, residual], axis=1)


def _const(name: str, value: float | list[int] | int, dtype: type) -> onnx.TensorProto:
    # graph.const, restated: graph imports this module, so this module cannot import graph.
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def dynamic_nodes(layout: Layout, length: int, z: str, out: str) -> tuple[list[onnx.NodeProto],
                                                                          list[onnx.TensorProto]]:
    """Graph nodes: ``z`` [batch, L, F] -> ``out`` [batch, K] in the twin's feature order."""
    n = helper.make_node
    nodes = [
        # masd: |z[1:] - z[:-1]| averaged over time
        n("Slice", [z, "d_one", "d_end", "d_time"], ["d_later"]),
        n("Slice", [z, "d_zero", "d_last", "d_time"], ["d_earlier"]),
        n("Sub", ["d_later", "d_earlier"], ["d_step"]),
        n("Abs", ["d_step"], ["d_abs"]),
        n("ReduceMean", ["d_abs"], ["d_masd_raw"], axes=[1], keepdims=0),
        n("Add", ["d_masd_raw", "d_floor"], ["d_masd_off"]),
        n("Log", ["d_masd_off"], ["d_masd"]),
        # residual: mean of the newest r samples minus the mean of the samples before them
        n("Slice", [z, "d_split", "d_end", "d_time"], ["d_recent"]),
        n("Slice", [z, "d_zero", "d_split", "d_time"], ["d_past"]),
        n("ReduceMean", ["d_recent"], ["d_new"], axes=[1], keepdims=0),
        n("ReduceMean", ["d_past"], ["d_base"], axes=[1], keepdims=0),
        n("Sub", ["d_new", "d_base"], ["d_resid"]),
    ]
    parts = ["d_masd", "d_resid"]
    inits = [_const("d_zero", [0], np.int64), _const("d_one", [1], np.int64),
             _const("d_last", [length - 1], np.int64), _const("d_end", [length], np.int64),
             _const("d_time", [1], np.int64), _const("d_floor", DISPERSION_FLOOR, np.float32),
             _const("d_split", [length - recent(length)], np.int64)]
    if layout.levels:
        nodes += [n("ReduceMean", [z], ["d_mean"], axes=[1], keepdims=0),
                  n("Gather", ["d_mean", "d_levels"], ["d_level"], axis=1)]
        inits.append(_const("d_levels", list(layout.levels), np.int64))
        parts.insert(0, "d_level")
    nodes.append(n("Concat", parts, [out], axis=1))
    return nodes, inits

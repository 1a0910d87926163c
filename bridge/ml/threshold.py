"""Thresholds that hold their stated false-alarm rate (issue 12, item 3).

``margin`` (the old rule): median + margin x (quantile(1 - far) - median) of the ~100 held-out
windows. With 100 scores the 99 % quantile is the second-largest one, and the margin is a
guess; the rate it gives is unknown, so ``train`` cannot say what to expect.

``evt``: the extreme-value rule. Scores of normal windows that no model saw while fitting are
collected over the *whole* training part by blocked cross-fitting (``folds`` contiguous blocks;
each block is scored by a model fitted on the others, leaving a gap of ``window - 1`` rows on
each side so that no window of the block shares a row with a fit window). Their tail above the
90 % quantile is fitted with a generalised Pareto law (Pickands-Balkema-de Haan: the law of
exceedances over a high level), and the threshold is that law's quantile for the target rate:

    P(score > u + y) = p_u (1 + xi y / sigma) ^ (-1 / xi),   p_u = share above u,

solved for P = target. It extrapolates past the largest score instead of resting on it, and uses
~4x as many held-out scores. The stated FAR is then the target itself; the final model is fitted
on the whole training part (more data, lower scores), so the rate errs on the safe side.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["METHODS", "TAIL_QUANTILE", "Fitted", "blocked_folds", "evt_threshold", "margin_threshold"]

METHODS = ("margin", "evt")
# Exceedances over this quantile of the held-out scores are fitted: high enough for the
# Pareto law to hold, low enough to leave ~40 points from a 400-row training part.
TAIL_QUANTILE = 0.9
# Shape parameter bounds: xi < -0.5 (a hard ceiling) is not credible from 40 points, xi > 1
# (infinite mean) would put the threshold at infinity.
XI_RANGE = (-0.5, 1.0)


@dataclass(frozen=True)
class Fitted:
    threshold: float
    median: float
    quantile: float  # empirical quantile(1 - target) of the held-out scores
    n_scores: int
    how: str  # one line for the model card


def margin_threshold(scores: np.ndarray, target_far: float, margin: float) -> Fitted:
    median = float(np.median(scores))
    quantile = float(np.quantile(scores, 1.0 - target_far))
    threshold = median + margin * (quantile - median)
    return Fitted(threshold, median, quantile, len(scores),
                  f"median + {margin:g} x (quantile {1 - target_far:g} - median) of {len(scores)} held-out "
                  f"window scores = {median:.4g} + {margin:g} x ({quantile:.4g} - {median:.4g})")


def _gpd_fit(y: np.ndarray) -> tuple[float, float]:
    """Generalised Pareto (xi, sigma) of exceedances y > 0 by maximum likelihood, xi in XI_RANGE.

    A profile likelihood over a fixed grid of xi (sigma solved by a 1-D search for each): no
    optimiser start point or library convergence test, so the same scores give the same threshold.
    """
    best = (-math.inf, 0.0, float(y.mean()))
    for xi in np.linspace(*XI_RANGE, 151):
        lo, hi = math.log(max(float(y.mean()), 1e-12)) - 8.0, math.log(max(float(y.max()), 1e-12)) + 8.0
        for _ in range(3):  # coarse-to-fine grid on log sigma
            grid = np.linspace(lo, hi, 41)
            ll = np.array([_gpd_loglik(y, float(xi), math.exp(g)) for g in grid])
            i = int(np.argmax(ll))
            lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        sigma = math.exp(float(grid[i]))
        if ll[i] > best[0]:
            best = (float(ll[i]), float(xi), sigma)
    return best[1], best[2]


def _gpd_loglik(y: np.ndarray, xi: float, sigma: float) -> float:
    if abs(xi) < 1e-9:
        return float(-len(y) * math.log(sigma) - y.sum() / sigma)
    t = 1.0 + xi * y / sigma
    if (t <= 0).any():
        return -math.inf
    return float(-len(y) * math.log(sigma) - (1.0 + 1.0 / xi) * np.log(t).sum())


def evt_threshold(scores: np.ndarray, target_far: float) -> Fitted:
    """Peaks-over-threshold: the generalised Pareto quantile of ``scores`` at rate ``target_far``."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    median = float(np.median(s))
    quantile = float(np.quantile(s, 1.0 - target_far))
    u = float(np.quantile(s, TAIL_QUANTILE))
    y = s[s > u] - u
    p_u = len(y) / len(s)
    if len(y) < 10 or target_far >= p_u:
        # Too few exceedances for a tail fit, or a target inside the bulk: the empirical quantile.
        return Fitted(quantile, median, quantile, len(s),
                      f"empirical quantile {1 - target_far:g} of {len(s)} cross-fitted window scores")
    xi, sigma = _gpd_fit(y)
    ratio = target_far / p_u
    excess = sigma * math.log(1.0 / ratio) if abs(xi) < 1e-9 else sigma / xi * (ratio ** -xi - 1.0)
    threshold = u + excess
    return Fitted(threshold, median, quantile, len(s),
                  f"generalised Pareto tail (xi {xi:.3f}, sigma {sigma:.4g}) fitted to the {len(y)} of "
                  f"{len(s)} cross-fitted held-out window scores above their {TAIL_QUANTILE:g} quantile "
                  f"{u:.4g}, quantile at rate {target_far:g}")


def blocked_folds(rows: int, folds: int, gap: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit, held) row masks for ``folds`` contiguous blocks of ``rows``; a row's window is the
    ``gap`` rows before it, so fit rows stop ``gap`` rows before a block and resume ``gap`` after."""
    edges = np.linspace(0, rows, folds + 1).round().astype(int)
    idx = np.arange(rows)
    out = []
    for a, b in itertools.pairwise(edges):
        held = (idx >= a + gap) & (idx < b)  # windows entirely inside the block
        fit = (idx < a) | (idx >= b + gap)  # windows that do not reach into the block
        out.append((fit, held))
    return out

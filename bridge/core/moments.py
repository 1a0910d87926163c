"""Count, mean and scatter of rows, merged exactly: the sufficient statistics of a PCA
baseline, and the statistics document a site publishes for a federated one (docs/fleet.md).

Here, not in ``bridge.ml``, because two layers build them: training from a recording
(``bridge.ml.train.export_stats``) and a running bridge from its own live windows
(``bridge.sinks.fleet_stats``); one copy of the merge serves both and the merger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["STATS_FORMAT", "STATS_VERSION", "Moments"]

# The statistics document (``train --export-stats``, ``F/M/stats/B``): format and version.
STATS_FORMAT = "plcbridge.pca-stats"
STATS_VERSION = 1


@dataclass(frozen=True)
class Moments:
    """Count, mean and scatter matrix (sum of outer products of deviations) of rows of x [N, F].

    Sufficient for PCA: covariance = scatter / count. Merged with Chan, Golub & LeVeque's
    pairwise update, which adds deviations from each part's own mean instead of raw sums of
    squares, so large offsets (a pressure of 1e5 Pa) do not cancel catastrophically.
    """

    count: int
    mean: np.ndarray  # [F]
    scatter: np.ndarray  # [F, F]

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        d = x - mean
        return cls(len(x), mean, d.T @ d)

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
        return Moments(n, mean, scatter)

    @property
    def cov(self) -> np.ndarray:
        """Population covariance (ddof 0), as ``np.std`` in the recipe's front end."""
        return self.scatter / self.count

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "scatter": self.scatter.tolist()}

    @classmethod
    def from_json(cls, obj: dict[str, Any], n_f: int) -> Moments:
        count = int(obj["count"])
        mean, scatter = np.asarray(obj["mean"], float), np.asarray(obj["scatter"], float)
        if count < 0 or mean.shape != (n_f,) or scatter.shape != (n_f, n_f):
            raise ValueError(f"count {count}, mean {mean.shape}, scatter {scatter.shape}; expected "
                             f"count >= 0, ({n_f},), ({n_f}, {n_f})")
        if not (np.isfinite(mean).all() and np.isfinite(scatter).all()):
            raise ValueError("mean or scatter is not finite")
        return cls(count, mean, scatter)

    @classmethod
    def empty(cls, n_f: int) -> Moments:
        return cls(0, np.zeros(n_f), np.zeros((n_f, n_f)))

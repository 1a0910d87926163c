"""Score: what a Detector concluded about one window; ScoreStore keeps a bounded history."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Score", "ScoreStore"]


@dataclass(frozen=True, slots=True)
class Score:
    model: str
    time: float  # UTC epoch seconds of the window's last sample
    score: float | None  # None when the window was not scored
    threshold: float
    anomaly: bool
    window_valid: bool
    reason: str = ""
    contributions: dict[str, float] | None = None
    version: str = ""  # of the model that produced it: results stay traceable across updates
    # The model's counters after this cycle and the ONNX Runtime time it took (None when the
    # window was not scored): sinks read them here instead of reaching back into the runner.
    scored: int = 0
    anomalies: int = 0
    inference_seconds: float | None = None


# Bits of _Ring.flags: the two booleans, and which optional fields are present (None otherwise).
_ANOMALY, _VALID, _HAS_SCORE, _HAS_CONTRIB, _HAS_SECONDS = 1, 2, 4, 8, 16


class _Ring:
    """One model's last ``size`` Scores as preallocated columns.

    A Score object with its contributions dict is ~0.5 kB of small Python objects; 3,600 of
    them grew a default bridge's RSS by ~2 MB over its first hour. Columns cost ~0.11 kB a
    Score (5 inputs) and are written once here, so the RSS does not move as the ring fills.
    Scores are rebuilt only when read (the API's latest and history).
    """

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self.count = 0  # Scores put so far; the newest sits at (count - 1) % size
        # np.full writes every page now: the ring's memory is resident from the start.
        self.times = np.full(size, 0.0)
        self.scores = np.full(size, 0.0)
        self.thresholds = np.full(size, 0.0)
        self.seconds = np.full(size, 0.0)
        self.scored = np.full(size, 0, dtype=np.int64)
        self.anomalies = np.full(size, 0, dtype=np.int64)
        self.flags = np.full(size, 0, dtype=np.uint8)
        # The strings and contribution names are references: consecutive Scores share one
        # object (see _same), so a ring holds a handful of distinct strings, not one a slot.
        self.reasons = np.full(size, "", dtype=object)
        self.versions = np.full(size, "", dtype=object)
        self.names = np.full(size, None, dtype=object)  # tuple of contribution names, per slot
        self.contributions = np.full((size, width), 0.0)
        self._last_names: tuple[str, ...] = ()

    def put(self, score: Score) -> None:
        i = self.count % self.size
        previous = (self.count - 1) % self.size
        self.times[i] = score.time
        self.thresholds[i] = score.threshold
        self.scored[i] = score.scored
        self.anomalies[i] = score.anomalies
        flags = (_ANOMALY if score.anomaly else 0) | (_VALID if score.window_valid else 0)
        if score.score is not None:
            flags |= _HAS_SCORE
            self.scores[i] = score.score
        if score.inference_seconds is not None:
            flags |= _HAS_SECONDS
            self.seconds[i] = score.inference_seconds
        if score.contributions is not None:
            flags |= _HAS_CONTRIB
            names = tuple(score.contributions)
            if names != self._last_names:
                # Another input set (a model update): widen the block if it needs more columns;
                # older slots keep their own names and read back as they were put.
                if len(names) > self.contributions.shape[1]:
                    wider = np.full((self.size, len(names)), 0.0)
                    wider[:, :self.contributions.shape[1]] = self.contributions
                    self.contributions = wider
                self._last_names = names
            self.names[i] = self._last_names
            self.contributions[i, :len(names)] = list(score.contributions.values())
        else:
            self.names[i] = None
        self.flags[i] = flags
        self.reasons[i] = _same(score.reason, self.reasons[previous])
        self.versions[i] = _same(score.version, self.versions[previous])
        self.count += 1

    def slots(self) -> np.ndarray:
        """The filled slots' indices, oldest first."""
        if self.count <= self.size:
            return np.arange(self.count)
        return (np.arange(self.size) + self.count) % self.size

    def score(self, model: str, i: int) -> Score:
        flags = int(self.flags[i])
        contributions = None
        if flags & _HAS_CONTRIB:
            names = self.names[i]
            contributions = dict(zip(names, self.contributions[i, :len(names)].tolist(), strict=True))
        return Score(model, float(self.times[i]),
                     float(self.scores[i]) if flags & _HAS_SCORE else None,
                     float(self.thresholds[i]), bool(flags & _ANOMALY), bool(flags & _VALID),
                     self.reasons[i], contributions, self.versions[i],
                     int(self.scored[i]), int(self.anomalies[i]),
                     float(self.seconds[i]) if flags & _HAS_SECONDS else None)


def _same(text: str, previous: str) -> str:
    """``previous`` when equal: the runner builds a reason string per unscored window."""
    return previous if text == previous else text


class ScoreStore:
    """The last ``history_size`` Scores per model.

    ``inputs`` (model -> its input names) sizes each ring's contributions block up front;
    a model left out gets its block at its first Score with contributions (widened, once,
    when a model update brings more inputs).
    """

    def __init__(self, models: Iterable[str], history_size: int,
                 inputs: Mapping[str, Sequence[str]] | None = None) -> None:
        widths = inputs or {}
        self._rings = {m: _Ring(history_size, len(widths.get(m, ()))) for m in models}

    def __contains__(self, model: object) -> bool:
        return model in self._rings

    def put(self, score: Score) -> None:
        self._rings[score.model].put(score)

    def latest(self, model: str) -> Score | None:
        ring = self._rings[model]
        return ring.score(model, (ring.count - 1) % ring.size) if ring.count else None

    def history(self, model: str, since: float | None = None, limit: int = 100) -> list[Score]:
        ring = self._rings[model]
        if limit <= 0:
            return []
        slots = ring.slots()
        if since is not None:
            # A mask, not a search: times are put in order by the runner but need not be.
            slots = slots[ring.times[slots] > since]
        return [ring.score(model, int(i)) for i in slots[-limit:]]

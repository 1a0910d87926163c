"""Outlier-detection metrics as the SKAB benchmark defines them, plus detection delay.

SKAB (``core/metrics.py``, ``metric="binary"``): TP/FP/FN/TN counted point by point on the rows
that have a prediction, no tolerance window, no point-adjustment; summed over files before
the ratios. ``F1 = TP / (TP + (FP + FN) / 2)``, ``FAR = 100 FP / (FP + TN)`` %,
``MAR = 100 FN / (FN + TP)`` %. A ratio with a zero denominator is reported as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Counts", "Segment", "count", "segments"]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def rows(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    @property
    def far(self) -> float:
        """False alarm rate, percent of normal rows flagged."""
        return 100.0 * _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missed alarm rate, percent of anomalous rows not flagged."""
        return 100.0 * _ratio(self.fn, self.fn + self.tp)

    def as_dict(self) -> dict[str, float | int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4), "far": round(self.far, 2), "mar": round(self.mar, 2)}


def count(pred: np.ndarray, label: np.ndarray, scored: np.ndarray) -> Counts:
    """Confusion counts over the rows where ``scored`` is True (rows without a prediction drop out)."""
    p = pred.astype(bool)[scored]
    t = label.astype(bool)[scored]
    return Counts(int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum()))


@dataclass(frozen=True)
class Segment:
    """One contiguous labelled anomaly and how fast it was caught."""

    start: int  # first row
    end: int  # last row (inclusive)
    detected_row: int | None  # first alarmed row inside the segment, None when missed
    delay_s: float | None  # its time minus the segment's first row's time
    delay_rows: int | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"start_row": self.start, "end_row": self.end, "detected_row": self.detected_row,
                "delay_s": self.delay_s, "delay_rows": self.delay_rows}


def segments(pred: np.ndarray, label: np.ndarray, scored: np.ndarray, times: np.ndarray) -> list[Segment]:
    """Each anomaly segment that has at least one scored row, with its detection delay.

    A segment is judged only on rows with a prediction; a segment that starts inside the
    training part or a warm-up is measured from its first row all the same (the delay is what
    an operator would see).
    """
    lab = label.astype(bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], lab, [False]]).astype(np.int8)))
    out = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if not scored[start:stop].any():
            continue
        hits = np.flatnonzero(pred[start:stop].astype(bool) & scored[start:stop])
        if hits.size:
            row = int(start + hits[0])
            out.append(Segment(int(start), int(stop - 1), row, float(times[row] - times[start]),
                               row - int(start)))
        else:
            out.append(Segment(int(start), int(stop - 1), None, None, None))
    return out

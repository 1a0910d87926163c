"""Evaluate a model on labelled CSVs through the live bridge's path.

Rows are replayed through TagStore -> WindowBuilder (``bridge.ml.replay``) on the model's period,
then the valid windows are scored with ``Detector.score_batch``: the same windows the runtime
would pass to ``Detector.score`` one by one (``tests/test_train_evaluate.py`` checks both), and
``anomaly = score >= threshold`` as in ``bridge.scoring.runner``. Rows whose window is invalid (warm-up,
bad or stale input) have no prediction and drop out of the counts, as in SKAB.

With alarm hysteresis or online adaptation (``[models.alarm]``, ``[models.adapt]``) the verdict
depends on the windows before: every window the scheduler would sample goes, in order, through
a ``ModelRunner`` (the live bridge's own code), and the counts are on its alarm output, what
write-back and the sinks see. The counts of the score alone (``score >= threshold`` per window)
are reported beside them, so the effect of the hysteresis is measured, not assumed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.config import AdaptConfig, AlarmConfig, ModelConfig
from bridge.core.extras import require_extra
from bridge.core.progress import track
from bridge.core.tags import TagStore
from bridge.ml.dataset import DataError, Table, load_csv
from bridge.ml.detection import Counts, Segment, count, segments
from bridge.ml.replay import default_max_age, replay
from bridge.scoring.detector import Detector
from bridge.scoring.runner import ModelRunner
from bridge.scoring.windows import Window

# AdaptConfig and AlarmConfig are part of evaluate's signature: exported for callers (the recipes)
# that may not import bridge.config themselves.
__all__ = ["AdaptConfig", "AlarmConfig", "FileResult", "Report", "evaluate", "evaluate_table",
           "latency_us", "plot", "stated_far"]


@dataclass(frozen=True)
class FileResult:
    path: Path
    times: np.ndarray  # [T]
    labels: np.ndarray  # [T] 0/1
    scores: np.ndarray  # [T] float64, NaN where there is no prediction
    alarms: np.ndarray  # [T] bool
    scored: np.ndarray  # [T] bool: a test row with a prediction
    counts: Counts
    segments: list[Segment]
    test_from: int
    # With hysteresis or adaptation: the counts of score >= threshold alone (None: the same).
    raw: Counts | None = None
    adapt_version: int | None = None  # adaptation updates at the end of the file
    adapt_offset_sd: dict[str, float] | None = None  # and each input's offset then, training sd

    def as_dict(self) -> dict[str, Any]:
        delays = [s.delay_s for s in self.segments if s.delay_s is not None]
        return {"file": str(self.path), "rows": len(self.times), "test_from": self.test_from,
                "scored_rows": int(self.scored.sum()), **self.counts.as_dict(),
                "segments": [s.as_dict() for s in self.segments],
                "mean_delay_s": statistics.fmean(delays) if delays else None,
                **({} if self.raw is None else {"raw_score": self.raw.as_dict()}),
                **({} if self.adapt_version is None else {"adapt_version": self.adapt_version,
                                                          "adapt_offset_sd": self.adapt_offset_sd})}


@dataclass(frozen=True)
class Report:
    model: Path
    threshold: float
    files: list[FileResult]
    stated_far: float | None = None  # the FAR train stated (fraction; evt thresholds only)

    def far_held(self) -> bool | None:
        """Whether the realised FAR on the normal rows is within 2x the stated one (None: none stated)."""
        return None if self.stated_far is None else self.total.far <= 2 * 100 * self.stated_far

    @property
    def total(self) -> Counts:
        return sum((f.counts for f in self.files), Counts())

    @property
    def raw_total(self) -> Counts | None:
        """Counts of the score alone, when the alarm output differs from it by design."""
        if any(f.raw is None for f in self.files):
            return None
        return sum((f.raw for f in self.files if f.raw is not None), Counts())

    def delays(self) -> list[float]:
        return [s.delay_s for f in self.files for s in f.segments if s.delay_s is not None]

    def missed(self) -> int:
        return sum(1 for f in self.files for s in f.segments if s.detected_row is None)

    def as_dict(self) -> dict[str, Any]:
        delays = self.delays()
        return {"model": str(self.model), "threshold": self.threshold, "stated_far": self.stated_far,
                "far_held": self.far_held(),
                "total": {**self.total.as_dict(), "segments": sum(len(f.segments) for f in self.files),
                          "segments_missed": self.missed(),
                          "mean_delay_s": statistics.fmean(delays) if delays else None,
                          "median_delay_s": statistics.median(delays) if delays else None},
                **({} if (raw := self.raw_total) is None else {"raw_score_total": raw.as_dict()}),
                "files": [f.as_dict() for f in self.files]}


def evaluate_table(detector: Detector, table: Table, *, test_from: int = 0,
                   max_age: float | None = None, alarm: AlarmConfig | None = None,
                   adapt: AdaptConfig | None = None) -> FileResult:
    """Score every row of ``table``; count the rows from ``test_from`` on (SKAB: 400)."""
    if table.labels is None:
        raise DataError(f"{table.path}: no 'anomaly' column: evaluation needs labelled data")
    c = detector.contract
    stateful = (alarm is not None and not alarm.plain) or (adapt is not None and adapt.enabled)
    runner, on_window = _runner(detector, alarm, adapt, len(table)) if stateful else (None, None)
    rep = replay(table, c.inputs, length=c.window_length, period=c.period, max_age=max_age,
                 on_window=on_window)
    if runner is None:
        scores = np.full(len(table), np.nan)
        if rep.valid.any():
            scores[rep.valid] = detector.score_batch(rep.windows[rep.valid])
        finite = np.isfinite(scores)  # a non-finite score is "no score" in the runtime as well
        alarms = finite & (np.where(finite, scores, -np.inf) >= detector.threshold)
    else:
        scores, alarms = runner.scores, runner.alarms
        finite = np.isfinite(scores)
    scored = finite & (np.arange(len(table)) >= test_from)
    raw = None
    if runner is not None:
        raw = count(finite & (np.where(finite, scores, -np.inf) >= runner.threshold), table.labels, scored)
    return FileResult(table.path, table.times, table.labels, scores, alarms, scored,
                      count(alarms, table.labels, scored),
                      segments(alarms, table.labels, scored, table.times), test_from, raw,
                      *((None, None) if runner is None or runner.adapt is None else
                        (runner.adapt.version, runner.adapt.status().offset_sd)))


class _Recorder(ModelRunner):
    """The live runner, fed the replayed windows in order; keeps each row's score and alarm."""

    def __init__(self, config: ModelConfig, detector: Detector, rows: int) -> None:
        c = detector.contract
        super().__init__(config, detector, TagStore(c.inputs, 1), default_max_age=default_max_age(c.period))
        self.scores = np.full(rows, np.nan)
        self.alarms = np.zeros(rows, dtype=bool)

    def take(self, window: Window, first: int, stop: int) -> None:
        score = self.score_window(window)
        if score.score is not None and first < stop:
            self.scores[first:stop] = score.score
            self.alarms[first:stop] = score.anomaly


def _runner(detector: Detector, alarm: AlarmConfig | None, adapt: AdaptConfig | None,
            rows: int) -> tuple[_Recorder, Any]:
    c = detector.contract
    config = ModelConfig(name="evaluate", inputs=list(c.inputs), alarm=alarm or AlarmConfig(),
                         adapt=adapt or AdaptConfig())
    recorder = _Recorder(config, detector, rows)
    return recorder, recorder.take


def evaluate(model: Path | str, data: Sequence[Path | str], *, test_from: int = 0,
             max_age: float | None = None, alarm: AlarmConfig | None = None,
             adapt: AdaptConfig | None = None) -> Report:
    """Evaluate one model on several labelled files; totals are summed counts, as in SKAB.
    Each file starts from the trained baseline and with the alarm off."""
    detector = Detector(model)
    files = [evaluate_table(detector, load_csv(p), test_from=test_from, max_age=max_age, alarm=alarm,
                            adapt=adapt)
             for p in track(list(data), "evaluating")]
    return Report(Path(model), detector.threshold, files, stated_far(detector))


def stated_far(detector: Detector) -> float | None:
    """The false-alarm rate ``train`` stated for the model: its target, for an evt threshold."""
    t = detector.contract.training
    far = t.get("target_far")
    return float(far) if t.get("threshold_method") == "evt" and isinstance(far, int | float) else None


def latency_us(detector: Detector, window: np.ndarray, repeat: int = 2000) -> tuple[float, float]:
    """Median and p99 wall time of ``Detector.score`` on one window, in µs (includes Python overhead)."""
    for _ in range(50):  # warm up the session's allocations
        detector.score(window)
    samples = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter_ns()
        detector.score(window)
        samples[i] = time.perf_counter_ns() - start
    return float(np.median(samples) / 1e3), float(np.quantile(samples, 0.99) / 1e3)


def plot(result: FileResult, threshold: float, out_dir: Path) -> Path:
    """PNG of score, threshold and labels. Raises MissingExtraError without matplotlib."""
    require_extra("matplotlib", "--plot").use("Agg")  # no display on an edge box
    plt = require_extra("matplotlib.pyplot", "--plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{result.path.parent.name}_{result.path.stem}.png"
    t = result.times - result.times[0]
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(t, result.scores, lw=0.8, label="score")
    ax.axhline(threshold, color="red", lw=0.8, ls="--", label="threshold")
    top = float(np.nanmax(result.scores)) if np.isfinite(result.scores).any() else threshold
    ax.fill_between(t, 0, max(top, threshold), where=result.labels.astype(bool), color="orange",
                    alpha=0.2, label="labelled anomaly")
    if result.test_from:
        ax.axvline(t[min(result.test_from, len(t) - 1)], color="grey", lw=0.8, label="test part starts")
    ax.set_xlabel("seconds")
    ax.set_title(f"{result.path}  F1 {result.counts.f1:.2f}  FAR {result.counts.far:.1f} %  "
                 f"MAR {result.counts.mar:.1f} %", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

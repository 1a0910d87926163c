"""Train a self-describing ONNX anomaly model from recorded normal data.

Pipeline (every step deterministic for the same data and seed):

1. Replay the rows through TagStore -> WindowBuilder (``bridge.replay``): the model learns from
   exactly the windows the bridge will build; bad-quality rows make their windows invalid,
   and those windows are dropped and counted.
2. Split by time: the first ``1 - calib_fraction`` of the rows fit the model, windows lying
   entirely in the rest are the held-out normal part for the threshold.
3. Fit the front end (z-score per signal, window mean, standardise) and the recipe's head.
4. Score the held-out windows with the built graph in onnxruntime (the numbers the bridge will
   see), threshold = median + margin x (quantile(1 - target_far) - median).
5. Write the model with its contract and a model card next to it.

Training imports ``onnx`` (and scikit-learn for ``iforest``/``ae``); the runtime never does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.contract import ModelContract
from bridge.dataset import DataError, Table
from bridge.replay import replay

__all__ = ["KINDS", "TrainOptions", "TrainResult", "train"]

KINDS = ("pca", "iforest", "ae")
# An Isolation Forest score is bounded (-decision_function <= 0.5) and saturates for points
# beyond the training range, so widening its quantile pushes the threshold past where faults
# land; the unbounded squared statistics of pca and ae get room for drift instead.
DEFAULT_MARGIN = {"pca": 2.0, "iforest": 1.0, "ae": 2.0}
RECIPE_VERSION = "1.0.0"
MIN_FIT_WINDOWS = 20
MIN_CALIB_WINDOWS = 20


@dataclass(frozen=True)
class TrainOptions:
    kind: str
    inputs: tuple[str, ...] | None = None  # None: every signal column of the file
    window: int = 5  # samples
    period: float = 1.0  # seconds between samples
    seed: int = 0
    target_far: float = 0.01  # fraction of held-out normal windows allowed above the quantile
    # Widening of that quantile's distance from the median score; None: the kind's default.
    margin: float | None = None
    calib_fraction: float = 0.25
    train_rows: int | None = None  # use only the first N rows (SKAB: 400)
    max_age: float | None = None  # None: the runtime default (2.5 x period)
    name: str | None = None

    @property
    def effective_margin(self) -> float:
        return DEFAULT_MARGIN[self.kind] if self.margin is None else self.margin

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 samples, got {self.window}")
        if not self.period > 0:
            raise ValueError(f"period must be > 0 s, got {self.period}")
        if not 0 < self.target_far < 0.5:
            raise ValueError(f"target FAR must be in (0, 0.5), got {self.target_far}")
        if self.margin is not None and not self.margin >= 1:
            raise ValueError(f"margin must be >= 1, got {self.margin}")
        if not 0.05 <= self.calib_fraction <= 0.5:
            raise ValueError(f"calibration fraction must be in [0.05, 0.5], got {self.calib_fraction}")


@dataclass(frozen=True)
class TrainResult:
    path: Path
    card: Path
    contract: ModelContract
    rows: int
    bad_rows: int
    fit_windows: int
    calib_windows: int
    dropped_windows: int  # invalid windows (bad or stale samples, warm-up) not used
    calib_quantile: float
    calib_median: float
    card_lines: list[str] = field(default_factory=list)


def _head(kind: str) -> Callable[[np.ndarray, int], Any]:
    # Imported lazily: each recipe pulls in onnx, two of them scikit-learn.
    if kind == "pca":
        from models.recipes import pca
        return pca.head
    if kind == "iforest":
        from models.recipes import iforest
        return iforest.head
    from models.recipes import ae
    return ae.head


def _score(model_bytes: bytes, windows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the same as the Detector, so float rounding is the same
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    (scores,) = session.run(["score"], {"window": np.ascontiguousarray(windows, dtype=np.float32)})
    return np.asarray(scores, dtype=np.float64)


def _contract(table: Table, opts: TrainOptions, inputs: Sequence[str], part: Any, threshold: float,
              training: dict[str, Any]) -> ModelContract:
    return ModelContract(
        name=opts.name or f"{opts.kind}_{table.path.stem}",
        kind=part.kind,
        inputs=tuple(inputs),
        window_length=opts.window,
        period=opts.period,
        normalization="z-score per signal, window mean, standardised per feature; all fitted on the "
        "training rows and embedded in the graph; raw engineering units in",
        score=part.score,
        threshold=threshold,
        training=training,
        recipe=f"bridge.train --kind {opts.kind} (models.recipes.{opts.kind}) {RECIPE_VERSION}",
        version=RECIPE_VERSION,
        outputs=("score", "contrib") if part.contrib else ("score",),
    )


def train(table: Table, out: Path, opts: TrainOptions) -> TrainResult:
    """Train on ``table`` (normal operation), write ``out`` and its card. Raises DataError/ValueError."""
    from bridge.model_card import write_card
    from models.recipes._onnx import assemble, fit_front

    opts.check()
    if opts.train_rows is not None:
        table = table.head(opts.train_rows)
    inputs = tuple(opts.inputs) if opts.inputs else table.columns
    if not inputs:
        raise DataError(f"{table.path}: no signal columns to train on")
    values = table.select(inputs)
    rep = replay(table, inputs, length=opts.window, period=opts.period, max_age=opts.max_age)
    n_rows = len(table)
    n_fit = round(n_rows * (1.0 - opts.calib_fraction))
    row = np.arange(n_rows)
    # A row's window holds it and the rows before it: a calibration window must start after
    # the fit part to be held out, so skip the first window-1 rows of the calibration part.
    fit_rows = rep.valid & (row < n_fit)
    calib_rows = rep.valid & (row >= n_fit + opts.window - 1)
    if fit_rows.sum() < MIN_FIT_WINDOWS or calib_rows.sum() < MIN_CALIB_WINDOWS:
        raise DataError(
            f"{table.path}: {int(fit_rows.sum())} valid fit windows and {int(calib_rows.sum())} "
            f"calibration windows from {n_rows} rows ({rep.bad_rows} bad); need at least "
            f"{MIN_FIT_WINDOWS} and {MIN_CALIB_WINDOWS}: record longer or fix the bad inputs")
    good_rows = (row < n_fit) & table.good & ~np.isnan(values).any(axis=1)
    front, a = fit_front(values[good_rows], rep.windows[fit_rows].astype(np.float64))
    part = _head(opts.kind)(a, opts.seed)
    training: dict[str, Any] = {
        "source": str(table.path),
        "rows": n_rows,
        "bad_rows_dropped": rep.bad_rows,
        "time_range": [float(table.times[0]), float(table.times[-1])],
        "sha256": table.sha256(inputs),
        "fit_rows": n_fit,
        "fit_windows": int(fit_rows.sum()),
        "calibration_windows": int(calib_rows.sum()),
        "target_far": opts.target_far,
        "margin": opts.effective_margin,
        "seed": opts.seed,
    }
    doc = f"plcbridge {opts.kind} {RECIPE_VERSION}"
    # Build once to score the held-out part with the real graph, then again with the threshold.
    draft = assemble(front, part, _contract(table, opts, inputs, part, 0.0, training), doc)
    calib = _score(draft.SerializeToString(deterministic=True), rep.windows[calib_rows])
    median = float(np.median(calib))
    quantile = float(np.quantile(calib, 1.0 - opts.target_far))
    threshold = median + opts.effective_margin * (quantile - median)
    contract = _contract(table, opts, inputs, part, threshold, training)
    model = assemble(front, part, contract, doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString(deterministic=True))
    result = TrainResult(out, out.with_suffix(".md"), contract, n_rows, rep.bad_rows,
                         int(fit_rows.sum()), int(calib_rows.sum()), int((~rep.valid).sum()),
                         quantile, median, list(part.card))
    write_card(result, opts)
    return result

"""What ``train`` is asked for and what it returns: shared by ``bridge.ml.train`` and the
model card (``bridge.ml.card``), so neither imports the other's module for its types."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bridge.core.contract import ModelContract
from bridge.ml.guards import InputProblem

__all__ = ["DEFAULT_MARGIN", "KINDS", "TrainOptions", "TrainResult"]

KINDS = ("pca", "iforest", "ae")
# An Isolation Forest score is bounded (-decision_function <= 0.5) and saturates for points
# beyond the training range, so widening its quantile pushes the threshold past where faults
# land; the unbounded squared statistics of pca and ae get room for drift instead.
DEFAULT_MARGIN = {"pca": 2.0, "iforest": 1.0, "ae": 2.0}


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
        # Messages name the command-line option: the CLI prints them as they are.
        if self.kind not in KINDS:
            raise ValueError(f"--kind {self.kind!r}: not one of {', '.join(KINDS)}")
        if self.window < 2:
            raise ValueError(f"--window {self.window}: must be >= 2 samples")
        if not self.period > 0:
            raise ValueError(f"--period {self.period}: must be > 0 s")
        if not 0 < self.target_far < 0.5:
            raise ValueError(f"--target-far {self.target_far}: the target FAR must be in (0, 0.5)")
        if self.margin is not None and not self.margin >= 1:
            raise ValueError(f"--margin {self.margin}: must be >= 1")
        if not 0.05 <= self.calib_fraction <= 0.5:
            raise ValueError(f"--calib-fraction {self.calib_fraction}: must be in [0.05, 0.5]")


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
    dropped_inputs: list[InputProblem] = field(default_factory=list)  # not used, with the reason
    bad_row_reasons: dict[str, int] = field(default_factory=dict)  # why rows were unusable -> count

    def guard_lines(self) -> list[str]:
        """What the train-time guards did, for the CLI and the model card."""
        out = [f"dropped input {p}" for p in self.dropped_inputs]
        if self.bad_rows:
            why = ", ".join(f"{k} {n}" for k, n in self.bad_row_reasons.items())
            out.append(f"dropped {self.bad_rows} bad rows ({why}); their windows are not used")
        return out

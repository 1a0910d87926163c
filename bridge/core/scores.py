"""Score: what a Detector concluded about one window; ScoreStore keeps a bounded history."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

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


class ScoreStore:
    def __init__(self, models: Iterable[str], history_size: int) -> None:
        self._history: dict[str, deque[Score]] = {m: deque(maxlen=history_size) for m in models}

    def __contains__(self, model: object) -> bool:
        return model in self._history

    def put(self, score: Score) -> None:
        self._history[score.model].append(score)

    def latest(self, model: str) -> Score | None:
        history = self._history[model]
        return history[-1] if history else None

    def history(self, model: str, since: float | None = None, limit: int = 100) -> list[Score]:
        items = [s for s in self._history[model] if since is None or s.time > since]
        return items[-limit:] if limit > 0 else []

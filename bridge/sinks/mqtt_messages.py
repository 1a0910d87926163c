"""What the MQTT sink publishes, as pure functions of the Scores (no I/O, no aiomqtt).

``MessageBuilder.on_score(score)`` returns the (topic, body) pairs one Score produces: an
event when a model's anomaly starts or ends, a summary when a model's window of scores is
complete, and the raw score when configured. The spool adds ``seq`` to each body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.config.mqtt import MqttConfig
from bridge.core.scores import Score
from bridge.core.timefmt import finite as _finite
from bridge.core.timefmt import iso

__all__ = ["MessageBuilder"]

Message = tuple[str, dict[str, Any]]




@dataclass(slots=True)
class _Window:
    """The scores of one model since its last summary."""

    first: float | None = None
    last: float = 0.0
    count: int = 0
    valid: int = 0
    anomalies: int = 0
    total: float = 0.0
    maximum: float | None = None
    threshold: float = 0.0
    version: str = ""
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, score: Score) -> None:
        if self.first is None:
            self.first = score.time
        self.last = score.time
        self.count += 1
        self.threshold = score.threshold
        self.version = score.version
        value = _finite(score.score)
        if score.window_valid and value is not None:
            self.valid += 1
            self.total += value
            self.maximum = value if self.maximum is None else max(self.maximum, value)
            self.anomalies += int(score.anomaly)
        elif score.reason:
            self.reasons[score.reason] = self.reasons.get(score.reason, 0) + 1

    def body(self, model: str) -> dict[str, Any]:
        return {
            "model": model, "from": iso(self.first or self.last), "to": iso(self.last),
            "count": self.count, "valid": self.valid, "anomalies": self.anomalies,
            "mean_score": self.total / self.valid if self.valid else None,
            "max_score": self.maximum, "threshold": self.threshold, "version": self.version,
            # Why windows were not scored (stale input, bad quality, ...), with counts.
            "invalid_reasons": dict(self.reasons),
        }


class MessageBuilder:
    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.prefix = config.effective_prefix
        self._anomalous: dict[str, bool] = {}
        self._windows: dict[str, _Window] = {}

    def topic(self, kind: str, model: str) -> str:
        return f"{self.prefix}/{kind}/{model}"

    def on_score(self, score: Score) -> list[Message]:
        out: list[Message] = []
        event = self._event(score)
        if event is not None and self.config.events:
            out.append((self.topic("events", score.model), event))
        if self.config.summary:
            summary = self._summary(score)
            if summary is not None:
                out.append((self.topic("summary", score.model), summary))
        if self.config.scores:
            out.append((self.topic("scores", score.model), {
                "model": score.model, "time": iso(score.time), "score": _finite(score.score),
                "threshold": score.threshold, "anomaly": score.anomaly,
                "window_valid": score.window_valid, "reason": score.reason,
                "version": score.version}))
        return out

    def _event(self, score: Score) -> dict[str, Any] | None:
        # The same rule as Bridge._track_events, so MQTT and /api/v1/events agree: an anomaly
        # ends only on a valid, normal window (an invalid window says nothing either way).
        was = self._anomalous.get(score.model, False)
        kind = None
        if score.anomaly and not was:
            kind = "anomaly-start"
        elif was and score.window_valid and not score.anomaly:
            kind = "anomaly-end"
        if score.window_valid:
            self._anomalous[score.model] = score.anomaly
        if kind is None:
            return None
        return {"model": score.model, "kind": kind, "time": iso(score.time),
                "score": _finite(score.score), "threshold": score.threshold,
                "contributions": score.contributions or {},
                "version": score.version}

    def _summary(self, score: Score) -> dict[str, Any] | None:
        window = self._windows.setdefault(score.model, _Window())
        window.add(score)
        # Time is the scores' own (window end) time, so a fast-forwarded or replayed plant
        # gets the same summaries as a live one.
        due = window.count >= self.config.summary_every or (
            window.first is not None and window.last - window.first >= self.config.summary_interval)
        if not due:
            return None
        del self._windows[score.model]
        return window.body(score.model)

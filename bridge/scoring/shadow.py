"""Shadow rollout: a staged model scores the same windows as the active one, writes nothing,
and is compared with it until its rule (``[models.shadow]``) promotes or rejects it.

The comparison has no ground truth on the box, so it measures what can be measured: how
often the two agree, and how often the shadow flags windows the active model called normal
(its would-be false alarm rate on this bridge's own recent normal data). Everything here is
plain data that survives a restart as JSON; ``bridge.scoring.updates`` drives it.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bridge.config import ShadowRuleConfig
from bridge.core.scores import Score

__all__ = ["ROLLOUT_KINDS", "Comparison", "Shadow", "ShadowState", "rollout_event", "verdict"]

ShadowState = Literal["running", "promoting", "promoted", "rejected"]
# The event kinds a rollout records (in the event list and store), for a publisher to send.
ROLLOUT_KINDS = ("shadow-start", "shadow-promoted", "shadow-rejected", "model-rolled-back")


@dataclass
class Comparison:
    """Running figures of a shadow against the active model, one window at a time."""

    windows: int = 0  # windows both models scored
    skipped: int = 0  # cycles not compared: window not valid, or one model did not score it
    active_flags: int = 0
    shadow_flags: int = 0
    agreed: int = 0
    active_normal: int = 0  # windows the active model called normal
    shadow_flags_on_normal: int = 0
    # Welford means and co-moments: a correlation that stays exact over long periods and is
    # a handful of numbers to persist, not a score history.
    mean_active: float = 0.0
    mean_shadow: float = 0.0
    m2_active: float = 0.0
    m2_shadow: float = 0.0
    co_moment: float = 0.0
    shadow_seconds: float = 0.0  # the shadow's ONNX Runtime time, total and worst
    shadow_seconds_max: float = 0.0

    def add(self, active: Score, shadow: Score) -> None:
        if active.score is None or shadow.score is None:
            self.skipped += 1
            return
        self.windows += 1
        self.active_flags += int(active.anomaly)
        self.shadow_flags += int(shadow.anomaly)
        self.agreed += int(active.anomaly == shadow.anomaly)
        if not active.anomaly:
            self.active_normal += 1
            self.shadow_flags_on_normal += int(shadow.anomaly)
        da = active.score - self.mean_active
        ds = shadow.score - self.mean_shadow
        self.mean_active += da / self.windows
        self.mean_shadow += ds / self.windows
        self.m2_active += da * (active.score - self.mean_active)
        self.m2_shadow += ds * (shadow.score - self.mean_shadow)
        self.co_moment += da * (shadow.score - self.mean_shadow)
        seconds = shadow.inference_seconds or 0.0
        self.shadow_seconds += seconds
        self.shadow_seconds_max = max(self.shadow_seconds_max, seconds)

    @property
    def far(self) -> float | None:
        return _ratio(self.shadow_flags_on_normal, self.active_normal)

    @property
    def agreement(self) -> float | None:
        return _ratio(self.agreed, self.windows)

    @property
    def correlation(self) -> float | None:
        if self.windows < 2 or self.m2_active <= 0 or self.m2_shadow <= 0:
            return None  # a constant score has no correlation with anything
        return round(self.co_moment / math.sqrt(self.m2_active * self.m2_shadow), 4)

    def figures(self) -> dict[str, Any]:
        """What the API shows and a rollout result carries (``ShadowComparison``)."""
        mean = self.shadow_seconds / self.windows if self.windows else None
        return {
            "windows": self.windows, "skipped": self.skipped,
            "active_flags": self.active_flags, "shadow_flags": self.shadow_flags,
            "agreement": self.agreement, "active_normal": self.active_normal,
            "shadow_flags_on_normal": self.shadow_flags_on_normal, "far": self.far,
            "correlation": self.correlation,
            "shadow_inference_ms_mean": None if mean is None else round(mean * 1000, 3),
            "shadow_inference_ms_max": round(self.shadow_seconds_max * 1000, 3),
        }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def verdict(rule: ShadowRuleConfig, comparison: Comparison) -> str | None:
    """Why ``comparison`` fails ``rule``, or None when it passes."""
    c = comparison
    if c.windows < rule.min_windows:
        return f"only {c.windows} windows compared, the rule needs {rule.min_windows}"
    if c.far is None:
        return "the active model called no window normal: no false alarm rate to measure"
    if c.far > rule.max_far:
        return (f"flagged {c.shadow_flags_on_normal} of {c.active_normal} windows the active "
                f"model called normal (FAR {c.far:.4f}), the rule allows {rule.max_far:g}")
    agreement = c.agreement or 0.0
    if agreement < rule.min_agreement:
        return f"agreed on {agreement:.4f} of the windows, the rule needs {rule.min_agreement:g}"
    return None


@dataclass
class Shadow:
    """One staged model and its comparison. ``observed_s`` counts observation at the bridge's
    pace (wall seconds x speed) in earlier runs; the current run adds from ``resumed``."""

    model: str
    version: str
    active_version: str
    source: str
    rule: ShadowRuleConfig
    threshold: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: ShadowState = "running"
    staged_at: float = field(default_factory=time.time)
    decided_at: float | None = None
    reason: str = ""
    observed_s: float = 0.0
    comparison: Comparison = field(default_factory=Comparison)
    resumed: float = field(default_factory=time.monotonic, compare=False)

    def elapsed(self, speed: float) -> float:
        """Seconds observed so far, at the bridge's pace."""
        if self.state != "running":
            return self.observed_s
        return self.observed_s + (time.monotonic() - self.resumed) * speed

    def freeze(self, speed: float) -> None:
        """Fold the current run into ``observed_s`` (before saving or deciding)."""
        self.observed_s, self.resumed = self.elapsed(speed), time.monotonic()

    def to_json(self, speed: float) -> dict[str, Any]:
        data = asdict(self)
        data["rule"] = self.rule.model_dump()
        data["observed_s"] = self.elapsed(speed)
        del data["resumed"]  # a monotonic clock means nothing in another process
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shadow:
        data = dict(data)
        data["rule"] = ShadowRuleConfig.model_validate(data["rule"])
        data["comparison"] = Comparison(**data["comparison"])
        return cls(**data)

    def result(self, kind: str) -> dict[str, Any]:
        """This rollout as an event: a publisher sends it as is."""
        return rollout_event(self.model, kind, self.threshold, shadow_id=self.id,
                             version=self.version, active_version=self.active_version,
                             source=self.source, state=self.state, reason=self.reason,
                             comparison=self.comparison.figures())


def rollout_event(model: str, kind: str, threshold: float, **rollout: Any) -> dict[str, Any]:
    """A rollout result in the shape of ``Bridge.events`` (and the event store): ``rollout``
    holds shadow_id, version, active_version, source, state, reason, comparison."""
    return {"model": model, "time": time.time(), "kind": kind, "score": None,
            "threshold": threshold, "detail": {"rollout": rollout}}

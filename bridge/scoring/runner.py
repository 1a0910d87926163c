"""ModelRunner: one model's path from the TagStore to a Score (window → detector → score)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bridge.config import ModelConfig
from bridge.core.errors import ModelContractError
from bridge.core.scores import Score
from bridge.core.tags import TagStore
from bridge.scoring.adapt import Adaptation
from bridge.scoring.alarm import Hysteresis
from bridge.scoring.detector import Detector
from bridge.scoring.windows import Window, WindowBuilder

__all__ = ["ModelRunner", "resolve_inputs"]

log = logging.getLogger("plcbridge.scoring")


def resolve_inputs(config: ModelConfig, contract_inputs: Sequence[str], detector: Detector) -> list[str]:
    """The bridge tags feeding the model, in the model's feature order.

    A list names tags that must equal the model's features in order; a mapping maps each
    model feature to a tag and must cover exactly the model's features.
    """
    if isinstance(config.inputs, dict):
        expected, given = set(contract_inputs), set(config.inputs)
        if expected != given:
            missing = sorted(expected - given)
            extra = sorted(given - expected)
            raise ModelContractError(
                f"models.{config.name}.inputs: features differ from model {detector.path.name}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not in model {extra}" if extra else ""))
        return [config.inputs[feature] for feature in contract_inputs]
    try:
        detector.check_inputs(config.inputs)
    except ModelContractError as exc:
        raise ModelContractError(f"models.{config.name}.inputs: {exc}") from None
    return list(config.inputs)


class ModelRunner:
    def __init__(self, config: ModelConfig, detector: Detector, store: TagStore, *,
                 default_max_age: float, speed: float = 1.0, state_dir: Path | None = None) -> None:
        self.config = config
        self.detector = detector
        contract = detector.contract
        self.tags = resolve_inputs(config, contract.inputs, detector)
        self.period = contract.period
        self.threshold = config.threshold if config.threshold is not None else contract.threshold
        max_age = config.max_age if config.max_age is not None else default_max_age
        self.windows = WindowBuilder(store, self.tags, contract.window_length, max_age / speed)
        self.scored = 0
        self.anomalies = 0
        # Opt-in state across windows ([models.adapt], [models.alarm]); None keeps the
        # stateless path: anomaly = score >= threshold, the window scored as sampled.
        self.state_dir = state_dir
        self.adapt = Adaptation(config.adapt, contract, where=f"models.{config.name}",
                                folder=state_dir, model_name=config.name) if config.adapt.enabled else None
        self.alarm = None if config.alarm.plain else Hysteresis(config.alarm)
        # Above this score every decision (alarm on/off, learning) could change, so an adapted
        # window's score there is checked against the trained baseline's.
        self._second_opinion = self.threshold * min(1.0, config.alarm.off, config.adapt.learn_below)

    @property
    def name(self) -> str:
        return self.config.name

    def step(self, now: float | None = None) -> Score:
        """Sample one row and score the window if it is valid. Never raises for bad data."""
        window = self.windows.sample(now)
        return self.score_window(window)

    def score_window(self, window: Window) -> Score:
        if not window.valid:
            return self._unscored(window, window.reason)
        values = window.values if self.adapt is None else self.adapt.apply(window.values)
        started = time.perf_counter()
        try:
            value, contrib = self.detector.score(values)
            if values is not window.values and value >= self._second_opinion:
                # Adaptation may remove an alarm the trained model raises, never add one: an
                # offset learnt from a transient the plant has since left must not alarm (and
                # so freeze itself); the window as sampled is scored too, the lower score holds.
                trained, trained_contrib = self.detector.score(window.values)
                if trained < value:
                    value, contrib = trained, trained_contrib
        except Exception as exc:  # an inference fault must not stop the bridge; report it
            log.exception("inference failed model=%s", self.name)
            return self._unscored(window, f"inference error: {exc}")
        seconds = time.perf_counter() - started
        if not np.isfinite(value):
            return self._unscored(window, "model returned a non-finite score")
        anomaly = value >= self.threshold  # the contract: anomalous at or above
        if self.alarm is not None:
            anomaly = self.alarm.update(value, self.threshold)
        if self.adapt is not None:
            self.adapt.learn(window.values, value, self.threshold, anomaly, window.time)
        self.scored += 1
        self.anomalies += int(anomaly)
        contributions = None
        if contrib is not None:
            features = self.detector.contract.inputs
            contributions = {f: float(c) for f, c in zip(features, contrib, strict=False)}
        return Score(self.name, window.time, float(value), self.threshold, anomaly, True, "",
                     contributions, self.detector.version, self.scored, self.anomalies, seconds)

    def save_state(self) -> None:
        """Persist what the runner learnt (at stop; it also saves as it goes)."""
        if self.adapt is not None and self.state_dir is not None:
            self.adapt.save()

    def _unscored(self, window: Window, reason: str) -> Score:
        if self.alarm is not None:
            self.alarm.interrupt()  # no verdict this cycle: a run of windows is broken
        return Score(self.name, window.time, None, self.threshold, False, False, reason,
                     version=self.detector.version, scored=self.scored, anomalies=self.anomalies)

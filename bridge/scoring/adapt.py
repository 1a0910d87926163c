"""Guarded online adaptation: a model's input baseline follows slow normal drift.

The ONNX graph is never changed. The runner subtracts a per-input offset (raw engineering
units) from each window before scoring, which re-centres drifted inputs on the training mean
the graph was fitted to. The offset is an exponentially weighted estimate of how far each
input's window mean has moved from its training mean, and it moves only under guard:

- it learns only from valid windows that scored normal, with room to spare (score below
  ``learn_below`` x threshold, alarm off): a fault that builds up slowly raises the score and
  stops the learning before it alarms, so it is not learnt away;
- each step is bounded (``max_step_sd`` training sd per window), so a step change is never
  followed in a few windows;
- it freezes while the score is anomalous or the alarm is on, and for ``hold_off_windows``
  valid windows after;
- the total move is capped (``max_shift_sd`` training sd): past it the offset stops following
  and the input is reported as capped, which bounds how much of a slow fault can be hidden;
- it can only remove alarms, never add one: where the adapted window scores near or over the
  threshold the runner also scores the window as sampled and the lower score holds, so an
  offset learnt from a transient the plant has left cannot raise an alarm (which would freeze
  it on its wrong value for good).

The state (offset, version = updates since the trained baseline, resets) is versioned against
the model it belongs to (a digest of its contract): a different model starts from its trained
baseline. With a folder it is saved there and survives a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bridge.config import AdaptConfig
from bridge.core.contract import ModelContract
from bridge.core.errors import ConfigError

__all__ = ["MEAN_KEY", "SD_KEY", "AdaptStatus", "Adaptation", "baseline"]

log = logging.getLogger("plcbridge.scoring")

# Where train puts each input's training mean and sd (raw units) in the contract's record.
MEAN_KEY = "input_mean"
SD_KEY = "input_sd"
STATE_FORMAT = "plcbridge.adapt"
STATE_VERSION = 1
# Saving is throttled: a crash loses at most this much learning (it is slow by design), and a
# flash disk is not written every second.
SAVE_EVERY_S = 60.0


def baseline(contract: ModelContract, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Each input's training mean and sd (raw units) from the contract; ConfigError naming the
    key when the model predates them."""
    n = len(contract.inputs)
    stats = []
    for key in (MEAN_KEY, SD_KEY):
        value = contract.training.get(key)
        if not (isinstance(value, list) and len(value) == n
                and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                        for v in value)):
            raise ConfigError([
                f"{where}.adapt.enabled: the model ({contract.name} {contract.version}) has no "
                f"training.{key} for its {n} inputs in its contract, which adaptation needs; "
                "retrain it with this version's plcbridge train, or set adapt.enabled = false"])
        stats.append(np.asarray(value, dtype=np.float64))
    mean, sd = stats
    return mean, np.where(sd > 0, sd, 0.0)


def fingerprint(contract: ModelContract) -> str:
    """Names the model a state belongs to: its whole contract (threshold, training record)."""
    return hashlib.sha256(contract.to_json().encode()).hexdigest()[:16]


State = Literal["learning", "frozen", "hold-off", "capped"]


@dataclass
class AdaptStatus:
    """What the API and the model card show about the adaptation of one model."""

    state: State
    version: int
    resets: int
    offset: dict[str, float]
    offset_sd: dict[str, float]
    capped: list[str]
    hold_off_left: int
    updated_at: float | None
    reset_at: float | None
    config: dict[str, Any] = field(default_factory=dict)


class Adaptation:
    """The offset state machine of one model (see the module doc)."""

    def __init__(self, config: AdaptConfig, contract: ModelContract, *, where: str,
                 folder: Path | None = None, model_name: str | None = None) -> None:
        self.config = config
        self.features = tuple(contract.inputs)
        self.mean, self.sd = baseline(contract, where)
        self.model = fingerprint(contract)
        self.model_version = contract.version
        self.name = model_name or contract.name
        self.folder = folder
        self.offset = np.zeros(len(self.features))
        self.version = 0  # accepted updates since the trained baseline (or the last reset)
        self.resets = 0
        self.hold = 0  # valid windows of hold-off left
        self.frozen = False  # the last window was anomalous
        self.capped: set[int] = set()
        self.updated_at: float | None = None
        self.reset_at: float | None = None
        self._saved_at = -math.inf
        self._dirty = False
        self._told: set[int] = set()
        if folder is not None:
            self._load()

    # -- scoring ------------------------------------------------------------------------

    def apply(self, values: np.ndarray) -> np.ndarray:
        """The window as the model should see it: each input moved back by its offset."""
        if not self.version:
            return values
        return (values - self.offset).astype(np.float32)

    def learn(self, values: np.ndarray, score: float, threshold: float, alarm: bool,
              now: float) -> bool:
        """Observe one valid, scored window (raw values, before ``apply``); True if it learnt."""
        if alarm or score >= threshold:
            self.frozen, self.hold = True, self.config.hold_off_windows
            return False
        self.frozen = False
        if self.hold > 0:
            self.hold -= 1
            return False
        if score >= self.config.learn_below * threshold:
            return False
        target = values.mean(axis=0, dtype=np.float64) - self.mean
        limit_step = self.config.max_step_sd * self.sd
        new = self.offset + np.clip(self.config.rate * (target - self.offset), -limit_step, limit_step)
        limit = self.config.max_shift_sd * self.sd
        new = np.clip(new, -limit, limit)
        capped = {int(j) for j in np.flatnonzero((np.abs(new) >= limit) & (self.sd > 0))}
        # Logged once per input until a reset: an offset resting on the cap dips under it and
        # back with the noise, and must not log each time.
        newly, self.capped = capped - self._told, capped
        self._told |= newly
        if newly:
            log.warning("adaptation capped model=%s inputs=%s max_shift_sd=%g: the baseline "
                        "stops following them (reset after checking the plant)", self.name,
                        ",".join(self.features[j] for j in sorted(newly)), self.config.max_shift_sd)
        self.offset = new
        self.version += 1
        self.updated_at = now
        self._dirty = True
        self.maybe_save()
        return True

    def reset(self, now: float | None = None) -> None:
        """Back to the trained baseline; counted, and saved at once."""
        self.offset = np.zeros(len(self.features))
        self.version, self.hold, self.frozen = 0, 0, False
        self.capped, self._told = set(), set()
        self.resets += 1
        self.reset_at = time.time() if now is None else now
        self._dirty = True
        self.save()
        log.warning("adaptation reset model=%s resets=%d", self.name, self.resets)

    def status(self) -> AdaptStatus:
        state: State = ("frozen" if self.frozen else "hold-off" if self.hold
                 else "capped" if self.capped else "learning")
        in_sd = np.divide(self.offset, self.sd, out=np.zeros_like(self.offset), where=self.sd > 0)
        return AdaptStatus(
            state=state, version=self.version, resets=self.resets,
            offset={f: float(v) for f, v in zip(self.features, self.offset, strict=True)},
            offset_sd={f: round(float(v), 4) for f, v in zip(self.features, in_sd, strict=True)},
            capped=[self.features[j] for j in sorted(self.capped)], hold_off_left=self.hold,
            updated_at=self.updated_at, reset_at=self.reset_at, config=self.config.model_dump())

    # -- persistence --------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / f"{self.name}.json"

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "schema": STATE_VERSION, "model": self.model,
                "model_version": self.model_version, "features": list(self.features),
                "offset": [float(v) for v in self.offset], "version": self.version,
                "resets": self.resets, "hold": self.hold, "frozen": self.frozen,
                "capped": sorted(self.capped), "updated_at": self.updated_at,
                "reset_at": self.reset_at}

    def maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        """Write the state atomically (a crash leaves the old file or the new one, never half)."""
        path = self.path
        self._saved_at = time.monotonic()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, raw = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".json", dir=path.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(self.to_json(), out)
            os.replace(raw, path)
            self._dirty = False
        except OSError:  # a full disk must not stop scoring; the state is still in memory
            log.exception("adaptation state not saved model=%s path=%s", self.name, path)

    def _load(self) -> None:
        path = self.path
        if path is None or not path.is_file():
            return
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            if obj.get("format") != STATE_FORMAT or obj.get("schema") != STATE_VERSION:
                raise ValueError("not a plcbridge adaptation state")
            if obj["model"] != self.model or obj["features"] != list(self.features):
                log.info("adaptation state of another model ignored model=%s file=%s: starting "
                         "from the trained baseline", self.name, path.name)
                return
            offset = np.asarray(obj["offset"], dtype=np.float64)
            if offset.shape != self.offset.shape or not np.isfinite(offset).all():
                raise ValueError("bad offset")
            limit = self.config.max_shift_sd * self.sd  # the cap may have been lowered since
            self.offset = np.clip(offset, -limit, limit)
            self.version, self.resets = int(obj["version"]), int(obj["resets"])
            self.hold, self.frozen = int(obj["hold"]), bool(obj["frozen"])
            self.capped = {int(j) for j in obj["capped"] if 0 <= int(j) < len(self.features)}
            self._told = set(self.capped)
            self.updated_at, self.reset_at = obj["updated_at"], obj["reset_at"]
            log.info("adaptation state restored model=%s version=%d", self.name, self.version)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Starting from the trained baseline is always safe; a broken file must not stop
            # the bridge.
            log.warning("adaptation state unreadable model=%s file=%s (%s): starting from the "
                        "trained baseline", self.name, path.name, exc)

"""A bridge's own PCA statistics, accumulated from its live windows (``[fleet] live_stats``).

What counts: a window that was valid and that the active model scored normal. An invalid
window (stale or bad inputs) or one the model flagged is left out, so an anomaly never becomes
part of the fleet's idea of normal. Per counted window the statistics take its mean (the
``window_means`` moments) and its newest row (the ``rows`` moments): windows slide by one
sample per period, so when every window counts each sampled row counts once, as in a
recording. The document is the one ``train --export-stats`` writes (``bridge.core.moments``),
so ``plcbridge fleet merge`` merges live and recorded sites alike; a central fit on the same
windows (their rows ``[:, -1]`` and their means) gives the same model.

Nothing here keeps a row: a window is folded into counts, means and scatter matrices and
dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.core.moments import STATS_FORMAT, STATS_VERSION, Moments
from bridge.core.scores import Score

__all__ = ["LiveStats", "LiveStatsBook", "read_live_stats", "write_live_stats"]

log = logging.getLogger("plcbridge.fleet")


@dataclass
class LiveStats:
    """One model's statistics: the shape they are for (a window of another length or period
    is another model's, so it starts them over) and the moments of the counted windows."""

    model: str
    inputs: tuple[str, ...]
    window: int
    period: float
    max_age: float | None  # the model's configured max age; None: the runtime default
    rows: Moments = field(default_factory=lambda: Moments.empty(0))
    window_means: Moments = field(default_factory=lambda: Moments.empty(0))
    invalid: int = 0  # windows left out because they were not valid
    anomalous: int = 0  # windows left out because the active model flagged them
    first: float | None = None  # time of the first and last counted window
    last: float | None = None

    def __post_init__(self) -> None:
        if self.rows.count == 0:
            self.rows = Moments.empty(len(self.inputs))
        if self.window_means.count == 0:
            self.window_means = Moments.empty(len(self.inputs))

    def fits(self, inputs: Sequence[str], window: int, period: float, max_age: float | None) -> bool:
        return (self.inputs, self.window, self.period, self.max_age) == (tuple(inputs), window, period,
                                                                          max_age)

    def add(self, values: np.ndarray, score: Score) -> bool:
        """Count ``values`` ([window, inputs], the window ``score`` is for) if it was valid and
        scored normal; True when it was counted."""
        if not score.window_valid or score.score is None:
            self.invalid += 1
            return False
        if score.anomaly:
            self.anomalous += 1
            return False
        x = np.asarray(values, dtype=np.float64)
        self.rows = self.rows.merge(Moments.of(x[-1:]))
        self.window_means = self.window_means.merge(Moments.of(x.mean(axis=0)[None, :]))
        self.first = score.time if self.first is None else self.first
        self.last = score.time
        return True

    def payload(self, bridge_id: str) -> dict[str, Any]:
        """The statistics document for ``F/M/stats/B``: the keys ``check_stats`` allows, no more."""
        rows, means = self.rows.to_json(), self.window_means.to_json()
        # A fingerprint of what is published (there is no file to hash): the same statistics,
        # the same sha256.
        digest = hashlib.sha256(json.dumps([rows, means]).encode()).hexdigest()
        return {"format": STATS_FORMAT, "version": STATS_VERSION, "inputs": list(self.inputs),
                "window": self.window, "period": self.period, "max_age": self.max_age,
                "source": {"file": f"live {bridge_id}", "sha256": digest, "rows": self.rows.count,
                           "bad_rows_dropped": self.invalid,
                           "time_range": [self.first or 0.0, self.last or 0.0]},
                "rows": rows, "window_means": means}

    def figures(self) -> dict[str, Any]:
        """Counters for the health endpoint."""
        return {"windows": self.window_means.count, "invalid": self.invalid,
                "anomalous": self.anomalous, "window": self.window, "period": self.period}

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "inputs": list(self.inputs), "window": self.window,
                "period": self.period, "max_age": self.max_age, "rows": self.rows.to_json(),
                "window_means": self.window_means.to_json(), "invalid": self.invalid,
                "anomalous": self.anomalous, "first": self.first, "last": self.last}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LiveStats:
        n_f = len(data["inputs"])
        return cls(model=str(data["model"]), inputs=tuple(map(str, data["inputs"])),
                   window=int(data["window"]), period=float(data["period"]),
                   max_age=None if data["max_age"] is None else float(data["max_age"]),
                   rows=Moments.from_json(data["rows"], n_f),
                   window_means=Moments.from_json(data["window_means"], n_f),
                   invalid=int(data["invalid"]), anomalous=int(data["anomalous"]),
                   first=data["first"], last=data["last"])


def read_live_stats(folder: Path | None, model: str) -> LiveStats | None:
    """The statistics an earlier run kept for ``model``, if any (unreadable: start over)."""
    path = None if folder is None else folder / f"stats-{model}.json"
    if path is None or not path.is_file():
        return None
    try:
        return LiveStats.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Losing them costs the windows counted so far, not a reason to refuse to start.
        log.error("fleet live statistics %s unreadable (%s); starting them over", path, exc)
        return None


def write_live_stats(folder: Path | None, stats: LiveStats) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle, raw = tempfile.mkstemp(prefix=f".stats-{stats.model}.", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(stats.to_json(), out)
    os.replace(raw, folder / f"stats-{stats.model}.json")  # atomic: old or new, never half


class LiveStatsBook:
    """The live statistics of a fleet member's models: fed every scored window, kept in
    ``folder`` (``<data_dir>/fleet``; None: memory only), asked for payloads to publish.
    ``features`` gives each model's input names and configured max age."""

    def __init__(self, models: Sequence[str], features: Mapping[str, tuple[Sequence[str], float | None]],
                 folder: Path | None) -> None:
        self.models = tuple(models)
        self._features = dict(features)
        self._folder = folder
        self.stats: dict[str, LiveStats] = {}
        for model in self.models:
            if (kept := read_live_stats(folder, model)) is not None:
                self.stats[model] = kept

    def add(self, model: str, values: np.ndarray, score: Score, period: float) -> None:
        """Count one scored window of ``model`` (period: the active model's)."""
        features = self._features.get(model)
        if model not in self.models or features is None:
            return
        inputs, max_age = features
        stats = self.stats.get(model)
        if stats is None or not stats.fits(inputs, values.shape[0], period, max_age):
            if stats is not None and stats.window_means.count:
                # Windows of another length or period are another model's statistics: the
                # merger would refuse the mix, so the bridge starts over rather than send it.
                log.warning("fleet live statistics start over model=%s: window %d x %g s, was %d x %g s",
                            model, values.shape[0], period, stats.window, stats.period)
            stats = self.stats[model] = LiveStats(model, tuple(inputs), values.shape[0], period, max_age)
        stats.add(values, score)

    def payload(self, model: str, bridge_id: str) -> bytes | None:
        """The statistics document of ``model``, or None while nothing is counted (an empty
        site would only break a merge)."""
        stats = self.stats.get(model)
        if stats is None or stats.window_means.count == 0:
            return None
        return json.dumps(stats.payload(bridge_id)).encode()

    def figures(self) -> dict[str, dict[str, Any]]:
        return {model: stats.figures() for model, stats in self.stats.items()}

    async def save(self) -> None:
        if self._folder is None:
            return
        for stats in list(self.stats.values()):
            # A copy taken in the loop: the scoring cycle keeps adding while the thread writes.
            snapshot = LiveStats.from_json(stats.to_json())
            try:
                await asyncio.to_thread(write_live_stats, self._folder, snapshot)
            except OSError as exc:
                log.error("fleet live statistics not saved model=%s: %s", stats.model, exc)

"""`plcbridge record`: record normal operation on site into a CSV that `plcbridge train` reads.

The recorder runs the bridge's own polling (``bridge.runtime.bridge.Bridge`` with no models, no
write-back, no storage and no API) and samples the TagStore on the model's period with the
WindowBuilder's rules (last-value hold, bad or stale = not usable), so the rows are the values
the live windows would see. Output is the format ``bridge.ml.dataset.load_csv`` reads:
``;``-separated, ``datetime`` (ISO 8601 UTC), one column per input, ``quality``.

``quality`` is ``good`` or ``bad`` (the values ``load_csv`` accepts, so a recording trains as
is); which tag was bad and why goes to ``<name>.quality.log`` next to the CSV, one line per bad
row, because a free-text reason in the CSV would make it unreadable by ``train``. A bad tag's
cell is left empty: ``load_csv`` reads it as NaN, a bad reading, as the window would.

Rows are flushed one by one, so Ctrl-C, SIGTERM or a crash keep every row written so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bridge.config import DEFAULT_MODEL, Config, StorageSection, WritebackPolicyConfig
from bridge.core.errors import ModelContractError
from bridge.core.progress import ProgressLine, clock
from bridge.core.timefmt import iso
from bridge.scoring.windows import sample_row

__all__ = ["RecordError", "RecordPlan", "RecordResult", "output_paths", "parse_duration", "plan",
           "record", "sample_row", "train_advice"]

DEFAULT_PERIOD = 1.0  # seconds: `plcbridge train --period` defaults to the same
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")


class RecordError(ValueError):
    """Bad input to the recorder (option, model, output path); the message names it."""


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``1h30m``, ``1.5h`` or plain seconds -> seconds (> 0)."""
    s = text.strip().lower()
    parts = _DURATION.findall(s)
    # findall skips junk silently: require the matches to cover the whole text.
    if not s or not parts or _DURATION.sub("", s).strip():
        raise RecordError(f"--duration {text!r}: expected e.g. 90s, 15m, 2h or 1h30m")
    seconds = sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)
    if not seconds > 0 or not math.isfinite(seconds):
        raise RecordError(f"--duration {text!r}: must be more than 0 s")
    return seconds


@dataclass(frozen=True)
class RecordPlan:
    """What to record: CSV column names, the tags feeding them (same order), period, max age."""

    name: str  # model name, or "tags" when recording every tag
    columns: tuple[str, ...]  # model feature names (a mapping's keys) or tag names
    tags: tuple[str, ...]
    period: float  # seconds of plant time between rows
    max_age: float  # seconds of plant time after which a reading is stale
    period_source: str  # where the period came from, for the user


def plan(config: Config, model: str | None, period: float | None) -> RecordPlan:
    """Resolve the model (or every numeric tag), the period and the max age like the runtime."""
    if period is not None and not (math.isfinite(period) and period > 0):
        raise RecordError(f"--period must be > 0 s, got {period}")
    tags_of = {tag.name: device for device in config.devices for tag in device.tags}
    if model is None and len(config.models) > 1:
        names = ", ".join(m.name for m in config.models)
        raise RecordError(f"--model: the configuration has several models ({names}); name one")
    if model is None and not config.models:
        # No model yet (the usual case before the first training): every numeric tag.
        tags = tuple(t.name for d in config.devices for t in d.tags
                     if getattr(t, "data_type", None) != "string")
        if not tags:
            raise RecordError("devices: no numeric tags to record")
        slowest = max(tags_of[t].poll_interval for t in tags)
        p = period if period is not None else DEFAULT_PERIOD
        src = "--period" if period is not None else f"default {DEFAULT_PERIOD:g} s (no model)"
        return RecordPlan("tags", tags, tags, p, 2.5 * max(slowest, p), src)
    chosen = config.models[0] if model is None else next(
        (m for m in config.models if m.name == model), None)
    if chosen is None:
        names = ", ".join(m.name for m in config.models) or "none"
        raise RecordError(f"--model {model!r}: not in the configuration (models: {names})")
    if period is not None:
        p, src = period, "--period"
    else:
        p, src = _model_period(chosen.file)
    tags = tuple(chosen.input_tags)
    slowest = max(tags_of[t].poll_interval for t in tags)
    max_age = chosen.max_age if chosen.max_age is not None else 2.5 * max(slowest, p)
    # Columns carry the model's feature names, so `train` on the file gives a model whose
    # contract matches this configuration's inputs (a mapping's keys, not its tag names).
    return RecordPlan(chosen.name, tuple(chosen.feature_names), tags, p, max_age, src)


def _model_period(file: Path | None) -> tuple[float, str]:
    """The period of the configured model's contract, or the default when it does not load yet."""
    from bridge.scoring.detector import Detector  # onnxruntime: only when a model is configured

    path = Path(file) if file is not None else DEFAULT_MODEL
    try:
        return Detector(path).contract.period, f"model contract ({path.name})"
    except ModelContractError:
        # Recording comes before the first model: a configured file that does not exist yet
        # (or does not load) must not stop it.
        return DEFAULT_PERIOD, f"default {DEFAULT_PERIOD:g} s ({path.name} does not load)"


def output_paths(out: Path, name: str) -> tuple[Path, Path]:
    """``--out`` is a ``.csv`` file or a directory (then ``DIR/<name>.csv``); plus its quality log."""
    csv_path = out if out.suffix.lower() == ".csv" else out / f"{name}.csv"
    return csv_path, csv_path.with_suffix(".quality.log")


@dataclass
class RecordResult:
    path: Path
    log: Path
    rows: int = 0
    bad_rows: int = 0
    interrupted: bool = False
    skipped_ticks: int = 0  # periods the loop could not keep up with (no row written)
    reasons: Counter[str] = field(default_factory=Counter)  # first problem -> rows


class Progress:
    """Recording progress in plant time, with an ETA in wall time."""

    def __init__(self, total: float, speed: float, stream: TextIO | None = None) -> None:
        self.total, self.speed = total, speed
        self._line = ProgressLine(stream)

    def __call__(self, plant_elapsed: float, result: RecordResult, *, final: bool = False) -> None:
        frac = min(1.0, plant_elapsed / self.total)
        eta = max(0.0, self.total - plant_elapsed) / self.speed
        self._line.show(f"recording {clock(plant_elapsed)} / {clock(self.total)} {100 * frac:5.1f} % "
                        f"ETA {clock(eta)}  rows {result.rows}  bad {result.bad_rows}", final=final)


def _recording_config(config: Config) -> Config:
    # Recording only polls: no models (the model may not exist yet), never a write to the PLC,
    # no event database. The API is not started at all.
    return config.model_copy(update={"models": [], "writeback": WritebackPolicyConfig(mode="off"),
                                     "storage": StorageSection()})


async def record(config: Config, rec: RecordPlan, path: Path, duration: float, *, speed: float = 1.0,
                 stop: asyncio.Event | None = None,
                 progress: Callable[..., None] | None = None) -> RecordResult:
    """Poll with the bridge and write ``path`` (a CSV) one row per period for ``duration`` plant s.

    ``speed`` > 1 runs polling and sampling that many times faster (a simulated plant at the
    same speed); timestamps are then plant time. Stops early when ``stop`` is set.
    """
    from bridge.runtime.bridge import Bridge

    stop = stop if stop is not None else asyncio.Event()
    csv_path, log_path = path, path.with_suffix(".quality.log")
    result = RecordResult(csv_path, log_path)
    bridge = Bridge(_recording_config(config), speed=speed)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    with csv_path.open("w", encoding="utf-8", newline="") as out, \
            log_path.open("w", encoding="utf-8") as log:
        out.write(";".join(["datetime", *rec.columns, "quality"]) + "\n")
        out.flush()
        await bridge.start()
        try:
            t0_wall, t0_plant = loop.time(), time.time()
            ticks = math.floor(duration / rec.period + 1e-9)
            tick = 1  # first row one period in, after the first polls (as the runtime scores)
            while tick <= ticks and not stop.is_set():
                due = t0_wall + tick * rec.period / speed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
                if stop.is_set():
                    break
                late = int((loop.time() - due) * speed / rec.period)
                if late > 0:  # fell behind (a stalled loop): skip, never write a row twice
                    result.skipped_ticks += late
                    tick += late
                    if tick > ticks:
                        break
                values, problem = sample_row(bridge.store, rec.tags, time.time(), rec.max_age / speed)
                stamp = t0_plant + tick * rec.period  # plant time on the period grid
                cells = ["" if v is None else repr(v) for v in values]
                out.write(";".join([iso(stamp), *cells, "bad" if problem else "good"]) + "\n")
                out.flush()  # a row on disk per period: Ctrl-C or kill keeps everything written
                result.rows += 1
                if problem:
                    result.bad_rows += 1
                    result.reasons[problem] += 1
                    log.write(f"{iso(stamp)} {problem}\n")
                    log.flush()
                if progress is not None:
                    progress(tick * rec.period, result)
                tick += 1
            result.interrupted = stop.is_set()
            if progress is not None:
                progress(min(duration, (tick - 1) * rec.period), result, final=True)
        finally:
            # Stopping cancels a poll that may be in flight; APScheduler logs that as a job
            # error with a traceback, which would read like a failed recording.
            executor_log = logging.getLogger("apscheduler.executors.default")
            level = executor_log.level
            executor_log.setLevel(logging.CRITICAL)
            try:
                await bridge.stop()
            finally:
                executor_log.setLevel(level)
    return result


def train_advice(result: RecordResult, rec: RecordPlan, window: int = 5,
                 calib_fraction: float = 0.25) -> list[str]:
    """The ``plcbridge train`` command for what was recorded, checked against the train-time
    guards (``bridge.ml.guards``) so it is not a command that fails or trains a useless model."""
    import shlex

    from bridge.ml.dataset import LABEL_COLUMNS, DataError, load_csv
    from bridge.ml.guards import input_problems, min_rows
    from bridge.ml.train import MIN_CALIB_WINDOWS, MIN_FIT_WINDOWS

    need = min_rows(window, calib_fraction, MIN_FIT_WINDOWS, MIN_CALIB_WINDOWS)
    good = result.rows - result.bad_rows
    if good < need:
        return [f"too short to train: {good} good rows, `plcbridge train` needs at least {need} at "
                f"--window {window} ({need * rec.period:g} s at {rec.period:g} s); record longer"]
    try:
        table = load_csv(result.path)
    except DataError as exc:
        return [f"cannot train on the recording: {exc}"]
    # A recorded label tag (the PLC's fault bit as `anomaly`) is a label, never a model input.
    inputs = tuple(c for c in rec.columns if c not in LABEL_COLUMNS)
    problems = input_problems(table.select(inputs)[table.good], inputs)
    cmd = ["plcbridge", "train", str(result.path), "--kind", "pca", "--period", f"{rec.period:g}"]
    if rec.name != "tags":
        # A configured model: its contract must hold exactly the configured features, in order.
        if problems:
            return [f"train would refuse {p}" for p in problems] + [
                "record while these inputs move, or remove them from the model's inputs"]
        cmd += ["--inputs", ",".join(inputs), "--name", rec.name]
    lines = [f"train will drop input {p}" for p in problems]
    if len(problems) == len(inputs):
        return [*lines, "no input left to train on; record while the plant runs"]
    out = f"{rec.name if rec.name != 'tags' else 'model'}.onnx"
    return [*lines, "train: " + " ".join(shlex.quote(c) for c in [*cmd, "--out", out])]


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT (Ctrl-C) and SIGTERM end the recording cleanly instead of raising mid-write."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

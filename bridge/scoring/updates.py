"""Model updates while the bridge runs: upload, validate, swap between cycles, roll back.

A candidate model must load in ONNX Runtime, carry a contract whose inputs match the tags the
config gives the model, and score a reference window to a finite value; only then is it
swapped in, in the event loop, so no scoring cycle ever sees half a model. The model it
replaces is kept for one rollback. With ``[storage] data_dir`` accepted models are kept in
``<data_dir>/models/<name>.onnx`` (the previous one as ``<name>.previous.onnx``) and used
again after a restart. A model dropped as ``<data_dir>/models/incoming/<name>.onnx`` is
installed the same way on SIGHUP; a refused one is renamed ``<name>.onnx.rejected`` with the
reason beside it in ``<name>.onnx.rejected.txt``.

A model can also be *staged* (``stage``, REST ``?mode=shadow``, or a dropped
``<name>.shadow.onnx``): after the same validation it runs in shadow beside the active model,
scoring the same windows after the active Score is published and writing nothing, until its
rule (``[models.shadow]``) or an operator promotes it (the normal swap, rollback kept) or
rejects it with the reason. Its model file and figures are kept in ``<data_dir>/models/shadow/``
so a restart resumes it, finishes a promotion that was under way, or rejects it cleanly;
every result is an event (``bridge.scoring.shadow.ROLLOUT_KINDS``) a publisher can send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bridge.config import ShadowRuleConfig
from bridge.core.errors import ConfigError, ModelContractError
from bridge.core.scores import Score
from bridge.core.tags import TagStore
from bridge.scoring.detector import Detector
from bridge.scoring.runner import ModelRunner
from bridge.scoring.shadow import Shadow, ShadowState, rollout_event, verdict
from bridge.scoring.windows import Window

__all__ = ["ModelUpdater", "RolloutConflict", "WindowObserver"]

log = logging.getLogger("plcbridge.models")

# What ``add_window_observer`` takes: (model name, window values, the active model's Score).
WindowObserver = Callable[[str, np.ndarray, Score], None]

SAVE_EVERY = 5.0  # wall seconds between saves of a running shadow's figures: at most that lost


class RolloutConflict(Exception):
    """Staging while a shadow runs, or promoting/rejecting when none does."""


class ModelUpdater:
    """Validates and swaps models. It sees the tag store (reference windows), the live runners
    (read only) and ``swap``, the runtime's callback that puts a runner in place between two
    cycles; ``folder`` is ``<data_dir>/models`` or None; ``speed`` as the runtime's;
    ``on_event`` records a rollout result (the runtime's event list and store)."""

    def __init__(self, store: TagStore, runners: Mapping[str, ModelRunner],
                 swap: Callable[[str, ModelRunner], None], *, folder: Path | None,
                 speed: float = 1.0,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._store = store
        self._runners = runners
        self._replace = swap
        self._speed = speed
        self._record = on_event or (lambda event: None)
        self.folder = folder
        self.previous: dict[str, ModelRunner] = {}
        self._lock = asyncio.Lock()  # one update at a time: validation is not free
        # Per model: the running shadow or the last concluded one (for the API), the running
        # one's runner and model file, and when its figures were last saved.
        self.shadows: dict[str, Shadow] = {}
        self._shadow_runners: dict[str, ModelRunner] = {}
        self._shadow_files: dict[str, Path] = {}
        self._saved: dict[str, float] = {}
        # Saves run in worker threads and may finish out of order: a stale snapshot must never
        # overwrite a newer one (a "running" save landing after "promoted" would resume a
        # promoted shadow after a restart).
        self._save_lock = threading.Lock()
        self._save_seq = 0
        self._written: dict[str, int] = {}
        self._window_observers: list[WindowObserver] = []
        if folder is not None:
            self._resume_all()

    def add_window_observer(self, observer: WindowObserver) -> None:
        """Call ``observer(model, values, score)`` with every window the active model scored
        (values ``[length, inputs]``, valid or not) and its Score, after the sinks had the
        Score and before the shadow scores it. It runs in the scoring cycle: it must not block.
        The fleet's live statistics are one (they need the values, which a Score lacks)."""
        self._window_observers.append(observer)

    @staticmethod
    def stored_model(folder: Path | None, name: str) -> Path | None:
        """The accepted upload for ``name`` from an earlier run, if any."""
        if folder is None:
            return None
        path = folder / f"{name}.onnx"
        return path if path.is_file() else None

    async def install(self, name: str, data: bytes, source: str) -> ModelRunner:
        """Validate ``data`` as the new model for ``name`` and swap it in. Raises
        ModelContractError (nothing changed) or KeyError (no such model)."""
        # The whole update under the lock, reading the current runner included: read before
        # it, two concurrent uploads both replaced the same model, and memory (which the
        # rollback restores) and disk (which a restart loads) ended on different models.
        async with self._lock:
            old = self._runners[name]
            runner, candidate = await self._candidate(name, data, old, shadow=False)
            path = await asyncio.to_thread(self._keep, name, candidate)
            runner.detector.relocate(path)
            self._swap(name, old, runner, source)
            await self._drop_shadow(name, f"the active model was replaced ({source}) while "
                                          "the shadow ran: its comparison no longer holds")
            return runner

    async def _candidate(self, name: str, data: bytes, old: ModelRunner,
                         *, shadow: bool) -> tuple[ModelRunner, Path]:
        """``data`` written to a candidate file and validated against ``old``'s config."""
        candidate = await asyncio.to_thread(self._write_candidate, name, data)
        try:
            runner = await asyncio.to_thread(self._validate, old, candidate, shadow)
        except ModelContractError as exc:
            candidate.unlink(missing_ok=True)
            # The reason, not where the upload was parked: no temporary path in a reply.
            reason = str(exc).replace(str(candidate), "upload").replace(candidate.name, "upload")
            raise ModelContractError(reason) from None
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        return runner, candidate

    async def rollback(self, name: str) -> ModelRunner:
        """Restore the model the last update replaced. Raises KeyError if there is none."""
        async with self._lock:  # see install: the current runner is read under the lock
            current = self._runners[name]
            previous = self.previous.pop(name)
            if self.folder is not None:
                await asyncio.to_thread(self._restore_file, name)
            self._swap(name, current, previous, "rollback")
            self.previous.pop(name, None)  # one step back only: no ping-pong through history
            self._record(rollout_event(
                name, "model-rolled-back", previous.threshold, shadow_id=None,
                version=previous.detector.version, active_version=current.detector.version,
                source="rollback", state="rolled back", reason="", comparison=None))
            await self._drop_shadow(name, "the active model was rolled back while the shadow "
                                          "ran: its comparison no longer holds")
            return previous

    async def reload_folder(self) -> dict[str, str]:
        """SIGHUP: install every ``<folder>/incoming/<name>.onnx`` waiting there, and stage
        every ``<name>.shadow.onnx`` in shadow."""
        results: dict[str, str] = {}
        if self.folder is None:
            return results
        for name in list(self._runners):
            # Keyed by model (installs) and "<model>.shadow" (staged): the file names' stems.
            for key, shadow in ((name, False), (f"{name}.shadow", True)):
                path = self.folder / "incoming" / f"{key}.onnx"
                if path.is_file():
                    results[key] = await self._from_folder(name, path, shadow)
        return results

    async def _from_folder(self, name: str, path: Path, shadow: bool) -> str:
        try:
            data = await asyncio.to_thread(path.read_bytes)
            if shadow:
                staged = await self.stage(name, data, f"folder {path}")
                done = f"staged version {staged.version} in shadow ({staged.id})"
            else:
                installed = await self.install(name, data, f"folder {path}")
                done = f"installed version {installed.detector.version}"
        except (ModelContractError, RolloutConflict) as exc:
            log.error("model reload refused model=%s file=%s error=%s", name, path, exc)
            rejected = path.with_name(path.name + ".rejected")
            os.replace(path, rejected)
            rejected.with_name(rejected.name + ".txt").write_text(f"{exc}\n")
            return f"refused: {exc}"
        path.unlink(missing_ok=True)
        return done

    # -- shadow rollout -------------------------------------------------------------------

    async def stage(self, name: str, data: bytes, source: str,
                    rule: ShadowRuleConfig | None = None) -> Shadow:
        """Validate ``data`` like ``install`` and run it in shadow beside the active model of
        ``name`` under ``rule`` (default: the model's ``[models.shadow]``). Returns the shadow
        (its ``id`` names the rollout in every result). Raises ModelContractError (nothing
        changed), RolloutConflict (a shadow already runs) or KeyError (no such model)."""
        async with self._lock:
            running = self.shadows.get(name)
            if running is not None and running.state == "running":
                raise RolloutConflict(f"model {name!r} already has a shadow running (version "
                                      f"{running.version}, {running.id}): promote or reject it first")
            old = self._runners[name]
            runner, candidate = await self._candidate(name, data, old, shadow=True)
            shadow = Shadow(model=name, version=runner.detector.version,
                            active_version=old.detector.version, source=source,
                            rule=rule or old.config.shadow, threshold=runner.threshold)
            path = await asyncio.to_thread(self._park_shadow, name, candidate)
            runner.detector.relocate(path)
            self._start_shadow(shadow, runner, path)
            await self._save(shadow)
            self._record(shadow.result("shadow-start"))
            log.warning("model staged in shadow model=%s version=%s active=%s id=%s source=%s "
                        "period_s=%g", name, shadow.version, shadow.active_version, shadow.id,
                        source, shadow.rule.period_s)
            return shadow

    async def observe(self, name: str, window: Window, active: Score) -> Score | None:
        """Score ``window`` (the one the active model just scored) with the shadow of
        ``name``, if one runs, and decide when its period is over. The runtime calls it after
        the active Score is published, so the shadow's inference never delays it; the
        shadow's Score goes nowhere but the comparison."""
        for observer in self._window_observers:
            try:
                observer(name, window.values, active)
            except Exception:  # a consumer's bug must not fail the scoring job
                log.exception("window observer failed model=%s", name)
        shadow = self.shadows.get(name)
        runner = self._shadow_runners.get(name)
        if shadow is None or runner is None or shadow.state != "running":
            return None
        score = runner.score_window(window)
        shadow.comparison.add(active, score)
        try:
            if shadow.elapsed(self._speed) >= shadow.rule.period_s:
                await self.decide(name)
            elif self.folder is not None and time.monotonic() - self._saved.get(name, 0.0) >= SAVE_EVERY:
                await self._save(shadow)
        except RolloutConflict:
            pass  # an operator decided while this cycle waited for the lock
        except Exception:  # a full disk must not fail the scoring job; a restart resolves it
            log.exception("shadow step failed model=%s id=%s", name, shadow.id)
        return score

    async def decide(self, name: str) -> Shadow:
        """Apply the rule now: promote if the shadow passes, else reject it with the reason."""
        async with self._lock:
            shadow = self._running(name)
            shadow.freeze(self._speed)
            failure = verdict(shadow.rule, shadow.comparison)
            if failure is None:
                await self._promote(shadow, f"passed the rule after {shadow.observed_s:.1f} s")
            else:
                await self._reject(shadow, failure)
            return shadow

    async def promote(self, name: str, reason: str = "promoted by the operator") -> Shadow:
        """Promote the running shadow of ``name`` now, whatever the rule says so far."""
        async with self._lock:
            shadow = self._running(name)
            await self._promote(shadow, reason)
            return shadow

    async def reject(self, name: str, reason: str = "rejected by the operator") -> Shadow:
        """Reject the running shadow of ``name`` now; the active model goes on unchanged."""
        async with self._lock:
            shadow = self._running(name)
            await self._reject(shadow, reason)
            return shadow

    async def save_shadows(self) -> None:
        """Save every running shadow's figures (the runtime calls it when stopping)."""
        for shadow in list(self.shadows.values()):
            if shadow.state == "running" and self.folder is not None:
                await self._save(shadow)

    def _running(self, name: str) -> Shadow:
        self._runners[name]  # KeyError for an unknown model, before "no shadow"
        shadow = self.shadows.get(name)
        if shadow is None or shadow.state != "running":
            raise RolloutConflict(f"model {name!r} has no shadow running")
        return shadow

    def _start_shadow(self, shadow: Shadow, runner: ModelRunner, path: Path) -> None:
        self.shadows[shadow.model] = shadow
        self._shadow_runners[shadow.model] = runner
        self._shadow_files[shadow.model] = path
        self._saved[shadow.model] = time.monotonic()

    async def _promote(self, shadow: Shadow, reason: str) -> None:
        # Crash-safe in this order: "promoting" on disk, then the file moves to the active
        # slot (one atomic rename), then "promoted". A restart in between finds "promoting"
        # and finishes (file still parked) or only records it (file gone): never twice.
        shadow.freeze(self._speed)
        shadow.state, shadow.reason = "promoting", reason  # a restart finishes it with the reason
        await self._save(shadow)
        name = shadow.model
        old, runner = self._runners[name], self._shadow_runners.pop(name)
        runner.windows.adopt(old.windows)
        path = await asyncio.to_thread(self._keep, name, self._shadow_files.pop(name))
        runner.detector.relocate(path)
        self._swap(name, old, runner, f"shadow {shadow.id}")
        await self._conclude(shadow, "promoted", reason)

    async def _reject(self, shadow: Shadow, reason: str) -> None:
        shadow.freeze(self._speed)
        self._shadow_runners.pop(shadow.model, None)
        path = self._shadow_files.pop(shadow.model, None)
        if path is not None:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        await self._conclude(shadow, "rejected", reason)

    async def _drop_shadow(self, name: str, reason: str) -> None:
        """Reject a running shadow whose active model changed under it (lock held)."""
        shadow = self.shadows.get(name)
        if shadow is not None and shadow.state == "running":
            await self._reject(shadow, reason)

    async def _conclude(self, shadow: Shadow, state: ShadowState, reason: str) -> None:
        self._settle(shadow, state, reason)
        await self._save(shadow)

    def _settle(self, shadow: Shadow, state: ShadowState, reason: str) -> None:
        shadow.state, shadow.reason, shadow.decided_at = state, reason, time.time()
        # Recorded before the final save: a crash between the two repeats the result after
        # the restart (same shadow id, so a publisher can drop the copy) rather than lose it.
        self._record(shadow.result(f"shadow-{state}"))
        log.warning("shadow %s model=%s version=%s id=%s reason=%s figures=%s", state,
                    shadow.model, shadow.version, shadow.id, reason, shadow.comparison.figures())

    async def _save(self, shadow: Shadow) -> None:
        if self.folder is None:
            return
        self._saved[shadow.model] = time.monotonic()
        await asyncio.to_thread(self._write_state, *self._snapshot(shadow))

    def _snapshot(self, shadow: Shadow) -> tuple[str, int, str]:
        """Taken in the event loop, so the figures are consistent; written in a thread."""
        self._save_seq += 1
        return shadow.model, self._save_seq, json.dumps(shadow.to_json(self._speed))

    def _write_state(self, name: str, seq: int, text: str) -> None:
        with self._save_lock:
            if seq <= self._written.get(name, 0):
                return  # a newer snapshot is already on disk
            folder = self._shadow_folder()
            handle, raw = tempfile.mkstemp(prefix=f".{name}.", suffix=".json", dir=folder)
            with os.fdopen(handle, "w") as out:
                out.write(text)
            os.replace(raw, folder / f"{name}.json")
            self._written[name] = seq

    # -- after a restart: resume, finish or reject what the last run left -------------------

    def _resume_all(self) -> None:
        assert self.folder is not None
        folder = self.folder / "shadow"  # not made here: a bridge that never staged has none
        for name in self._runners:
            state = folder / f"{name}.json"
            if not state.is_file():
                continue
            try:
                shadow = Shadow.from_json(json.loads(state.read_text()))
            except (ValueError, TypeError, KeyError) as exc:
                # Unreadable: keep it for the operator, but never act on it.
                log.error("shadow state unreadable model=%s file=%s error=%s", name, state, exc)
                os.replace(state, state.with_name(state.name + ".unreadable"))
                continue
            self.shadows[name] = shadow
            if shadow.state in ("running", "promoting"):
                self._resume(shadow, folder / f"{name}.onnx")
                self._write_state(*self._snapshot(shadow))

    def _resume(self, shadow: Shadow, path: Path) -> None:
        name, active = shadow.model, self._runners[shadow.model]
        if shadow.state == "promoting" and not path.is_file():
            # The rename into the active slot happened before the stop: the bridge already
            # loaded the promoted model; only the record is missing.
            self._settle(shadow, "promoted", shadow.reason or "promotion completed before a restart")
            return
        if not path.is_file():
            self._settle(shadow, "rejected", "the shadow model file was missing after a restart")
            return
        if shadow.state == "running" and active.detector.version != shadow.active_version:
            # (Not for "promoting": a stop between the two renames of ``_keep`` leaves the
            # config's model active, and finishing the promotion is still right.)
            path.unlink(missing_ok=True)
            self._settle(shadow, "rejected", f"the active model changed across a restart (now "
                                             f"{active.detector.version}, staged against "
                                             f"{shadow.active_version})")
            return
        try:
            runner = self._validate(active, path, True)
        except ModelContractError as exc:
            path.unlink(missing_ok=True)
            self._settle(shadow, "rejected", f"could not resume after a restart: {exc}")
            return
        runner.detector.relocate(path)
        self._start_shadow(shadow, runner, path)
        shadow.resumed = time.monotonic()
        if shadow.state == "promoting":
            # Stopped in the middle of a promotion, before the rename: finish it, once.
            self._shadow_runners.pop(name)
            self._swap(name, active, runner, f"shadow {shadow.id} (finished after a restart)")
            runner.detector.relocate(self._keep(name, self._shadow_files.pop(name)))
            self._settle(shadow, "promoted", shadow.reason or "promoted across a restart")
            return
        log.warning("shadow resumed model=%s version=%s id=%s observed_s=%g windows=%d", name,
                    shadow.version, shadow.id, shadow.observed_s, shadow.comparison.windows)

    def _shadow_folder(self) -> Path:
        assert self.folder is not None
        folder = self.folder / "shadow"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _park_shadow(self, name: str, candidate: Path) -> Path:
        if self.folder is None:
            return candidate
        path = self._shadow_folder() / f"{name}.onnx"
        os.replace(candidate, path)
        return path

    # -- steps, run in a worker thread where they touch files or build sessions -------------

    def _write_candidate(self, name: str, data: bytes) -> Path:
        folder = self.folder or Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        handle, raw = tempfile.mkstemp(prefix=f".{name}.", suffix=".upload.onnx", dir=folder)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return Path(raw)

    def _validate(self, old: ModelRunner, candidate: Path, shadow: bool = False) -> ModelRunner:
        detector = Detector(candidate)
        # A shadow adapts in memory only: the file belongs to the active model.
        try:
            runner = ModelRunner(old.config, detector, self._store,
                                 default_max_age=old.windows.max_age * self._speed, speed=self._speed,
                                 state_dir=None if shadow else old.state_dir)
        except ConfigError as exc:  # [models.adapt] needs a baseline this model lacks
            raise ModelContractError(f"{candidate.name}: {exc}") from None
        if shadow and (runner.tags, runner.windows.length, runner.period) != \
                (old.tags, old.windows.length, old.period):
            # A shadow scores the active model's own windows: a different shape is no comparison.
            raise ModelContractError(
                f"{candidate.name}: a shadow must score the active model's windows: it takes "
                f"{runner.windows.length} x {runner.tags} every {runner.period:g} s, the active "
                f"model {old.windows.length} x {old.tags} every {old.period:g} s")
        reference = self._reference_window(old, runner)
        value, _ = detector.score(reference)
        if not np.isfinite(value):
            raise ModelContractError(f"{candidate.name}: scores the reference window to {value}")
        runner.windows.adopt(old.windows)
        return runner

    def _reference_window(self, old: ModelRunner, new: ModelRunner) -> np.ndarray:
        """The live window if it fits the new model, else the latest good values held flat."""
        live = old.windows.current()
        if live.valid and live.values.shape == (new.windows.length, len(new.tags)) \
                and old.tags == new.tags:
            return live.values
        row = np.zeros(len(new.tags), dtype=np.float32)
        for column, tag in enumerate(new.tags):
            reading = self._store.latest(tag)
            value = reading.numeric() if reading is not None else None
            row[column] = value if value is not None else 0.0
        return np.tile(row, (new.windows.length, 1))

    def _keep(self, name: str, candidate: Path) -> Path:
        if self.folder is None:
            return candidate
        active = self.folder / f"{name}.onnx"
        if active.is_file():
            os.replace(active, self.folder / f"{name}.previous.onnx")
        os.replace(candidate, active)
        return active

    def _restore_file(self, name: str) -> None:
        assert self.folder is not None
        previous = self.folder / f"{name}.previous.onnx"
        active = self.folder / f"{name}.onnx"
        if previous.is_file():
            os.replace(previous, active)
        else:
            # The previous model was the config's own file: drop the upload so a restart
            # also comes back with the config's model.
            active.unlink(missing_ok=True)

    # -- the swap itself: in the event loop, between two scoring cycles ----------------------

    def _swap(self, name: str, old: ModelRunner, new: ModelRunner, source: str) -> None:
        new.scored, new.anomalies = old.scored, old.anomalies
        if new.alarm is not None and old.alarm is not None:
            new.alarm.active = old.alarm.active  # a swap is no reason for an alarm to end and restart
        if new.adapt is not None and new.state_dir is None and old.state_dir is not None:
            new.state_dir = new.adapt.folder = old.state_dir  # a promoted shadow saves from now on
        self._replace(name, new)
        self.previous[name] = old
        log.warning("model replaced model=%s from_version=%s to_version=%s source=%s",
                    name, old.detector.version, new.detector.version, source)

    def previous_version(self, name: str) -> str | None:
        """The version a rollback of ``name`` would restore, if any."""
        previous = self.previous.get(name)
        return previous.detector.version if previous else None

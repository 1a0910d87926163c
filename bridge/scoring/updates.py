"""Model updates while the bridge runs: upload, validate, swap between cycles, roll back.

A candidate model must load in ONNX Runtime, carry a contract whose inputs match the tags the
config gives the model, and score a reference window to a finite value; only then is it
swapped in, in the event loop, so no scoring cycle ever sees half a model. The model it
replaces is kept for one rollback. With ``[storage] data_dir`` accepted models are kept in
``<data_dir>/models/<name>.onnx`` (the previous one as ``<name>.previous.onnx``) and used
again after a restart. A model dropped as ``<data_dir>/models/incoming/<name>.onnx`` is
installed the same way on SIGHUP; a refused one is renamed ``<name>.onnx.rejected`` with the
reason beside it in ``<name>.onnx.rejected.txt``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from bridge.core.errors import ModelContractError
from bridge.core.tags import TagStore
from bridge.scoring.detector import Detector
from bridge.scoring.runner import ModelRunner

__all__ = ["ModelUpdater"]

log = logging.getLogger("plcbridge.models")


class ModelUpdater:
    """Validates and swaps models. It sees the tag store (reference windows), the live runners
    (read only) and ``swap``, the runtime's callback that puts a runner in place between two
    cycles; ``folder`` is ``<data_dir>/models`` or None; ``speed`` as the runtime's."""

    def __init__(self, store: TagStore, runners: Mapping[str, ModelRunner],
                 swap: Callable[[str, ModelRunner], None], *, folder: Path | None,
                 speed: float = 1.0) -> None:
        self._store = store
        self._runners = runners
        self._replace = swap
        self._speed = speed
        self.folder = folder
        self.previous: dict[str, ModelRunner] = {}
        self._lock = asyncio.Lock()  # one update at a time: validation is not free

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
            candidate = await asyncio.to_thread(self._write_candidate, name, data)
            try:
                runner = await asyncio.to_thread(self._validate, old, candidate)
            except ModelContractError as exc:
                candidate.unlink(missing_ok=True)
                # The reason, not where the upload was parked: no temporary path in a reply.
                reason = str(exc).replace(str(candidate), "upload").replace(candidate.name, "upload")
                raise ModelContractError(reason) from None
            except BaseException:
                candidate.unlink(missing_ok=True)
                raise
            path = await asyncio.to_thread(self._keep, name, candidate)
            runner.detector.relocate(path)
            self._swap(name, old, runner, source)
            return runner

    async def rollback(self, name: str) -> ModelRunner:
        """Restore the model the last update replaced. Raises KeyError if there is none."""
        async with self._lock:  # see install: the current runner is read under the lock
            current = self._runners[name]
            previous = self.previous.pop(name)
            if self.folder is not None:
                await asyncio.to_thread(self._restore_file, name)
            self._swap(name, current, previous, "rollback")
            self.previous.pop(name, None)  # one step back only: no ping-pong through history
            return previous

    async def reload_folder(self) -> dict[str, str]:
        """SIGHUP: install every ``<folder>/incoming/<name>.onnx`` waiting there."""
        results: dict[str, str] = {}
        if self.folder is None:
            return results
        for name in list(self._runners):
            path = self.folder / "incoming" / f"{name}.onnx"
            if not path.is_file():
                continue
            try:
                data = await asyncio.to_thread(path.read_bytes)
                installed = await self.install(name, data, f"folder {path}")
            except ModelContractError as exc:
                log.error("model reload refused model=%s file=%s error=%s", name, path, exc)
                rejected = path.with_name(path.name + ".rejected")
                os.replace(path, rejected)
                rejected.with_name(rejected.name + ".txt").write_text(f"{exc}\n")
                results[name] = f"refused: {exc}"
                continue
            path.unlink(missing_ok=True)
            results[name] = f"installed version {installed.detector.version}"
        return results

    # -- steps, run in a worker thread where they touch files or build sessions -------------

    def _write_candidate(self, name: str, data: bytes) -> Path:
        folder = self.folder or Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        handle, raw = tempfile.mkstemp(prefix=f".{name}.", suffix=".upload.onnx", dir=folder)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return Path(raw)

    def _validate(self, old: ModelRunner, candidate: Path) -> ModelRunner:
        detector = Detector(candidate)
        runner = ModelRunner(old.config, detector, self._store,
                             default_max_age=old.windows.max_age * self._speed, speed=self._speed)
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
        self._replace(name, new)
        self.previous[name] = old
        log.warning("model replaced model=%s from_version=%s to_version=%s source=%s",
                    name, old.detector.version, new.detector.version, source)

    def previous_version(self, name: str) -> str | None:
        """The version a rollback of ``name`` would restore, if any."""
        previous = self.previous.get(name)
        return previous.detector.version if previous else None

"""Safety rules for everything the bridge writes to a device.

Writes reach a device only when ``writeback.mode = "on"``, only to the targets a model's
``writeback`` section declares, only with values inside the target's type and configured
range, and no more often than ``min_interval`` per model. ``dry-run`` logs what would be
written. A failing write is logged and counted; it never stops scoring or the API.

The targets of one model are one block: every value of a cycle comes from the same window and
goes out in one ``write_many`` call, and the rate limit holds or passes the block as a whole.
A per-target limit let a valid score after an outage go out alone while anomaly and
window_valid, written moments before, still held their fail-safe values, and kept the
targets out of phase from then on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from bridge.config import ModelWritebackConfig, NodeTarget, RegisterTarget, Target
from bridge.core.datatypes import TYPES, range_problem
from bridge.core.errors import PlcBridgeError, WriteRefusedError
from bridge.core.scores import Score
from bridge.core.timefmt import iso
from bridge.ports import BridgeView, SinkBase, Writer, WriteStats

__all__ = ["ModelWriteback", "WritebackSink", "check_value", "place"]

log = logging.getLogger("plcbridge.writeback")
# Every write, dry-run write and refusal, one line each; bridge.runtime.storage routes it to a
# bounded file of its own when a data directory is configured.
audit = logging.getLogger("plcbridge.audit")


def place(target: Target) -> str:
    """Where a target is, for logs and errors: ``holding 100`` or ``node ns=2;s=X``."""
    if isinstance(target, NodeTarget):
        return f"node {target.node_id}"
    return f"holding {target.address}"


def check_value(key: str, target: Target, value: float) -> None:
    """Raise WriteRefusedError unless ``value`` fits the target's type and configured range."""
    # A node's type is its DataType, known to the adapter only: it checks the encoding there.
    kind = target.type if isinstance(target, RegisterTarget) else "node DataType"
    where = f"{key} ({place(target)}, {kind})"
    if not math.isfinite(value):
        raise WriteRefusedError(f"{where}: value {value!r} is not finite")
    problem = range_problem(kind, value)
    if problem is not None:
        raise WriteRefusedError(f"{where}: value {value!r} {problem}")
    if target.min is not None and value < target.min:
        raise WriteRefusedError(f"{where}: value {value!r} below configured min {target.min}")
    if target.max is not None and value > target.max:
        raise WriteRefusedError(f"{where}: value {value!r} above configured max {target.max}")


class ModelWriteback:
    """Writes one model's Scores to the registers its config declares."""

    def __init__(self, model: str, config: ModelWritebackConfig, writer: Writer[Any], *,
                 mode: str, min_interval: float) -> None:
        self.model = model
        self.config = config
        self.mode = mode
        self.min_interval = min_interval
        self.stats = WriteStats()
        self._writer = writer
        self._targets = config.targets()
        self._last_sent: float | None = None  # monotonic time of the last block sent
        self._heartbeat = 0
        self._failing = False

    def values_for(self, score: Score) -> dict[str, float]:
        """The value each declared target receives for this Score.

        When the window was not valid (stale or bad inputs, device down, model error) the
        result cannot be vouched for: score and anomaly get their configured ``fail_safe``
        value, or are left alone if none is configured; window_valid says 0.
        """
        values: dict[str, float] = {}
        healthy = score.window_valid and score.score is not None and math.isfinite(score.score)
        if healthy:
            if "score" in self._targets:
                values["score"] = float(score.score)  # type: ignore[arg-type]
            if "anomaly" in self._targets:
                values["anomaly"] = 1.0 if score.anomaly else 0.0
        else:
            values.update(self._fail_safe_values(("score", "anomaly")))
        if "window_valid" in self._targets:
            values["window_valid"] = 1.0 if healthy else 0.0
        if "heartbeat" in self._targets:
            values["heartbeat"] = float(self._heartbeat)
        return values

    def _fail_safe_values(self, keys: tuple[str, ...]) -> dict[str, float]:
        return {key: target.fail_safe for key in keys
                if (target := self._targets.get(key)) is not None and target.fail_safe is not None}

    async def publish_fail_safe(self) -> None:
        """At shutdown: leave the PLC with fail-safe values and window_valid = 0, so it does
        not keep acting on the last result of a bridge that is gone. Ignores the rate limit."""
        if self.mode == "off":
            return
        values = self._fail_safe_values(("score", "anomaly", "heartbeat"))
        if "window_valid" in self._targets:
            values["window_valid"] = 0.0
        self._last_sent = None
        await self._send(self._checked(values), time.monotonic())

    async def publish(self, score: Score) -> None:
        if self.mode == "off":
            return
        values = self.values_for(score)
        heartbeat = self._targets.get("heartbeat")
        if heartbeat is not None:
            # A node heartbeat wraps like a uint16 too: every integer DataType holds 0..65535
            # except the 8-bit ones and Int16, which nobody picks for a counter.
            kind = heartbeat.type if isinstance(heartbeat, RegisterTarget) else "uint16"
            high = TYPES[kind].max or 2**16 - 1
            self._heartbeat = (self._heartbeat + 1) % (high + 1)
        now = time.monotonic()
        if self._last_sent is not None and now - self._last_sent < self.min_interval:
            self.stats.skipped_rate += len(values)  # the whole block waits, never a part
            return
        await self._send(self._checked(values), now)

    async def _send(self, batch: list[tuple[str, float]], now: float) -> None:
        if not batch:
            return
        self._last_sent = now
        if self.mode == "dry-run":
            self.stats.dry_run += len(batch)
            stamp = iso(time.time())
            for key, value in batch:
                audit.info("dry-run model=%s device=%s target=%s at=%s value=%r time=%s",
                           self.model, self.config.device, key, place(self._targets[key]), value,
                           stamp)
            return
        try:
            # One call: adjacent targets (score and flag) reach the device in one request.
            await self._writer.write_many([(self._targets[key], value) for key, value in batch])
        except PlcBridgeError as exc:
            self.stats.failed += len(batch)
            self.stats.last_error = str(exc)
            self._audit(batch, f"failed: {exc}")
            if not self._failing:
                log.error("write failed model=%s device=%s targets=%s error=%s",
                          self.model, self.config.device, ",".join(k for k, _ in batch), exc)
            self._failing = True
            return
        self._audit(batch, "ok")
        if self._failing:
            log.info("writes recovered model=%s device=%s", self.model, self.config.device)
        self._failing = False
        self.stats.written += len(batch)
        self.stats.last_write = time.time()
        self.stats.values.update(batch)

    def _checked(self, values: Mapping[str, float]) -> list[tuple[str, float]]:
        """The values that pass their target's type and range check; a refusal is logged
        (audited) and counted, the rest of the block still goes."""
        batch: list[tuple[str, float]] = []
        for key, value in values.items():
            try:
                check_value(key, self._targets[key], value)
            except WriteRefusedError as exc:
                self.stats.refused += 1
                audit.warning("refused model=%s device=%s %s time=%s", self.model,
                              self.config.device, exc, iso(time.time()))
                continue
            batch.append((key, value))
        return batch

    def _audit(self, batch: list[tuple[str, float]], result: str) -> None:
        if audit.isEnabledFor(logging.INFO):
            # The record's own time has seconds only (the log format's); writes a PLC acts on
            # are ordered by milliseconds.
            stamp = iso(time.time())
            for key, value in batch:
                audit.info("write model=%s device=%s target=%s at=%s value=%r result=%s time=%s",
                           self.model, self.config.device, key, place(self._targets[key]), value,
                           result, stamp)


class WritebackSink(SinkBase):
    """Write-back as a sink: each Score goes to its model's ``ModelWriteback`` in a task of its
    own, so a dead write-back device never delays scoring or the other sinks. At most one
    write is in flight per model; a cycle that finds one still running skips its write (and
    counts it as rate-skipped). ``stop`` lets the writes in flight finish, then leaves the
    fail-safe values, bounded by ``stop_timeout`` (the runtime sets it from its stop budget).
    """

    name = "writeback"

    def __init__(self, models: Mapping[str, ModelWriteback], *, stop_timeout: float = 20 / 3) -> None:
        self.models = dict(models)
        self.stop_timeout = stop_timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False

    async def start(self, view: BridgeView) -> None:
        self._started = True

    def on_score(self, score: Score) -> None:
        writeback = self.models.get(score.model)
        if writeback is None:
            return
        running = self._tasks.get(score.model)
        if running is None or running.done():
            self._tasks[score.model] = asyncio.create_task(
                writeback.publish(score), name=f"plcbridge[{score.model}].writeback")
        else:
            writeback.stats.skipped_rate += 1

    def status(self) -> Mapping[str, Any] | None:
        return None  # per-model counters are in each model's status (health, /metrics)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        half = self.stop_timeout / 2
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=half)
        for task in pending:
            task.cancel()
        if not self.models:
            return
        _, late = await asyncio.wait(
            [asyncio.create_task(wb.publish_fail_safe(), name=f"plcbridge[{name}].fail-safe")
             for name, wb in self.models.items()], timeout=half)
        for task in late:
            task.cancel()
        if late:
            log.error("fail-safe write-back did not finish within %.1f s", half)

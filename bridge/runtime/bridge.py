"""Wires config → adapters → TagStore → ModelRunners → sinks, and runs them in one event loop.

One APScheduler ``AsyncIOScheduler`` holds one interval job per poll interval (it starts one
task per line, walking the line's devices in turn) and one per model that is not scored right
after its devices' polls, each ``max_instances=1, coalesce=True``; a device whose previous
poll still runs skips a cycle (an overrun) instead of piling polls up. uvicorn serves the API
from the same loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from adapters import create_adapter
from bridge.config import (
    DEFAULT_MODEL,
    Config,
    ModbusDeviceConfig,
    ModbusTagConfig,
    OpcuaTagConfig,
    ShadowRuleConfig,
)
from bridge.core.errors import ConfigError, ModelContractError
from bridge.core.extras import MissingExtraError
from bridge.core.scores import Score, ScoreStore
from bridge.core.tags import Part, Quality, Reading, TagStore, bad
from bridge.ports import Adapter, DeviceStatus, ModelStatus, Sink, Writer
from bridge.runtime.sinks import AdapterFactory, build_sinks
from bridge.scoring.detector import Detector
from bridge.scoring.runner import ModelRunner
from bridge.scoring.updates import ModelUpdater, RolloutConflict, WindowObserver
from bridge.sinks.writeback import ModelWriteback, WritebackSink

__all__ = ["Bridge"]

if TYPE_CHECKING:
    from bridge.runtime.storage import EventStore

log = logging.getLogger("plcbridge.runtime")

SinkT = TypeVar("SinkT")


class _View:
    """The read-only ``BridgeView`` the sinks get: live device statuses, model snapshots,
    latest scores. Holds the bridge's own dicts, so a model update shows at the next call."""

    def __init__(self, bridge: Bridge) -> None:
        self._adapters = bridge.adapters
        self._runners = bridge.runners
        self._scores = bridge.scores
        self._store = bridge.store
        self._writeback = bridge.writeback
        self._started_at = bridge.started_at

    @property
    def started_at(self) -> float:
        return self._started_at

    def devices(self) -> Mapping[str, DeviceStatus]:
        return {name: adapter.status for name, adapter in self._adapters.items()}

    def models(self) -> Mapping[str, ModelStatus]:
        return {name: self._model(name, runner) for name, runner in self._runners.items()}

    def _model(self, name: str, runner: ModelRunner) -> ModelStatus:
        wb = self._writeback.models.get(name)
        return ModelStatus(
            name=name, version=runner.detector.version, path=runner.detector.path,
            inputs=tuple(runner.tags), period=runner.period, threshold=runner.threshold,
            scored=runner.scored, anomalies=runner.anomalies,
            writeback_device=None if wb is None else wb.config.device,
            writeback_mode=None if wb is None else wb.mode,
            writeback=None if wb is None else wb.stats)

    def latest_score(self, model: str) -> Score | None:
        return self._scores.latest(model) if model in self._scores else None

    def latest_reading(self, tag: str) -> Reading | None:
        return self._store.latest(tag)


class Bridge:
    """The running bridge. Construction validates models against the config (raises
    ModelContractError); ``start()`` connects and schedules; ``stop()`` undoes it all."""

    def __init__(self, config: Config, *, adapter_factory: AdapterFactory = create_adapter,
                 speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.config = config
        # speed > 1 runs every interval (poll, model period, max age) that many times faster:
        # tests and fast-forward demos drive a simulated plant running at the same speed.
        self.speed = speed
        self.started_at = time.time()
        self.store = TagStore(config.tag_names(), config.bridge.history_size)
        self.tags: dict[str, tuple[str, ModbusTagConfig | OpcuaTagConfig]] = {
            tag.name: (device.name, tag) for device in config.devices for tag in device.tags
        }
        self.adapters: dict[str, Adapter] = {}
        for index, device in enumerate(config.devices):
            try:
                self.adapters[device.name] = adapter_factory(device)
            except MissingExtraError as exc:  # e.g. an OPC UA device without asyncua installed
                raise ConfigError([f"devices[{index}] ({device.name}): {exc}"]) from None
        self._poll_budget = {d.name: self._watchdog_budget(d, self.adapters[d.name])
                             for d in config.devices}
        self.runners: dict[str, ModelRunner] = {}
        writebacks: dict[str, ModelWriteback] = {}
        models_folder = config.storage.data_dir / "models" if config.storage.data_dir else None
        adapt_folder = config.storage.data_dir / "adapt" if config.storage.data_dir else None
        for index, model in enumerate(config.models):
            path = Path(model.file) if model.file is not None else DEFAULT_MODEL
            uploaded = ModelUpdater.stored_model(models_folder, model.name)
            if uploaded is not None:
                # An update accepted in an earlier run outlives the restart; rollback undoes it.
                log.info("using uploaded model model=%s file=%s instead of %s", model.name, uploaded, path)
                path = uploaded
            try:
                detector = Detector(path)
            except ModelContractError as exc:
                raise ModelContractError(f"models[{index}].file: {exc}") from None
            slowest = max(config.device(self.tags[t][0]).poll_interval for t in model.input_tags)
            runner = ModelRunner(model, detector, self.store,
                                 default_max_age=2.5 * max(slowest, detector.contract.period),
                                 speed=speed, state_dir=adapt_folder)
            self.runners[model.name] = runner
            if model.writeback is not None:
                writer = self.adapters[model.writeback.device]
                if not isinstance(writer, Writer):
                    raise ConfigError([f"models[{index}].writeback.device: "
                                       f"{model.writeback.device!r} does not take write-back"])
                writebacks[model.name] = ModelWriteback(
                    model.name, model.writeback, writer,
                    mode=config.writeback.mode, min_interval=config.writeback.min_interval)
        # Each ring's contributions block sized up front from the model's inputs: the whole
        # history is resident from the start instead of growing at the first Score.
        self.scores = ScoreStore(self.runners, config.api.score_history,
                                 {name: r.detector.contract.inputs for name, r in self.runners.items()})
        self.writeback = WritebackSink(writebacks)
        self.storage: EventStore | None = None
        if config.storage.data_dir is not None:
            # Here, not at the top: sqlite3 costs ~1 MB of RSS that a bridge without a
            # data_dir never needs.
            from bridge.runtime.storage import EventStore

            self.storage = EventStore(config.storage.data_dir, config.storage.retention_days)
        self.events: list[dict[str, Any]] = []
        self._anomalous: dict[str, bool] = dict.fromkeys(self.runners, False)
        self._jobs: set[asyncio.Task[Any]] = set()
        # The poll in flight per device, and the devices in an overrun episode (a poll still
        # running when the next was due), so each episode logs one line, not one per skip.
        self._polls: dict[str, asyncio.Future[None]] = {}  # a task, or a line's future per device
        self._stopping = False
        self._overrunning: set[str] = set()
        # Models scored right after their input devices' polls (see _schedule_scoring): model
        # -> its devices; and the scoring in flight per model.
        self._driven: dict[str, list[str]] = {}
        self._scoring: dict[str, asyncio.Task[None]] = {}
        self._pushed: set[str] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self.view = _View(self)
        # Write-back first: it is the sink that can hold a line's safety state, and at stop it
        # leaves fail-safe values while the adapters are still open.
        # A fleet model installs or stages through the updater built just below (late-bound
        # callbacks).
        self.sinks: list[Sink] = [self.writeback, *build_sinks(
            config, self.view, lambda name, data, source: self.updater.install(name, data, source),
            stage=self._stage_for_fleet, shadow=self._shadow_rollout, events=lambda: self.events,
            windows=self._watch_windows)]
        # Last: after a restart the updater may resume a shadow or finish its promotion, which
        # swaps a runner and records an event.
        self.updater = ModelUpdater(self.store, self.runners, self.replace_runner,
                                    folder=models_folder, speed=speed, on_event=self.record_event)

    @property
    def writebacks(self) -> Mapping[str, ModelWriteback]:
        return self.writeback.models

    def sink(self, kind: type[SinkT]) -> SinkT | None:
        """The configured sink of this class, if any (the API mounts /metrics from it)."""
        return next((s for s in self.sinks if isinstance(s, kind)), None)

    @staticmethod
    def _watchdog_budget(device: Any, adapter: Adapter) -> float:
        """How long one poll may take before the watchdog calls the adapter stuck: every
        request of the poll timing out on every retry (or, for a session protocol, a connect
        bounded at two timeouts plus the read), with a margin, and never less than five poll
        intervals."""
        requests = max(1, adapter.requests_per_poll)
        attempts = getattr(device, "retries", 0) + 1  # OPC UA devices have no retries key
        timeout = device.timeout
        worst = max(requests * attempts * timeout, 3 * timeout)
        return float(max(5 * device.poll_interval, worst + 2.0))

    # -- jobs -------------------------------------------------------------------------------

    def _track_job(self) -> None:
        # Jobs in flight, so stop() can let them finish instead of cancelling them mid-request.
        # For the scheduler's own tasks; the tasks the bridge starts are tracked by _start_job.
        task = asyncio.current_task()
        if task is not None:
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def poll_group(self, lines: list[list[str]], names: frozenset[str]) -> None:
        """The scheduler's poll job for one interval: start the due polls of every line (the
        devices sharing a connection, see ``_lines``), then the scoring of the models that
        wait for those polls."""
        for line in lines:
            self._poll_line(line)
        for model, devices in self._driven.items():
            if devices[0] not in names:
                continue
            running = self._scoring.get(model)
            if running is not None and not running.done():
                continue  # the previous cycle's scoring is still waiting or running: skip one
            polls = [self._polls[d] for d in devices if d in self._polls]
            self._scoring[model] = self._start_job(self._score_after(model, polls), f"score:{model}")

    def _poll_line(self, line: list[str]) -> None:
        """Start the polls of one line's due devices: one task walks them in turn, as a Modbus
        master does. Devices on one connection are served one request at a time anyway; one
        task per device made every request a lock hand-off between tasks and interleaved the
        devices' requests, so each device's values were spread over the whole line's cycle.
        Each device gets a future that completes when its own poll is done (the model
        scoring waits for those, not for the whole line)."""
        due = [name for name in line if self._due(name)]
        if len(due) == 1:
            self._polls[due[0]] = self._start_job(self._poll_logged(due[0]), f"poll:{due[0]}")
        elif due:
            loop = asyncio.get_running_loop()
            done = {name: loop.create_future() for name in due}
            self._polls.update(done)
            self._start_job(self._walk_line(done), f"poll:{due[0]}+{len(due) - 1}")

    async def _walk_line(self, done: dict[str, asyncio.Future[None]]) -> None:
        try:
            for name, finished in done.items():
                if self._stopping:
                    break  # stop() waits for the jobs: not for the rest of the line
                await self._poll_logged(name)
                finished.set_result(None)
        finally:
            for finished in done.values():
                if not finished.done():
                    finished.cancel()  # waiters (the scoring) see it done, never hang

    async def _score_after(self, model: str, polls: list[asyncio.Future[None]]) -> None:
        # Bounded: a hung device must not hold the model past its next cycle (its rows go stale
        # and say so).
        if polls:
            await asyncio.wait(polls, timeout=0.9 * self.runners[model].period / self.speed)
        await self._score(model)

    def _start_job(self, job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task tracked from its creation, so a stop() right after sees it too."""
        task = asyncio.create_task(job, name=name)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return task

    async def _poll_logged(self, name: str) -> None:
        try:
            await self.poll_device(name)
        except Exception:  # a bug in one device's poll must not starve its line's neighbours
            log.exception("poll failed device=%s", name)

    def _due(self, name: str) -> bool:
        """Whether ``name`` is polled this cycle: not while its previous poll still runs (an
        overrun: counted, logged once per episode). Never blocks, so the scheduler never skips
        the job itself (APScheduler would log a warning per skip)."""
        status = self.adapters[name].status
        self._update_stale(name)
        running = self._polls.get(name)
        if running is not None and not running.done():
            status.overruns += 1
            if name not in self._overrunning:
                self._overrunning.add(name)
                log.warning("poll overrun device=%s: the previous poll is still running at the "
                            "next due time; polls are skipped (counted as overruns) until it ends",
                            name)
            return False
        if name in self._overrunning:
            self._overrunning.discard(name)
            log.info("poll overrun ended device=%s overruns=%d", name, status.overruns)
        return True

    def _update_stale(self, name: str) -> None:
        """A device is stale when no poll succeeded within ``stale_after`` (default three poll
        intervals); with ``stale_after`` set, its tags' latest values turn bad ("stale") too,
        which matters when polls hang and no reading at all arrives."""
        device = self.config.device(name)
        status = self.adapters[name].status
        configured: float | None = getattr(device, "stale_after", None)
        window = (configured if configured is not None else 3 * device.poll_interval) / self.speed
        last = status.last_success if status.last_success is not None else self.started_at
        was, status.stale = status.stale, time.time() - last > window
        if status.stale and not was and configured is not None:
            reason = f"stale: no fresh reading for {configured:g} s"
            now = time.time()
            self.store.put_many([bad(tag.name, reason, received_time=now)
                                 for tag in device.tags if self._is_fresh_good(tag.name)])

    def _is_fresh_good(self, tag: str) -> bool:
        latest = self.store.latest(tag)
        return latest is not None and latest.quality is Quality.GOOD

    async def poll_device(self, name: str) -> None:
        adapter = self.adapters[name]
        budget = self._poll_budget[name]
        started = time.perf_counter()
        readings: list[Part]
        try:
            # A timeout scope, not wait_for: no extra task per poll.
            async with asyncio.timeout(budget):
                readings = await adapter.poll()
        except TimeoutError:
            # The adapter's own timeouts should have ended the poll long before this: it is
            # stuck (a library bug, a half-open socket). Restart it rather than stall forever.
            readings = list(await self._restart_stuck(name, budget))
        self.store.put_many(readings)
        elapsed = time.perf_counter() - started
        for sink in self.sinks:
            try:
                sink.on_poll(name, elapsed)
            except Exception:  # one failing sink never stops polling or the others
                log.exception("sink failed sink=%s device=%s", sink.name, name)

    async def _restart_stuck(self, name: str, budget: float) -> list[Reading]:
        adapter = self.adapters[name]
        reason = f"watchdog: poll did not finish in {budget:.1f} s, adapter restarted"
        adapter.status.record_error("watchdog", reason)
        log.error("device=%s %s", name, reason)
        for step in (adapter.close, adapter.connect):
            try:
                await asyncio.wait_for(step(), budget)
            except Exception as exc:  # the next poll retries; this one is already reported
                log.debug("device=%s watchdog %s failed: %s", name, step.__name__, exc)
        now = time.time()
        return [bad(tag.name, reason, received_time=now) for tag in self.config.device(name).tags]

    async def score_model(self, name: str) -> Score:
        """The scheduler's scoring job (a model with its own interval job)."""
        self._track_job()
        return await self._score(name)

    async def _score(self, name: str) -> Score:
        runner = self.runners[name]
        window = runner.windows.sample()
        score = runner.score_window(window)
        self.scores.put(score)
        if self.storage is not None:
            self.storage.add_score(score)
        self._track_events(score)
        for sink in self.sinks:
            try:
                sink.on_score(score)
            except Exception:  # one failing sink never stops scoring or the others
                log.exception("sink failed sink=%s model=%s", sink.name, name)
        # A shadow scores the same window only now, after the active Score reached the sinks,
        # so its inference never delays them; its own Score goes nowhere but the comparison.
        await self.updater.observe(name, window, score)
        return score

    def _track_events(self, score: Score) -> None:
        was = self._anomalous[score.model]
        kind = None
        if score.anomaly and not was:
            kind = "anomaly-start"
            log.warning("anomaly started model=%s score=%.3f threshold=%.3f",
                        score.model, score.score or 0.0, score.threshold)
        elif was and score.window_valid and not score.anomaly:
            kind = "anomaly-end"
            log.info("anomaly cleared model=%s score=%.3f", score.model, score.score or 0.0)
        if score.window_valid:
            self._anomalous[score.model] = score.anomaly
        if kind is None:
            return
        self.record_event({"model": score.model, "time": score.time, "kind": kind,
                           "score": score.score, "threshold": score.threshold,
                           "detail": {"contributions": score.contributions or {}}})

    def _watch_windows(self, observer: WindowObserver) -> None:
        self.updater.add_window_observer(observer)  # the fleet's live statistics

    async def _stage_for_fleet(self, name: str, data: bytes, source: str,
                               rule: ShadowRuleConfig | None) -> None:
        try:
            await self.updater.stage(name, data, source, rule)
        except RolloutConflict as exc:
            # The fleet sink refuses it with the reason, as a model that does not validate.
            raise ModelContractError(str(exc)) from None

    def _shadow_rollout(self, name: str) -> dict[str, Any] | None:
        """The current or last shadow of ``name`` as a rollout result carries it."""
        shadow = self.updater.shadows.get(name)
        return None if shadow is None else dict(shadow.result("fleet")["detail"]["rollout"])

    def record_event(self, event: dict[str, Any]) -> None:
        """Keep an event (anomaly start/end, a rollout result) for the API and a publisher."""
        self.events.append(event)
        del self.events[:-1000]  # bounded; the durable record is self.storage
        if self.storage is not None:
            self.storage.add_event(event)

    async def flush_storage(self) -> None:
        if self.storage is not None:
            try:
                await asyncio.to_thread(self.storage.flush)
            except Exception:  # a full disk must not stop polling or scoring
                log.exception("storage flush failed path=%s", self.storage.path)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(adapter.connect() for adapter in self.adapters.values()),
                             return_exceptions=True)
        pushed = await self._subscribe_all()
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        now = datetime.now(UTC)
        groups: dict[float, list[str]] = {}
        for device in self.config.devices:
            if device.name not in pushed:
                groups.setdefault(device.poll_interval, []).append(device.name)
        # One job per poll interval, not per device: each job run costs the scheduler ~0.25 ms
        # and wakes the process, and one wake-up that starts every due poll at once measured
        # half the CPU of the same polls spread over the interval (bench/footprint.py).
        for interval, names in groups.items():
            scheduler.add_job(self.poll_group, "interval", args=[self._lines(names), frozenset(names)],
                              seconds=interval / self.speed,
                              id=f"poll:{interval:g}s", max_instances=1, coalesce=True,
                              next_run_time=now, misfire_grace_time=None)
        self._pushed = pushed
        for runner in self.runners.values():
            self._schedule_scoring(scheduler, runner)
        if self.storage is not None:
            scheduler.add_job(self.flush_storage, "interval", seconds=self.config.storage.flush_interval,
                              id="storage:flush", max_instances=1, coalesce=True)
        scheduler.start()
        self._scheduler = scheduler
        try:
            for sink in self.sinks:
                await sink.start(self.view)
        except BaseException:
            # A sink that cannot start (a port taken since the pre-flight check) must not leave
            # a half-started bridge: stop what runs, leave the fail-safe values, then report.
            log.error("a sink failed to start: stopping the bridge")
            await self.stop()
            raise
        # Everything built so far (config, plans, models, the app) lives as long as the bridge:
        # keep it out of the collector's generations, so full collections stay short at
        # hundreds of devices (measured: ~130 ms -> ~45 ms per full collection at 100 devices).
        gc.freeze()
        log.info("bridge started devices=%d tags=%d models=%d writeback=%s",
                 len(self.adapters), len(self.store), len(self.runners), self.config.writeback.mode)

    def _lines(self, names: list[str]) -> list[list[str]]:
        """``names`` grouped by the connection they share (a Modbus line: one TCP server or
        serial port), in config order; every other device is a line of its own."""
        lines: dict[str, list[str]] = {}
        for name in names:
            device = self.config.device(name)
            key = device.line if isinstance(device, ModbusDeviceConfig) else f"device:{name}"
            lines.setdefault(key, []).append(name)
        return list(lines.values())

    def _schedule_scoring(self, scheduler: AsyncIOScheduler, runner: ModelRunner) -> None:
        """A model whose inputs all come from polled devices with the model's own period is
        scored right after those devices' polls (``poll_group``): its row holds this cycle's
        values however long the line takes, and no scheduler job of its own wakes the process.
        Any other model (pushed inputs, other periods) samples on its own interval job."""
        devices = sorted({self.tags[tag][0] for tag in runner.tags})
        intervals = {self.config.device(d).poll_interval for d in devices}
        if intervals == {runner.period} and not self._pushed.intersection(devices):
            self._driven[runner.name] = devices
            return
        self._driven.pop(runner.name, None)
        # Sample just after the input devices' polls, not at the same instant: a window row
        # taken before its poll would hold the previous poll's value, a whole poll interval
        # late. The first run waits a full period, so the first row has data.
        margin = min(0.05, 0.25 * min(intervals))
        first = datetime.now(UTC) + timedelta(seconds=(runner.period + margin) / self.speed)
        scheduler.add_job(self.score_model, "interval", args=[runner.name],
                          seconds=runner.period / self.speed, id=f"score:{runner.name}",
                          max_instances=1, coalesce=True, next_run_time=first,
                          misfire_grace_time=None, replace_existing=True)

    def replace_runner(self, name: str, runner: ModelRunner) -> None:
        """Swap a model's runner. Called in the event loop, so it lands between two cycles."""
        old = self.runners[name]
        self.runners[name] = runner
        # A new period, or inputs from other devices, may change how the model is scheduled.
        if self._scheduler is not None and (runner.period != old.period or runner.tags != old.tags):
            if self._scheduler.get_job(f"score:{name}") is not None:
                self._scheduler.remove_job(f"score:{name}")
            self._schedule_scoring(self._scheduler, runner)

    async def _subscribe_all(self) -> set[str]:
        """Devices whose adapter pushes readings (``Adapter.subscribe`` returned True, e.g. OPC
        UA subscriptions) are not polled."""
        pushed: set[str] = set()
        for name, adapter in self.adapters.items():
            if await adapter.subscribe(self.store.put_many):
                pushed.add(name)
        return pushed

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop in one order: scheduler (running jobs finish), then sinks (write-back leaves
        fail-safe values in the PLC), then adapters; then flush and close storage.

        Each step is bounded (jobs and adapters ``timeout / 3``, sinks ``2 * timeout / 3``): a
        device that does not answer cannot hold up the shutdown.
        """
        started = self._scheduler is not None
        self._stopping = True
        if self._scheduler is not None:
            self._scheduler.pause()  # no new jobs; the running ones finish (bounded)
            running = [t for t in self._jobs if t is not asyncio.current_task()]
            if running:
                await asyncio.wait(running, timeout=timeout / 3)
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        await self.updater.save_shadows()  # a running shadow resumes where it was
        for runner in self.runners.values():
            runner.save_state()  # what online adaptation learnt survives the restart
        if started:
            # Write-back waits for the writes in flight, then writes the fail-safe values: it
            # gets two thirds, as both had a third each before write-back became a sink.
            self.writeback.stop_timeout = 2 * timeout / 3
            await self._bounded("sinks", [sink.stop() for sink in self.sinks], 2 * timeout / 3)
        await self._bounded("adapters", [adapter.close() for adapter in self.adapters.values()],
                            timeout / 3)
        if self.storage is not None:
            self.storage.close()
        log.info("bridge stopped")

    @staticmethod
    async def _bounded(what: str, steps: list[Any], timeout: float) -> None:
        tasks = [asyncio.ensure_future(step) for step in steps]
        if not tasks:
            return
        done, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.error("%d of %d %s did not stop within %.1f s", len(late), len(tasks), what, timeout)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("stopping %s failed: %s", what, task.exception())

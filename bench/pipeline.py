"""Pipeline throughput: tag values/s through TagStore → WindowBuilder → Detector on one core.

An in-process feeder replaces the devices so the protocol is not the limit. One cycle = T
fresh values (a Python list, as an adapter's decoder produces them) → one ``Columns`` (what
the Modbus adapter hands the runtime for a reply) → ``TagStore.put_many`` →
``ModelRunner.step`` (sample the model's 5 input tags into its window, score with the default
model). The baseline does the same work the vectorised way: latest value, timestamp
and a history ring per tag in numpy arrays, the same window and staleness check, and a bare
``InferenceSession.run``. The process is pinned to one CPU for the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from bench._common import Context, Result, Section
from bridge.config import DEFAULT_MODEL, ModelConfig
from bridge.core.tags import FLOAT, Columns, TagStore
from bridge.scoring.detector import INPUT_NAME, Detector
from bridge.scoring.runner import ModelRunner

NAME = "pipeline"
TITLE = "Pipeline throughput"
HISTORY = 600  # the bridge's default history_size


def _bridge_cycle(tags: int) -> Callable[[list[float], float], object]:
    detector = Detector(DEFAULT_MODEL)
    names = [f"t{i}" for i in range(tags)]
    store = TagStore(names, HISTORY)
    features = detector.contract.inputs
    config = ModelConfig(name="pump", inputs={f: names[i] for i, f in enumerate(features)})
    runner = ModelRunner(config, detector, store, default_max_age=1e9)

    columns = tuple(names)
    kinds = np.full(tags, FLOAT, dtype=np.uint8)

    def cycle(values: list[float], now: float) -> object:
        store.put_many([Columns(columns, values, kinds, now)])
        return runner.step(now)
    return cycle


def _numpy_cycle(tags: int) -> Callable[[list[float], float], object]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(DEFAULT_MODEL), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    contract = Detector(DEFAULT_MODEL).contract
    length, width = contract.window_length, len(contract.inputs)
    latest = np.zeros(tags)
    stamps = np.zeros(tags)
    history = np.zeros((tags, HISTORY))
    inputs = np.arange(width)
    window = np.zeros((1, length, width), dtype=np.float32)
    state = {"k": 0}

    def cycle(values: list[float], now: float) -> object:
        arr = np.asarray(values)
        latest[:] = arr
        stamps[:] = now
        history[:, state["k"] % HISTORY] = arr
        state["k"] += 1
        window[0, :-1] = window[0, 1:]
        window[0, -1] = latest[inputs]
        if (now - stamps[inputs] > 1e9).any():
            return None
        return session.run(["score"], {INPUT_NAME: window})
    return cycle


def _rate(cycle: Callable[[list[float], float], object], tags: int, seconds: float) -> float:
    rng = np.random.default_rng(1)
    batches = [rng.normal(5.0, 1.0, tags).tolist() for _ in range(64)]
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for values in batches[:8]:
            cycle(values, time.time())
            done += tags
        batches.append(batches.pop(0))
    return done / (time.perf_counter() - started)


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    seconds = ctx.pick(0.7, 2.5)
    rounds = ctx.pick(2, 3)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        for tags in (100, 1000):
            bridge, baseline = _bridge_cycle(tags), _numpy_cycle(tags)
            best_bridge = best_numpy = 0.0
            for _ in range(rounds):
                best_numpy = max(best_numpy, _rate(baseline, tags, seconds))
                best_bridge = max(best_bridge, _rate(bridge, tags, seconds))
            section.results.append(Result(
                f"values/s, {tags} tags per scoring", round(best_bridge), "values/s", round(best_numpy),
                "numpy arrays + bare InferenceSession.run",
                params={"tags_per_cycle": tags, "scorings_per_cycle": 1, "history_size": HISTORY}))
    finally:
        os.sched_setaffinity(0, affinity)
    section.notes.append("Target: ≥ 10,000 values/s through the bridge. For scale: ThingsBoard "
                         "gateway users report ~110 events/s; eKuiper publishes 12k messages/s on "
                         "a Raspberry Pi 3B+.")
    return section

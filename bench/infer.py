"""Inference overhead: ``Detector.score`` vs a bare ``InferenceSession.run`` on the same array.

Both sessions load the same file with the same options (one intra-op and one inter-op thread,
CPU provider), so the difference is the Detector's own work: shape/dtype check, batching the
window, unpacking score and contributions. Calls alternate in blocks so drift hits both.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench._common import Context, Result, Section, percentile
from bridge.config import DEFAULT_MODEL
from bridge.core.errors import ModelContractError
from bridge.scoring.detector import INPUT_NAME, Detector

NAME = "inference"
TITLE = "Inference overhead"
BLOCK = 200


def _measure(path: Path, calls: int) -> tuple[Detector, list[float], list[float]]:
    detector = Detector(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    contract = detector.contract
    rng = np.random.default_rng(0)
    window = rng.normal(size=(contract.window_length, len(contract.inputs))).astype(np.float32)
    batch = window[np.newaxis]
    outputs = list(contract.outputs)
    bare: list[float] = []
    wrapped: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(50):  # warm up both: first runs allocate
        detector.score(window)
        session.run(outputs, {INPUT_NAME: batch})
    for _ in range(max(1, calls // BLOCK)):
        for _ in range(BLOCK):
            t0 = clock()
            session.run(outputs, {INPUT_NAME: batch})
            bare.append((clock() - t0) / 1000)
        for _ in range(BLOCK):
            t0 = clock()
            detector.score(window)
            wrapped.append((clock() - t0) / 1000)
    return detector, bare, wrapped


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    calls = ctx.pick(4_000, 40_000, smoke=400)
    # Every shipped model that loads, so new model kinds are measured as they arrive.
    paths = [DEFAULT_MODEL, *sorted(p for p in DEFAULT_MODEL.parent.glob("*.onnx") if p != DEFAULT_MODEL)]
    for path in paths:
        try:
            detector, bare, wrapped = _measure(path, calls)
        except ModelContractError as exc:
            section.notes.append(f"{path.name} not measured: {exc}")
            continue
        contract = detector.contract
        params = {"model": path.name, "kind": contract.kind,
                  "window": f"{contract.window_length}×{len(contract.inputs)}", "calls": len(bare)}
        for q in (50, 99):
            section.results.append(Result(
                f"{path.stem} ({contract.kind}) p{q}", round(percentile(wrapped, q), 2), "µs",
                round(percentile(bare, q), 2), "bare InferenceSession.run", higher_is_better=False,
                params=params))
    if len(paths) == 1:
        section.notes.append("Only one model kind ships today (pump_pca); every `models/*.onnx` is "
                             "measured, so other kinds (e.g. IsolationForest) appear when they ship.")
    return section

"""The quantised-level rule of the dynamic front end (issue 12, design round 2): a reading whose
step is wider than its training sd keeps its level feature although its block means jump."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.ml.dataset import load_csv
from bridge.ml.evaluate import evaluate_table
from bridge.ml.features import QUANTUM_TOLERANCE, drift, level_stable, quantised, quantum
from bridge.ml.options import DYNAMIC_RECIPE
from bridge.ml.train import TrainOptions, train
from bridge.scoring.detector import Detector
from tests.test_train_evaluate import T0, write_csv


def test_quantum_by_hand() -> None:
    # Steps of 1 with jitter of a few thousandths inside a step (SKAB's flow reads like this).
    x = np.array([10.0, 10.002, 11.0, 11.001, 12.0, 10.0, 11.0, 12.0])
    # Distinct values 10, 10.002, 11, 11.001, 12: gaps 0.002, 0.998, 0.001, 0.999; the jitter gaps
    # are under QUANTUM_TOLERANCE sd (0.05 x ~0.8), so the step is the median of 0.998 and 0.999.
    assert QUANTUM_TOLERANCE * x.std() > 0.002
    assert quantum(x) == pytest.approx(0.9985)
    assert quantum(np.full(5, 3.0)) == 0.0  # one value: no step
    # Evenly spaced values: every gap is a step (the tolerance is relative to the sd).
    assert quantum(np.array([0.0, 0.001, 0.002])) == pytest.approx(0.001)


def test_continuous_reading_is_not_quantised() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, 400)
    assert quantum(x) < 0.3 * x.std()
    rows = np.column_stack([x, np.round(rng.normal(32.0, 0.4, 400))])  # second: 1-unit steps, sd ~0.4
    np.testing.assert_array_equal(quantised(rows), [False, True])


def test_quantised_input_keeps_its_level_a_warming_one_does_not() -> None:
    rng = np.random.default_rng(1)
    n = 400
    # A reading on 1-unit steps that sits on 32 and dithers to 31 for a stretch in the second block
    # and to 33 in the fourth: its block means jump, which the drift statistic reads as drift.
    flow = np.full(n, 32.0)
    flow[120:160] = 31.0
    flow[330:370] = 33.0
    warming = rng.normal(0, 1, n) + np.linspace(0, 6, n)
    steady = rng.normal(0, 1, n)
    rows = np.column_stack([flow, warming, steady])
    d = drift(rows)
    assert d[0] > 0.5 and d[1] > 3 and d[2] < 0.5
    np.testing.assert_array_equal(quantised(rows), [True, False, False])
    assert level_stable(rows) == (0, 2)
    # Without the step rule the flow's level would go: the block-mean range by hand.
    blocks = np.array_split(flow, 4)
    within = np.sqrt(np.mean([b.var() for b in blocks]))
    assert d[0] == pytest.approx(np.ptp([b.mean() for b in blocks]) / within)


def _quantised_table(path: Path, rows: int, labels: bool = True) -> Path:
    rng = np.random.default_rng(4)
    base = 30 + rng.normal(0, 0.3, rows)
    flow = np.round(base + np.repeat(rng.normal(0, 0.4, rows // 40 + 1), 40)[:rows])  # 1-unit steps
    cols = {"flow": list(flow), "pressure": list(0.1 * base + rng.normal(0, 0.05, rows)),
            "current": list(0.03 * base + rng.normal(0, 0.02, rows))}
    return write_csv(path, [T0 + i for i in range(rows)], cols, labels=[0] * rows if labels else None)


def test_trained_model_keeps_the_quantised_level_and_says_so(tmp_path: Path) -> None:
    table = load_csv(_quantised_table(tmp_path / "q.csv", 400))
    opts = TrainOptions(kind="pca", train_rows=400, **DYNAMIC_RECIPE)  # type: ignore[arg-type]
    result = train(table, tmp_path / "m.onnx", opts)
    assert "flow" in result.contract.training["level_inputs"]
    values = table.select(("flow",))[:, 0]
    assert quantum(values) == pytest.approx(1.0)
    card = result.card.read_text()
    assert "quantised in steps wider than its training sd" in card


def test_scores_up_to_row_k_do_not_see_later_rows_with_a_quantised_level(tmp_path: Path) -> None:
    # The causality check of tests/test_detect_features.py on a model that keeps a quantised level.
    data = _quantised_table(tmp_path / "q.csv", 600)
    model = tmp_path / "m.onnx"
    result = train(load_csv(data), model, TrainOptions(kind="pca", train_rows=400, **DYNAMIC_RECIPE))  # type: ignore[arg-type]
    assert "flow" in result.contract.training["level_inputs"]
    detector = Detector(model)
    table = load_csv(data)
    rng = np.random.default_rng(5)
    k = 450
    cols = {c: list(table.select((c,))[:, 0]) for c in table.columns}
    for c in cols:
        cols[c][k + 1:] = list(rng.normal(0, 50, len(cols[c]) - k - 1))  # noise after row k
    noisy = write_csv(tmp_path / "noisy.csv", [T0 + i for i in range(600)], cols, labels=[0] * 600)
    s_clean = evaluate_table(detector, table).scores
    s_noisy = evaluate_table(detector, load_csv(noisy)).scores
    np.testing.assert_array_equal(s_clean[:k + 1], s_noisy[:k + 1])
    assert not np.allclose(s_clean[k + 1:], s_noisy[k + 1:])

"""The pump_pca recipe is deterministic and produces a model the Detector accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from adapters.sim.plant import SIGNALS
from bridge.scoring.detector import Detector
from models.recipes import pump_pca


def test_same_arguments_give_byte_identical_models(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    pump_pca.build(a, train_seconds=300)
    pump_pca.build(b, train_seconds=300)
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    c = tmp_path / "c.onnx"
    pump_pca.build(c, train_seconds=300, seed=77)
    assert c.read_bytes() != a.read_bytes()


def test_built_model_matches_the_numpy_reference(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _, fitted = pump_pca.build(path, train_seconds=300)
    det = Detector(path)
    assert det.contract.inputs == SIGNALS and det.contract.training["rows"] == 300 * pump_pca.TRAIN_RUNS
    windows = pump_pca.windows_of(pump_pca.normal_data(9, 120)).astype(np.float32)
    spe, t2, rough, flat = pump_pca.part_values(fitted, windows.astype(np.float64))
    expected = np.maximum.reduce(
        [spe / fitted.lim_spe, t2 / fitted.lim_t2, rough / fitted.lim_rough, flat / fitted.lim_flat]
    )
    np.testing.assert_allclose(det.score_batch(windows), expected, rtol=2e-3, atol=1e-4)


def test_cli_writes_model_without_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    assert pump_pca.main(["--out", str(out), "--train-seconds", "300", "--no-eval"]) == 0
    assert Detector(out).threshold == 1.0
    assert not out.with_suffix(".md").exists()

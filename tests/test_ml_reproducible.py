"""Reproducible models (issue 12, item 5): same data, seed and recipe give byte-identical ONNX,
and the ae fit stops by a fixed rule that involves no library's convergence test."""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from bridge.ml.dataset import load_csv
from bridge.ml.heads import ae
from bridge.ml.train import KINDS, TrainOptions, train
from tests.test_train_evaluate import normal_csv


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_train_twice_gives_the_same_sha256(tmp_path: Path, kind: str) -> None:
    data = normal_csv(tmp_path / "n.csv")
    # Two loads of the file, two trainings: nothing may carry over between them.
    a = train(load_csv(data), tmp_path / "a.onnx", TrainOptions(kind=kind, seed=7))
    b = train(load_csv(data), tmp_path / "b.onnx", TrainOptions(kind=kind, seed=7))
    assert _sha(a.path) == _sha(b.path)
    assert a.card.read_text().replace("a.onnx", "b.onnx") == b.card.read_text()


def test_ae_initial_weights_come_from_the_raw_pcg64_stream() -> None:
    # PCG64's raw output is what numpy promises to keep across versions; these are its first
    # three draws for seed 0, mapped to [0, 1) by their top 53 bits.
    assert np.random.PCG64(0).random_raw(3).tolist() == [
        11749869230777074271, 4976686463289251617, 755828109848996024]
    np.testing.assert_array_equal(ae._uniform(np.random.PCG64(0), (1, 3)),
                                  [[(v >> 11) * 2.0 ** -53 for v in (11749869230777074271,
                                                                    4976686463289251617,
                                                                    755828109848996024)]])


def test_ae_fit_needs_no_scikit_learn_and_stops_after_a_fixed_number_of_epochs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # any sklearn import would fail
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 1))
    a = np.hstack([z, 0.5 * z, -z]) + rng.normal(0, 0.1, (200, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no convergence warning to silence: the stop is the design
        ws, _, loss = ae.fit(a, seed=1)
        _, _, loss_short = ae.fit(a, seed=1, epochs=ae.EPOCHS // 4)
    assert [w.shape for w in ws] == [(3, 6), (6, 1), (1, 6), (6, 3)]
    # The bottleneck of 1 learns the one latent factor: well below the 0.5 of predicting zero.
    assert loss < 0.05 and loss < loss_short
    again, _, _ = ae.fit(a, seed=1)
    for w, w2 in zip(ws, again, strict=True):
        np.testing.assert_array_equal(w, w2)
    other, _, _ = ae.fit(a, seed=2)
    assert not np.array_equal(ws[0], other[0])

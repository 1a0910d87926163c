"""Federated PCA baseline (issue 3, item 7): merged site statistics == centralized training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bridge.cli import main
from bridge.ml.dataset import load_csv
from bridge.ml.heads import pca
from bridge.ml.heads.graph import fit_front
from bridge.ml.replay import replay
from bridge.scoring.detector import Detector
from tests.test_train_evaluate import T0, write_csv

INPUTS = ("flow", "pressure", "current")


def site_csv(path: Path, start: int, rows: int, seed: int, offset: float) -> Path:
    """One site's normal operation; sites differ in level so the merge's mean shift matters."""
    rng = np.random.default_rng(seed)
    flow = 1000 + offset + np.cumsum(rng.normal(0, 0.05, rows)) + rng.normal(0, 0.3, rows)
    cols = {"flow": list(flow), "pressure": list(0.1 * flow + rng.normal(0, 0.05, rows)),
            "current": list(0.03 * flow + rng.normal(0, 0.02, rows))}
    return write_csv(path, [T0 + start + i for i in range(rows)], cols)


def _inits(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_merged_statistics_equal_centralized_training(tmp_path: Path) -> None:
    parts = [site_csv(tmp_path / f"site{i}.csv", 1000 * i, 150 + 40 * i, seed=i, offset=2.0 * i)
             for i in range(3)]
    stats = []
    for i, part in enumerate(parts):
        out = tmp_path / f"s{i}.json"
        assert main(["train", str(part), "--kind", "pca", "--export-stats", str(out)]) == 0
        stats.append(out)
        assert "values" not in out.read_text()  # statistics only
    model = tmp_path / "fed.onnx"
    assert main(["train", "--kind", "pca", "--from-stats", *map(str, stats), "--out", str(model)]) == 0
    fed = Detector(model)
    assert fed.contract.inputs == INPUTS and np.isfinite(fed.threshold) and fed.threshold > 0

    # Centralized: the pooled good rows and valid windows, through the same code `train` uses.
    tables = [load_csv(p) for p in parts]
    reps = [replay(t, INPUTS, length=5, period=1.0) for t in tables]
    rows = np.concatenate([t.select(INPUTS) for t in tables])
    windows = np.concatenate([r.windows[r.valid] for r in reps]).astype(np.float64)
    front_c, a = fit_front(rows, windows)
    cov_c = a.T @ a / len(a)
    merged_rows = pca.Moments(0, np.zeros(3), np.zeros((3, 3)))
    for s in stats:
        merged_rows = merged_rows.merge(pca.Moments.from_json(json.loads(s.read_text())["rows"], 3))
    np.testing.assert_allclose(merged_rows.mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged_rows.cov, np.cov(rows.T, ddof=0), rtol=1e-9, atol=1e-12)

    inits = _inits(model)
    np.testing.assert_allclose(inits["f_mu"], front_c.mu.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(inits["f_inv_sd"], (1 / front_c.sd).astype(np.float32), rtol=1e-5)
    np.testing.assert_allclose(inits["f_m_mu"], front_c.m_mu.astype(np.float32), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inits["f_inv_m_sd"], (1 / front_c.m_sd).astype(np.float32), rtol=1e-5)
    # Loadings up to sign: compare the eigenvectors' outer products (sign-free).
    cen_val, cen_vec = np.linalg.eigh(cov_c)
    _, fed_cov = pca.front_from_moments(
        merged_rows, _merged(stats, "window_means"))
    fed_val, fed_vec = np.linalg.eigh(fed_cov)
    np.testing.assert_allclose(fed_val, cen_val, rtol=1e-9, atol=1e-12)
    for j in range(3):
        np.testing.assert_allclose(np.outer(fed_vec[:, j], fed_vec[:, j]),
                                   np.outer(cen_vec[:, j], cen_vec[:, j]), atol=1e-8)
    central = pca.head(a, 0)
    cen_inits = {t.name: numpy_helper.to_array(t) for t in central.initializers}
    for name in ("pca_t2_back", "pca_spe_back"):
        np.testing.assert_allclose(inits[name], cen_inits[name], rtol=1e-5, atol=1e-6)

    # Scores of every window: the federated model vs the same graph built centrally.
    from bridge.ml.heads.graph import assemble

    cen_model = tmp_path / "central.onnx"
    cen_model.write_bytes(assemble(front_c, central, fed.contract, "central").SerializeToString())
    scores_f = fed.score_batch(windows.astype(np.float32))
    scores_c = Detector(cen_model).score_batch(windows.astype(np.float32))
    np.testing.assert_allclose(scores_f, scores_c, rtol=1e-4, atol=1e-4)


def _merged(stats: list[Path], key: str) -> pca.Moments:
    out = pca.Moments(0, np.zeros(3), np.zeros((3, 3)))
    for s in stats:
        out = out.merge(pca.Moments.from_json(json.loads(s.read_text())[key], 3))
    return out


def test_chan_merge_is_stable_with_large_offsets() -> None:
    rng = np.random.default_rng(0)
    x = 1e8 + rng.normal(0, 1e-2, (3000, 2))  # naive sum-of-squares loses every digit here
    merged = pca.Moments.of(x[:1000]).merge(pca.Moments.of(x[1000:1700])).merge(pca.Moments.of(x[1700:]))
    np.testing.assert_allclose(merged.cov, np.cov(x.T, ddof=0), rtol=1e-4, atol=1e-9)
    naive = (x.T @ x) / len(x) - np.outer(x.mean(axis=0), x.mean(axis=0))
    assert np.abs(naive - np.cov(x.T, ddof=0)).max() > 1e-3  # what the pairwise update avoids


def test_mismatched_sites_and_wrong_kind_exit_2(tmp_path: Path) -> None:
    a = site_csv(tmp_path / "a.csv", 0, 120, 1, 0.0)
    assert main(["train", str(a), "--kind", "pca", "--export-stats", str(tmp_path / "a.json")]) == 0
    assert main(["train", str(a), "--kind", "pca", "--window", "6",
                 "--export-stats", str(tmp_path / "b.json")]) == 0
    assert main(["train", "--kind", "pca", "--from-stats", str(tmp_path / "a.json"),
                 str(tmp_path / "b.json"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert main(["train", str(a), "--kind", "ae", "--export-stats", str(tmp_path / "c.json")]) == 2
    (tmp_path / "junk.json").write_text("{}", encoding="utf-8")
    assert main(["train", "--kind", "pca", "--from-stats", str(tmp_path / "junk.json"),
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()


def test_analytic_threshold_matches_gaussian_simulation() -> None:
    rng = np.random.default_rng(1)
    k, n_f = 1, 3
    t2 = (rng.standard_normal((200_000, k)) ** 2).sum(axis=1) / k
    spe = (rng.standard_normal((200_000, n_f - k)) ** 2).sum(axis=1) / (n_f - k)
    score = np.maximum(t2, spe)
    cov = np.diag([2.5, 0.3, 0.2])  # Kaiser: k = 1 of 3
    _, median, quantile = pca.analytic_threshold(cov, 0.01, 1.0)
    assert abs(median - np.median(score)) < 0.02
    assert abs(quantile - np.quantile(score, 0.99)) / quantile < 0.03

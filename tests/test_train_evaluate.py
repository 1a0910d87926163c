"""Training recipes, the replay/evaluation path and SKAB metrics (issue 3)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bridge.cli.models import add_commands
from bridge.core.contract import ModelContract
from bridge.core.tags import Quality, Reading, TagStore
from bridge.ml.dataset import DataError, load_csv
from bridge.ml.detection import Counts, count, segments
from bridge.ml.evaluate import evaluate, evaluate_table
from bridge.ml.replay import replay
from bridge.ml.train import KINDS, TrainOptions, train
from bridge.scoring.detector import Detector
from bridge.scoring.windows import WindowBuilder

T0 = datetime(2020, 3, 9, 10, 0, 0, tzinfo=UTC).timestamp()


def write_csv(path: Path, times: list[float], columns: dict[str, list[float]],
              labels: list[int] | None = None, quality: list[str] | None = None) -> Path:
    header = ["datetime", *columns]
    if labels is not None:
        header.append("anomaly")
    if quality is not None:
        header.append("quality")
    lines = [";".join(header)]
    for i, t in enumerate(times):
        cells = [datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")]
        cells += [repr(float(v[i])) for v in columns.values()]
        if labels is not None:
            cells.append(f"{labels[i]:.1f}")
        if quality is not None:
            cells.append(quality[i])
        lines.append(";".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def normal_csv(path: Path, rows: int = 240, seed: int = 1, **kw: list[str]) -> Path:
    """Three correlated signals, like a pump: flow drives pressure and current."""
    rng = np.random.default_rng(seed)
    flow = 30 + np.cumsum(rng.normal(0, 0.05, rows)) + rng.normal(0, 0.3, rows)
    cols = {"flow": list(flow), "pressure": list(0.1 * flow + rng.normal(0, 0.05, rows)),
            "current": list(0.03 * flow + rng.normal(0, 0.02, rows))}
    return write_csv(path, [T0 + i for i in range(rows)], cols, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------- metrics
def test_skab_metrics_by_hand() -> None:
    label = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    pred = np.array([0, 1, 0, 0, 0, 1, 1, 1, 1, 0])
    scored = np.ones(10, dtype=bool)
    c = count(pred, label, scored)
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 2, 1, 4)
    assert c.precision == pytest.approx(0.6) and c.recall == pytest.approx(0.75)
    assert c.f1 == pytest.approx(3 / (3 + 1.5))  # SKAB: TP / (TP + (FP + FN) / 2)
    assert c.far == pytest.approx(100 * 2 / 6) and c.mar == pytest.approx(25.0)
    # Rows without a prediction drop out; totals are summed counts, not averaged ratios.
    scored[:2] = False
    assert count(pred, label, scored) == Counts(3, 1, 1, 3)
    assert (Counts(1, 0, 0, 1) + Counts(0, 1, 1, 0)).f1 == pytest.approx(0.5)
    (seg,) = segments(pred, label, np.ones(10, dtype=bool), T0 + 2.0 * np.arange(10))
    assert (seg.start, seg.end, seg.detected_row, seg.delay_rows, seg.delay_s) == (4, 7, 5, 1, 2.0)
    assert Counts().f1 == 0.0 and Counts().far == 0.0  # zero denominators are reported as 0


def identity_model(path: Path, threshold: float = 0.5) -> Path:
    """score = the single input's last sample: a model whose alarms are known by hand."""
    contract = ModelContract(name="ident", kind="test", inputs=("x",), window_length=2, period=1.0,
                             normalization="none", score="x", threshold=threshold, training={},
                             recipe="test", version="0")
    nodes = [helper.make_node("Slice", ["window", "s1", "s2", "ax"], ["last"]),
             helper.make_node("Reshape", ["last", "flat"], ["score"])]
    inits = [onnx.numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in (("s1", 1), ("s2", 2), ("ax", 1), ("flat", -1))]
    graph = helper.make_graph(nodes, "ident", [helper.make_tensor_value_info("window", TensorProto.FLOAT,
                                                                             ["batch", 2, 1])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, contract.to_metadata())
    path.write_bytes(model.SerializeToString())
    return path


def test_evaluate_known_answer(tmp_path: Path) -> None:
    x = [0.0, 0.0, 0.9, 0.1, 0.0, 0.8, 0.9, 0.2, 0.7, 0.0, 0.0, 0.0]
    y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    times = [T0 + i for i in range(9)] + [T0 + 20, T0 + 21, T0 + 22]  # 11 s gap before row 9
    data = write_csv(tmp_path / "d.csv", times, {"x": x}, labels=y)
    report = evaluate(identity_model(tmp_path / "m.onnx"), [data], test_from=2)
    (f,) = report.files
    # Row 0: warm-up (window of 2 not full); row 1: not a test row; row 9: its window spans the
    # gap (stale sample), row 10 the first valid again. Scored rows 2-8, 10, 11.
    assert f.scored.tolist() == [False, False] + [True] * 7 + [False, True, True]
    # alarms (x >= 0.5) on rows 2, 5, 6, 8; labels on 5-8 -> TP 3 (5,6,8), FP 1 (2), FN 1 (7), TN 4.
    assert f.counts == Counts(3, 1, 1, 4)
    assert report.total.far == pytest.approx(20.0) and report.total.mar == pytest.approx(25.0)
    assert f.segments[0].delay_s == 0.0


# ------------------------------------------------------ same path as live
def live_scores(detector: Detector, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """What the running bridge does: readings arrive, the scheduler samples every period, score()."""
    table = load_csv(path)
    c = detector.contract
    store = TagStore(c.inputs)
    builder = WindowBuilder(store, c.inputs, c.window_length, 2.5 * c.period)
    scores, valid = np.full(len(table), np.nan), np.zeros(len(table), dtype=bool)
    values = table.select(c.inputs)
    now, row = table.times[0], 0
    while row < len(table):
        first = row
        while row < len(table) and table.times[row] <= now + 1e-9:
            q = Quality.GOOD if table.good[row] else Quality.BAD
            store.put_many(Reading(tag, float(v), q, float(table.times[row]))
                           for tag, v in zip(c.inputs, values[row], strict=True))
            row += 1
        window = builder.sample(now)
        if window.valid:
            scores[first:row] = detector.score(window.values)[0]
        valid[first:row] = window.valid
        now += c.period
    return scores, valid


def test_batch_windows_identical_to_live_window_builder(tmp_path: Path) -> None:
    normal = normal_csv(tmp_path / "n.csv")
    model = train(load_csv(normal), tmp_path / "m.onnx", TrainOptions(kind="pca", window=6)).path
    rows = 120
    rng = np.random.default_rng(5)
    times = [T0 + i + (30 if i >= 60 else 0) + (1 if i >= 90 else 0) for i in range(rows)]  # gap, 2 s step
    quality = ["bad" if i == 40 else "good" for i in range(rows)]
    cols = {"flow": list(30 + rng.normal(0, 0.3, rows)), "pressure": list(3 + rng.normal(0, 0.05, rows)),
            "current": list(0.9 + rng.normal(0, 0.02, rows))}
    data = write_csv(tmp_path / "t.csv", times, cols, labels=[0] * rows, quality=quality)
    detector = Detector(model)
    result = evaluate_table(detector, load_csv(data))
    live, live_valid = live_scores(detector, data)
    np.testing.assert_array_equal(result.scored, live_valid)
    np.testing.assert_allclose(result.scores[live_valid], live[live_valid], rtol=1e-6)
    # Causal and row-aligned: where rows are 1 s apart and good, a row's window is itself and
    # the 5 rows before it.
    rep = replay(load_csv(data), detector.contract.inputs, length=6, period=1.0)
    raw = load_csv(data).select(detector.contract.inputs).astype(np.float32)
    for i in (10, 30, 59, 89):
        np.testing.assert_array_equal(rep.windows[i], raw[i - 5:i + 1])
    assert not rep.valid[40:46].any() and rep.valid[46]  # bad row invalidates 6 windows
    assert not rep.valid[60:65].any() and rep.valid[65]  # the gap: a discontinuity
    assert rep.bad_rows == 1


# ----------------------------------------------------------------- recipes
@pytest.mark.parametrize("kind", KINDS)
def test_recipe_trains_deterministic_model_the_detector_accepts(tmp_path: Path, kind: str) -> None:
    table = load_csv(normal_csv(tmp_path / "n.csv"))
    opts = TrainOptions(kind=kind, seed=3)  # each kind's default recipe (options.RECIPES)
    a = train(table, tmp_path / "a.onnx", opts)
    b = train(table, tmp_path / "b.onnx", opts)
    assert a.path.read_bytes() == b.path.read_bytes()
    det = Detector(a.path)
    assert det.contract.inputs == ("flow", "pressure", "current")
    assert det.contract.window_length == opts.window_length and np.isfinite(det.threshold)
    assert det.contract.training["target_far"] == opts.target_far and a.card.is_file()
    rep = replay(table, det.contract.inputs, length=opts.window_length, period=1.0)
    scores = det.score_batch(rep.windows[rep.valid])
    np.testing.assert_array_equal(scores, Detector(b.path).score_batch(rep.windows[rep.valid]))
    # Normal windows mostly stay below the threshold (the calibration target).
    assert (scores >= det.threshold).mean() < 2 * opts.target_far
    # A large flow drop (a closing valve) is flagged.
    faulty = rep.windows[rep.valid][-20:].copy()
    faulty[:, :, 0] -= 10.0
    if kind == "iforest":
        # Isolation Forest saturates beyond the training range (docs/skab.md): it ranks the
        # fault higher but a far-out point is not guaranteed to cross the threshold.
        assert det.score_batch(faulty).mean() > scores.mean()
    else:
        assert (det.score_batch(faulty) >= det.threshold).all()
    if det.has_contrib:
        _, contrib = det.score(faulty[0])
        assert contrib is not None and int(np.argmax(contrib)) == 0  # flow is to blame


def test_seed_changes_iforest(tmp_path: Path) -> None:
    table = load_csv(normal_csv(tmp_path / "n.csv"))
    a = train(table, tmp_path / "a.onnx", TrainOptions(kind="iforest", seed=1))
    b = train(table, tmp_path / "b.onnx", TrainOptions(kind="iforest", seed=2))
    assert a.path.read_bytes() != b.path.read_bytes()


def test_bad_quality_rows_dropped_and_counted(tmp_path: Path) -> None:
    quality = ["bad" if i in (50, 51, 120) else "good" for i in range(240)]
    table = load_csv(normal_csv(tmp_path / "n.csv", quality=quality))
    # The old recipe's 5-sample windows: the counts below are for them.
    result = train(table, tmp_path / "m.onnx", TrainOptions(kind="pca", window=5, persist=1))
    assert result.bad_rows == 3 and result.contract.training["bad_rows_dropped"] == 3
    # 4 warm-up windows + 5 windows touching rows 50-51 + 5 touching row 120.
    assert result.dropped_windows == 4 + 6 + 5
    assert "**3**" in result.card.read_text()


def test_train_refuses_too_little_data(tmp_path: Path) -> None:
    table = load_csv(normal_csv(tmp_path / "n.csv", rows=30))
    with pytest.raises(DataError, match="calibration windows"):
        train(table, tmp_path / "m.onnx", TrainOptions(kind="pca"))


# --------------------------------------------------------------------- CLI
def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    rc: int = args.func(args)
    return rc


def test_cli_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = normal_csv(tmp_path / "n.csv", labels=[0] * 200 + [1] * 40)  # type: ignore[arg-type]
    model = tmp_path / "m.onnx"
    assert run_cli("train", str(data), "--kind", "pca", "--out", str(model), "--train-rows", "200") == 0
    assert run_cli("train", str(data), "--kind", "pca", "--out", str(model)) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert run_cli("evaluate", str(model), str(data), "--test-from", "200", "--json", str(out)) == 0
    assert '"f1"' in out.read_text() and "total" in capsys.readouterr().out


def test_cli_bad_input_exits_2_and_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = normal_csv(tmp_path / "n.csv")
    model = tmp_path / "m.onnx"
    assert run_cli("train", str(data), "--kind", "pca", "--out", str(model)) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("datetime;x\n2020-01-01 00:00:00;oops\n", encoding="utf-8")
    cases = [
        (("train", str(tmp_path / "missing.csv"), "--kind", "ae", "--out", str(tmp_path / "x.onnx")),
         "missing.csv: file not found"),
        (("train", str(data), "--kind", "pca", "--out", str(tmp_path / "x.onnx"), "--inputs", "flow,nope"),
         "no column 'nope'"),
        (("train", str(bad), "--kind", "pca", "--out", str(tmp_path / "x.onnx")), "column 'x': 'oops'"),
        (("train", str(data), "--kind", "pca", "--out", str(tmp_path / "x.onnx"), "--target-far", "2"),
         "target FAR"),
        (("evaluate", str(model), str(data)), "no 'anomaly' column"),
        (("evaluate", str(tmp_path / "nomodel.onnx"), str(data)), "model file not found"),
    ]
    for argv, message in cases:
        assert run_cli(*argv) == 2, argv
        assert message in capsys.readouterr().err, argv

"""Train-time guards (issue 12, item 4): each problem is detected, dropped with the reason or
refused, and shown by `train` and in the card; `record` prints a train command that works."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from bridge.cli import main
from bridge.ml.dataset import DataError, load_csv
from bridge.ml.evaluate import evaluate_table
from bridge.ml.guards import min_rows
from bridge.ml.options import TrainOptions
from bridge.ml.record import RecordPlan, RecordResult, train_advice
from bridge.ml.train import MIN_CALIB_WINDOWS, MIN_FIT_WINDOWS, _check_own_windows, train
from bridge.scoring.detector import Detector
from tests.test_train_evaluate import T0, write_csv

ROWS = 240


def pump_csv(path: Path, extra: dict[str, np.ndarray], rows: int = ROWS, **kw: list[str]) -> Path:
    rng = np.random.default_rng(1)
    flow = 30 + np.cumsum(rng.normal(0, 0.05, rows)) + rng.normal(0, 0.3, rows)
    cols = {"flow": list(flow), "pressure": list(0.1 * flow + rng.normal(0, 0.05, rows)),
            **{k: list(v[:rows]) for k, v in extra.items()}}
    return write_csv(path, [T0 + i for i in range(rows)], cols, **kw)  # type: ignore[arg-type]


def _scaled_constant() -> np.ndarray:
    # A tag scaled by 0.1 in float64: 123.4 with 1e-14 jitter, one float32 value after all.
    return 1234 * 0.1 + np.random.default_rng(0).choice([0.0, 1e-14], ROWS)


CASES = {
    "constant": np.full(ROWS, 7.0),
    "not exact in float32": _scaled_constant(),
    # Two float32 steps apart at 1000: movement that is only float32 rounding noise.
    "near-constant": 1000.0 + np.spacing(np.float32(1000.0)) * np.tile([0.0, 2.0], ROWS // 2),
}


@pytest.mark.parametrize("reason", list(CASES))
def test_input_without_signal_is_dropped_with_the_reason(tmp_path: Path, reason: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = pump_csv(tmp_path / "d.csv", {"level": CASES[reason]}, labels=[0] * ROWS)
    model = tmp_path / "m.onnx"
    assert main(["train", str(data), "--kind", "pca", "--out", str(model)]) == 0
    out = capsys.readouterr().out
    assert f"dropped input level: {reason}" in out
    det = Detector(model)
    assert det.contract.inputs == ("flow", "pressure")
    assert reason in det.contract.training["dropped_inputs"]["level"]
    assert f"Guard: dropped input level: {reason}" in model.with_suffix(".md").read_text()
    # The model does not flag its own recording (before: threshold ~1e15, 100 % flagged).
    alarms = evaluate_table(det, load_csv(data)).alarms
    assert alarms.mean() < 0.05 and det.threshold < 1e3


def test_named_input_without_signal_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = pump_csv(tmp_path / "d.csv", {"level": _scaled_constant()})
    assert main(["train", str(data), "--kind", "ae", "--inputs", "flow,level",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot train on level: not exact in float32" in err and "--inputs" in err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(DataError, match="no usable input"):
        only = write_csv(tmp_path / "c.csv", [T0 + i for i in range(ROWS)], {"a": [1.0] * ROWS})
        train(load_csv(only), tmp_path / "c.onnx", TrainOptions(kind="pca"))


@pytest.mark.parametrize("window", [2, 5, 30])
def test_too_few_rows_for_the_window_is_refused_with_the_minimum(tmp_path: Path, window: int) -> None:
    need = min_rows(window, 0.25, MIN_FIT_WINDOWS, MIN_CALIB_WINDOWS)
    # The minimum is that of the held-out split (--threshold margin); evt cross-fits instead.
    opts = TrainOptions(kind="pca", window=window, persist=1, threshold="margin")
    ok = load_csv(pump_csv(tmp_path / "ok.csv", {}, rows=need))
    result = train(ok, tmp_path / "ok.onnx", opts)  # exactly the minimum trains
    assert result.fit_windows >= MIN_FIT_WINDOWS and result.calib_windows >= MIN_CALIB_WINDOWS
    short = load_csv(pump_csv(tmp_path / "short.csv", {}, rows=need - 1))
    with pytest.raises(DataError, match=rf"{need - 1} rows are too few for --window {window}.*"
                                        rf"at least {need} good rows"):
        train(short, tmp_path / "short.onnx", opts)


def test_bad_rows_dropped_with_their_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quality = ["bad" if i in (50, 51) else "good" for i in range(ROWS)]
    data = pump_csv(tmp_path / "d.csv", {}, quality=quality)
    lines = data.read_text().splitlines()
    cells = lines[121].split(";")
    cells[1] = ""  # an empty flow cell: a failed read
    lines[121] = ";".join(cells)
    data.write_text("\n".join(lines) + "\n")
    model = tmp_path / "m.onnx"
    assert main(["train", str(data), "--kind", "pca", "--out", str(model)]) == 0
    line = "dropped 3 bad rows (quality not good 2, empty flow 1)"
    assert line in capsys.readouterr().out
    assert line in model.with_suffix(".md").read_text()
    assert Detector(model).contract.training["bad_row_reasons"] == {"quality not good": 2, "empty flow": 1}


def test_a_model_flagging_its_own_fit_windows_is_refused(tmp_path: Path) -> None:
    table = load_csv(pump_csv(tmp_path / "d.csv", {}))
    opts = TrainOptions(kind="pca")
    assert _check_own_windows(table, np.r_[np.zeros(95), np.ones(5)], 0.5, opts) == 0.05
    # Drift between fit and calibration rows (SKAB valve1/3 flags 10.1 %): recorded, not refused.
    assert _check_own_windows(table, np.r_[np.zeros(70), np.ones(30)], 0.5, opts) == 0.3
    with pytest.raises(DataError, match=r"flags 100\.0 % of its own fit windows"):
        _check_own_windows(table, np.ones(100), 0.5, opts)
    with pytest.raises(DataError, match="own fit windows"):
        _check_own_windows(table, np.zeros(100), float("nan"), opts)


def _rec(path: Path, name: str, columns: tuple[str, ...], rows: int, bad: int = 0) -> tuple[RecordResult,
                                                                                             RecordPlan]:
    return (RecordResult(path, path.with_suffix(".quality.log"), rows=rows, bad_rows=bad),
            RecordPlan(name, columns, columns, 1.0, 2.5, "--period"))


def test_record_prints_a_train_command_that_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = pump_csv(tmp_path / "tags.csv", {"level": np.full(ROWS, 7.0)}, quality=["good"] * ROWS)
    # Every tag recorded (no model yet): train drops the constant one, and says so.
    advice = train_advice(*_rec(data, "tags", ("flow", "pressure", "level"), ROWS))
    assert advice[0].startswith("train will drop input level: constant")
    cmd = shlex.split(advice[-1].removeprefix("train: "))
    assert cmd[:2] == ["plcbridge", "train"]
    model = tmp_path / cmd[-1]
    assert main([*cmd[1:-1], str(model)]) == 0, capsys.readouterr().err
    assert Detector(model).contract.inputs == ("flow", "pressure")
    # A configured model's inputs: named, so train keeps exactly them, or refuses up front.
    advice = train_advice(*_rec(data, "pump", ("flow", "pressure"), ROWS))
    cmd = shlex.split(advice[-1].removeprefix("train: "))
    assert "--inputs" in cmd and "flow,pressure" in cmd and "pump" in cmd
    assert main([*cmd[1:-1], str(tmp_path / "pump.onnx")]) == 0
    assert train_advice(*_rec(data, "pump", ("flow", "level"), ROWS))[0].startswith(
        "train would refuse level: constant")
    # Too short for the default window: says how long to record instead of a failing command.
    (short,) = train_advice(*_rec(data, "tags", ("flow",), 40, bad=3))
    need = min_rows(5, 0.25, MIN_FIT_WINDOWS, MIN_CALIB_WINDOWS)
    assert short.startswith(f"too short to train: 37 good rows, `plcbridge train` needs at least {need}")

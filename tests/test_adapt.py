"""Online adaptation (bridge.scoring.adapt) and alarm hysteresis (bridge.scoring.alarm): the state
machines on hand-made windows, then through a real trained model and ModelRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bridge.config import AdaptConfig, AlarmConfig, ModelConfig
from bridge.core.contract import ModelContract
from bridge.core.errors import ConfigError
from bridge.core.tags import TagStore
from bridge.ml.dataset import Table
from bridge.ml.evaluate import evaluate_table
from bridge.ml.train import TrainOptions, train
from bridge.scoring.adapt import Adaptation
from bridge.scoring.alarm import Hysteresis
from bridge.scoring.detector import Detector
from bridge.scoring.runner import ModelRunner
from bridge.scoring.windows import Window

MEAN, SD = [10.0, 100.0], [1.0, 5.0]
THRESHOLD = 1.0


def _contract(**training: object) -> ModelContract:
    return ModelContract(name="m", kind="pca", inputs=("a", "b"), window_length=4, period=1.0,
                         normalization="z", score="spe", threshold=THRESHOLD, recipe="test",
                         version="1.0.0",
                         training={"input_mean": MEAN, "input_sd": SD, **training})


def _adapt(folder: Path | None = None, contract: ModelContract | None = None, **config: object) -> Adaptation:
    cfg = AdaptConfig.model_validate({"enabled": True, "rate": 0.1, "max_step_sd": 0.05, "max_shift_sd": 2.0,
                                      "hold_off_windows": 3, "learn_below": 0.8, **config})
    return Adaptation(cfg, contract or _contract(), where="models.m", folder=folder, model_name="m")


def _window(a: float, b: float) -> np.ndarray:
    return np.tile(np.array([a, b], dtype=np.float32), (4, 1))


NORMAL = 0.1  # a score well below learn_below x threshold


def test_learns_only_from_windows_scoring_normal() -> None:
    ad = _adapt()
    shifted = _window(10.5, 100.0)  # input a half a training sd up
    assert not ad.learn(shifted, 1.5, THRESHOLD, alarm=True, now=1.0)  # anomalous
    assert not any(ad.learn(shifted, NORMAL, THRESHOLD, alarm=False, now=1.0) for _ in range(3))  # hold-off
    assert ad.version == 0 and not ad.offset.any()
    assert not ad.learn(shifted, 0.9, THRESHOLD, alarm=False, now=2.0)  # normal, but too near
    assert ad.version == 0
    assert ad.learn(shifted, NORMAL, THRESHOLD, alarm=False, now=3.0)
    assert ad.version == 1
    assert ad.offset[0] == pytest.approx(0.1 * 0.5) and ad.offset[1] == 0.0
    # The model sees the window moved back toward the training mean.
    assert ad.apply(shifted)[0, 0] == pytest.approx(10.5 - 0.05)


def test_step_is_bounded_and_the_total_is_capped() -> None:
    ad = _adapt()
    jump = _window(30.0, 100.0)  # 20 sd: rate x gap would be 2 sd in one step
    ad.learn(jump, NORMAL, THRESHOLD, alarm=False, now=1.0)
    assert ad.offset[0] == pytest.approx(0.05 * SD[0])  # max_step_sd
    for _ in range(100):
        ad.learn(jump, NORMAL, THRESHOLD, alarm=False, now=2.0)
    assert ad.offset[0] == pytest.approx(2.0 * SD[0])  # max_shift_sd: stops following
    status = ad.status()
    assert status.state == "capped" and status.capped == ["a"]
    assert status.offset_sd == {"a": 2.0, "b": 0.0}


def test_freezes_while_anomalous_and_for_the_hold_off_after() -> None:
    ad = _adapt(hold_off_windows=5)
    drift = _window(11.0, 100.0)
    ad.learn(drift, NORMAL, THRESHOLD, alarm=False, now=0.0)
    learnt = ad.offset.copy()
    for _ in range(10):  # an injected fault: the score is over the threshold
        assert not ad.learn(_window(15.0, 100.0), 3.0, THRESHOLD, alarm=True, now=1.0)
    assert ad.status().state == "frozen"
    assert [ad.learn(drift, NORMAL, THRESHOLD, alarm=False, now=2.0) for _ in range(6)] == \
        [False] * 5 + [True]
    assert np.allclose(ad.offset[1:], learnt[1:]) and ad.version == 2


def test_follows_a_slow_normal_ramp() -> None:
    ad = _adapt(rate=0.05, max_shift_sd=5.0)
    for k in range(400):  # input a drifts 3 sd over 400 windows, always scoring normal
        ad.learn(_window(10.0 + 3.0 * k / 400, 100.0), NORMAL, THRESHOLD, alarm=False, now=float(k))
    # An EWMA lags a ramp of slope s by s / rate: 0.0075 / 0.05 = 0.15 sd.
    assert ad.offset[0] == pytest.approx(3.0 - 0.15, abs=0.03)


def test_reset_restores_the_trained_baseline() -> None:
    ad = _adapt()
    for _ in range(5):
        ad.learn(_window(12.0, 110.0), NORMAL, THRESHOLD, alarm=False, now=1.0)
    assert ad.offset.any()
    ad.reset(now=5.0)
    assert not ad.offset.any() and ad.version == 0 and ad.resets == 1 and ad.reset_at == 5.0
    values = _window(12.0, 110.0)
    assert ad.apply(values) is values


def test_state_survives_a_restart_and_belongs_to_its_model(tmp_path: Path) -> None:
    ad = _adapt(tmp_path)
    for _ in range(7):
        ad.learn(_window(11.0, 104.0), NORMAL, THRESHOLD, alarm=False, now=1.0)
    ad.reset(now=2.0)
    for _ in range(4):
        ad.learn(_window(11.0, 104.0), NORMAL, THRESHOLD, alarm=False, now=3.0)
    ad.save()
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["version"] == 4 and saved["resets"] == 1
    again = _adapt(tmp_path)
    assert again.version == 4 and again.resets == 1 and np.allclose(again.offset, ad.offset)
    # A different model (here: another training record) starts from its own baseline.
    other = _adapt(tmp_path, contract=_contract(rows=1))
    assert other.version == 0 and not other.offset.any()
    # A lowered cap applies to a restored offset at once.
    capped = _adapt(tmp_path, max_shift_sd=0.01)
    assert np.all(np.abs(capped.offset) <= 0.01 * np.array(SD) + 1e-12)
    (tmp_path / "m.json").write_text("{not json")
    assert _adapt(tmp_path).version == 0  # unreadable: trained baseline, no crash


def test_a_model_without_a_training_baseline_cannot_adapt() -> None:
    bare = ModelContract(name="m", kind="pca", inputs=("a", "b"), window_length=4, period=1.0,
                         normalization="z", score="spe", threshold=1.0, recipe="old", version="0.9",
                         training={"rows": 10})
    with pytest.raises(ConfigError, match=r"models\.m\.adapt\.enabled: .*training\.input_mean"):
        _adapt(contract=bare)


def test_adaptation_with_writeback_needs_the_config_to_say_so() -> None:
    base = {"name": "m", "inputs": ["a"], "writeback": {"device": "plc", "anomaly": {"address": 1}}}
    with pytest.raises(ValidationError, match="allow_with_writeback"):
        ModelConfig.model_validate({**base, "adapt": {"enabled": True}})
    ok = ModelConfig.model_validate({**base, "adapt": {"enabled": True, "allow_with_writeback": True}})
    assert ok.adapt.enabled
    assert ModelConfig.model_validate({**base, "adapt": {"enabled": False}}).writeback is not None


# -- hysteresis ---------------------------------------------------------------------------


def _run(h: Hysteresis, scores: list[float | None]) -> list[bool | None]:
    out: list[bool | None] = []
    for s in scores:
        if s is None:
            h.interrupt()
            out.append(None)
        else:
            out.append(h.update(s, 10.0))
    return out


def test_hysteresis_needs_consecutive_windows_to_start_and_to_end() -> None:
    h = Hysteresis(AlarmConfig(on=1.0, off=0.5, min_on_windows=3, min_off_windows=2))
    # on level 10, off level 5
    scores: list[float | None] = [11, 12, 4, 11, 11, 11, 9, 6, 4, 8, 4, 4, 4]
    assert _run(h, scores) == [False, False, False, False, False, True, True, True, True, True, True,
                               False, False]


def test_an_invalid_window_breaks_a_run_but_holds_the_alarm() -> None:
    h = Hysteresis(AlarmConfig(min_on_windows=2, min_off_windows=2))
    assert _run(h, [11, None, 11, 11, None, 1, None, 1, 1]) == \
        [False, None, False, True, None, True, None, True, False]


def test_alarm_levels_are_checked() -> None:
    with pytest.raises(ValidationError, match="must not be above on"):
        AlarmConfig(on=1.0, off=1.2)
    assert AlarmConfig().plain and not AlarmConfig(min_on_windows=2).plain


# -- through a trained model and the live runner -----------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    n = 900
    t = np.arange(n, dtype=np.float64)
    base = rng.normal(size=(n, 1))
    values = np.column_stack([5 + base[:, 0] + 0.1 * rng.normal(size=n),
                              20 + 2 * base[:, 0] + 0.2 * rng.normal(size=n),
                              50 + rng.normal(size=n)])
    table = Table(Path("normal.csv"), 1.7e9 + t, ("p", "q", "r"), values, np.zeros(n, dtype=np.int8),
                  np.ones(n, dtype=bool))
    out = tmp_path_factory.mktemp("adapt") / "m.onnx"
    train(table, out, TrainOptions(kind="pca"))
    return out


def test_train_records_the_baseline_and_the_card_shows_it(model: Path) -> None:
    training = Detector(model).contract.training
    assert training["input_mean"][0] == pytest.approx(5, abs=0.2)
    assert training["input_sd"][1] == pytest.approx(2, rel=0.15)
    card = model.with_suffix(".md").read_text()
    assert "## Online adaptation" in card and "| `q` |" in card


def _table(values: np.ndarray, labels: np.ndarray) -> Table:
    n = len(values)
    return Table(Path("live.csv"), 1.8e9 + np.arange(n, dtype=np.float64), ("p", "q", "r"), values,
                 labels.astype(np.int8), np.ones(n, dtype=bool))


def test_runner_follows_slow_drift_but_not_a_step_fault(model: Path) -> None:
    det = Detector(model)
    rng = np.random.default_rng(4)
    n = 3000
    base = rng.normal(size=n)
    r = 50 + rng.normal(size=n) + np.linspace(0, 6, n)  # r drifts 6 training sd, slowly
    values = np.column_stack([5 + base + 0.1 * rng.normal(size=n),
                              20 + 2 * base + 0.2 * rng.normal(size=n), r])
    values[2500:, 0] += 3.0  # then p breaks from q: a fault
    labels = np.zeros(n)
    labels[2500:] = 1
    table = _table(values, labels)
    fixed = evaluate_table(det, table)
    adapted = evaluate_table(det, table, adapt=AdaptConfig(enabled=True, rate=0.02, max_shift_sd=8.0))
    normal = slice(det.contract.window_length, 2500)
    assert adapted.alarms[normal].mean() < 0.5 * fixed.alarms[normal].mean()
    assert fixed.alarms[normal].mean() > 0.1  # the drift does raise false alarms without it
    assert adapted.segments[0].delay_s is not None and adapted.segments[0].delay_s <= 10
    assert adapted.adapt_offset_sd is not None and adapted.adapt_offset_sd["r"] > 3


def test_runner_reports_the_alarm_and_keeps_the_raw_score(model: Path) -> None:
    det = Detector(model)
    config = ModelConfig(name="m", inputs=["p", "q", "r"],
                         alarm=AlarmConfig(on=1.0, off=0.5, min_on_windows=2, min_off_windows=2))
    runner = ModelRunner(config, det, TagStore(["p", "q", "r"], 1), default_max_age=10.0)
    normal = np.tile(np.array([5.0, 20.0, 50.0], dtype=np.float32), (det.contract.window_length, 1))
    broken = normal + np.array([4.0, -8.0, 0.0], dtype=np.float32)
    flags = []
    for values in (broken, broken, broken, normal, normal):
        score = runner.score_window(Window(0.0, values, True))
        assert score.score is not None  # the raw score is always reported
        flags.append((score.score >= det.threshold, score.anomaly))
    assert flags == [(True, False), (True, True), (True, True), (False, True), (False, False)]
    assert runner.anomalies == 3


def test_evaluate_command_reports_the_alarm_output_and_the_score_alone(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main

    rng = np.random.default_rng(5)
    n = 400
    base = rng.normal(size=n)
    rows = np.column_stack([5 + base + 0.1 * rng.normal(size=n), 20 + 2 * base + 0.2 * rng.normal(size=n),
                            50 + rng.normal(size=n)])
    rows[300:, 0] += 3.0
    csv = tmp_path / "fault.csv"
    lines = ["datetime;p;q;r;anomaly"] + [
        f"2026-01-01 00:{i // 60:02d}:{i % 60:02d};{a:.5f};{b:.5f};{c:.5f};{int(i >= 300)}"
        for i, (a, b, c) in enumerate(rows)]
    csv.write_text("\n".join(lines) + "\n")
    out_json = tmp_path / "r.json"
    assert main(["evaluate", str(model), str(csv), "--alarm-off", "0.5", "--min-on-windows", "3",
                 "--adapt", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "score >= threshold alone" in printed
    report = json.loads(out_json.read_text())
    # The score alone flags every fault window at once; the alarm needs three in a row first.
    assert report["raw_score_total"]["fn"] == 0 and report["total"]["fn"] == 2
    assert report["total"]["median_delay_s"] == 2.0
    assert report["files"][0]["adapt_version"] > 0
    assert main(["evaluate", str(model), str(csv), "--alarm-on", "1", "--alarm-off", "2"]) != 0


def test_adaptation_never_adds_an_alarm_the_trained_model_would_not_raise(model: Path) -> None:
    # r wanders 4 training sd away slowly (followed), then snaps back to its training mean: the
    # learnt offset would put the window 4 sd the other way. The trained model calls it normal,
    # so no alarm, and the offset learns its way back instead of freezing on a wrong value.
    det = Detector(model)
    rng = np.random.default_rng(6)
    n = 2600
    base = rng.normal(size=n)
    away = np.concatenate([np.linspace(0, 4, 1500), np.full(500, 4.0), np.zeros(600)])
    values = np.column_stack([5 + base + 0.1 * rng.normal(size=n),
                              20 + 2 * base + 0.2 * rng.normal(size=n), 50 + rng.normal(size=n) + away])
    cfg = AdaptConfig(enabled=True, rate=0.05, max_shift_sd=5.0, hold_off_windows=0)
    fixed = evaluate_table(det, _table(values, np.zeros(n)))
    adapted = evaluate_table(det, _table(values, np.zeros(n)), adapt=cfg)
    assert fixed.alarms[1500:2000].mean() > 0.5  # 4 sd away: the trained model alarms there
    assert adapted.alarms[1500:2000].mean() < 0.1  # followed
    assert adapted.alarms[2000:].mean() <= fixed.alarms[2000:].mean() + 0.01  # and back: no new alarms
    assert adapted.adapt_offset_sd is not None and abs(adapted.adapt_offset_sd["r"]) < 1.0

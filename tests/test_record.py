"""`plcbridge record` (issue 3, item 1): against the real simulator, then `train` on the output."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from adapters.sim.modbus import start_simulator
from bridge.cli import main
from bridge.cli.demo import DEMO_TOML, demo_config
from bridge.ml.dataset import load_csv
from bridge.ml.record import RecordError, parse_duration, plan, record
from bridge.scoring.detector import Detector
from tests.waiting import until

SPEED = 10.0  # plant and recorder both 10x real time, as in tests/test_e2e.py
pytestmark = pytest.mark.timeout(90)


def test_parse_duration() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    for bad in ("", "0s", "2x", "h", "-5s", "1h junk"):
        with pytest.raises(RecordError, match="--duration"):
            parse_duration(bad)


def test_plan_uses_model_features_period_and_refuses_unknown_model() -> None:
    config = demo_config(5020)
    rec = plan(config, None, None)
    assert rec.columns == ("pressure", "flow", "current", "temperature", "vibration")
    assert rec.period == Detector("models/pump_pca.onnx").contract.period
    with pytest.raises(RecordError, match="--model 'nope'"):
        plan(config, "nope", None)
    no_models = config.model_copy(update={"models": []})
    assert "motor_running" in plan(no_models, None, 2.0).tags  # every numeric tag


async def test_record_from_simulator_then_train_gives_a_loadable_model(tmp_path: Path) -> None:
    sim = await start_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=SPEED)
    try:
        rec = plan(demo_config(sim.port), "pump", 0.5)
        out = tmp_path / "pump.csv"
        # 60 plant-seconds at 0.5 s: 120 rows, enough for train's fit and calibration parts.
        result = await record(demo_config(sim.port), rec, out, 60.0, speed=SPEED)
    finally:
        await sim.stop()
    assert result.rows == 120 and not result.interrupted
    table = load_csv(out)  # the format train reads
    assert table.columns == rec.columns and len(table) == 120
    assert table.good.mean() > 0.9, out.with_suffix(".quality.log").read_text()
    assert abs((table.times[1] - table.times[0]) - 0.5) < 1e-3
    model = tmp_path / "m.onnx"
    assert main(["train", str(out), "--kind", "pca", "--period", "0.5", "--out", str(model)]) == 0
    detector = Detector(model)
    assert detector.contract.inputs == rec.columns and detector.contract.period == 0.5


def test_refuses_to_overwrite_and_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(DEMO_TOML.format(port=1), encoding="utf-8")
    out = tmp_path / "rec"
    out.mkdir()
    (out / "pump.csv").write_text("datetime;x\n", encoding="utf-8")
    assert main(["record", str(config), "--duration", "1s", "--out", str(out)]) == 2
    assert f"{out / 'pump.csv'}: exists" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[[devices]]\nname = 1\n", encoding="utf-8")
    assert main(["record", str(bad), "--duration", "1s", "--out", str(out)]) == 2
    assert main(["record", str(config), "--duration", "soon", "--out", str(out), "--force"]) == 2
    assert "--duration" in capsys.readouterr().err


async def test_sigint_keeps_rows_written_so_far(tmp_path: Path) -> None:
    sim = await start_simulator("127.0.0.1", 0, seed=4, step=0.01, speed=SPEED)
    config = tmp_path / "c.toml"
    config.write_text(DEMO_TOML.format(port=sim.port), encoding="utf-8")
    out = tmp_path / "rec.csv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "record", str(config), "--duration", "2h", "--out", str(out),
        "--speed", str(SPEED), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        await until(lambda: out.exists() and len(out.read_text().splitlines()) > 10, 30, "10 rows")
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sim.stop()
    assert proc.returncode == 0, err.decode()
    assert "stopped by signal" in err.decode()
    table = load_csv(out)  # every row complete and readable
    assert len(table) >= 10
    assert out.read_text().endswith("\n")

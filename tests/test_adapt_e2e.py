"""Online adaptation and alarm hysteresis end to end: simulator -> Modbus -> bridge -> API and
write-back, with the simulator's drift fault; the state through a restart; the reset route."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle, start_simulator
from adapters.sim.plant import SIGNALS, PumpPlant
from bridge.api.app import create_app
from bridge.api.auth import parse_tokens
from bridge.api.schemas import AdaptStatus, ModelInfo
from bridge.cli.demo import DEMO_TOML
from bridge.config import Config, parse_config
from bridge.ml.dataset import Table
from bridge.ml.train import TrainOptions, train
from bridge.runtime.bridge import Bridge
from tests.waiting import until

ADMIN, READ = "admin-token-0123456789", "read-token-0123456789"
SPEED, SEED = 10.0, 11
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pca model trained on an hour of the simulator's own plant (same seed), by train."""
    data = PumpPlant(seed=SEED).run(3600, 1.0)
    n = len(data)
    table = Table(Path("sim.csv"), 1.7e9 + np.arange(n, dtype=np.float64), SIGNALS, data, None,
                  np.ones(n, dtype=bool))
    out = tmp_path_factory.mktemp("model") / "sim.onnx"
    train(table, out, TrainOptions(kind="pca", name="pump"))
    return out


def _config(sim: SimulatorHandle, model: Path, data_dir: Path) -> Config:
    data: dict[str, Any] = tomllib.loads(DEMO_TOML.format(port=sim.port))
    data["api"] = {"host": "127.0.0.1", "port": 0}
    data["storage"] = {"data_dir": str(data_dir)}
    data["models"][0] |= {
        "file": str(model),
        # Fast enough to see it learn within seconds of the test; writes back, so it must say so.
        "adapt": {"enabled": True, "rate": 0.05, "hold_off_windows": 5, "allow_with_writeback": True},
        "alarm": {"on": 1.0, "off": 0.8, "min_on_windows": 2, "min_off_windows": 3},
    }
    return parse_config(data)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    handle = await start_simulator("127.0.0.1", 0, seed=SEED, step=0.01, speed=SPEED)
    yield handle
    await handle.stop()


async def test_adapts_on_normal_data_freezes_on_drift_and_survives_restart(
        sim: SimulatorHandle, model: Path, tmp_path: Path) -> None:
    config = _config(sim, model, tmp_path / "data")
    bridge = Bridge(config, speed=SPEED)
    app = create_app(bridge, parse_tokens(f"admin {ADMIN}\nread {READ}\n"))
    await bridge.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b",
                                     headers={"Authorization": f"Bearer {READ}"}) as client:
            async def info() -> dict[str, Any]:
                reply = await client.get("/api/v1/models/pump")
                assert reply.status_code == 200
                body: dict[str, Any] = reply.json()
                ModelInfo.model_validate(body, strict=False)  # the documented schema
                return body

            async def learnt() -> bool:
                return bool((await info())["adapt"]["version"] >= 10)

            await until(learnt, 20, "adaptation to learn from normal windows")
            body = await info()
            assert body["adapt"]["state"] in ("learning", "hold-off")
            assert body["adapt"]["persisted"] and body["adapt"]["base_version"] == body["version"]
            assert set(body["adapt"]["offset_sd"]) == set(SIGNALS)
            assert body["alarm"] == {"active": False, "on_level": body["threshold"],
                                     "off_level": pytest.approx(0.8 * body["threshold"]),
                                     "min_on_windows": 2, "min_off_windows": 3}

            # Resetting is an admin action: read is refused, admin resets and it is an event.
            assert (await client.post("/api/v1/models/pump/adapt/reset")).status_code == 403
            reply = await client.post("/api/v1/models/pump/adapt/reset",
                                      headers={"Authorization": f"Bearer {ADMIN}"})
            assert reply.status_code == 200
            reset = AdaptStatus.model_validate(reply.json(), strict=False)
            assert reset.resets == 1 and reset.version == 0 and not any(reset.offset.values())
            await bridge.flush_storage()  # events are read from the database
            events = (await client.get("/api/v1/events")).json()
            assert any(e["kind"] == "adapt-reset" for e in events)

            # The simulator's drift fault: pressure runs away by 8 % a minute. Adaptation must
            # not learn it away: the alarm goes on (API and the register the PLC reads) and the
            # baseline stays frozen while it is on.
            await sim.inject("drift")

            async def alarmed() -> bool:
                score = (await client.get("/api/v1/models/pump/score")).json()
                return bool(score["anomaly"] and score["window_valid"])

            await until(alarmed, 20, "the alarm on the drift fault")
            await until(lambda: sim.holding(102, 1) == [1], 5, "the anomaly register")
            frozen = (await info())["adapt"]
            assert frozen["state"] == "frozen" and frozen["offset_sd"]["pressure"] < 1.0
            scored = bridge.runners["pump"].scored
            await until(lambda: bridge.runners["pump"].scored >= scored + 5, 10, "five more windows")
            later = (await info())["adapt"]
            assert later["version"] == frozen["version"] and (await info())["alarm"]["active"]
    finally:
        await bridge.stop()
    saved_version = bridge.runners["pump"].adapt.version  # type: ignore[union-attr]

    # A restart on the same data_dir resumes the learnt state (the reset is remembered).
    again = Bridge(_config(sim, model, tmp_path / "data"), speed=SPEED)
    try:
        restored = again.runners["pump"].adapt
        assert restored is not None
        assert restored.resets == 1 and restored.version == saved_version
    finally:
        await again.stop()


async def test_reset_of_a_model_that_does_not_adapt_is_a_conflict(sim: SimulatorHandle, model: Path,
                                                                   tmp_path: Path) -> None:
    config = _config(sim, model, tmp_path / "data")
    plain = config.models[0].model_copy(update={"adapt": config.models[0].adapt.model_copy(
        update={"enabled": False})})
    bridge = Bridge(config.model_copy(update={"models": [plain]}), speed=SPEED)
    app = create_app(bridge, parse_tokens(f"admin {ADMIN}\n"))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://b",
                                     headers={"Authorization": f"Bearer {ADMIN}"}) as client:
            assert (await client.post("/api/v1/models/pump/adapt/reset")).status_code == 409
            assert (await client.post("/api/v1/models/nope/adapt/reset")).status_code == 404
            assert (await client.get("/api/v1/models/pump")).json()["adapt"] is None
    finally:
        await bridge.stop()


async def test_the_shipped_model_cannot_adapt_and_says_which_key(sim: SimulatorHandle,
                                                                 tmp_path: Path) -> None:
    config = _config(sim, Path("unused"), tmp_path)
    shipped = config.models[0].model_copy(update={"file": None})
    from bridge.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"adapt\.enabled: .*training\.input_mean"):
        Bridge(config.model_copy(update={"models": [shipped]}), speed=SPEED)


def test_check_names_a_model_that_cannot_adapt(model: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main

    text = DEMO_TOML.format(port=5020).split("[models.writeback]")[0]
    plant = tmp_path / "plant.toml"
    plant.write_text(text + "[models.adapt]\nenabled = true\n[models.alarm]\nmin_on_windows = 3\n")
    assert main(["check", str(plant)]) != 0  # the shipped model records no training baseline
    assert "training.input_mean" in capsys.readouterr().err
    plant.write_text(text.replace('name = "pump"', f'name = "pump"\nfile = "{model}"')
                     + "[models.adapt]\nenabled = true\n[models.alarm]\nmin_on_windows = 3\n")
    assert main(["check", str(plant)]) == 0
    out = capsys.readouterr().out
    assert "online adaptation: rate 0.001" in out and "alarm hysteresis: on 1 x threshold for 3" in out

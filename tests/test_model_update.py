"""Over-the-air model update: upload, validation, atomic swap, rollback, restart, SIGHUP folder."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.api.app import create_app
from bridge.api.auth import parse_tokens
from bridge.cli.demo import demo_config
from bridge.config import DEFAULT_MODEL, Config
from bridge.runtime.bridge import Bridge
from tests.waiting import until

ADMIN = "admin-token-0123456789"
READ = "read-token-0123456789"
SPEED = 10.0
pytestmark = pytest.mark.timeout(60)


def _variant(tmp_path: Path, name: str, **contract_changes: Any) -> bytes:
    """The shipped model with its contract edited: a valid new version, or a broken one."""
    model = onnx.load(DEFAULT_MODEL)
    for prop in model.metadata_props:
        if prop.key == "plcbridge.contract":
            contract = json.loads(prop.value)
            contract.update(contract_changes)
            prop.value = json.dumps(contract)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path.read_bytes()


def _config(sim: SimulatorHandle, data_dir: Path | None, max_body: int = 1 << 20) -> Config:
    config = demo_config(sim.port, api_port=0)
    api = config.api.model_copy(update={"max_body_bytes": max_body})
    storage = config.storage.model_copy(update={"data_dir": data_dir})
    return config.model_copy(update={"api": api, "storage": storage})


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    handle = await start_simulator("127.0.0.1", 0, seed=31, step=0.01, speed=SPEED)
    yield handle
    await handle.stop()


@pytest_asyncio.fixture
async def running(sim: SimulatorHandle, tmp_path: Path) -> AsyncIterator[tuple[Bridge, httpx.AsyncClient]]:
    bridge = Bridge(_config(sim, tmp_path / "data", max_body=200_000), speed=SPEED)
    app = create_app(bridge, parse_tokens(f"admin {ADMIN}\nread {READ}\n"))
    await bridge.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b",
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield bridge, client
    await bridge.stop()


def _valid_run(bridge: Bridge) -> bool:
    latest = bridge.scores.latest("pump")
    return latest is not None and latest.window_valid


async def test_upload_swaps_between_cycles_and_rollback_restores(
        running: tuple[Bridge, httpx.AsyncClient], tmp_path: Path) -> None:
    bridge, client = running
    await until(lambda: _valid_run(bridge), 20, "a valid window")
    original = (await client.get("/api/v1/models/pump")).json()["version"]
    before = len(bridge.scores.history("pump", limit=10_000))

    response = await client.put("/api/v1/models/pump", content=_variant(tmp_path, "v2", version="2.0.0-test"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "2.0.0-test" and body["previous_version"] == original
    await until(lambda: len(bridge.scores.history("pump", limit=10_000)) >= before + 10, 10, "cycles")
    history = bridge.scores.history("pump", limit=10_000)[before - 1:]
    # No cycle lost or invalid across the swap: the new model took over the full window.
    assert all(s.window_valid for s in history), [s.reason for s in history if not s.window_valid]
    assert history[-1].version == "2.0.0-test"
    assert (tmp_path / "data" / "models" / "pump.onnx").is_file()

    back = await client.post("/api/v1/models/pump/rollback")
    assert back.status_code == 200 and back.json()["version"] == original
    assert not (tmp_path / "data" / "models" / "pump.onnx").exists()  # the config's file again
    again = await client.post("/api/v1/models/pump/rollback")
    assert again.status_code == 409 and "no previous version" in again.json()["detail"]


@pytest.mark.parametrize(("kind", "status", "message"), [
    ("corrupt", 422, "not a loadable ONNX model"),
    ("mismatch", 422, "input 0 is 'pressure' in the configuration, the model contract expects 'p_in'"),
    ("no_contract", 422, "contract"),
    ("oversized", 413, "request body over 200000 bytes"),
    ("empty", 400, "empty body"),
])
async def test_bad_upload_changes_nothing(running: tuple[Bridge, httpx.AsyncClient], tmp_path: Path,
                                          kind: str, status: int, message: str) -> None:
    bridge, client = running
    await until(lambda: _valid_run(bridge), 20, "a valid window")
    version = bridge.runners["pump"].detector.version
    body = {
        "corrupt": b"\x08\x07garbage" * 100,
        "mismatch": _variant(tmp_path, "m", inputs=["p_in", "flow", "current", "temperature", "vibration"]),
        "no_contract": _no_contract(tmp_path),
        "oversized": b"\0" * 300_000,
        "empty": b"",
    }[kind]
    response = await client.put("/api/v1/models/pump", content=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert bridge.runners["pump"].detector.version == version
    scored = bridge.runners["pump"].scored
    await until(lambda: bridge.runners["pump"].scored > scored + 2, 10, "scoring to go on")
    # Nothing kept: no active upload, no leftover candidate file.
    assert list((tmp_path / "data" / "models").glob("*")) == []


def _no_contract(tmp_path: Path) -> bytes:
    model = onnx.load(DEFAULT_MODEL)
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, path)
    return path.read_bytes()


async def test_upload_needs_admin(running: tuple[Bridge, httpx.AsyncClient], tmp_path: Path) -> None:
    _, client = running
    data = _variant(tmp_path, "v3", version="3")
    denied = await client.put("/api/v1/models/pump", content=data,
                              headers={"Authorization": f"Bearer {READ}"})
    assert denied.status_code == 403
    anonymous = await client.post("/api/v1/models/pump/rollback", headers={"Authorization": ""})
    assert anonymous.status_code == 401


async def test_upload_survives_restart_and_folder_drop(sim: SimulatorHandle, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    bridge = Bridge(_config(sim, data_dir), speed=SPEED)
    await bridge.updater.install("pump", _variant(tmp_path, "v4", version="4.0"), "test")
    await bridge.stop()
    restarted = Bridge(_config(sim, data_dir), speed=SPEED)
    assert restarted.runners["pump"].detector.version == "4.0"

    incoming = data_dir / "models" / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "pump.onnx").write_bytes(_variant(tmp_path, "v5", version="5.0"))
    assert await restarted.updater.reload_folder() == {"pump": "installed version 5.0"}
    assert restarted.runners["pump"].detector.version == "5.0"
    assert not (incoming / "pump.onnx").exists()

    (incoming / "pump.onnx").write_bytes(b"not a model")
    result = await restarted.updater.reload_folder()
    assert result["pump"].startswith("refused:")
    assert restarted.runners["pump"].detector.version == "5.0"
    assert "not a loadable ONNX model" in (incoming / "pump.onnx.rejected.txt").read_text()
    await restarted.stop()

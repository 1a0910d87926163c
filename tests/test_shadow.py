"""Shadow rollout on the box: a staged model scores the active model's windows, writes nothing,
and is promoted or rejected by its rule or an operator; restarts neither lose nor repeat it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle
from bridge.api.app import create_app
from bridge.api.auth import parse_tokens
from bridge.config import Config, ShadowRuleConfig
from bridge.core.scores import Score
from bridge.ports import SinkBase
from bridge.runtime.bridge import Bridge
from bridge.scoring.updates import RolloutConflict
from tests.test_model_update import ADMIN, READ, SPEED, _config, _valid_run, _variant, sim
from tests.waiting import until

__all__ = ["sim"]  # the fixture, shared with the upload tests
pytestmark = pytest.mark.timeout(60)

# At SPEED 10 the pump model scores every 0.1 s: 30 bridge-seconds is 3 s and ~30 windows.
RULE = ShadowRuleConfig(period_s=30, min_windows=15, max_far=0.05)
LONG = ShadowRuleConfig(period_s=100_000, min_windows=15, max_far=0.05)  # only an operator decides


class _Recorder(SinkBase):
    """Every Score the sinks get: none may come from a shadow."""

    name = "recorder"

    def __init__(self) -> None:
        self.scores: list[Score] = []

    async def start(self, view: Any) -> None:
        return None

    def on_score(self, score: Score) -> None:
        self.scores.append(score)

    async def stop(self) -> None:
        return None


def _shadow_config(sim: SimulatorHandle, data_dir: Path | None, rule: ShadowRuleConfig) -> Config:
    config = _config(sim, data_dir, max_body=200_000)
    models = [m.model_copy(update={"shadow": rule}) for m in config.models]
    return config.model_copy(update={"models": models})


@pytest_asyncio.fixture
async def api(sim: SimulatorHandle,
              tmp_path: Path) -> AsyncIterator[tuple[Bridge, httpx.AsyncClient, _Recorder]]:
    bridge = Bridge(_shadow_config(sim, tmp_path / "data", RULE), speed=SPEED)
    recorder = _Recorder()
    bridge.sinks.append(recorder)
    app = create_app(bridge, parse_tokens(f"admin {ADMIN}\nread {READ}\n"))
    await bridge.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b",
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield bridge, client, recorder
    await bridge.stop()


def _kinds(bridge: Bridge) -> list[str]:
    return [e["kind"] for e in bridge.events if e["kind"] != "anomaly-start" and e["kind"] != "anomaly-end"]


async def _decided(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = {}

    async def done() -> bool:
        body.update((await client.get("/api/v1/models/pump/shadow")).json())
        return body["shadow"]["state"] in ("promoted", "rejected")

    await until(done, 20, "the rule to decide")
    return body


async def _stage(bridge: Bridge, client: httpx.AsyncClient, tmp_path: Path,
                 **contract: Any) -> tuple[str, httpx.Response]:
    """Stage a variant of the shipped model in shadow once scoring runs: (active version, reply)."""
    await until(lambda: _valid_run(bridge), 20, "a valid window")
    original = bridge.runners["pump"].detector.version
    data = _variant(tmp_path, contract["version"], **contract)
    staged = await client.put("/api/v1/models/pump", params={"mode": "shadow"}, content=data)
    assert staged.status_code == 200, staged.text
    return original, staged


async def test_passing_shadow_is_promoted_after_the_period_and_active_scores_untouched(
        api: tuple[Bridge, httpx.AsyncClient, _Recorder], tmp_path: Path) -> None:
    bridge, client, recorder = api
    # The same graph, a little less eager (threshold 1.2 instead of 1.0): it can only flag
    # fewer windows than the active model, so its FAR on the active's normal windows is 0.
    original, staged = await _stage(bridge, client, tmp_path, version="2.0-shadow", threshold=1.2)
    assert staged.json()["status"] == "staged in shadow"
    assert staged.json()["version"] == original and staged.json()["shadow_version"] == "2.0-shadow"
    running = (await client.get("/api/v1/models/pump/shadow")).json()
    assert running["shadow"]["state"] == "running" and running["shadow"]["remaining_s"] > 0

    body = await _decided(client)
    shadow = body["shadow"]
    figures = shadow["comparison"]
    print("promoted shadow:", json.dumps(shadow))
    assert shadow["state"] == "promoted", shadow
    assert shadow["reason"].startswith("passed the rule after")
    assert figures["windows"] >= RULE.min_windows and figures["far"] == 0.0
    assert figures["correlation"] is not None and figures["correlation"] > 0.99
    assert figures["shadow_inference_ms_max"] > 0
    assert bridge.runners["pump"].detector.version == "2.0-shadow"
    assert bridge.updater.previous_version("pump") == original  # the rollback is kept
    assert (tmp_path / "data" / "models" / "pump.onnx").is_file()
    assert not (tmp_path / "data" / "models" / "shadow" / "pump.onnx").exists()

    # Nothing of the shadow reached a sink: every Score before the promotion is the active
    # model's, at its own threshold, one per cycle without a gap.
    before = [s for s in recorder.scores if s.version == original]
    assert before and all(s.threshold == 1.0 for s in before)
    assert all(s.version in (original, "2.0-shadow") for s in recorder.scores)
    assert [s.version for s in recorder.scores] == sorted(
        (s.version for s in recorder.scores), key=lambda v: v != original)  # no interleaving
    assert _kinds(bridge) == ["shadow-start", "shadow-promoted"]
    event = bridge.events[-1] if bridge.events[-1]["kind"] == "shadow-promoted" else None
    assert event is not None and event["detail"]["rollout"]["comparison"]["windows"] >= 15
    await until(lambda: bridge.storage is not None and len(bridge.storage.events(limit=50)) >= 2, 5,
                "the events on disk")
    listed = (await client.get("/api/v1/events")).json()
    kinds = [e["kind"] for e in listed if e["kind"].startswith("shadow")]
    assert kinds == ["shadow-start", "shadow-promoted"]
    assert listed[-1]["detail"]["rollout"]["shadow_id"] == shadow["id"]
    # Rolled back: recorded as a result too.
    assert (await client.post("/api/v1/models/pump/rollback")).status_code == 200
    assert _kinds(bridge)[-1] == "model-rolled-back"


async def test_shadow_that_flags_too_much_is_rejected_and_the_old_model_keeps_scoring(
        api: tuple[Bridge, httpx.AsyncClient, _Recorder], tmp_path: Path) -> None:
    bridge, client, recorder = api
    # The same graph flagging everything: FAR 1 on the active model's normal windows.
    original, _ = await _stage(bridge, client, tmp_path, version="3.0-eager", threshold=0.0001)
    shadow = (await _decided(client))["shadow"]
    print("rejected shadow:", json.dumps(shadow))
    assert shadow["state"] == "rejected" and "the rule allows 0.05" in shadow["reason"], shadow
    assert shadow["comparison"]["far"] > 0.5 and not shadow["passing"]
    assert bridge.runners["pump"].detector.version == original
    assert bridge.updater.previous_version("pump") is None
    scored = bridge.runners["pump"].scored
    await until(lambda: bridge.runners["pump"].scored > scored + 3, 10, "the old model to go on")
    assert all(s.version == original for s in recorder.scores)
    assert not (tmp_path / "data" / "models" / "shadow" / "pump.onnx").exists()
    assert not (tmp_path / "data" / "models" / "pump.onnx").exists()
    assert _kinds(bridge) == ["shadow-start", "shadow-rejected"]
    assert (await client.get("/api/v1/models/pump")).json()["shadow_version"] is None


@pytest.mark.parametrize(("kind", "message"), [
    ("corrupt", "not a loadable ONNX model"),
    ("mismatch", "the model contract expects 'p_in'"),
    ("window", "shape"),
])
async def test_malformed_or_mismatched_shadow_refused_at_staging(
        api: tuple[Bridge, httpx.AsyncClient, _Recorder], tmp_path: Path, kind: str, message: str) -> None:
    bridge, client, _ = api
    await until(lambda: _valid_run(bridge), 20, "a valid window")
    version = bridge.runners["pump"].detector.version
    body = {
        "corrupt": b"\x08\x07garbage" * 100,
        "mismatch": _variant(tmp_path, "m", inputs=["p_in", "flow", "current", "temperature", "vibration"]),
        "window": _variant(tmp_path, "w", window_length=32),
    }[kind]
    response = await client.put("/api/v1/models/pump?mode=shadow", content=body)
    assert response.status_code == 422 and message in response.json()["detail"], response.text
    assert (await client.get("/api/v1/models/pump/shadow")).json()["shadow"] is None
    scored = bridge.runners["pump"].scored
    await until(lambda: bridge.runners["pump"].scored > scored + 2, 10, "scoring to go on")
    assert bridge.runners["pump"].detector.version == version and _kinds(bridge) == []
    assert list((tmp_path / "data" / "models").glob("**/*.onnx")) == []


async def test_shadow_of_another_shape_is_refused(sim: SimulatorHandle, tmp_path: Path) -> None:
    # A loadable model of the same inputs but another period scores other windows: no comparison.
    bridge = Bridge(_shadow_config(sim, None, RULE), speed=SPEED)
    data = _variant(tmp_path, "slow", version="9", period=2.0)
    with pytest.raises(Exception, match="a shadow must score the active model's windows"):
        await bridge.updater.stage("pump", data, "test")
    assert bridge.updater.shadows == {}
    await bridge.stop()


async def test_operator_promotes_or_rejects_early(sim: SimulatorHandle, tmp_path: Path) -> None:
    bridge = Bridge(_shadow_config(sim, tmp_path / "data", LONG), speed=SPEED)
    app = create_app(bridge, parse_tokens(f"admin {ADMIN}\nread {READ}\n"))
    await bridge.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b",
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        await until(lambda: _valid_run(bridge), 20, "a valid window")
        original = bridge.runners["pump"].detector.version
        assert (await client.post("/api/v1/models/pump/shadow/promote")).status_code == 409
        a = _variant(tmp_path, "a", version="A")
        assert (await client.put("/api/v1/models/pump?mode=shadow", content=a)).status_code == 200
        again = await client.put("/api/v1/models/pump?mode=shadow", content=a)
        assert again.status_code == 409 and "already has a shadow running" in again.json()["detail"]
        denied = await client.post("/api/v1/models/pump/shadow/reject",
                                   headers={"Authorization": f"Bearer {READ}"})
        assert denied.status_code == 403
        await until(lambda: bridge.updater.shadows["pump"].comparison.windows >= 3, 10, "windows")
        rejected = await client.post("/api/v1/models/pump/shadow/reject", params={"reason": "wrong line"})
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["shadow"]["reason"] == "rejected by the operator: wrong line"
        assert bridge.runners["pump"].detector.version == original

        b = _variant(tmp_path, "b", version="B")
        assert (await client.put("/api/v1/models/pump?mode=shadow", content=b)).status_code == 200
        promoted = await client.post("/api/v1/models/pump/shadow/promote")
        assert promoted.status_code == 200 and promoted.json()["shadow"]["state"] == "promoted"
        assert bridge.runners["pump"].detector.version == "B"
        assert (await client.get("/api/v1/models/pump")).json()["previous_version"] == original
        assert _kinds(bridge) == ["shadow-start", "shadow-rejected", "shadow-start", "shadow-promoted"]

        # An install while a shadow runs rejects the shadow: it was compared with another model.
        c = _variant(tmp_path, "c", version="C")
        assert (await client.put("/api/v1/models/pump?mode=shadow", content=c)).status_code == 200
        d = _variant(tmp_path, "d", version="D")
        assert (await client.put("/api/v1/models/pump", content=d)).status_code == 200
        shadow = (await client.get("/api/v1/models/pump/shadow")).json()["shadow"]
        assert shadow["state"] == "rejected" and "active model was replaced" in shadow["reason"]
    await bridge.stop()


async def test_restart_resumes_the_shadow_and_never_promotes_twice(sim: SimulatorHandle,
                                                                  tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    state = data_dir / "models" / "shadow" / "pump.json"
    first = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    await first.start()
    await until(lambda: _valid_run(first), 20, "a valid window")
    staged = await first.updater.stage("pump", _variant(tmp_path, "r", version="R"), "test")
    await until(lambda: staged.comparison.windows >= 5, 10, "windows compared")
    await first.stop()
    saved = json.loads(state.read_text())
    assert saved["state"] == "running" and saved["comparison"]["windows"] >= 5

    # Resumed: same rollout, figures carried over, observation time too.
    second = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    resumed = second.updater.shadows["pump"]
    assert resumed.id == staged.id and resumed.state == "running"
    assert resumed.comparison.windows == saved["comparison"]["windows"]
    assert resumed.observed_s == pytest.approx(saved["observed_s"])
    await second.start()
    await until(lambda: resumed.comparison.windows >= saved["comparison"]["windows"] + 3, 10, "more windows")
    await second.updater.promote("pump", "test")
    with pytest.raises(RolloutConflict):
        await second.updater.promote("pump", "test")  # a second promotion has nothing to promote
    await second.stop()

    third = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    assert third.runners["pump"].detector.version == "R"
    assert third.updater.shadows["pump"].state == "promoted"
    assert third.events == [] and third.updater.previous_version("pump") is None
    stored = third.storage.events(limit=100) if third.storage is not None else []
    assert [e["kind"] for e in stored] == ["shadow-start", "shadow-promoted"]
    await third.stop()


async def test_restart_in_the_middle_of_a_promotion_finishes_it_once(sim: SimulatorHandle,
                                                                    tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    folder = data_dir / "models" / "shadow"
    first = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    await first.updater.stage("pump", _variant(tmp_path, "p", version="P"), "test")
    await first.stop()
    # As a kill would leave it after "promoting" was saved, before the file moved.
    saved = json.loads((folder / "pump.json").read_text())
    (folder / "pump.json").write_text(json.dumps({**saved, "state": "promoting"}))

    second = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    assert second.runners["pump"].detector.version == "P"
    assert second.updater.shadows["pump"].state == "promoted"
    assert [e["kind"] for e in second.events] == ["shadow-promoted"]
    assert not (folder / "pump.onnx").exists() and (data_dir / "models" / "pump.onnx").is_file()
    await second.stop()

    # And as a kill would leave it after the file moved, before "promoted" was saved.
    (folder / "pump.json").write_text(json.dumps({**saved, "state": "promoting"}))
    third = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    assert third.runners["pump"].detector.version == "P"
    assert third.updater.previous_version("pump") is None  # nothing swapped again
    assert [e["kind"] for e in third.events] == ["shadow-promoted"]  # recorded, not repeated
    await third.stop()
    fourth = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    assert fourth.events == [] and fourth.updater.shadows["pump"].state == "promoted"
    await fourth.stop()


async def test_restart_rejects_a_shadow_that_cannot_resume(sim: SimulatorHandle, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    await first.updater.stage("pump", _variant(tmp_path, "x", version="X"), "test")
    await first.stop()
    (data_dir / "models" / "shadow" / "pump.onnx").write_bytes(b"damaged on disk")
    second = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    shadow = second.updater.shadows["pump"]
    assert shadow.state == "rejected" and "could not resume after a restart" in shadow.reason
    assert second.runners["pump"].detector.version == "1.0.0"
    assert [e["kind"] for e in second.events] == ["shadow-rejected"]
    await second.updater.stage("pump", _variant(tmp_path, "y", version="Y"), "test")
    await second.stop()
    # The active model changed while the bridge was down: the comparison was against another.
    (data_dir / "models" / "pump.onnx").write_bytes(_variant(tmp_path, "z", version="Z"))
    third = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    shadow = third.updater.shadows["pump"]
    assert shadow.state == "rejected" and "the active model changed across a restart" in shadow.reason
    assert third.runners["pump"].detector.version == "Z"
    await third.stop()


async def test_folder_drop_stages_a_shadow(sim: SimulatorHandle, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    bridge = Bridge(_shadow_config(sim, data_dir, LONG), speed=SPEED)
    incoming = data_dir / "models" / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "pump.shadow.onnx").write_bytes(_variant(tmp_path, "f", version="F"))
    result = await bridge.updater.reload_folder()
    assert result["pump.shadow"].startswith("staged version F in shadow")
    assert bridge.updater.shadows["pump"].state == "running"
    assert bridge.runners["pump"].detector.version == "1.0.0"
    await bridge.stop()

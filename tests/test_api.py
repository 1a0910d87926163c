"""REST API against a bridge polling the real simulator over Modbus TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle
from bridge.api.app import create_app
from bridge.runtime.bridge import Bridge


@pytest_asyncio.fixture
async def client(bridge: Bridge) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(bridge))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        yield client


async def _fill(sim: SimulatorHandle, bridge: Bridge) -> None:
    """One poll and one scoring cycle per plant sample, as the scheduler would run them."""
    for _ in range(bridge.runners["pump"].windows.length):
        await sim.wait_samples(1)
        await bridge.poll_device("plant")
        await bridge.score_model("pump")


async def test_health_tags_and_scores(sim: SimulatorHandle, bridge: Bridge,
                                      client: httpx.AsyncClient) -> None:
    await _fill(sim, bridge)
    health = (await client.get("/api/v1/health")).json()
    assert health["status"] == "ok"
    (device,) = health["devices"]
    assert device["name"] == "plant" and device["connected"] and device["error_count"] == 0
    assert device["poll_latency_ms"] > 0 and device["last_success"].endswith("Z")

    tags = {t["name"]: t for t in (await client.get("/api/v1/tags")).json()}
    assert set(tags) == set(bridge.tags)
    assert tags["pressure"]["quality"] == "good" and 2 < tags["pressure"]["value"] < 9
    assert tags["pressure"]["unit"] == "bar" and tags["pressure"]["device"] == "plant"
    assert tags["motor_running"]["value"] is True
    # The int16 x10 register and the float32 agree once scaled.
    assert abs(tags["temperature_x10"]["value"] - tags["temperature"]["value"]) < 0.2

    one = (await client.get("/api/v1/tags/pressure")).json()
    assert one["name"] == "pressure" and one["received_time"].endswith("Z")
    history = (await client.get("/api/v1/tags/pressure/history", params={"limit": 3})).json()
    assert len(history) == 3

    score = (await client.get("/api/v1/models/pump/score")).json()
    assert score["window_valid"] and score["anomaly"] is False
    assert 0 <= score["score"] < score["threshold"]
    assert set(score["contributions"]) == {"pressure", "flow", "current", "temperature", "vibration"}
    scores = (await client.get("/api/v1/models/pump/scores", params={"limit": 1000})).json()
    assert len(scores) == bridge.runners["pump"].windows.length
    assert [s["window_valid"] for s in scores][-1] is True and scores[0]["window_valid"] is False
    last_time = scores[-2]["time"]
    newer = (await client.get("/api/v1/models/pump/scores", params={"since": last_time})).json()
    assert len(newer) == 1

    model = (await client.get("/api/v1/models/pump")).json()
    assert model["features"] == ["pressure", "flow", "current", "temperature", "vibration"]
    assert model["window_length"] == bridge.runners["pump"].windows.length
    assert model["threshold"] > 0 and model["version"]
    assert [m["name"] for m in (await client.get("/api/v1/models")).json()] == ["pump"]


@pytest.mark.parametrize(("path", "params", "status"), [
    ("/api/v1/tags/nope", {}, 404),
    ("/api/v1/tags/nope/history", {}, 404),
    ("/api/v1/models/nope", {}, 404),
    ("/api/v1/models/nope/score", {}, 404),
    ("/api/v1/models/nope/scores", {}, 404),
    ("/api/v1/models/pump/scores", {"limit": "0"}, 422),
    ("/api/v1/models/pump/scores", {"limit": "99999999"}, 422),
    ("/api/v1/models/pump/scores", {"limit": "abc"}, 422),
    ("/api/v1/models/pump/scores", {"since": "yesterday-ish"}, 422),
    ("/api/v1/tags/pressure/history", {"since": "2026-13-45"}, 422),
    ("/api/v1/events", {"limit": "-1"}, 422),
    ("/api/v1/nothing-here", {}, 404),
])
async def test_bad_requests_get_4xx_with_detail(client: httpx.AsyncClient, path: str,
                                                params: dict[str, Any], status: int) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == status
    assert "detail" in response.json()


async def test_score_before_any_cycle_is_404_and_tags_are_bad(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/models/pump/score")).status_code == 404
    tag = (await client.get("/api/v1/tags/pressure")).json()
    assert tag["quality"] == "bad" and tag["value"] is None and tag["reason"] == "no reading yet"


async def test_openapi_schema_is_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/api/v1/health" in schema["paths"] and "/api/v1/models/{name}/scores" in schema["paths"]


async def test_writes_are_not_possible_over_http(client: httpx.AsyncClient) -> None:
    response = await client.put("/api/v1/tags/pressure", json={"value": 1})
    assert response.status_code == 405

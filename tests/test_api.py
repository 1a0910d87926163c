"""REST API against a bridge polling the real simulator over Modbus TCP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.routing import BaseRoute

from adapters.sim.modbus import SimulatorHandle
from bridge.api.app import create_app
from bridge.api.schemas import AGE_REFRESH, MqttStatus, TagReading
from bridge.cli.demo import demo_config
from bridge.core.scores import Score
from bridge.core.tags import Quality, Reading
from bridge.runtime.bridge import Bridge
from tests.waiting import until


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


# -- response schemas (issue 11) ----------------------------------------------------------


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The component a response schema points at (through one array level)."""
    if node.get("type") == "array":
        node = node["items"]
    ref = node["$ref"]
    resolved: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # Newer FastAPI keeps an included router as one entry of app.routes.
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


async def test_every_api_route_documents_its_response_fields(bridge: Bridge,
                                                            client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    routes = [r for r in _api_routes(create_app(bridge).routes) if r.path.startswith("/api/v1")]
    assert {r.path for r in routes} == {p for p in schema["paths"] if p.startswith("/api/v1")}
    assert len(routes) >= 12
    for route in routes:
        assert route.response_model is not None, route.path
        for method in route.methods or ():
            ok = schema["paths"][route.path][method.lower()]["responses"]["200"]
            body = _resolve(schema, ok["content"]["application/json"]["schema"])
            # A bare dict would be {"type": "object", "additionalProperties": true}: no fields.
            assert body.get("properties"), (route.path, body)
    components = schema["components"]["schemas"]
    # Every field of our own models says what it is (FastAPI's validation models are not ours).
    fastapi_own = {"HTTPValidationError", "ValidationError"}
    ours = {name: c for name, c in components.items() if name not in fastapi_own}
    for name, component in ours.items():
        for field, spec in component.get("properties", {}).items():
            assert spec.get("description") or "$ref" in spec or "items" in spec, (name, field)
    assert {"poll_latency_ms", "last_success", "error_count"} <= set(components["DeviceHealth"]["properties"])
    assert {"devices", "models", "mqtt", "uptime_s"} <= set(components["Health"]["properties"])
    assert {"value", "quality", "received_time"} <= set(components["TagReading"]["properties"])
    assert {"file", "features", "previous_version"} <= set(components["ModelInfo"]["properties"])
    assert {"score", "anomaly", "model_version"} <= set(components["ModelScore"]["properties"])
    assert {"kind", "detail"} <= set(components["Event"]["properties"])
    tags = schema["paths"]["/api/v1/tags"]["get"]["responses"]["200"]["content"]["application/json"]
    assert tags["schema"]["items"]["$ref"].endswith("/TagReading")


def test_mqtt_block_has_every_counter_of_the_sink() -> None:
    # MqttStatus ignores keys it does not know (a new counter must not break /health): this
    # is where a counter added to MqttStats without a field here is noticed.
    from bridge.sinks.mqtt import MqttStats

    assert set(MqttStatus.model_fields) == {f.name for f in fields(MqttStats)} | {"broker", "topic_prefix"}


class _FakeMqtt:
    name = "mqtt"

    def status(self) -> dict[str, Any]:
        from bridge.sinks.mqtt import MqttStats

        return {"broker": "broker:8883", "topic_prefix": "plcbridge/box",
                **asdict(MqttStats(connected=True, published=3)), "last_error_time": None}


async def test_health_shape(bridge: Bridge, client: httpx.AsyncClient) -> None:
    before = (await client.get("/api/v1/health")).json()
    assert before["mqtt"] is None and before["status"] == "degraded"
    (device,) = before["devices"]
    assert device == {"name": "plant", "connected": False, "last_success": None, "last_error": None,
                      "last_error_time": None, "polls": 0, "reconnects": 0, "errors": {},
                      "error_count": 0, "poll_latency_ms": None, "consecutive_errors": 0,
                      "last_exception_code": None, "rtt_ms": None, "overruns": 0, "stale": False,
                      "unit_state": "ok", "read_plan": device["read_plan"], "holes": [],
                      "write_mismatches": 0}
    assert device["read_plan"], "the planned requests are shown"
    (model,) = before["models"]
    assert model["writeback"] == {"mode": "on", "device": "plant", "written": 0, "dry_run": 0,
                                  "refused": 0, "failed": 0, "last_error": None}
    bridge.sinks.append(_FakeMqtt())  # type: ignore[arg-type]
    mqtt = (await client.get("/api/v1/health")).json()["mqtt"]
    assert mqtt["broker"] == "broker:8883" and mqtt["published"] == 3 and mqtt["connected"] is True


async def test_bulk_tags_match_the_one_tag_replies(sim: SimulatorHandle, bridge: Bridge,
                                                   client: httpx.AsyncClient) -> None:
    # /api/v1/tags is rendered from plain dicts for speed; it must be exactly what the
    # validated per-tag route returns, and valid against the documented item schema.
    for _ in range(2):
        await sim.wait_samples(1)
        await bridge.poll_device("plant")
    bridge.store.put(Reading("flow", float("nan"), Quality.BAD, 1_700_000_000.25, 1_700_000_000.0,
                             "not finite"))
    raw = (await client.get("/api/v1/tags")).content
    bulk = json.loads(raw)
    one = [(await client.get(f"/api/v1/tags/{name}")).json() for name in bridge.tags]
    # Ages are as of each reply's rendering: the bulk one is older by the time between them.
    bulk_ages, one_ages = [t.pop("age_s") for t in bulk], [t.pop("age_s") for t in one]
    assert bulk == one
    pairs = [(a, b) for a, b in zip(bulk_ages, one_ages, strict=True) if a is not None]
    assert pairs and all(0 <= a <= b <= a + AGE_REFRESH + 1 for a, b in pairs)
    TypeAdapter(list[TagReading]).validate_json(raw)
    flow = next(t for t in bulk if t["name"] == "flow")
    assert flow["value"] is None and flow["source_time"] == "2023-11-14T22:13:20.000Z"
    assert flow["received_time"] == "2023-11-14T22:13:20.250Z"


async def test_scores_and_events_null_non_finite_numbers(bridge: Bridge, client: httpx.AsyncClient) -> None:
    bridge.scores.put(Score("pump", 1_700_000_000.0, float("nan"), 1.5, False, True, "",
                            {"pressure": float("inf"), "flow": 0.25}, "1.2"))
    bridge.events.append({"model": "pump", "time": 1_700_000_000.0, "kind": "anomaly-start",
                          "score": 2.0, "threshold": 1.5,
                          "detail": {"contributions": {"flow": float("nan")}}})
    score = (await client.get("/api/v1/models/pump/score")).json()
    assert score == {"model": "pump", "time": "2023-11-14T22:13:20.000Z", "score": None, "threshold": 1.5,
                     "anomaly": False, "window_valid": True, "reason": "",
                     "contributions": {"pressure": None, "flow": 0.25}, "model_version": "1.2"}
    (event,) = (await client.get("/api/v1/events")).json()
    assert event == {"id": None, "model": "pump", "time": "2023-11-14T22:13:20.000Z", "kind": "anomaly-start",
                     "score": 2.0, "threshold": 1.5, "detail": {"contributions": {"flow": None}}}


async def test_no_reply_names_an_absolute_path(sim: SimulatorHandle, tmp_path: Path) -> None:
    config = demo_config(sim.port, api_port=0)
    data_dir = tmp_path / "data"
    config = config.model_copy(update={"storage": config.storage.model_copy(update={"data_dir": data_dir})})
    bridge = Bridge(config, speed=10)
    model_file = bridge.runners["pump"].detector.path
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(bridge)),
                                     base_url="http://bridge") as http:
            await _fill(sim, bridge)
            await bridge.flush_storage()
            replies = [await http.get(path) for path in (
                "/api/v1/health", "/api/v1/tags", "/api/v1/tags/pressure", "/api/v1/tags/pressure/history",
                "/api/v1/models", "/api/v1/models/pump", "/api/v1/models/pump/score",
                "/api/v1/models/pump/scores", "/api/v1/events", "/api/v1/live", "/openapi.json")]
            replies.append(await http.put("/api/v1/models/pump", content=model_file.read_bytes()))
            replies.append(await http.post("/api/v1/models/pump/rollback"))
            replies.append(await http.put("/api/v1/models/pump", content=b"not onnx"))
    finally:
        await bridge.stop()
    assert [r.status_code for r in replies] == [200] * 13 + [422]
    secrets = {str(model_file), str(model_file.parent), str(data_dir), str(tmp_path), str(Path.cwd())}
    for reply in replies:
        for secret in secrets:
            assert secret not in reply.text, (reply.request.url, secret)
    installed, rolled_back = replies[-3].json(), replies[-2].json()
    assert installed["status"] == "installed" and installed["file"] == "pump.onnx"
    assert installed["folder"] == "models"
    assert rolled_back["status"] == "rolled back" and rolled_back["file"] == model_file.name
    model = replies[5].json()
    assert model["file"] == model_file.name == "pump_pca.onnx"
    assert not any(str(v).startswith("/") for v in model["training"].values())


async def test_tag_age_counts_from_reception_and_the_bulk_reply_refreshes_it(
        bridge: Bridge, client: httpx.AsyncClient) -> None:
    received = time.time() - 2.0
    bridge.store.put(Reading("flow", 12.5, Quality.GOOD, received))
    one = (await client.get("/api/v1/tags/flow")).json()
    assert 2.0 <= one["age_s"] < 3.0
    first = next(t for t in (await client.get("/api/v1/tags")).json() if t["name"] == "flow")
    await until(lambda: time.time() - received >= first["age_s"] + AGE_REFRESH + 0.05, 5, "time to pass")
    # No store change since: the cached body is rendered again for its ages, not served stale.
    again = next(t for t in (await client.get("/api/v1/tags")).json() if t["name"] == "flow")
    assert again["age_s"] >= first["age_s"] + AGE_REFRESH
    assert (await client.get("/api/v1/tags/pressure")).json()["age_s"] is None  # never read

"""HTTP fuzzing of the whole OpenAPI schema with schemathesis: no 5xx with an admin token (so
model upload and rollback get garbage too),
every route but /api/v1/live refuses a request without one, and every reply (success or
error) matches the status codes, content type and body schema the OpenAPI document declares,
checked against a bridge holding data of every kind (bad and non-finite values, unscored
windows, events, write-back and MQTT counters)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.api.app import create_app
from bridge.api.auth import parse_tokens
from bridge.cli.demo import demo_config
from bridge.core.scores import Score
from bridge.core.tags import Quality, Reading
from bridge.runtime.bridge import Bridge

ADMIN = "fuzz-admin-token-0123456789"
CASES: Counter[str] = Counter()


# Port 1: nothing answers there; the API must cope with a bridge that has no data yet.
_BRIDGE = Bridge(demo_config(1, api_port=0))
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(_BRIDGE, parse_tokens(f"admin {ADMIN}\n")))
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])


@schema.parametrize()
@FUZZ
def test_no_server_error_with_token(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {ADMIN}"})
    CASES["authorized"] += 1
    assert response.status_code < 500, (case.path, case.query, response.text)


@schema.parametrize()
@FUZZ
def test_every_route_needs_a_token(case: Any) -> None:
    response = case.call()
    CASES["anonymous"] += 1
    if case.method.upper() != case.operation.method.upper():
        # schemathesis also tries undocumented methods: refused before anything else.
        assert response.status_code == 405, (case.method, case.path, response.status_code)
    elif case.path == "/api/v1/live":
        assert response.status_code == 200
    else:
        assert response.status_code == 401, (case.path, response.status_code)


# -- replies against the declared schemas, with data in every field ----------------------

T0 = 1_700_000_000.0


class _MqttCounters:
    name = "mqtt"

    def status(self) -> dict[str, Any]:
        return {"broker": "broker:8883", "topic_prefix": "plcbridge/fuzz", "connected": False,
                "published": 5, "spooled": 7, "dropped": 0, "queued": 2, "connects": 1,
                "reconnects": 0, "connect_failures": 3, "disconnects": 1,
                "last_error": "connection refused", "last_error_time": "2023-11-14T22:13:20.000Z"}


def _fed_bridge() -> Bridge:
    bridge = Bridge(demo_config(1, api_port=0))
    values: list[Any] = [1.5, float("nan"), 3, True, None, "text", float("inf")]
    for step in range(3):
        for index, name in enumerate(bridge.tags):
            quality = Quality.BAD if values[index % len(values)] is None else Quality.GOOD
            bridge.store.put(Reading(name, values[(index + step) % len(values)], quality,
                                     T0 + step, T0 + step - 0.5 if index % 2 else None,
                                     "" if quality is Quality.GOOD else "timeout"))
    status = bridge.adapters["plant"].status
    status.record_success(0.0123)
    status.record_error("timeout", "no reply in 0.5 s")
    bridge.scores.put(Score("pump", T0, None, 1.5, False, False, "window not full", None, "1.0.0"))
    bridge.scores.put(Score("pump", T0 + 1, 2.5, 1.5, True, True, "",
                            {"pressure": 0.7, "flow": float("nan")}, "1.0.0"))
    bridge.runners["pump"].scored, bridge.runners["pump"].anomalies = 2, 1
    bridge.events.append({"model": "pump", "time": T0 + 1, "kind": "anomaly-start", "score": 2.5,
                          "threshold": 1.5, "detail": {"contributions": {"pressure": 0.7}}})
    bridge.writebacks["pump"].stats.written = 4
    bridge.sinks.append(_MqttCounters())  # type: ignore[arg-type]
    return bridge


_FED = _fed_bridge()
fed_schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(_FED, parse_tokens(f"admin {ADMIN}\n")))
KNOWN = {"tags": sorted(_FED.tags), "models": sorted(_FED.runners)}


@fed_schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    # Random names almost never exist: turn about half into real ones, so the success bodies
    # with data get checked too, not only the 404s.
    name = (path_parameters or {}).get("name")
    if isinstance(name, str) and len(name) % 2 == 0 and context.operation is not None:
        known = KNOWN["tags" if "/tags/" in context.operation.path else "models"]
        path_parameters = {**(path_parameters or {}), "name": known[len(name) // 2 % len(known)]}
    return path_parameters


CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance]


@fed_schema.parametrize()
@FUZZ
def test_replies_match_the_declared_schema(case: Any) -> None:
    if case.method.upper() != case.operation.method.upper():
        return  # undocumented methods: 405 checked above, nothing declared to compare with
    response = case.call(headers={"Authorization": f"Bearer {ADMIN}"})
    CASES["validated"] += 1
    if response.status_code == 200:
        CASES[f"200 {case.operation.method.upper()} {case.operation.path}"] += 1
    case.validate_response(response, checks=CONFORMANCE)


def test_known_names_reply_with_data_matching_the_schema() -> None:
    # The same checks, once per operation, on the names that exist: the data-bearing replies
    # are validated whatever the random generation above happened to hit.
    expected = {"put": 422, "post": 409}  # a non-ONNX upload is refused; nothing to roll back
    checked = 0
    for result in fed_schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation schemathesis could not read
        operation = result.ok()
        method = operation.method.lower()
        if operation.path == "/api/v1/models/{name}" and method == "put":
            case = operation.Case(path_parameters={"name": "pump"}, body=b"not an onnx model",
                                  media_type="application/octet-stream")
        elif "{name}" in operation.path:
            known = KNOWN["tags" if "/tags/" in operation.path else "models"]
            case = operation.Case(path_parameters={"name": known[0]})
        else:
            case = operation.Case()
        response = case.call(headers={"Authorization": f"Bearer {ADMIN}"})
        assert response.status_code == expected.get(method, 200), (operation.label, response.text)
        case.validate_response(response, checks=CONFORMANCE)
        checked += 1
    assert checked >= 12


def test_zz_report_case_count() -> None:
    # Runs after the fuzz tests in this module (pytest keeps file order); the count goes in
    # the closing note. Fails if fuzzing silently generated nothing.
    print(f"schemathesis cases: {dict(CASES)}")
    assert CASES["authorized"] >= 50 and CASES["anonymous"] >= 50
    assert CASES["validated"] >= 50
    # The name mapping worked: data-bearing replies of the per-name routes were validated.
    assert CASES["200 GET /api/v1/tags/{name}"] and CASES["200 GET /api/v1/models/{name}/score"]

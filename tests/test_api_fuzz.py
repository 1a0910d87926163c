"""HTTP fuzzing of the whole OpenAPI schema with schemathesis: no 5xx with an admin token (so
model upload and rollback get garbage too), and
every route but /api/v1/live refuses a request without one."""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from bridge.api.app import create_app
from bridge.api.auth import parse_tokens
from bridge.cli.demo import demo_config
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


def test_zz_report_case_count() -> None:
    # Runs after the fuzz tests in this module (pytest keeps file order); the count goes in
    # the closing note. Fails if fuzzing silently generated nothing.
    print(f"schemathesis cases: {dict(CASES)}")
    assert CASES["authorized"] >= 50 and CASES["anonymous"] >= 50

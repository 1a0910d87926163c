"""packaging/grafana/plcbridge.json (issue 16, item 5): a provisionable dashboard whose every
query names metrics the bridge really exports, read from the running bridge's own registry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bridge.runtime.bridge import Bridge
from bridge.sinks.metrics import PrometheusMetrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "packaging" / "grafana" / "plcbridge.json"
METRIC = re.compile(r"\bplcbridge_[a-z0-9_]+")
# Names a query may use for each family type (Prometheus text exposition).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "info": ("_info",)}


def exported(bridge: Bridge) -> set[str]:
    """Every series name the bridge's /metrics can carry, families without samples included
    (an error kind or a write-back counter exists only once it happens)."""
    metrics = bridge.sink(PrometheusMetrics)
    assert metrics is not None
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def test_every_query_names_an_exported_metric(bridge: Bridge) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported(bridge)
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries nothing"
    assert sorted(used - names) == []
    # It covers what the issue names: devices, polls, errors, scores vs thresholds, anomalies,
    # write-back.
    for needed in ("plcbridge_device_connected", "plcbridge_device_polls_total",
                   "plcbridge_device_errors_total", "plcbridge_model_score", "plcbridge_model_threshold",
                   "plcbridge_model_anomalies_total", "plcbridge_model_writeback_total"):
        assert needed in used, needed


def test_the_checker_catches_a_misspelt_metric(bridge: Bridge) -> None:
    names = exported(bridge)
    assert "plcbridge_device_polls_total" in names
    assert "plcbridge_device_polls" not in names  # a counter is queried with _total
    assert "plcbridge_model_scores" not in names


def test_dashboard_is_provisionable(bridge: Bridge) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "plcbridge" and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "device", "model"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["refId"] for t in panel["targets"]), panel["title"]
        # Only the dashboard's own variables are referenced.
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables, target["expr"]

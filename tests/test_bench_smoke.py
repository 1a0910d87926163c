"""Smoke test of the benchmark harness: the smallest configuration of two benchmarks through
the same code as ``python -m bench``, and the results.json schema. No timing assertions:
speed is measured by ``make bench``, never asserted in unit tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import run_one
from bench._common import Context, environment

pytestmark = pytest.mark.timeout(60)

RESULT_KEYS = {"name", "value", "unit", "baseline", "baseline_name", "ratio", "higher_is_better", "params",
               "note"}


def test_smallest_benchmarks_write_results_and_report(tmp_path: Path) -> None:
    ctx = Context(quick=True, workdir=tmp_path, smoke=True)
    sections = [run_one(name, ctx).to_json() for name in ("inference", "poll")]
    results = tmp_path / "results.json"
    data = report.write_results(environment(quick=True), sections, merge=False, path=results)
    markdown = report.write_markdown(data, tmp_path / "BENCHMARKS.md")

    loaded = json.loads(results.read_text())
    assert loaded == data
    env = loaded["environment"]
    assert {"date", "cpu_count", "python", "libraries", "mode"} <= set(env)
    assert env["libraries"]["pymodbus"] and env["libraries"]["onnxruntime"]
    assert [s["name"] for s in loaded["benchmarks"]] == ["poll", "inference"]
    for section in loaded["benchmarks"]:
        assert not section["skipped"], section["skipped"]
        assert section["results"]
        for result in section["results"]:
            assert set(result) >= RESULT_KEYS
            # Every benchmark number comes with its baseline and a ratio.
            assert result["value"] > 0 and result["baseline"] > 0
            assert result["ratio"] is not None and result["ratio"] > 0
    text = markdown.read_text()
    assert "## Poll throughput" in text and "## Inference overhead" in text
    assert "TODO" not in text and "## Closing note" in text


@pytest.mark.timeout(120)
def test_soak_and_opcua_run_their_smallest_configuration(tmp_path: Path) -> None:
    """The soak (real bridge process, RSS samples, slope) and the OPC UA benchmark (asyncua
    servers in their own processes) through the same code, at their smallest size."""
    ctx = Context(quick=True, workdir=tmp_path, smoke=True)
    soak = run_one("soak", ctx).to_json()
    opcua = run_one("opcua", ctx).to_json()
    for section in (soak, opcua):
        assert not section["skipped"], section["skipped"]
        for result in section["results"]:
            assert set(result) >= RESULT_KEYS
            assert result["baseline"] is not None  # no benchmark without its baseline
    rss = {r["name"]: r for r in soak["results"]}
    assert rss["RSS at start (history full)"]["value"] > 0
    assert rss["RSS max"]["value"] >= rss["RSS at start (history full)"]["value"]
    assert "RSS slope, second half (linear fit)" in rss
    assert soak["checks"]["failed polls during the soak"] == 0
    curve = soak["curves"]["RSS over the soak"]
    assert len(curve["x"]) == len(curve["series"]["bridge"]) >= 3
    assert [r["unit"] for r in opcua["results"]] == ["reads/s", "ms", "notifications/s", "ms"]
    assert all(r["value"] > 0 and r["ratio"] is not None for r in opcua["results"])
    data = report.write_results(environment(quick=True), [soak, opcua], merge=False,
                                path=tmp_path / "results.json")
    text = report.write_markdown(data, tmp_path / "BENCHMARKS.md").read_text()
    assert "## Soak: memory over time" in text and "## OPC UA" in text


def test_linear_fit_slope() -> None:
    from bench.soak import slope_per_hour

    assert slope_per_hour([0, 1, 2, 3], [5, 5, 5, 5]) == 0
    assert slope_per_hour([0, 10, 20], [100, 101, 102]) == pytest.approx(360.0)
    assert slope_per_hour([0], [1]) == 0

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
    assert "OPC UA (TODO: not measured yet)" in text and "## Closing note" in text

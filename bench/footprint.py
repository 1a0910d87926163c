"""Footprint: RSS and CPU of ``plcbridge run`` at idle and with N tags polled at 1 Hz.

The bridge runs as its own process (``bench._bridge_proc run``: the CLI's ``main`` plus a
module probe on SIGUSR1), against one server process serving N/100 devices of 100 mixed-type
tags; with tags it also scores the default model and serves the API. CPU comes from
/proc/PID/stat over a window after warm-up; tag reads from the bridge's own poll counters.
Baselines, measured in the same run: RSS of a process that only imports the same libraries;
CPU of a raw pymodbus client polling the same planned requests on the same schedule.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench._bridge_proc import FOOTPRINT_CHILD, BridgeProcess, child_json, run_child, start_idle
from bench._common import PYTHON, Context, Result, Section, cpu_seconds, rss_mb, rss_parts_mb
from bench._servers import fleet_config, registers_for, servers, to_toml
from bridge.config import BridgeSection

NAME = "footprint"
TITLE = "Footprint"
TAGS_PER_DEVICE = 100
HISTORY = BridgeSection().history_size  # the default: readings kept per tag
RSS_LIMIT_MB = 100.0  # the foundation issue's budget at 1,000 tags with the default model


def _write(ctx: Context, name: str, config: dict[str, Any]) -> Path:
    path = ctx.workdir / f"{name}.toml"
    path.write_text(to_toml(config))
    return path


def _measure_bridge(path: Path, ctx: Context, warm: float, window: float) -> dict[str, Any]:
    bridge = BridgeProcess(path, ctx.workdir)
    try:
        bridge.wait_api()
        time.sleep(warm)
        polls0 = sum(d["polls"] for d in bridge.get("/api/v1/health")["devices"])
        cpu0, t0 = cpu_seconds(bridge.pid), time.perf_counter()
        time.sleep(window)
        cpu1, t1 = cpu_seconds(bridge.pid), time.perf_counter()
        polls1 = sum(d["polls"] for d in bridge.get("/api/v1/health")["devices"])
        return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "polls": polls1 - polls0,
                "rss_mb": bridge.rss(), "rss_parts": rss_parts_mb(bridge.pid),
                "probe": bridge.probe(), "uptime_s": warm + window}
    finally:
        bridge.stop()


def _stages(path: Path, seconds: float) -> list[tuple[str, float]]:
    """RSS after each step of a ``plcbridge run`` rebuilt by hand in one process."""
    steps = child_json([PYTHON, str(FOOTPRINT_CHILD), "stages", str(path), str(seconds)], "footprint stages",
                       seconds + 60)
    return [(stage, float(rss)) for stage, rss in steps]


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    warm, window = ctx.pick((1.5, 3.0), (4.0, 12.0))
    idle_proc = start_idle("imports")
    try:
        time.sleep(0.5)
        cpu0 = cpu_seconds(idle_proc.pid)
        time.sleep(window / 2)
        base_idle_cpu = (cpu_seconds(idle_proc.pid) - cpu0) / (window / 2) * 100
        base_rss = rss_mb(idle_proc.pid)
    finally:
        idle_proc.terminate()
        idle_proc.wait()
    floor_proc = start_idle("imports-model")
    try:
        time.sleep(0.5)
        floor_rss = rss_mb(floor_proc.pid)
    finally:
        floor_proc.terminate()
        floor_proc.wait()
    section.checks["RSS of the libraries alone (imported, nothing created), MB"] = round(base_rss, 1)
    section.checks["RSS of the libraries + one ONNX Runtime session of the default model, MB"] = round(
        floor_rss, 1)
    base = "process importing the same libraries"

    idle_config = {"api": {"port": 0}, "bridge": {"log_level": "info"}}
    idle = _measure_bridge(_write(ctx, "footprint_idle", idle_config), ctx, warm, window)
    section.results.append(Result("RSS, idle (API, no devices)", round(idle["rss_mb"], 1), "MB",
                                  round(base_rss, 1), base, higher_is_better=False))
    section.results.append(Result("CPU, idle", round(idle["cpu_s"] / idle["wall_s"] * 100, 2),
                                  "% of one core", round(base_idle_cpu, 2), base, higher_is_better=False))
    growth = run_child("history", "1000", str(HISTORY))["rss_growth_mb"] / 1000  # MB per tag, full history
    counts = ctx.pick((100, 1000), (100, 1000, 10_000))
    per_read: dict[str, list[float]] = {"plcbridge": [], "raw pymodbus poller": []}
    for tags in counts:
        devices = tags // TAGS_PER_DEVICE
        with servers(1, registers_for(TAGS_PER_DEVICE), devices) as started:
            config = fleet_config(started, TAGS_PER_DEVICE, model=True)
            path = _write(ctx, f"footprint_{tags}", config)
            m = _measure_bridge(path, ctx, warm, window)
            raw = run_child("raw-poll", str(path), str(window))
            if tags == 1000:
                # Where the bridge's CPU goes at 1,000 tags (its runtime, without the API).
                profile = run_child("profile", str(path), str(ctx.pick(4.0, 15.0)))
                section.profile = profile["profile"]
                stages = _stages(path, warm + window)
        reads = m["polls"] * TAGS_PER_DEVICE
        raw_reads = raw["polls"] * TAGS_PER_DEVICE
        per_read["plcbridge"].append(round(m["cpu_s"] / max(reads, 1) * 1000, 5))
        per_read["raw pymodbus poller"].append(round(raw["cpu_s"] / max(raw_reads, 1) * 1000, 5))
        params = {"tags": tags, "devices": devices, "poll_interval_s": 1.0, "model": "pump_pca",
                  "window_s": window}
        section.results.append(Result(f"RSS, {tags:,} tags @ 1 Hz", round(m["rss_mb"], 1), "MB",
                                      round(base_rss, 1), base, higher_is_better=False, params=params))
        # History fills for HISTORY s: project the RSS once every tag holds HISTORY readings.
        filled = min(HISTORY, m["uptime_s"])
        steady = m["rss_mb"] + growth * tags * (HISTORY - filled) / HISTORY
        section.results.append(Result(
            f"RSS, {tags:,} tags, history full (projected)", round(steady, 1), "MB", round(base_rss, 1), base,
            higher_is_better=False, params={**params, "history_size": HISTORY},
            note=f"measured RSS + {growth * 1000:.1f} MB per 1,000 tags of full history"))
        section.results.append(Result(f"CPU, {tags:,} tags @ 1 Hz", round(m["cpu_s"] / m["wall_s"] * 100, 2),
                                      "% of one core", round(raw["cpu_s"] / raw["wall_s"] * 100, 2),
                                      "raw pymodbus poller, same requests", higher_is_better=False,
                                      params=params))
        section.results.append(Result(
            f"CPU per 1,000 tag reads, {tags:,} tags", round(m["cpu_s"] / max(reads, 1) * 1000, 4),
            "CPU s", round(raw["cpu_s"] / max(raw_reads, 1) * 1000, 4), "raw pymodbus poller, same requests",
            higher_is_better=False, params={**params, "tag_reads": reads, "raw_tag_reads": raw_reads}))
        if tags == 1000:
            section.checks["asyncua imported (Modbus-only config, 1,000 tags)"] = m["probe"]["asyncua"]
            section.checks["onnx imported at runtime"] = m["probe"]["onnx"]
            section.checks["prometheus_client imported (no scrape yet)"] = m["probe"]["prometheus_client"]
            section.checks["RSS at 1,000 tags with default model, MB"] = round(m["rss_mb"], 1)
            section.checks["of which the bridge's own (RSS minus libraries + session), MB"] = round(
                m["rss_mb"] - floor_rss, 1)
            for part, size in m["rss_parts"].items():  # how much of it is shared library code
                section.checks[f"{part} at 1,000 tags, MB"] = round(size, 1)
            previous = 0.0
            for stage, rss in stages:  # where the RSS at 1,000 tags comes from, step by step
                section.checks[f"RSS step: {stage}, MB"] = (
                    f"{rss:.1f}" + (f" (+{rss - previous:.1f})" if previous else ""))
                previous = rss
            limit = f"RSS < {RSS_LIMIT_MB:g} MB at 1,000 tags"
            section.checks[f"{limit} (as measured)"] = m["rss_mb"] < RSS_LIMIT_MB
            section.checks["RSS at 1,000 tags, history full (projected), MB"] = round(steady, 1)
            section.checks[f"{limit} with history full (projected)"] = steady < RSS_LIMIT_MB
    section.curves["CPU per 1,000 tag reads vs tags (1 Hz polling)"] = {
        "x": list(counts), "xlabel": "tags polled at 1 Hz (100 per device)",
        "ylabel": "CPU seconds per 1,000 tag reads", "series": per_read}
    section.notes.append(
        f"RSS is VmRSS after {warm + window:g} s of uptime. The tag history (history_size = {HISTORY}) "
        f"keeps growing for {HISTORY} s at 1 Hz; a full history costs {growth * 1000:.0f} MB per 1,000 "
        "tags (measured: a TagStore filled in a child process), hence the projected rows.")
    return section

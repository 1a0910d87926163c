"""Scaling: poll-cycle jitter and CPU as devices grow 10 → 100 → 500.

Devices are unit ids spread over several server processes (at most 100 per process, 20
mixed-type tags each, one request per poll), polled every 1 s. The bridge side is the
bridge's runtime (APScheduler jobs, shared lines, adapters, TagStore) in its own process,
with poll completions recorded; the baseline is a raw pymodbus client in its own process
polling the same requests on an absolute 1 s schedule. Jitter is |Δ between a device's
successive poll completions − 1 s|; CPU is that process's CPU time over the window.
"""

from __future__ import annotations

from bench._bridge_proc import run_child
from bench._common import Context, Result, Section
from bench._servers import fleet_config, registers_for, servers, to_toml

NAME = "scaling"
TITLE = "Scaling with devices"
TAGS = 20
PROCESSES = {10: 1, 100: 2, 500: 5}  # server processes: ≤ 100 unit ids and ~100 req/s each


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    window = ctx.pick(2.5, 10.0)
    counts = ctx.pick((10, 100), (10, 100, 500))
    bridge_cpu, raw_cpu, bridge_p99, raw_p99, bridge_p50, raw_p50 = [], [], [], [], [], []
    for devices in counts:
        processes = PROCESSES[devices]
        with servers(processes, registers_for(TAGS), devices // processes) as started:
            path = ctx.workdir / f"scaling_{devices}.toml"
            path.write_text(to_toml(fleet_config(started, TAGS, api=False)))
            bridge = run_child("jitter", str(path), str(window))
            raw = run_child("raw-poll", str(path), str(window))
        params = {"devices": devices, "tags": devices * TAGS, "server_processes": processes,
                  "poll_interval_s": 1.0, "window_s": window, "polls": bridge["polls"],
                  "bad_polls": bridge["bad_polls"]}
        cpu_b = bridge["cpu_s"] / bridge["wall_s"] * 100
        cpu_r = raw["cpu_s"] / raw["wall_s"] * 100
        section.results.append(Result(f"CPU, {devices} devices", round(cpu_b, 2), "% of one core",
                                      round(cpu_r, 2), "raw pymodbus poller", higher_is_better=False,
                                      params=params))
        for q in ("p50", "p99"):
            section.results.append(Result(
                f"poll jitter {q}, {devices} devices", round(bridge[f"jitter_{q}_ms"], 2), "ms",
                round(raw[f"jitter_{q}_ms"], 2), "raw pymodbus poller", higher_is_better=False,
                params=params))
        section.results.append(Result(
            f"poll duration p99, {devices} devices", round(bridge["poll_p99_ms"], 2), "ms",
            round(raw["poll_p99_ms"], 2), "raw pymodbus poller", higher_is_better=False, params=params,
            note="from job start, including the wait for the shared line"))
        bridge_cpu.append(round(cpu_b, 2))
        raw_cpu.append(round(cpu_r, 2))
        bridge_p99.append(round(bridge["jitter_p99_ms"], 2))
        raw_p99.append(round(raw["jitter_p99_ms"], 2))
        bridge_p50.append(round(bridge["jitter_p50_ms"], 2))
        raw_p50.append(round(raw["jitter_p50_ms"], 2))
    section.curves["CPU vs devices (1 Hz polling)"] = {
        "x": list(counts), "xlabel": "devices (20 tags each)", "ylabel": "CPU, % of one core",
        "series": {"bridge": bridge_cpu, "raw pymodbus": raw_cpu}}
    section.curves["Poll jitter vs devices"] = {
        "x": list(counts), "xlabel": "devices (20 tags each)", "ylabel": "jitter, ms",
        "series": {"bridge p50": bridge_p50, "bridge p99": bridge_p99,
                   "raw p50": raw_p50, "raw p99": raw_p99}}
    return section

"""Soak: RSS of ``plcbridge run`` over time with 1,000 tags polled at 10 Hz and the default model.

The bridge runs as its own process (``bench._bridge_proc run``, i.e. ``plcbridge run``) polling
10 devices × 100 mixed-type tags every 0.1 s from two server processes (5 unit ids each),
scoring the default pump model and serving the API. Sampling starts after a warm-up longer
than it takes to fill every tag's history (``history_size`` readings at 10 Hz), so growth
from filling bounded buffers is not counted as a leak. RSS (VmRSS) is sampled every few
seconds for the stated time; the slope is a least-squares line through the second half of
the samples, in MB per hour. Baseline, sampled at the same instants: a process that only
imports the same libraries and idles (its slope is what flat looks like on this machine).
The bridge's own poll counters (``/api/v1/health``) show the load was really carried.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench._bridge_proc import BridgeProcess, start_idle
from bench._common import Context, Result, Section, cpu_seconds, rss_mb
from bench._servers import fleet_config, registers_for, servers, to_toml
from bridge.config import ApiConfig, BridgeSection

NAME = "soak"
TITLE = "Soak: memory over time"
DEVICES = 10
TAGS_PER_DEVICE = 100
POLL_INTERVAL = 0.1
SERVER_PROCESSES = 2
# The API keeps the last ApiConfig.score_history Scores per model; the default model scores
# once a second, so that ring is full this many seconds after start (its memory is allocated
# at start, but the slope after it is full covers every bounded buffer).
SCORE_HISTORY_FULL_S = ApiConfig().score_history * 1.0


def slope_per_hour(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against ``times`` (seconds), per hour; 0 for < 2 points."""
    n = len(times)
    if n < 2:
        return 0.0
    mean_t, mean_v = sum(times) / n, sum(values) / n
    var = sum((t - mean_t) ** 2 for t in times)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True))
    return cov / var * 3600


def _polls(bridge: BridgeProcess) -> tuple[int, int]:
    """(polls, error polls) summed over the bridge's devices."""
    devices = bridge.get("/api/v1/health")["devices"]
    return sum(d["polls"] for d in devices), sum(d["error_count"] for d in devices)


def _stats(times: list[float], values: list[float]) -> dict[str, float]:
    half = len(times) // 2
    return {"start": values[0], "end": values[-1], "max": max(values),
            "slope": slope_per_hour(times[half:], values[half:]),
            "slope_all": slope_per_hour(times, values)}


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    # Full: 3 min, so the whole `make bench` stays under the 15 minutes the issue allows.
    duration = ctx.soak_seconds or ctx.pick(60.0, 180.0, smoke=6.0)
    every = ctx.pick(2.0, 3.0, smoke=1.0) if duration < 600 else 10.0
    history = BridgeSection().history_size
    warm = history * POLL_INTERVAL + ctx.pick(4.0, 9.0, smoke=1.0)  # every tag's history is full
    with servers(SERVER_PROCESSES, registers_for(TAGS_PER_DEVICE), DEVICES // SERVER_PROCESSES) as started:
        config = fleet_config(started, TAGS_PER_DEVICE, poll_interval=POLL_INTERVAL, model=True)
        path = ctx.workdir / "soak.toml"
        path.write_text(to_toml(config))
        baseline = start_idle("imports")
        bridge = BridgeProcess(path, ctx.workdir)
        try:
            bridge.wait_api()
            time.sleep(warm)
            polls0, errors0 = _polls(bridge)
            cpu0, t0 = cpu_seconds(bridge.pid), time.monotonic()
            times: list[float] = []
            rss: list[float] = []
            base: list[float] = []
            next_t = t0
            while True:
                now = time.monotonic()
                times.append(now - t0)
                rss.append(rss_mb(bridge.pid))
                base.append(rss_mb(baseline.pid))
                if now - t0 >= duration:
                    break
                next_t += every
                time.sleep(max(0.0, min(next_t, t0 + duration) - time.monotonic()))
            cpu = cpu_seconds(bridge.pid) - cpu0
            wall = time.monotonic() - t0
            polls1, errors1 = _polls(bridge)
        finally:
            bridge.stop()
            baseline.terminate()
            baseline.wait()
    b, r = _stats(times, rss), _stats(times, base)
    polls = polls1 - polls0
    expected = DEVICES * wall / POLL_INTERVAL
    params: dict[str, Any] = {
        "tags": DEVICES * TAGS_PER_DEVICE, "devices": DEVICES, "poll_interval_s": POLL_INTERVAL,
        "model": "pump_pca", "history_size": history, "warm_up_s": round(warm, 1),
        "duration_s": round(wall, 1), "samples": len(times), "sample_every_s": every,
        "polls": polls, "error_polls": errors1 - errors0,
        "tag_reads_per_s": round(polls * TAGS_PER_DEVICE / wall),
        "polls_of_schedule": round(polls / expected, 3)}
    base_name = "process importing the same libraries"
    section.results += [
        Result("RSS at start (history full)", round(b["start"], 1), "MB", round(r["start"], 1), base_name,
               higher_is_better=False, params=params),
        Result(f"RSS at end ({wall:.0f} s later)", round(b["end"], 1), "MB", round(r["end"], 1), base_name,
               higher_is_better=False, params=params),
        Result("RSS max", round(b["max"], 1), "MB", round(r["max"], 1), base_name, higher_is_better=False,
               params=params),
        Result("RSS growth, end − start", round(b["end"] - b["start"], 2), "MB",
               round(r["end"] - r["start"], 2), base_name, higher_is_better=False, params=params,
               note="no ratio: a difference of two near-zero numbers"),
        Result("RSS slope, second half (linear fit)", round(b["slope"], 2), "MB/hour", round(r["slope"], 2),
               base_name, higher_is_better=False, params=params,
               note="no ratio: slopes are near zero and may be negative"),
    ]
    # Differences and slopes near zero make no meaningful ratio: shown, not divided.
    for result in section.results[3:]:
        result.ratio = None
    section.checks["CPU, % of one core during the soak"] = round(cpu / wall * 100, 1)
    section.checks["tag reads/s carried (of 10,000 scheduled)"] = params["tag_reads_per_s"]
    section.checks["failed polls during the soak"] = params["error_polls"]
    section.checks["RSS slope over the whole run, MB/hour"] = round(b["slope_all"], 2)
    section.checks["RSS slope ≤ 1 MB/hour over the second half (no growth seen)"] = b["slope"] <= 1.0
    section.notes.append(
        f"{DEVICES * TAGS_PER_DEVICE:,} tags at {1 / POLL_INTERVAL:g} Hz for {wall:.0f} s after a "
        f"{warm:.0f} s warm-up (history_size = {history}: full after {history * POLL_INTERVAL:g} s); "
        f"RSS sampled every {every:g} s. The score history (3,600 Scores per model, one a second) "
        "is a ring of columns written at start, so filling it in the first hour no longer moves the "
        "RSS; the slope after that hour is still the one that says whether memory grows once every "
        "bounded buffer is full; a run of minutes cannot exclude a slow leak of a few MB per day.")
    section.curves["RSS over the soak"] = {
        "x": [round(t, 1) for t in times], "xlabel": "seconds after warm-up", "ylabel": "RSS, MB",
        "xscale": "linear", "series": {"bridge": [round(v, 2) for v in rss],
                                       "imports-only baseline": [round(v, 2) for v in base]}}
    add_after_fill(section, warm)
    return section


def add_after_fill(section: Section, warm: float) -> None:
    """When the soak outlasts the filling of the score history, the slope after it is full:
    the one number that says whether memory still grows once every bounded buffer is full.
    Works on a finished section (its RSS curve), so stored results can be re-read too."""
    curve = section.curves["RSS over the soak"]
    full_at = SCORE_HISTORY_FULL_S - warm + 60.0  # sampling starts after the warm-up
    times = [t for t in curve["x"] if t >= full_at]
    if len(times) < 10 or times[-1] - times[0] < 600:
        return
    first = len(curve["x"]) - len(times)
    slopes = {name: slope_per_hour(times, values[first:]) for name, values in curve["series"].items()}
    label = f"RSS slope after the score history is full ({times[-1] - times[0]:.0f} s)"
    result = Result(label, round(slopes["bridge"], 2), "MB/hour",
                    round(slopes["imports-only baseline"], 2), "process importing the same libraries",
                    higher_is_better=False, params={"from_s": round(times[0], 1)},
                    note="no ratio: slopes are near zero and may be negative")
    result.ratio = None
    section.results = [r for r in section.results if not r.name.startswith("RSS slope after")]
    section.results.append(result)
    section.checks["RSS slope ≤ 1 MB/hour after the score history is full"] = slopes["bridge"] <= 1.0

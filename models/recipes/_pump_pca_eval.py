"""Evaluation and model card for the ``pump_pca`` recipe (numbers measured via onnxruntime)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adapters.sim.plant import PumpPlant
from bridge.scoring.detector import Detector
from models.recipes._pump_pca_fit import (
    CALIB_RUNS,
    CALIB_SEED,
    EPS,
    MARGIN,
    MARGIN_FLAT,
    N_COMPONENTS,
    PERIOD,
    QUANTILE,
    TEST_SEED,
    WINDOW,
    Fitted,
    normal_data,
    windows_of,
)

__all__ = ["evaluate", "fault_episode", "write_card"]

# 20 one-hour normal runs for the false-alarm figure. Seeds 7000.. (and TEST_SEED and the fault
# lead-ins) were looked at while choosing margins and training runs; 8000.. only afterwards.
FRESH_SEED, FRESH_RUNS = 8000, 20
DRIFT_SWEEP = (0.04, 0.12, 0.16)  # extra drift rates evaluated for the card (default is the plant's)
FAULT_TYPES = ("spike", "stuck", "drift", "cavitation")


def fault_episode(
    fault: str, seed: int, warmup: float, after: float, drift_rate: float | None = None
) -> np.ndarray:
    """Normal run for ``warmup`` s, then ``fault`` for ``after`` s; [T, F] samples at PERIOD."""
    plant = PumpPlant(seed) if drift_rate is None else PumpPlant(seed, drift_rate=drift_rate)
    head = plant.run(warmup, PERIOD)
    plant.inject(fault)
    return np.concatenate([head, plant.run(after, PERIOD)])


def evaluate(model_path: Path, *, test_seconds: float = 14400.0, episodes: int = 10) -> dict[str, object]:
    """False alarms on held-out normal data, detection per fault, latency — all via onnxruntime."""
    det = Detector(model_path)
    result: dict[str, object] = {}
    test = normal_data(TEST_SEED, test_seconds)
    scores = det.score_batch(windows_of(test).astype(np.float32))
    alarms = int((scores >= det.threshold).sum())
    events = _events(scores >= det.threshold)
    result["normal"] = {
        "seconds": test_seconds,
        "windows": len(scores),
        "alarm_windows": alarms,
        "alarm_events": events,
        "events_per_hour": events / (test_seconds / 3600.0),
        "max_score": float(scores.max()),
        "p999_score": float(np.quantile(scores, 0.999)),
    }
    # A second normal set never looked at while designing: many seeds = many operating points.
    fresh_scores = [
        det.score_batch(windows_of(normal_data(seed, 3600.0)).astype(np.float32))
        for seed in range(FRESH_SEED, FRESH_SEED + FRESH_RUNS)
    ]
    fresh_events = sum(_events(s >= det.threshold) for s in fresh_scores)
    result["fresh"] = {
        "runs": FRESH_RUNS,
        "hours": float(FRESH_RUNS),
        "windows": int(sum(len(s) for s in fresh_scores)),
        "alarm_windows": int(sum(int((s >= det.threshold).sum()) for s in fresh_scores)),
        "alarm_events": fresh_events,
        "events_per_hour": fresh_events / FRESH_RUNS,
        "max_score": float(max(float(s.max()) for s in fresh_scores)),
    }
    warmup, after = 600.0, 120.0
    faults: dict[str, dict[str, float | int]] = {}
    pre_alarms = 0
    cases = [(f, f, None) for f in FAULT_TYPES] + [
        (f"drift {rate * 100:g} %/min", "drift", rate) for rate in DRIFT_SWEEP
    ]
    for label, fault, rate in cases:
        delays: list[float] = []
        for i in range(episodes):
            data = fault_episode(fault, 5000 + 100 * FAULT_TYPES.index(fault) + i, warmup, after, rate)
            s = det.score_batch(windows_of(data).astype(np.float32))
            # Window j ends at sample j + WINDOW - 1, i.e. at time (j + WINDOW) * PERIOD.
            end_time = (np.arange(len(s)) + WINDOW) * PERIOD
            if rate is None:  # the sweep reuses the same lead-ins: count them once
                pre_alarms += int((s[end_time <= warmup] >= det.threshold).sum())
            hit = np.nonzero((s >= det.threshold) & (end_time > warmup))[0]
            if len(hit):
                delays.append(float(end_time[hit[0]] - warmup))
        faults[label] = {
            "episodes": episodes,
            "detected": len(delays),
            "detected_within_30s": sum(d <= 30.0 for d in delays),
            "mean_delay_s": float(np.mean(delays)) if delays else float("nan"),
            "max_delay_s": float(np.max(delays)) if delays else float("nan"),
        }
    result["faults"] = faults
    result["warmup_alarm_windows"] = pre_alarms
    result["latency"] = _latency(det.score, windows_of(test[:200]).astype(np.float32)[0])
    return result


def _events(flags: np.ndarray) -> int:
    """Number of alarm events: runs of consecutive anomalous windows."""
    f = flags.astype(np.int8)
    return int(((f[1:] == 1) & (f[:-1] == 0)).sum() + f[:1].sum())


def _latency(score: Callable[[np.ndarray], object], window: np.ndarray, runs: int = 3000) -> dict[str, float]:
    for _ in range(200):  # warm-up
        score(window)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        score(window)
        times[i] = time.perf_counter() - t0
    return {"median_us": float(np.median(times) * 1e6), "p99_us": float(np.quantile(times, 0.99) * 1e6)}


def write_card(
    path: Path, model_path: Path, fitted: Fitted, train_seconds: float, ev: dict[str, object]
) -> None:
    c = Detector(model_path).contract
    normal = ev["normal"]
    fresh = ev["fresh"]
    faults = ev["faults"]
    lat = ev["latency"]
    assert isinstance(normal, dict) and isinstance(fresh, dict)
    assert isinstance(faults, dict) and isinstance(lat, dict)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    rows = "\n".join(
        f"| {name} | {f['detected']}/{f['episodes']} | {f['detected_within_30s']}/{f['episodes']} "
        f"| {f['mean_delay_s']:.1f} | {f['max_delay_s']:.1f} |"
        for name, f in faults.items()
    )
    text = f"""# Model card: `{model_path.name}` ({c.name} {c.version})

Built by `python -m models.recipes.pump_pca --out {model_path.as_posix()}`
(deterministic: same arguments, byte-identical file). sha256 `{digest}`, {model_path.stat().st_size} bytes.
The full contract is in the ONNX metadata under `plcbridge.contract`.

## Inputs and outputs

- Input `window`: float32 `[batch, {c.window_length}, {len(c.inputs)}]`, raw engineering units, one
  sample every {c.period:g} s, columns in this order: {', '.join(f'`{i}`' for i in c.inputs)}.
- Output `score`: float32 `[batch]`; **anomalous when score >= {c.threshold:g}**.
- Output `contrib`: float32 `[batch, {len(c.inputs)}]`, per-input share (residual² / SPE limit +
  roughness² / roughness limit); the largest entry names the signal to look at.

## What the model computes

1. z-score each signal with the training mean/std (embedded as initializers).
2. Level features: window mean of each z-signal, standardised, projected on a {N_COMPONENTS}-component
   PCA (the plant has three slow hidden states: pump speed, valve opening and the lagged motor
   temperature). **SPE** = residual off the PCA subspace, whitened per minor component (a
   Mahalanobis distance in the residual space); **T²** = Hotelling statistic in the subspace.
   Slow operating-point drift moves the point inside the subspace, so it raises neither much;
   a drifting sensor or cavitation leaves the subspace.
3. Roughness features: `log(RMS(first differences) + {EPS:g})` per z-signal, scaled by the upper or
   lower semi-deviation, squared; the worst signal counts. A stuck sensor sends it to
   `log({EPS:g})`; spikes and cavitation noise raise it.
4. `score = max(SPE / L_spe, T² / L_t2, R_up / L_rough, R_low / L_flat)`: R_up is the worst
   signal's "rougher than usual" (spikes, noise), R_low its "smoother than usual" (frozen sensor).

## Training data

- `{c.training['source']}`, {c.training['rows']} rows,
  sha256 of the float64 array `{c.training['sha256']}`.
- Operating point drifts (demand period 25-45 min, valve period 15-30 min, OU noise, ambient drift),
  so training covers a range of operating points, not one.

## Threshold calibration

Each part's limit is the {QUANTILE * 100:g}th percentile of that part on held-out normal data from
{CALIB_RUNS} other seeds (`PumpPlant(seed={CALIB_SEED}..{CALIB_SEED + CALIB_RUNS - 1})`,
{CALIB_RUNS} × {train_seconds:.0f} s) × margin {MARGIN:g}; the
threshold of the combined score is therefore 1.0.
Margins: {MARGIN:g} for SPE, T² and roughness; {MARGIN_FLAT:g} for flatness (the lower tail of a
log-RMS is heavy; a frozen sensor still scores 10-30× this limit).
Limits (unscaled): L_spe = {fitted.lim_spe:.4g}, L_t2 = {fitted.lim_t2:.4g},
L_rough = {fitted.lim_rough:.4g}, L_flat = {fitted.lim_flat:.4g}.

## Measured (onnxruntime, this file)

Design history, for honesty: margins (1.5 → 2 for SPE/T²/roughness, 3 for flatness) and the
move to 3 training runs were chosen after looking at alarms on `seed={TEST_SEED}`, seeds 7000-7019
(20 h: 1 alarm window, max score 1.02 with the final model) and the fault lead-ins below.

Held-out normal data, third seed (`PumpPlant(seed={TEST_SEED})`, {normal['seconds']:.0f} s,
{normal['windows']} windows, stride 1 s):
alarm windows **{normal['alarm_windows']}**, alarm events {normal['alarm_events']}
(**{normal['events_per_hour']:.2f} false alarms per hour**), max score {normal['max_score']:.3f},
99.9th percentile {normal['p999_score']:.3f}.

Fresh normal data, {fresh['runs']} one-hour runs
(`PumpPlant(seed={FRESH_SEED}..{FRESH_SEED + FRESH_RUNS - 1})`,
{fresh['windows']} windows, first evaluated after the design was frozen): alarm windows
**{fresh['alarm_windows']}**,
alarm events {fresh['alarm_events']} (**{fresh['events_per_hour']:.2f} false alarms per hour**), max score
{fresh['max_score']:.3f}. (Each run starts at t = 0, so these include the first minutes of the plant.)

Faults (each episode: 600 s normal, then the fault from `PumpPlant.inject` with default parameters,
120 s observed; delay = end time of the first window with score >= threshold minus injection time;
windows of the 600 s normal lead-in that alarmed: {ev['warmup_alarm_windows']}):

| fault | detected | within 30 s | mean delay (s) | max delay (s) |
|---|---|---|---|---|
{rows}

Default fault parameters: spike ±25 % on `pressure` every ~4 s for 1 s; stuck `flow`; drift of
`pressure` at +{PumpPlant().drift_rate * 100:g} %/min; cavitation (flow -25 %, vibration +70 % and
5× noisier, pressure/current unchanged).

Scoring latency, one window, `Detector.score` (onnxruntime, 1 intra-op thread, includes Python
overhead): median **{lat['median_us']:.1f} µs**, p99 {lat['p99_us']:.1f} µs.

## Limits

- Trained on simulated data only (`adapters.sim.plant`); it knows nothing about a real pump.
- A stuck sensor is only seen once the whole window is flat (~{WINDOW} s).
- Drift is the hardest case: a single drifting pressure sensor looks partly like a change of pump
  speed, so only the part of it that breaks the pressure/flow/vibration coupling counts. At the
  plant's default +8 %/min it is caught in 30-45 s, not within 30 s; see the sweep rows above
  (120 s observation window: slower drifts may be "not detected" here but caught later).
"""
    path.write_text(text, encoding="utf-8")

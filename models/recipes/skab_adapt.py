"""Measure online adaptation and alarm hysteresis (issue 12, items 2-3); write docs/skab.md's section.

Run: ``python -m models.recipes.skab_adapt [--data ../shared/data/skab] [--out docs/skab.md]``
(deterministic; a few minutes on one core). It replaces the part of ``--out`` between the
``<!-- adapt:begin -->`` and ``<!-- adapt:end -->`` markers (``models.recipes.skab_report`` keeps
that part when it regenerates the rest), or prints the section with ``--out -``.

Every number goes through ``bridge.ml.evaluate.evaluate_table``, i.e. the live ``ModelRunner``
fed the replayed windows in order: the counts are on the alarm output the bridge raises.

- **Simulator** (``adapters.sim.plant``, our own plant, no labels needed from anywhere): a pca
  model trained on 20 minutes of normal operation, then 4 hours of normal operation (FAR), and
  the simulator's ``drift`` fault (one sensor drifts away by a share of its value per minute) at
  several rates and start times (detection delay).
- **SKAB anomaly-free** (a design file): FAR over the rows after the 400 training rows, and a slow
  linear ramp added to one input from a chosen row on, at slopes in training sd per minute: the
  ramp rows are the labelled fault, the delay is to the first alarm inside it.
- **SKAB valve1**: settings chosen on the design files valve1/0-7 (and anomaly-free), reported
  on valve1/8-15. The report files are the ones ``skab_report`` already reports on, so they are
  not untouched data for this section either: they were never used to choose anything here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bridge.ml.dataset import Table, load_csv
from bridge.ml.detection import Counts
from bridge.ml.evaluate import AlarmConfig, FileResult, evaluate_table
from bridge.ml.options import DYNAMIC_RECIPE
from bridge.ml.train import TrainOptions, train
from bridge.scoring.detector import Detector
from models.recipes import skab_report
from models.recipes._adapt_sim import (
    ADAPT,
    STATS,
    TIGHT,
    before_pct,
    delay_of,
    fmt,
    median_text,
    sim_section,
    tradeoff_section,
)

__all__ = ["ADAPT", "ALARM", "BEGIN", "END", "main", "section"]

BEGIN, END = skab_report.ADAPT_BEGIN, skab_report.ADAPT_END
TRAIN_ROWS = 400  # SKAB protocol
DESIGN, REPORT = tuple(str(i) for i in range(8)), tuple(str(i) for i in range(8, 16))
# The hysteresis measured, chosen on the design files (--choose prints the grid it was chosen
# from); the adaptation measured is models.recipes._adapt_sim.ADAPT, the config defaults.
ALARM = AlarmConfig(on=1.0, off=1.0, min_on_windows=3, min_off_windows=10)
ALARM_GRID = [AlarmConfig(on=on, off=off, min_on_windows=a, min_off_windows=b)
              for on in (1.0,) for off in (1.0, 0.8, 0.6) for a in (1, 3, 5) for b in (1, 10, 30)]
RAMP_SLOPES = (0.1, 0.3, 1.0)  # training sd per minute
RAMP_STARTS = (2000, 5000, 8000)  # rows of anomaly-free
RAMP_ROWS = 2400  # 40 minutes of ramp, then the file goes on normal


def _ramped(table: Table, column: str, start: int, slope_sd_min: float, sd: float) -> Table:
    values = table.values.copy()
    j = table.columns.index(column)
    stop = min(start + RAMP_ROWS, len(table))
    minutes = (table.times[start:stop] - table.times[start]) / 60.0
    values[start:stop, j] += slope_sd_min * sd * minutes
    labels = np.zeros(len(table), dtype=np.int8)
    labels[start:stop] = 1
    return dataclasses.replace(table, values=values, labels=labels)


def free_section(data: Path, tmp: Path) -> list[str]:
    free = load_csv(data / "anomaly-free" / "anomaly-free.csv")
    free = dataclasses.replace(free, labels=np.zeros(len(free), dtype=np.int8))
    lines = ["### SKAB anomaly-free (design file)", "",
             f"Trained on its first {TRAIN_ROWS} rows (all 8 inputs), FAR over the other "
             f"{len(free) - TRAIN_ROWS} rows:", "",
             "| recipe | FAR %, no adaptation | with adaptation | adaptation updates |", "|---|---|---|---|"]
    dets: dict[str, Detector] = {}
    for label, opts in _recipes().items():
        model = tmp / f"free_{label.split()[0]}_{len(dets)}.onnx"
        train(free, model, opts)
        det = dets[label] = Detector(model)
        off = evaluate_table(det, free, test_from=TRAIN_ROWS)
        on = evaluate_table(det, free, test_from=TRAIN_ROWS, adapt=ADAPT)
        lines.append(f"| {label} | {off.counts.far:.2f} | {on.counts.far:.2f} | {on.adapt_version} |")
        STATS.setdefault("free_far", []).append((label, off.counts.far, on.counts.far))
        if label == "pca":
            # How far the fastest-drifting input moves, in the training sd adaptation steps in.
            j = det.contract.inputs.index("Thermocouple")
            mean, sd = (float(det.contract.training[k][j]) for k in ("input_mean", "input_sd"))
            z = (free.select(["Thermocouple"])[:, 0] - mean) / sd
            STATS["thermo"] = [(float(z[TRAIN_ROWS + 540:TRAIN_ROWS + 600].mean()), float(z[-60:].mean()))]
    label = "pca (dynamic)"
    det = dets[label]
    column = "Current"
    assert column in det.contract.training["level_inputs"], "the text below says its level is kept"
    sd = float(det.contract.training["input_sd"][det.contract.inputs.index(column)])
    lines += ["", f"A linear ramp added to `{column}` (one of the inputs whose level the {label} model "
              f"keeps) from a row on, for {RAMP_ROWS} rows, at a slope in training sd ({sd:.4g} A) per "
              "minute; the ramp rows are the fault. Delay in seconds to the first alarm in the ramp "
              f"({label}), and in brackets the alarm share (%) in the 10 minutes before it:", "",
              "| slope sd/min | ramp from row | delay s, no adaptation (before %) | with adaptation "
              "(before %) | adaptation's offset of the input at the ramp start, sd |",
              "|---|---|---|---|---|"]
    for slope in RAMP_SLOPES:
        for start in RAMP_STARTS:
            ramped = _ramped(free, column, start, slope, sd)
            off = evaluate_table(det, ramped, test_from=TRAIN_ROWS)
            on = evaluate_table(det, free.head(start), test_from=TRAIN_ROWS, adapt=ADAPT)  # before it
            offset = on.adapt_offset_sd.get(column, 0.0) if on.adapt_offset_sd else 0.0
            on = evaluate_table(det, ramped, test_from=TRAIN_ROWS, adapt=ADAPT)
            lines.append(f"| {slope:g} | {start} | {fmt(delay_of(off))} ({before_pct(off):.0f}) | "
                         f"{fmt(delay_of(on))} ({before_pct(on):.0f}) | {offset:+.2f} |")
            STATS.setdefault("ramp", []).append((delay_of(off), delay_of(on)))
    return lines


def _recipes() -> dict[str, TrainOptions]:
    return {"pca (dynamic)": TrainOptions(kind="pca", train_rows=TRAIN_ROWS, **DYNAMIC_RECIPE),  # type: ignore[arg-type]
            "pca": TrainOptions(kind="pca", train_rows=TRAIN_ROWS)}


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))


def _sum(results: dict[str, FileResult], stems: Sequence[str], raw: bool = False) -> Counts:
    out = Counts()
    for stem in stems:
        r = results[stem]
        out += (r.raw if raw and r.raw is not None else r.counts)
    return out


def _cells(c: Counts) -> str:
    return f"{c.f1:.2f} | {c.far:.2f} | {c.mar:.2f}"


def valve_models(data: Path, tmp: Path,
                 stems: Sequence[str] = DESIGN + REPORT) -> dict[str, dict[str, Detector]]:
    out: dict[str, dict[str, Detector]] = {}
    for label, opts in _recipes().items():
        out[label] = {}
        for path in (p for p in _files(data / "valve1") if p.stem in stems):
            model = tmp / f"valve1_{path.stem}_{label.split()[-1].strip('()')}.onnx"
            train(load_csv(path), model, opts)
            out[label][path.stem] = Detector(model)
    return out


def _eval_all(data: Path, dets: dict[str, Detector], **kw: object) -> dict[str, FileResult]:
    return {p.stem: evaluate_table(dets[p.stem], load_csv(p), test_from=TRAIN_ROWS, **kw)  # type: ignore[arg-type]
            for p in _files(data / "valve1")}


def valve_section(data: Path, tmp: Path) -> list[str]:
    models = valve_models(data, tmp)
    lines = ["### SKAB valve1: F1 / FAR % / MAR % on the alarm output", "",
             "Per file trained on its first 400 rows, counted on the rest (the protocol of the table "
             "above). *alarm* is what the bridge raises (write-back, events, `anomaly`); *score alone* "
             "is `score >= threshold` per window on the same run (with adaptation, the runner's "
             "score: near the threshold the lower of the adapted window's and the window's as sampled).", "",
             "| recipe | variant | design (valve1/0-7) alarm: F1 | FAR % | MAR % | design, score alone: F1 "
             "| FAR % | MAR % | **report (valve1/8-15) alarm: F1** | **FAR %** | **MAR %** | report, score "
             "alone: F1 | FAR % | MAR % | median delay s (report) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    variants: dict[str, dict[str, object]] = {
        "none": {}, "adaptation": {"adapt": ADAPT},
        f"hysteresis (on {ALARM.on:g}, off {ALARM.off:g}, {ALARM.min_on_windows}/{ALARM.min_off_windows} "
        "windows)": {"alarm": ALARM},
        "both": {"adapt": ADAPT, "alarm": ALARM}}
    for label, dets in models.items():
        for name, kw in variants.items():
            res = _eval_all(data, dets, **kw)
            delays = [s.delay_s for stem in REPORT for s in res[stem].segments if s.delay_s is not None]
            design, report = _sum(res, DESIGN), _sum(res, REPORT)
            STATS.setdefault("valve", []).append((label, name, design, report))
            lines.append(f"| {label} | {name} | {_cells(design)} | {_cells(_sum(res, DESIGN, True))} "
                         f"| **{report.f1:.2f}** | **{report.far:.2f}** | **{report.mar:.2f}** | "
                         f"{_cells(_sum(res, REPORT, True))} | "
                         f"{statistics.median(delays) if delays else float('nan'):.0f} |")
    return lines


def choose(data: Path, tmp: Path) -> list[str]:
    """The hysteresis grid on the design files only (how ALARM was chosen)."""
    models = valve_models(data, tmp, DESIGN)
    out = ["| recipe | on | off | min on | min off | design F1 | FAR % | MAR % |",
           "|---|---|---|---|---|---|---|---|"]
    best: tuple[float, float, str] | None = None
    for label, dets in models.items():
        stems = {p.stem: p for p in _files(data / "valve1") if p.stem in DESIGN}
        tables = {s: load_csv(p) for s, p in stems.items()}
        for cfg in ALARM_GRID:
            c = sum((evaluate_table(dets[s], tables[s], test_from=TRAIN_ROWS, alarm=cfg).counts
                     for s in stems), Counts())
            row = f"| {label} | {cfg.on:g} | {cfg.off:g} | {cfg.min_on_windows} | {cfg.min_off_windows} | "
            out.append(f"{row}{c.f1:.4f} | {c.far:.2f} | {c.mar:.2f} |")
            # The rule of docs/skab.md: the highest design F1 with FAR <= 10 %; then the lower FAR.
            if c.far <= 10.0 and (best is None or (c.f1, -c.far) > best[:2]):
                best = (c.f1, -c.far, row)
    out.append(f"chosen: {best[2] if best else 'none'}")
    return out


def section(data: Path, tmp: Path) -> str:
    started = time.perf_counter()
    body = [*sim_section(tmp), "", *tradeoff_section(), "", *free_section(data, tmp), "",
            *valve_section(data, tmp)]
    a = ADAPT
    head = [
        BEGIN,
        "## Online adaptation and alarm hysteresis (issue 12, items 2-3)",
        "",
        "Generated by `python -m models.recipes.skab_adapt` (deterministic; "
        f"{time.perf_counter() - started:.0f} s on this machine). Do not edit by hand.",
        "",
        "- Adaptation measured: the `[models.adapt]` defaults, chosen on the simulator by the rule under "
        f"the trade-off table: rate {a.rate:g}, max_step_sd "
        f"{a.max_step_sd:g}, max_shift_sd {a.max_shift_sd:g}, hold_off_windows {a.hold_off_windows}, "
        f"learn_below {a.learn_below:g}. Hysteresis measured: on {ALARM.on:g}, off {ALARM.off:g}, "
        f"min_on_windows {ALARM.min_on_windows}, min_off_windows {ALARM.min_off_windows}, chosen on the "
        "design files (valve1/0-7; `--choose` prints the grid).",
        "- Every run goes through the live `ModelRunner` (`bridge.ml.evaluate`), window by window, each "
        "file starting from the trained baseline with the alarm off.",
        "- Files: the simulator and SKAB anomaly-free and valve1/0-7 (design) for every choice; valve1/8-15 "
        "only reported. The report files are not fresh data: `skab_report` already reports on them (and "
        "its diagnosis looked at them); nothing in this section was chosen on them.",
        "",
    ]
    return "\n".join([*head, *_reading(), "", *body, "", END])


def _reading() -> list[str]:
    """The summary, every figure from the runs below (STATS)."""
    far = STATS["sim_far"]
    off = sum((c[0] for c in far), Counts())
    on = sum((c[1] for c in far), Counts())
    slow = [d for d in STATS["sim_slow_delays"] if d[2] < 1.0]  # the model was quiet before the fault
    missed = sum(1 for d in slow if d[1] is None)
    fast = STATS["sim_fast_delays"]
    ramps = STATS["ramp"]
    slow_off = [d[0] for d in slow if d[0] is not None]
    slow_on = [d[1] for d in slow if d[1] is not None]
    both = [(a, b) for a, b in ramps if a is not None and b is not None]
    assert len(both) == len(ramps), "a ramp was missed: the text below would not hold"
    gap = max(abs(b - a) for a, b in both)
    ad = {(label, name): (d, r) for label, name, d, r in STATS["valve"] if name in ("none", "adaptation")}
    valve = "; ".join(
        f"{label}: design FAR {ad[(label, 'none')][0].far:.2f} -> {ad[(label, 'adaptation')][0].far:.2f} %, "
        f"MAR {ad[(label, 'none')][0].mar:.2f} -> {ad[(label, 'adaptation')][0].mar:.2f} %; report FAR "
        f"{ad[(label, 'none')][1].far:.2f} -> {ad[(label, 'adaptation')][1].far:.2f} %, MAR "
        f"{ad[(label, 'none')][1].mar:.2f} -> {ad[(label, 'adaptation')][1].mar:.2f} %"
        for label in dict.fromkeys(label for label, _ in ad))
    thermo = STATS["thermo"][0]
    dyn = {name: (d, r) for label, name, d, r in STATS["valve"] if label == "pca (dynamic)"}
    hyst = next(k for k in dyn if k.startswith("hysteresis"))
    hd, hr = (dyn["none"][0], dyn[hyst][0]), (dyn["none"][1], dyn[hyst][1])
    free = "; ".join(f"{label} {a:.2f} % -> {b:.2f} %" for label, a, b in STATS["free_far"])
    return [
        "**What was measured (details below):**",
        "",
        f"- **False alarms: lower on the simulator, not on SKAB anomaly-free.** Simulator, 3 seeds x 4 h of "
        f"normal operation: FAR {off.far:.2f} % without adaptation, {on.far:.2f} % with it (the "
        "operating point and the ambient temperature drift away from the 20 training minutes). SKAB "
        f"anomaly-free: {free}. The level pca's FAR stays near 100 % because the drift there is too "
        f"fast for the guards: `Thermocouple` is {thermo[0]:.0f} training sd away 10 minutes after "
        f"training and {thermo[1]:.0f} sd at the end of the file, so the score crosses the threshold "
        "before a bounded, slow baseline can follow, and from then on the adaptation is frozen (it "
        "never learns from an anomalous window). That is the guard working as designed; it means "
        "adaptation does not rescue a model trained on too short a recording.",
        f"- **Slow faults: found later, up to the cap.** The simulator's fast drift (8 %/min) was found "
        f"within {max((d[1] or 0) for d in fast):.0f} s with adaptation in all {len(fast)} runs. For the "
        f"slow drifts (1 and 0.25 %/min) in the {len(slow)} runs where the model was quiet before the "
        f"fault (under 1 % alarms in the 10 minutes before), the median delay went from "
        f"{median_text(slow_off)} s to {median_text(slow_on)} s (of those found; not found within the "
        f"run: {missed}): a drift as slow as normal drift is, by construction, what "
        "adaptation follows, "
        "until the offset reaches `max_shift_sd`. The cap is what bounds the hiding: the column "
        f"with max_shift_sd {TIGHT.max_shift_sd:g} shows the delays shrink with it, and the trade-off "
        "table shows what each rate and cap costs in false alarms. On SKAB "
        f"anomaly-free, the injected ramps were found with and without adaptation within {gap:.0f} s of "
        f"each other in all {len(ramps)} cases: the dynamic model's level features see a ramp long "
        f"before a baseline with a time constant of {1 / ADAPT.rate:.0f} windows moves.",
        f"- **SKAB valve1** (adaptation alone): {valve}. The dynamic recipe keeps levels only of "
        "inputs that held still in training, and only levels are moved by the offset, so there is "
        "little for adaptation to act on; where it moves the level recipe's FAR it moves its MAR too.",
        "- **Hysteresis** (chosen on valve1/0-7 by the docs' rule, highest F1 with FAR <= 10 %), pca "
        f"(dynamic): design F1 {hd[0].f1:.2f} -> {hd[1].f1:.2f}, FAR {hd[0].far:.2f} -> {hd[1].far:.2f} %, "
        f"MAR {hd[0].mar:.2f} -> {hd[1].mar:.2f} %; **report files F1 {hr[0].f1:.2f} -> {hr[1].f1:.2f}, "
        f"FAR {hr[0].far:.2f} -> {hr[1].far:.2f} %, MAR {hr[0].mar:.2f} -> {hr[1].mar:.2f} %**. It holds "
        "the alarm through an anomaly's quiet stretches and a little after it ends, so it trades FAR "
        "for MAR; its use is an alarm that does not chatter, not a better point-wise score.",
        "- **Advice:** enable adaptation only where the slowest fault worth catching moves faster than "
        "normal drift, and set `max_shift_sd` to the largest shift you accept to see late; keep it off "
        "on write-back targets unless that is accepted (`allow_with_writeback`).",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/skab")
    parser.add_argument("--out", default="docs/skab.md", help="file to update, or - to print")
    parser.add_argument("--choose", action="store_true", help="print the hysteresis grid on the design files")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # capped-input warnings of the runs are expected
    with tempfile.TemporaryDirectory() as tmp:
        if args.choose:
            print("\n".join(choose(args.data, Path(tmp))))
            return 0
        text = section(args.data, Path(tmp))
    skab_report.emit_section(text, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate ``docs/skab.md``: every recipe on SKAB valve1 with the benchmark's own protocol.

Run: ``python -m models.recipes.skab_report [--data ../shared/data/skab] [--out docs/skab.md]``.
``--quantization docs/quantization.md`` writes only the int8 quantization report instead.
Two sections of the file belong to other commands and are kept as they are: the design round
(``<!-- design:begin -->`` .. ``<!-- design:end -->``, ``python -m models.recipes.skab_design``) and
online adaptation (``<!-- adapt:begin -->`` .. ``<!-- adapt:end -->``, ``models.recipes.skab_adapt``).
Regenerating the whole file: ``skab_report`` and ``skab_design``, in either order (and ``skab_adapt``
when what it measures changed).

Protocol (the SKAB README, steps 1-2): per file, the first 400 rows are the training part (the
recipe fits on the first 300 and calibrates its threshold on the last 100), the rest is the test
part; outlier-detection counts are point-wise on the test rows that have a prediction, summed
over files. Windows come from the live bridge's path (``bridge.ml.evaluate``), so they are causal:
a row is judged from itself and the rows before it, never after. Models are written to a
temporary directory and deleted: SKAB is GPL-3.0 and models trained only on it are not shipped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.ml.dataset import Table, load_csv
from bridge.ml.detection import Counts
from bridge.ml.evaluate import evaluate_table, latency_us
from bridge.ml.features import DRIFT_BLOCKS, QUANTUM_TOLERANCE, drift, quantum
from bridge.ml.options import DYNAMIC_RECIPE
from bridge.ml.replay import replay
from bridge.ml.train import TrainOptions, train
from bridge.scoring.detector import Detector

__all__ = ["emit_section", "keep_sections", "main", "write_section"]

# Markers of the sections models.recipes.skab_adapt and models.recipes.skab_design write into the
# same file (kept as they are when this command regenerates the rest).
ADAPT_BEGIN, ADAPT_END = "<!-- adapt:begin -->", "<!-- adapt:end -->"
DESIGN_BEGIN, DESIGN_END = "<!-- design:begin -->", "<!-- design:end -->"

TRAIN_ROWS = 400  # SKAB: train_test_split(train_size=400, shuffle=False) per file
HYDRAULIC = ("Current", "Pressure", "Volume Flow RateRMS")
INPUT_SETS: dict[str, tuple[str, ...] | None] = {"hydraulic (3)": HYDRAULIC, "all (8)": None}
KINDS = ("pca", "ae", "iforest")
# Honest evaluation (issue 12, item 7): every recipe setting was chosen looking only at the design
# files (valve1/0-7 and anomaly-free); valve1/8-15 were only ever scored for this report.
DESIGN_FILES = tuple(str(i) for i in range(8))
REPORT_FILES = tuple(str(i) for i in range(8, 16))

# From ../shared/data/skab/README.md (recomputed from SKAB's stored predictions there).
LEADERBOARD = [
    ("MSET", 0.78, 38.53, 14.98, "centred 60 s smoothing: ~30 s of future data"),
    ("T-squared + Q (PCA)", 0.76, 23.89, 26.09, ""),
    ("Conv-AE", 0.75, 14.40, 31.84, "windows reach up to 58 rows ahead"),
    ("LSTM-AE", 0.70, 25.37, 34.76, "windows reach up to 8 rows ahead"),
    ("T-squared", 0.65, 19.94, 44.05, ""),
    ("Isolation forest", 0.21, 1.14, 88.38, ""),
    ("Vanilla AE", 0.17, 0.40, 90.81, ""),
]

# Synthetic one-input faults in anomaly-free's test part (a design file): 6 segments of 300 rows.
FAULT_STARTS = (1000, 2500, 4000, 5500, 7000, 8500)
FAULT_ROWS = 300
FAULTS = (("step +3 sd", 3.0, 0.0), ("step -3 sd", -3.0, 0.0), ("noise 2 sd", 0.0, 2.0))


@dataclass
class Row:
    kind: str
    inputs: str
    folder: str
    counts: Counts
    delays: list[float]
    missed: int
    segments: int
    latency: tuple[float, float]
    size: int
    per_file: dict[str, Counts] = field(default_factory=dict)  # file stem -> its counts
    variant: str = ""  # "" = the kind's default recipe; "dynamic" = DYNAMIC_RECIPE
    free_far: float | None = None  # realised FAR on anomaly-free (trained on its first 400 rows)
    stated_far: float | None = None  # the FAR train stated for that model (None: not stated)

    def subset(self, stems: tuple[str, ...]) -> Counts:
        return sum((c for f, c in self.per_file.items() if f in stems), Counts())


def _labelled_folders(data: Path) -> list[Path]:
    return sorted(d for d in data.iterdir()
                  if d.is_dir() and d.name != "anomaly-free" and any(d.glob("*.csv")))


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))


def run(kind: str, label: str, inputs: tuple[str, ...] | None, folder: Path, tmp: Path, window: int) -> Row:
    """Train and evaluate ``kind`` on every file of ``folder`` (``window`` 0: the kind's recipe)."""
    opts = TrainOptions(kind=kind, inputs=inputs, window=window, train_rows=TRAIN_ROWS)
    return _run(opts, label, folder, tmp)


def _run(opts: TrainOptions, label: str, folder: Path, tmp: Path) -> Row:
    kind = opts.kind
    counts, delays, missed, segs = Counts(), [], 0, 0
    latency, size = (0.0, 0.0), 0
    per_file: dict[str, Counts] = {}
    for i, path in enumerate(_files(folder)):
        table = load_csv(path)
        model = tmp / f"{kind}_{folder.name}_{path.stem}.onnx"
        train(table, model, opts)
        detector = Detector(model)
        result = evaluate_table(detector, table, test_from=TRAIN_ROWS)
        per_file[path.stem] = result.counts
        counts += result.counts
        delays += [s.delay_s for s in result.segments if s.delay_s is not None]
        missed += sum(s.detected_row is None for s in result.segments)
        segs += len(result.segments)
        if i == 0:  # all files' models have the same graph shape: time one
            c = detector.contract
            window_values = table.select(c.inputs)[TRAIN_ROWS - c.window_length:TRAIN_ROWS].astype(np.float32)
            latency = latency_us(detector, window_values)
            size = model.stat().st_size
    return Row(kind, label, folder.name, counts, delays, missed, segs, latency, size, per_file)


def free_far(opts: TrainOptions, data: Path, tmp: Path) -> tuple[float, float | None]:
    """Realised FAR (%) on anomaly-free, trained on its first 400 rows, and the FAR train stated."""
    table = load_csv(data / "anomaly-free" / "anomaly-free.csv")
    model = tmp / f"{opts.kind}_free.onnx"
    result = train(table, model, opts)
    detector = Detector(model)
    c = detector.contract
    rep = replay(table, c.inputs, length=c.window_length, period=c.period)
    test = rep.valid & (np.arange(len(table)) >= TRAIN_ROWS)
    scores = detector.score_batch(rep.windows[test])
    stated = None if result.expected_far is None else 100 * result.expected_far
    return 100 * float((scores >= detector.threshold).mean()), stated


def one_input_faults(opts: TrainOptions, data: Path, tmp: Path) -> list[str]:
    """Table lines: each input of anomaly-free in turn gets a fault in ``FAULT_STARTS`` (a step of
    +-3 training sd, or white noise of 2 training sd added), the rest untouched; the share of fault
    rows alarmed and how many of the segments got any alarm. The model is trained once on the first
    400 rows, as for the anomaly-free column."""
    import dataclasses

    table = load_csv(data / "anomaly-free" / "anomaly-free.csv")
    model = tmp / f"{opts.kind}_faults.onnx"
    train(table, model, opts)
    detector = Detector(model)
    c = detector.contract
    sd = table.values[:TRAIN_ROWS].std(axis=0)
    idx = np.arange(len(table))
    fault = np.zeros(len(table), dtype=bool)
    for start in FAULT_STARTS:
        fault[start:start + FAULT_ROWS] = True
    rng = np.random.default_rng(0)

    def alarms(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rep = replay(dataclasses.replace(table, values=values), c.inputs, length=c.window_length,
                     period=c.period)
        ok = rep.valid & (idx >= TRAIN_ROWS)
        out = np.zeros(len(table), dtype=bool)
        out[ok] = detector.score_batch(rep.windows[ok]) >= detector.threshold
        return out, ok

    heads = " | ".join(f"{name}: rows alarmed % (segments)" for name, _, _ in FAULTS)
    lines = [f"| input | level kept | {heads} |", "|---|---|" + "---|" * len(FAULTS)]
    kept = set(c.training.get("level_inputs", []))
    for j, column in enumerate(table.columns):
        if column not in c.inputs:
            continue
        cells = []
        for _, step, noise in FAULTS:
            values = table.values.copy()
            values[fault, j] += step * sd[j]
            if noise:
                values[fault, j] += rng.normal(0.0, noise * sd[j], int(fault.sum()))
            alarm, ok = alarms(values)
            hit = sum(bool(alarm[s:s + FAULT_ROWS].any()) for s in FAULT_STARTS)
            cells.append(f"{100 * alarm[fault & ok].mean():.1f} ({hit}/{len(FAULT_STARTS)})")
        lines.append(f"| `{column}` | {'yes' if column in kept else 'no'} | " + " | ".join(cells) + " |")
    return lines


def _recipe(row: Row) -> str:
    return f"{row.kind} ({row.variant})" if row.variant else row.kind


def _cells(c: Counts) -> str:
    return f"**{c.f1:.2f}** | {c.far:.2f} | {c.mar:.2f}"


FLOW = "Volume Flow RateRMS"
ROUND_1 = "be1f3ea"  # last commit whose docs/skab.md holds round 1's numbers (history, not regenerated)
END_ROWS = 600  # anomaly-free: the last 10 minutes, compared with the training part


@dataclass
class Rule:
    """The level rule's inputs for one input of one file's training part (bridge.ml.features)."""

    drift: float  # block-mean range / within-block sd
    step: float  # ``quantum``, in the input's units
    sd: float  # training sd

    @property
    def step_sd(self) -> float:
        return self.step / self.sd if self.sd > 0 else 0.0

    @property
    def quantised(self) -> bool:
        return self.step > self.sd > 0


def _training_rows(table: Table) -> np.ndarray:
    rows: np.ndarray = table.values[:TRAIN_ROWS]
    good: np.ndarray = rows[np.isfinite(rows).all(axis=1) & table.good[:TRAIN_ROWS]]
    return good


def level_rules(path: Path) -> dict[str, Rule]:
    """Per input of ``path``: the drift statistic and the step on its first 400 rows, as train sees them."""
    table = load_csv(path)
    rows = _training_rows(table)
    shift = drift(rows)
    return {c: Rule(float(shift[j]), quantum(rows[:, j]), float(rows[:, j].std()))
            for j, c in enumerate(table.columns)}


@dataclass
class Diagnosis:
    """Facts of the data the prose quotes, measured by ``diagnose``."""

    rules: dict[str, dict[str, Rule]]  # valve1 file stem or "free" -> input -> Rule
    free_end: dict[str, float]  # anomaly-free: |mean of the last END_ROWS rows - training mean| / training sd
    flow_drop: list[float]  # design files: mean normal flow - mean anomalous flow (test part), l/min
    minutes: list[float]  # design files: length of each labelled anomaly, minutes
    free_rows: int  # rows of anomaly-free
    free_hours: float  # its duration


def diagnose(data: Path) -> Diagnosis:
    folder = data / "valve1"
    rules = {p.stem: level_rules(p) for p in _files(folder)}
    free_path = data / "anomaly-free" / "anomaly-free.csv"
    rules["free"] = level_rules(free_path)
    free = load_csv(free_path)
    train_rows = _training_rows(free)
    mean, sd = train_rows.mean(axis=0), train_rows.std(axis=0)
    end = np.nanmean(free.values[-END_ROWS:], axis=0)
    free_end = {c: float(abs(end[j] - mean[j]) / sd[j]) for j, c in enumerate(free.columns) if sd[j] > 0}
    drops, minutes = [], []
    for stem in DESIGN_FILES:
        table = load_csv(folder / f"{stem}.csv")
        assert table.labels is not None
        flow = table.select((FLOW,))[TRAIN_ROWS:, 0]
        labels = table.labels[TRAIN_ROWS:].astype(bool)
        drops.append(float(np.nanmean(flow[~labels]) - np.nanmean(flow[labels])))
        edges = np.flatnonzero(np.diff(np.r_[0, table.labels.astype(int), 0]))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            minutes.append(float(table.times[stop - 1] - table.times[start]) / 60)
    return Diagnosis(rules, free_end, drops, minutes, len(free),
                     float(free.times[-1] - free.times[0]) / 3600)


def _span(values: list[float], fmt: str = ".2f") -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


def _names(stems: list[str]) -> str:
    return ", ".join(f"/{s}" for s in stems) or "none"


def render(rows: list[Row], window: int, seconds: float, faults: list[str], diag: Diagnosis) -> str:
    best = max((r for r in rows if r.subset(DESIGN_FILES).far <= 10.0),
               key=lambda r: r.subset(DESIGN_FILES).f1, default=None)
    pca = TrainOptions(kind="pca", **DYNAMIC_RECIPE)  # type: ignore[arg-type]
    limit = pca.drift_limit
    flow = {f: rules[FLOW] for f, rules in diag.rules.items()}
    over_design = [f for f in DESIGN_FILES if flow[f].drift > limit]
    over_report = [f for f in REPORT_FILES if f in flow and flow[f].drift > limit]
    others = [(c, r) for f in (*DESIGN_FILES, "free") for c, r in diag.rules[f].items() if c != FLOW]
    coarse = [(c, r) for c, r in others if r.quantised]
    coarse_names = ", ".join(f"`{c}`" for c in sorted({c for c, _ in coarse}))
    coarse_moved = [r for _, r in coarse if r.drift > limit]
    one = len({c for c, _ in coarse}) == 1
    verb, pron, poss = ("counts", "it", "its") if one else ("count", "them", "a")
    fine = [r.step_sd for _, r in others if not r.quantised]
    temps = [diag.rules[f][c].drift for f in DESIGN_FILES for c in ("Temperature", "Thermocouple")]
    accel = [v for c, v in diag.free_end.items() if c.startswith("Accelerometer")]
    free_dropped = [diag.free_end[c] for c, r in diag.rules["free"].items()
                    if c in diag.free_end and r.drift > limit and not r.quantised]
    design_steps = [flow[f].step for f in DESIGN_FILES]
    out = [
        "# plcbridge recipes on SKAB (valve1)",
        "",
        "Generated by `python -m models.recipes.skab_report` (deterministic; "
        f"{seconds:.0f} s on this machine). Do not edit by hand.",
        "",
        "## Protocol",
        "",
        "- Data: `../shared/data/skab` (SKAB v0.9, GPL-3.0; its README gives the split, the metric "
        "definitions and the leaderboard below). Only valve1 and anomaly-free are here; valve2 and "
        "`other/` are the independent test set and were not used.",
        f"- Per file: the first {TRAIN_ROWS} rows train, the remaining rows are the test part. How a "
        "recipe uses its training rows is its own business (see `bridge/ml/train.py`): the default recipe "
        "fits on rows 0-299 and sets its threshold from the windows inside rows 300-399 (median + 2 x "
        "(99 % quantile - median), 1 for iforest); the dynamic pca recipe (`--threshold evt`) fits on all "
        "400 rows and sets its threshold from a generalised Pareto tail fitted to cross-fitted "
        "held-out scores over all 400 rows, at its stated FAR.",
        "- Outlier detection exactly as SKAB's `metric=\"binary\"`: point-wise TP/FP/FN/TN on the test rows "
        "that have a prediction, summed over the files, `F1 = TP/(TP+(FP+FN)/2)`, `FAR = 100 FP/(FP+TN)`, "
        "`MAR = 100 FN/(FN+TP)`. The counts are on the model's alarm output (score >= threshold, "
        "with the alarm persistence inside the model where a recipe has one), as the live bridge "
        "raises it.",
        "- **Causal**: every row is scored from the window of samples ending at it, built by the live "
        "bridge's TagStore -> WindowBuilder path (`plcbridge evaluate`). A window over a timestamp gap "
        "(valve1/2, /4, /7) is invalid, as in the bridge, so those rows have no prediction.",
        "- Detection delay: time from the first labelled row of the anomaly to the first alarm inside "
        "it. Latency: `Detector.score` on one window, one core (1 intra-op thread), median and p99 of "
        "2,000 calls, Python overhead included.",
        f"- Anomaly-free: each recipe trained on the first {TRAIN_ROWS} rows of `anomaly-free.csv` "
        f"({diag.free_hours:.1f} h), FAR over the remaining {diag.free_rows - TRAIN_ROWS:,} rows, "
        "beside the FAR `train` states (only the evt threshold states one).",
        "",
        "## Which files were used for what (issue 12, item 7)",
        "",
        "- **Design files: valve1/0-7 and anomaly-free.** Every setting of the dynamic pca recipe was "
        "chosen looking only at these, in two rounds. Round 1: the features (level / dispersion / "
        f"trailing-baseline residual), the drift rule and its limit ({pca.drift_limit:g}), the window "
        f"({pca.window} samples), the alarm persistence ({pca.persist} windows) and the threshold method "
        "(evt), by the rule: the highest F1 on valve1/0-7 with FAR <= 10 % there and an anomaly-free FAR "
        "within 2x the stated one. Round 2 (below): the quantised-level rule and the stated FAR "
        f"({100 * pca.target_far:g} %, was 5 %), by the same rule with the FAR cap at 8 % and \"within "
        "2x\" read both ways, checked by leave-one-file-out cross-validation over valve1/0-7.",
        "- **Report files: valve1/8-15.** Not used to choose any setting. They are not fresh data: round "
        "1 already reported on them, and round 1's diagnosis (the flow level dropped as drifting in "
        "some of them, measured below) was made on them after scoring; round 2's direction (treat "
        "quantised inputs differently) came from that diagnosis, although every round-2 setting and "
        "number was chosen on the design files alone. The report files were scored once, with the "
        "final round-2 settings, for the columns below. The default recipes' settings (hydraulic "
        "inputs, window 5, margins) were chosen on all 16 valve1 files before this split existed, so "
        "for them every column is in-sample.",
        "",
        "## Published methods (from the SKAB README; valve1 subset)",
        "",
        "| method | F1 | FAR % | MAR % | note |",
        "|---|---|---|---|---|",
        *[f"| {m} | {f1:.2f} | {far:.2f} | {mar:.2f} | {note} |" for m, f1, far, mar, note in LEADERBOARD],
        "",
        "## plcbridge recipes (measured, causal)",
        "",
        "| recipe | inputs | design F1 | FAR % | MAR % | **report F1** | **FAR %** | **MAR %** | all 16 F1 "
        "| anomalies missed | median delay s | anomaly-free FAR % (stated) | latency µs (median / p99) "
        "| model bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delay = f"{statistics.median(r.delays):.0f}" if r.delays else "-"
        stated = "-" if r.stated_far is None else f"{r.stated_far:g}"
        free = "-" if r.free_far is None else f"{r.free_far:.2f}"
        out.append(f"| {_recipe(r)} | {r.inputs} | {_cells(r.subset(DESIGN_FILES))} | "
                   f"{_cells(r.subset(REPORT_FILES))} | {r.counts.f1:.2f} | {r.missed}/{r.segments} | "
                   f"{delay} | "
                   f"{free} ({stated}) | {r.latency[0]:.0f} / {r.latency[1]:.0f} | {r.size} |")
    out += [
        "",
        "Inputs: *hydraulic (3)* = `Current`, `Pressure`, `Volume Flow RateRMS`; *all (8)* = every sensor. "
        "*pca (dynamic)* is the drift-robust recipe of issue 12 (`bridge.ml.options.DYNAMIC_RECIPE`: "
        f"`--features dynamic --threshold evt --window {pca.window} --persist {pca.persist} --target-far "
        f"{pca.target_far:g}`), opt-in; the other rows are each kind's default recipe, unchanged by "
        "issue 12.",
        "",
        "## The dynamic pca recipe",
        "",
        "- **Features** (`bridge/ml/features.py`, inside the ONNX graph, causal within the window): per "
        "input the log mean absolute successive difference (dispersion: faults that shake a signal) and "
        "the mean of the newest fifth of the window minus the mean of the rest (a trailing-baseline "
        "residual: a step shows whatever the level has drifted to); a level (window mean) only for "
        "inputs whose level held still over the training part. The rule, from the 400 training rows "
        f"alone: cut them into {DRIFT_BLOCKS} blocks; keep the level when the range of the block means "
        "is within "
        f"{pca.drift_limit:g} pooled within-block sd, or when the input is quantised in steps wider "
        "than its training sd (round 2: the step is the median gap between its distinct training "
        f"values, counting gaps over {QUANTUM_TOLERANCE:g} sd; a reading that dithers between two "
        "steps moves its block "
        "means by a step, which the drift statistic reads as drift). No input is dropped by it (only "
        "its level); "
        "inputs are dropped only by the train-time guards (constant or float32-unrepresentable), as "
        "before. The model card lists the kept levels and the drift of the others.",
        "- **Threshold** (`bridge/ml/threshold.py`): 4 contiguous blocks of the training part, each "
        "scored by a model fitted on the others with a gap of window - 1 rows, so ~4x the held-out "
        "scores of the old 100-row part; a generalised Pareto law fitted to their top 10 % gives the "
        "threshold at the stated rate. `train` states that rate as the FAR to expect; the anomaly-free "
        "column shows whether it held.",
        "- **Alarm persistence** (`--persist`): the model's score is the minimum over the last "
        f"{pca.persist} window scores (the window holds {pca.window} + {pca.persist - 1} samples), so an "
        "alarm needs that many consecutive windows above the threshold. It is computed in the graph, so "
        "the stateless runtime raises exactly the alarms counted here. Hysteresis with separate on/off "
        "levels and minimum durations is kept by the runtime (`[models.alarm]`, off by default) and "
        "measured in *Online adaptation and alarm hysteresis* below; the columns here are without it.",
        "",
        DESIGN_BEGIN,
        "## Design round 2 (design files only)",
        "",
        "Not generated yet: run `python -m models.recipes.skab_design` (it writes this section).",
        DESIGN_END,
        "",
        "## A fault in one input (synthetic, anomaly-free)",
        "",
        "The product is judged on fault types valve1 does not have (rotor imbalance, cavitation, leaks, "
        "an inlet valve), which show in other inputs. A design-file proxy, generated by this command: "
        "the shipped dynamic recipe (all inputs) trained on anomaly-free's first 400 rows; then, for "
        "each input in turn, a fault added to that input alone in 6 segments of 300 rows "
        f"(starting at rows {', '.join(str(r) for r in FAULT_STARTS)}): a step of +-3 training sd, or "
        "white noise of 2 training sd added. Cells: the share of the fault rows alarmed (point-wise, "
        "as SKAB counts) and, in brackets, the segments with any alarm. The model's FAR on the "
        "unchanged file is the anomaly-free column above.",
        "",
        *faults,
        "",
        "- A sustained step in an input whose level was dropped as drifting is seen at its onset (the "
        "residual) and then lost: the segment gets an alarm, its rows mostly do not. That is the cost "
        "of the drift rule, and on anomaly-free it is paid by the inputs whose level is dropped there, "
        f"all of which do drift: their means over the file's last {END_ROWS} rows are "
        f"{_span(free_dropped, '.0f')} training sd from their training means. A stateless window model "
        "trained on 400 rows cannot tell such a step from that drift; a longer training recording "
        "(the drift rule then sees the drift it must tolerate) or the opt-in `--guard-sd` for a known "
        "gross limit are the levers, not a setting chosen here.",
        "",
        "## Reading the numbers honestly",
        "",
        "- Levels are what a valve fault changes (on the design files the flow's mean over the labelled "
        f"rows is {_span(diag.flow_drop, '.1f')} l/min below its mean over the other test rows; the "
        f"labelled anomalies last {_span(diag.minutes, '.1f')} minutes), and levels are what drifts: the "
        f"temperatures' drift statistic is {_span(temps)} on the design files' training parts (limit "
        f"{limit:g}), and on anomaly-free the accelerometer RMS levels end {_span(accel, '.0f')} training sd "
        f"from their training means (its flow {diag.free_end[FLOW]:.0f} sd). No rule on 400 rows tells a "
        "level that will wander for hours from one that will not; the drift limit trades the two on the "
        "design files (the design round's drift-limit rows measure it).",
        "- **Round 1 (the drift rule alone, stated FAR 5 %) did not transfer to the report files**; its "
        f"numbers are in docs/skab.md as of commit {ROUND_1} (history, not regenerated: the library has no "
        "switch back to the drift rule alone). Its diagnosis, made after the report files were scored, "
        "measured again here on the training parts: the flow's drift statistic is "
        f"{_span([flow[f].drift for f in DESIGN_FILES])} on the design files ({len(over_design)} of "
        f"{len(DESIGN_FILES)} over the {limit:g} limit) and "
        f"{_span([flow[f].drift for f in REPORT_FILES if f in flow])} on the report files "
        f"({len(over_report)} of {len(REPORT_FILES)} over it: valve1{_names(over_report)}); a flow level "
        "dropped as drifting sees a flow drop only during its onset and recovery. The flow is quantised "
        f"(steps of {_span(design_steps)} l/min at a training sd of "
        f"{_span([flow[f].sd for f in DESIGN_FILES])} l/min on the design files), so its block means "
        "jump by a step, which the statistic reads as drift. Round 2's rule, measured on the design "
        f"files only: the flow's step is {_span([flow[f].step_sd for f in DESIGN_FILES])} training sd on "
        "the valve1 design files (so its level is kept), "
        f"{flow['free'].step_sd:.2f} sd on anomaly-free ("
        + ("quantised by the rule)" if flow["free"].quantised else
           "not quantised by the rule: its flow really drifts there, so the rule does not change the "
           "anomaly-free model)")
        + (f"; of the other inputs of those files, {coarse_names} also {verb} as quantised (step "
           f"{_span([r.step_sd for _, r in coarse])} training sd), "
           + ("with a drift statistic within the limit "
              f"({_span([r.drift for _, r in coarse])}), so the rule changes nothing for {pron}"
              if not coarse_moved else f"and in {len(coarse_moved)} file(s) the rule keeps {poss} level")
           if coarse else "")
        + f"; every other input's step is at most {max(fine):.2f} training sd. The design round "
        "section measures the recipe with the rule; the same settings without it are not reproducible "
        "from the repository (see there).",
        *_round2_transfer(rows, diag, limit),
        "- MAR stays the weak side: labels include the onset and recovery transitions, and in some files "
        f"the flow drop ({_span(diag.flow_drop, '.1f')} l/min above) is within about one step of the "
        f"sensor's quantisation ({_span(design_steps)} l/min). A causal detector cannot label the start of "
        "a slow onset; the published MSET and Conv-AE partly can because they look ahead.",
        "- The dynamic ae was worse than the level ae on the design files in round 1 and slower to train "
        f"with cross-fitting (round 1's measurement, in docs/skab.md as of commit {ROUND_1}; not "
        "regenerated), so ae and iforest keep the old recipe by default (`--features dynamic "
        "--threshold evt` is available for them).",
        "- Isolation Forest saturates: any point beyond the training range gets about the same score, "
        "so it cannot grade how far the flow has fallen.",
        "",
        "## Closing note",
        "",
    ]
    if best is not None:
        d, rp = best.subset(DESIGN_FILES), best.subset(REPORT_FILES)
        out.append(
            f"Best recipe by the design-file rule: **{_recipe(best)} on {best.inputs} inputs**: "
            f"design files F1 {d.f1:.2f} / FAR {d.far:.2f} % / MAR {d.mar:.2f} %; **report files (not used "
            f"for design) F1 {rp.f1:.2f} / FAR {rp.far:.2f} % / MAR {rp.mar:.2f} %**; anomaly-free FAR "
            + ("-" if best.free_far is None else f"{best.free_far:.2f} %")
            + ("" if best.stated_far is None else f" against a stated {best.stated_far:g} %")
            + f"; model {best.size} bytes, {best.latency[0]:.0f} µs per window "
            f"(p99 {best.latency[1]:.0f} µs). "
            f"Round 1's recipe on the same files: docs/skab.md as of commit {ROUND_1}. The report files "
            "are not fresh "
            "(see *Which files were used for what*), and they are valve1 too (the same fault type and "
            "session), so they show how the settings transfer across files, not to other fault types: "
            "valve2 and `other/` stay held out; the one-input fault table is the design-side proxy for "
            "those.")
    else:
        out.append("No recipe reached FAR <= 10 % on the design files.")
    return "\n".join(out) + "\n"


def _round2_transfer(rows: list[Row], diag: Diagnosis, limit: float) -> list[str]:
    """What the round-2 recipe did on the report files, and the diagnosis made after scoring them."""
    row = next((r for r in rows if r.variant == "dynamic" and r.inputs == "all (8)"), None)
    report = [f for f in REPORT_FILES if row is not None and f in row.per_file and f in diag.rules]
    if row is None or len(report) < 3:
        return []
    d, rp = row.subset(DESIGN_FILES), row.subset(REPORT_FILES)
    far = {f: row.per_file[f].far for f in report}
    worst = sorted(report, key=lambda f: -far[f])[:2]
    rest = [far[f] for f in report if f not in worst]
    flow = {f: diag.rules[f][FLOW] for f in report}
    by_drift = [f for f in report if flow[f].drift <= limit]
    by_step = [f for f in report if flow[f].drift > limit and flow[f].quantised]
    dropped = [f for f in report if flow[f].drift > limit and not flow[f].quantised]

    def mar(stems: list[str]) -> str:
        return _span([row.per_file[f].mar for f in stems], ".1f") if stems else "-"

    kept_steps = [flow[f].step for f in report if flow[f].quantised]
    return [
        f"- **Round 2 on the report files** (scored once, after every setting was fixed): F1 {rp.f1:.2f} / "
        f"FAR {rp.far:.2f} % / MAR {rp.mar:.2f} %, against F1 {d.f1:.2f} / FAR {d.far:.2f} % on the design "
        f"files; the FAR is {'over' if rp.far > 10 else 'within'} the 10 % target there. Diagnosis, made "
        "after the report files were scored and not used to change any setting (so for the next design "
        "round, on new design files): (1) false alarms per report file: valve1/"
        f"{worst[0]} {far[worst[0]]:.1f} % of its normal rows, /{worst[1]} {far[worst[1]]:.1f} %, the others "
        f"{_span(rest, '.1f')} %. (2) The flow level was kept in valve1{_names(by_drift)} by the drift "
        f"limit, and in valve1{_names(by_step)} only by the quantised-level rule (MAR {mar(by_step)} % "
        f"there); it was dropped in valve1{_names(dropped)} (MAR {mar(dropped)} %): in those files the "
        f"flow's step estimate (`quantum`, median of the gaps over {QUANTUM_TOLERANCE:g} training sd) is "
        f"{_span([flow[f].step for f in dropped], '.3f') if dropped else '-'} l/min (against "
        f"{_span(kept_steps) if kept_steps else '-'} l/min where it counts as quantised): the flow's jitter "
        "within a step is wider there, so the estimate lands on the jitter and the flow counts as "
        f"continuous. The {QUANTUM_TOLERANCE:g} sd tolerance was set a priori, not searched; a step "
        "estimate that is robust to jitter (e.g. gaps over a larger share of the sd, or clustering the "
        "values first) is the next round's first candidate, to be chosen on fresh design files.",
    ]


def write_section(out: Path, text: str, begin: str, end: str) -> None:
    """Replace the part of ``out`` from ``begin`` to ``end`` with ``text`` (which carries the
    markers itself); append it if the markers are absent. How skab_design and skab_adapt write
    their sections."""
    old = out.read_text(encoding="utf-8") if out.is_file() else ""
    if begin in old and end in old:
        before, rest = old.split(begin, 1)
        new = before + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    out.write_text(new, encoding="utf-8")


def emit_section(text: str, out: str, begin: str, end: str) -> None:
    """``out`` "-": print the section; else write it into that file (``write_section``)."""
    if out == "-":
        print(text)
    else:
        write_section(Path(out), text, begin, end)
        print(f"wrote {out}")


def keep_sections(text: str, old: str) -> str:
    """``text`` with the other commands' sections of ``old`` kept as they are: the design section
    (skab_design) in place of the placeholder ``text`` holds between its markers, the adaptation
    section (skab_adapt) appended at the end."""
    for begin, end in ((DESIGN_BEGIN, DESIGN_END), (ADAPT_BEGIN, ADAPT_END)):
        if begin not in old or end not in old:
            continue
        kept = old.split(begin, 1)[1].split(end, 1)[0]
        if begin in text and end in text:
            before, rest = text.split(begin, 1)
            text = before + begin + kept + end + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + begin + kept + end + "\n"
    return text


def quantization_report(data: Path, window: int) -> str:
    """`plcbridge quantize` on every valve1 file's pca and ae model (hydraulic inputs), both methods."""
    from bridge.ml.quantize import QuantReport, quantize

    folder = data / "valve1"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("pca", "ae"):
            for method in ("dynamic", "static"):
                reports: list[QuantReport] = []
                for path in _files(folder):
                    model = Path(tmp) / f"{kind}_{path.stem}.onnx"
                    train(load_csv(path), model,
                          TrainOptions(kind=kind, inputs=HYDRAULIC, window=window, train_rows=TRAIN_ROWS))
                    reports.append(quantize(model, Path(tmp) / f"{kind}_{path.stem}.{method}.onnx", [path],
                                            method=method, tolerance=0.02, test_from=TRAIN_ROWS))
                r0 = reports[0]
                rows.append(
                    f"| {kind} | {method} | {r0.float_.size} / {r0.int8.size} | "
                    f"{r0.float_.latency_median_us:.0f} / {r0.int8.latency_median_us:.0f} | "
                    f"{max(r.max_rel_diff for r in reports):.3f} | "
                    f"{100 * min(r.flag_agreement for r in reports):.1f} | "
                    f"{statistics.fmean(r.float_.f1 for r in reports):.3f} / "
                    f"{statistics.fmean(r.int8.f1 for r in reports):.3f} | "
                    f"{max(r.f1_drop for r in reports):+.3f} | "
                    f"{sum(not r.accepted for r in reports)}/{len(reports)} |")
                print(rows[-1], flush=True)
    return "\n".join([
        "# int8 quantization of the recipes (SKAB valve1)",
        "",
        "Generated by `python -m models.recipes.skab_report --quantization docs/quantization.md`. "
        "Do not edit by hand.",
        "",
        "Per valve1 file: train on the first 400 rows (hydraulic inputs, as in docs/skab.md), then "
        "`plcbridge quantize MODEL --data FILE --test-from 400 --tolerance 0.02` with each method. "
        "Sizes and latency (`Detector.score`, one window, one thread, median of 2,000 calls) are for "
        "the first file's model; agreement columns are the worst file; F1 is the per-file mean "
        "(float / int8); refused = files whose F1 dropped by more than 0.02 (not written).",
        "",
        "| recipe | method | bytes float / int8 | latency µs float / int8 | max rel score diff "
        "| min same-flag % | mean F1 float / int8 | worst F1 drop | refused |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Verdict",
        "",
        "Quantization does not help these models. Their heads are a few MatMuls of 3x3 (pca) or "
        "small MLP (ae) matrices: int8 adds DynamicQuantizeLinear/MatMulInteger/Cast (dynamic) or "
        "QuantizeLinear/DequantizeLinear pairs (static) around them, so the file gets bigger and a "
        "window is not scored faster; the float model already takes ~12 µs, mostly Python and "
        "onnxruntime call overhead. Static quantization also clips scores at the calibration range, "
        "so large anomaly scores are flattened and F1 can drop past the tolerance: `quantize` "
        "refuses those. Keep the float models; `plcbridge quantize` is there for larger models "
        "(wide autoencoders, many inputs) where the MatMuls dominate.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.recipes.skab_report",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/skab")
    parser.add_argument("--out", type=Path, default=Path("docs/skab.md"))
    parser.add_argument("--window", type=int, default=0, help="window length (default: each kind's recipe)")
    parser.add_argument("--quantization", type=Path, default=None, metavar="OUT.md",
                        help="write only the int8 quantization report (docs/quantization.md)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: SKAB data folder not found", flush=True)
        return 2
    if args.quantization is not None:
        text = quantization_report(args.data, args.window)
        args.quantization.parent.mkdir(parents=True, exist_ok=True)
        args.quantization.write_text(text, encoding="utf-8")
        print(f"wrote {args.quantization}")
        return 0
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in _labelled_folders(args.data):
            for label, inputs in INPUT_SETS.items():
                for kind in KINDS:
                    variants: list[tuple[str, dict[str, Any]]] = [("", {"window": args.window})]
                    if kind == "pca":
                        variants.insert(0, ("dynamic", DYNAMIC_RECIPE))
                    for variant, extra in variants:
                        opts = TrainOptions(kind=kind, inputs=inputs, train_rows=TRAIN_ROWS, **extra)
                        row = _run(opts, label, folder, Path(tmp))
                        row.variant = variant
                        row.free_far, row.stated_far = free_far(opts, args.data, Path(tmp))
                        d, rp = row.subset(DESIGN_FILES), row.subset(REPORT_FILES)
                        print(f"{folder.name} {_recipe(row):10} {label:14} design F1 {d.f1:.3f} "
                              f"FAR {d.far:6.2f} "
                              f"| report F1 {rp.f1:.3f} FAR {rp.far:6.2f} MAR {rp.mar:6.2f} | free FAR "
                              f"{row.free_far:.2f} | {row.latency[0]:.0f} µs", flush=True)
                        rows.append(row)
        dynamic = TrainOptions(kind="pca", train_rows=TRAIN_ROWS, **DYNAMIC_RECIPE)  # type: ignore[arg-type]
        faults = one_input_faults(dynamic, args.data, Path(tmp))
        print("\n".join(faults), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = render(rows, args.window, time.perf_counter() - start, faults, diagnose(args.data))
    old = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
    args.out.write_text(keep_sections(text, old), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

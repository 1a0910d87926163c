"""Regenerate ``docs/skab.md``: every recipe on SKAB valve1 with the benchmark's own protocol.

Run: ``python -m models.recipes.skab_report [--data ../shared/data/skab] [--out docs/skab.md]``.
``--quantization docs/quantization.md`` writes only the int8 quantization report instead.

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

from bridge.ml.dataset import load_csv
from bridge.ml.detection import Counts
from bridge.ml.evaluate import evaluate_table, latency_us
from bridge.ml.options import DYNAMIC_RECIPE
from bridge.ml.replay import replay
from bridge.ml.train import TrainOptions, train
from bridge.scoring.detector import Detector

__all__ = ["main"]

# Markers of the section models.recipes.skab_adapt writes into the same file.
ADAPT_BEGIN, ADAPT_END = "<!-- adapt:begin -->", "<!-- adapt:end -->"

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


def _recipe(row: Row) -> str:
    return f"{row.kind} ({row.variant})" if row.variant else row.kind


def _cells(c: Counts) -> str:
    return f"**{c.f1:.2f}** | {c.far:.2f} | {c.mar:.2f}"


def render(rows: list[Row], window: int, seconds: float) -> str:
    best = max((r for r in rows if r.subset(DESIGN_FILES).far <= 10.0),
               key=lambda r: r.subset(DESIGN_FILES).f1, default=None)
    pca = TrainOptions(kind="pca", **DYNAMIC_RECIPE)  # type: ignore[arg-type]
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
        "- Anomaly-free: each recipe trained on the first 400 rows of `anomaly-free.csv` (2.6 h), FAR "
        "over the remaining 9,005 rows, beside the FAR `train` states (only the evt threshold states one).",
        "",
        "## Which files were used for what (issue 12, item 7)",
        "",
        "- **Design files: valve1/0-7 and anomaly-free.** Every setting of the dynamic pca recipe was "
        "chosen looking only at these: the features (level / dispersion / trailing-baseline residual), "
        f"the drift rule and its limit ({pca.drift_limit:g}), the window ({pca.window} samples), the "
        f"alarm persistence ({pca.persist} windows), the threshold method (evt) and its stated FAR "
        f"({100 * pca.target_far:g} %). Rule: the highest F1 on valve1/0-7 with FAR <= 10 % there "
        "and an anomaly-free FAR within 2x the stated one.",
        "- **Report files: valve1/8-15**, never looked at while choosing; their columns below are the "
        "cross-file numbers. The default recipes' settings (hydraulic inputs, window 5, margins) were "
        "chosen on all 16 valve1 files before this split existed, so for them every column is in-sample.",
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
        "`--features dynamic --threshold evt --window 20 --persist 3 --target-far 0.05`), opt-in; the "
        "other rows are each kind's default recipe, unchanged by issue 12.",
        "",
        "## The dynamic pca recipe",
        "",
        "- **Features** (`bridge/ml/features.py`, inside the ONNX graph, causal within the window): per "
        "input the log mean absolute successive difference (dispersion: faults that shake a signal) and "
        "the mean of the newest fifth of the window minus the mean of the rest (a trailing-baseline "
        "residual: a step shows whatever the level has drifted to); a level (window mean) only for "
        "inputs whose level held still over the training part. The rule, from the 400 training rows "
        "alone: cut them into 4 blocks; keep the level when the range of the block means is within "
        f"{pca.drift_limit:g} pooled within-block sd. No input is dropped by it (only its level); "
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
        "levels needs state across windows and is not offered (the runtime, not owned here, would "
        "have to keep it).",
        "",
        "## Reading the numbers honestly",
        "",
        "- Levels are what a valve fault changes (flow drops 1-10 l/min for ~6 minutes), and levels are "
        "what drifts: the temperatures within every 20-minute file, and on anomaly-free the "
        "accelerometer RMS levels climb 7-17 training sd over 2.6 hours. No rule on 400 rows tells a "
        "level that will wander for hours from one that will not; the drift limit trades the two on "
        "the design files: at 0.4 the valve1 flow levels are dropped too (F1 0.34), above 0.6 the "
        "anomaly-free FAR is over 90 %.",
        "- **The design-file choice does not transfer to the report files**, which is why the dynamic "
        "recipe is opt-in and not the default. It falls from F1 0.75 on valve1/0-7 to 0.66 on "
        "valve1/8-15, with MAR near 48 %, while the default level recipes score "
        "0.84-0.91 there (but their FAR is 26 % on all inputs, and 85-99 % on anomaly-free; and they were "
        "chosen on all 16 files). Diagnosis, made after the report files were scored and not used to "
        "change any setting: the flow's drift statistic on the design files' training parts sat at "
        "0.27-0.49 in 6 of 8 files, just under the 0.5 limit, so the flow level was kept there; on the "
        "report files it is 0.53-1.1 in 4 of 8 (valve1/11-14), the flow level is dropped as drifting and "
        "the ~6-minute flow drop is seen only during its onset and recovery. The limit was fitted to "
        "the design files' margin; the flow's quantisation (1 l/min steps) makes its block means jump, "
        "which the statistic reads as drift. A next design round (on new design files) should treat "
        "quantised inputs differently; `--guard-sd` and `--drift-limit` are there for an engineer who "
        "knows a level matters.",
        "- MAR stays the weak side: labels include the ~57 s onset and recovery transitions, and in some "
        "files the flow drop is within the sensor's 1 l/min quantisation. A causal detector cannot "
        "label the start of a slow onset; the published MSET and Conv-AE partly can because they look ahead.",
        "- The dynamic ae (measured on the design files: F1 0.38 with the margin threshold, 0.55 with "
        "evt) was worse than the level ae and 5x slower to train with cross-fitting, so ae and iforest "
        "keep the old recipe by default (`--features dynamic --threshold evt` is available for them).",
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
            "The report files are valve1 too (the same fault type and session), so they show how the "
            "settings transfer across files, not to other fault types: valve2 and `other/` stay held out.")
    else:
        out.append("No recipe reached FAR <= 10 % on the design files.")
    return "\n".join(out) + "\n"


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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = render(rows, args.window, time.perf_counter() - start)
    old = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
    if ADAPT_BEGIN in old and ADAPT_END in old:
        # The adaptation/hysteresis section is models.recipes.skab_adapt's: kept as it is.
        kept = old.split(ADAPT_BEGIN, 1)[1].split(ADAPT_END, 1)[0]
        text = text.rstrip("\n") + "\n\n" + ADAPT_BEGIN + kept + ADAPT_END + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

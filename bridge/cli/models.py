"""`plcbridge record | train | evaluate | quantize`: the on-site model workflow.

Wired into bridge.cli by ``add_commands``. Exit statuses and the error format are those of every
command (``bridge.cli.common``): 0 success, 1 quantize refused the model, 2 bad input (missing or
malformed file, unknown column, bad option), with one message naming the file, column or option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bridge.cli.common import EXIT_FAILED, EXIT_OK, fail, fail_config, load_config_or_exit, setup_logging
from bridge.core.errors import ConfigError, ModelContractError
from bridge.core.extras import require_extra
from bridge.ml.dataset import DataError, load_csv

__all__ = ["add_commands"]


def _train(args: argparse.Namespace) -> int:
    from bridge.ml.train import TrainOptions, train

    if args.export_stats is not None or args.from_stats:
        return _train_federated(args)
    if args.data is None:
        return fail("train: DATA is required (or --from-stats STATS.json ...)")
    if args.out is None:
        return fail("train: --out is required (or --export-stats STATS.json)")

    inputs = tuple(s.strip() for s in args.inputs.split(",")) if args.inputs else None
    opts = TrainOptions(kind=args.kind, inputs=inputs, window=args.window, period=args.period,
                        seed=args.seed, target_far=args.target_far, margin=args.margin,
                        calib_fraction=args.calib_fraction, train_rows=args.train_rows,
                        max_age=args.max_age, name=args.name, features=args.features,
                        threshold=args.threshold, persist=args.persist, drift_limit=args.drift_limit,
                        folds=args.folds, guard_sd=args.guard_sd)
    try:
        opts.check()
        if args.out.exists() and not args.force:
            return fail(f"{args.out}: exists (use --force to overwrite)")
        result = train(load_csv(args.data), args.out, opts)
    except (DataError, ValueError) as exc:
        return fail(str(exc))
    c = result.contract
    print(f"wrote {result.path} ({result.path.stat().st_size} bytes) and {result.card}")
    print(f"  {c.kind}: {len(c.inputs)} inputs, window {c.window_length} x {c.period:g} s, "
          f"threshold {c.threshold:.6g} (target FAR {100 * opts.target_far:g} %, {opts.threshold})")
    if result.expected_far is not None:
        print(f"  expected false-alarm rate on normal data like the training part: "
              f"{100 * result.expected_far:g} % of windows (check with plcbridge evaluate on normal data)")
    print(f"  rows {result.rows}, bad rows dropped {result.bad_rows}, fit windows {result.fit_windows}, "
          f"calibration windows {result.calib_windows}, invalid windows dropped {result.dropped_windows}")
    for line in result.guard_lines():
        print(f"  {line}")
    return EXIT_OK


def _train_federated(args: argparse.Namespace) -> int:
    """``--export-stats`` (one site) or ``--from-stats`` (merge the sites into one PCA model)."""
    from bridge.ml.train import TrainOptions, export_stats, train_from_stats

    if args.kind != "pca":
        return fail(f"--kind {args.kind}: --export-stats/--from-stats work for --kind pca only")
    if args.export_stats is not None and args.from_stats:
        return fail("--export-stats and --from-stats: use one or the other")
    inputs = tuple(s.strip() for s in args.inputs.split(",")) if args.inputs else None
    # Statistics merge exactly only for the level front end (linear in the window mean).
    opts = TrainOptions(kind="pca", inputs=inputs, window=args.window or 5, period=args.period,
                        seed=args.seed,
                        target_far=args.target_far or 0.01, margin=args.margin, train_rows=args.train_rows,
                        max_age=args.max_age, name=args.name, features="level", threshold="margin", persist=1)
    try:
        opts.check()
        if args.export_stats is not None:
            if args.data is None:
                return fail("--export-stats: DATA.csv is required")
            if args.export_stats.exists() and not args.force:
                return fail(f"{args.export_stats}: exists (use --force to overwrite)")
            stats = export_stats(load_csv(args.data), opts)
            args.export_stats.parent.mkdir(parents=True, exist_ok=True)
            args.export_stats.write_text(json.dumps(stats), encoding="utf-8")
            print(f"wrote {args.export_stats}: {stats['rows']['count']} rows, "
                  f"{stats['window_means']['count']} windows, no raw data")
            return EXIT_OK
        if args.data is not None:
            return fail(f"--from-stats: takes no DATA ({args.data}); the statistics are the data")
        if args.out is None:
            return fail("--from-stats: --out MODEL.onnx is required")
        if args.out.exists() and not args.force:
            return fail(f"{args.out}: exists (use --force to overwrite)")
        result = train_from_stats(args.from_stats, args.out, opts)
    except (DataError, ValueError) as exc:
        return fail(str(exc))
    c = result.contract
    print(f"wrote {result.path} ({result.path.stat().st_size} bytes) and {result.card}")
    print(f"  federated pca from {len(args.from_stats)} sites: {result.rows} rows, {result.fit_windows} "
          f"windows, threshold {c.threshold:.6g} (analytic, target FAR {100 * opts.target_far:g} %)")
    return EXIT_OK


def _print_report(report: object) -> None:
    from bridge.ml.evaluate import Report

    assert isinstance(report, Report)
    print(f"{'file':<40} {'rows':>6} {'F1':>6} {'prec':>6} {'recall':>6} {'FAR %':>7} {'MAR %':>7} "
          f"{'delay s':>8}")
    for f in report.files:
        delays = [s.delay_s for s in f.segments if s.delay_s is not None]
        delay = f"{sum(delays) / len(delays):8.1f}" if delays else f"{'-':>8}"
        c = f.counts
        print(f"{str(f.path)[-40:]:<40} {int(f.scored.sum()):>6} {c.f1:6.3f} {c.precision:6.3f} "
              f"{c.recall:6.3f} {c.far:7.2f} {c.mar:7.2f} {delay}")
    t = report.total
    delays = report.delays()
    delay = f"{sum(delays) / len(delays):8.1f}" if delays else f"{'-':>8}"
    print(f"{'total':<40} {t.rows:>6} {t.f1:6.3f} {t.precision:6.3f} {t.recall:6.3f} "
          f"{t.far:7.2f} {t.mar:7.2f} {delay}")
    print(f"segments missed: {report.missed()} of {sum(len(f.segments) for f in report.files)}")
    raw = report.raw_total
    if raw is not None:
        # The hysteresis/adaptation output above is what the bridge raises; the score alone
        # beside it shows what the alarm logic changed.
        print(f"{'score >= threshold alone':<40} {raw.rows:>6} {raw.f1:6.3f} {raw.precision:6.3f} "
              f"{raw.recall:6.3f} {raw.far:7.2f} {raw.mar:7.2f}")
    if report.stated_far is not None:
        print(f"false-alarm rate on the normal rows: {t.far:.2f} %, train stated "
              f"{100 * report.stated_far:g} % ({'held' if report.far_held() else 'NOT held'}: "
              "within 2x is held)")
        if raw is not None:
            # train states the rate of single windows over the threshold: the score alone.
            print(f"  the score alone: {raw.far:.2f} % (what train's statement is about; the line "
                  "above is the alarm output the bridge raises)")


def _evaluate(args: argparse.Namespace) -> int:
    from bridge.ml.evaluate import evaluate, plot

    if args.plot is not None:
        require_extra("matplotlib.pyplot", "--plot")  # before the evaluation, not after it
    from pydantic import ValidationError

    from bridge.config import AdaptConfig, AlarmConfig
    from bridge.core.errors import ConfigError

    try:
        alarm = AlarmConfig(on=args.alarm_on, off=args.alarm_off, min_on_windows=args.min_on_windows,
                            min_off_windows=args.min_off_windows)
        adapt = AdaptConfig(enabled=args.adapt, **{k: v for k, v in (
            ("rate", args.adapt_rate), ("max_shift_sd", args.adapt_max_shift_sd),
            ("hold_off_windows", args.adapt_hold_off), ("learn_below", args.adapt_learn_below))
            if v is not None})
    except ValidationError as exc:
        return fail(f"alarm/adaptation options: {exc.errors()[0]['msg']}")
    try:
        report = evaluate(args.model, args.data, test_from=args.test_from, max_age=args.max_age,
                          alarm=alarm, adapt=adapt)
    except (DataError, ModelContractError, ConfigError) as exc:
        return fail(str(exc))
    _print_report(report)
    if args.plot is not None:
        for f in report.files:
            plot(f, report.threshold, args.plot)
        print(f"plots: {args.plot}/")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return EXIT_OK


def _record(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.ml.record import (
        Progress,
        RecordError,
        RecordResult,
        install_stop_signals,
        output_paths,
        parse_duration,
        plan,
        record,
        train_advice,
    )

    config = load_config_or_exit(args.config)
    setup_logging("warning")  # device errors still show; the progress line stays readable
    try:
        duration = parse_duration(args.duration)
        if not args.speed > 0:
            raise RecordError(f"--speed {args.speed}: must be > 0")
        rec = plan(config, args.model, args.period)
    except RecordError as exc:
        return fail(str(exc))
    csv_path, log_path = output_paths(args.out, rec.name)
    if csv_path.is_dir():
        return fail(f"{csv_path}: is a directory")
    if csv_path.exists() and csv_path.stat().st_size > 0 and not args.force:
        return fail(f"{csv_path}: exists and is not empty (use --force to overwrite)")
    print(f"recording {len(rec.tags)} tag(s) of {rec.name} every {rec.period:g} s "
          f"({rec.period_source}) for {duration:g} s into {csv_path}", file=sys.stderr)

    async def main() -> RecordResult:
        stop = asyncio.Event()
        install_stop_signals(stop)
        return await record(config, rec, csv_path, duration, speed=args.speed, stop=stop,
                            progress=Progress(duration, args.speed))

    try:
        result = asyncio.run(main())
    except ConfigError as exc:  # files the configuration names, read when the bridge is built
        return fail_config(args.config, exc)
    except (ModelContractError, OSError, ValueError) as exc:
        return fail(str(exc), args.config)
    how = "stopped by signal" if result.interrupted else "done"
    print(f"{how}: {result.rows} rows ({result.bad_rows} bad) in {result.path}", file=sys.stderr)
    if result.bad_rows:
        top = ", ".join(f"{why} ({n})" for why, n in result.reasons.most_common(3))
        print(f"  bad rows: {top}; every one in {log_path}", file=sys.stderr)
    if result.skipped_ticks:
        print(f"  {result.skipped_ticks} period(s) skipped: the recorder fell behind", file=sys.stderr)
    for line in train_advice(result, rec):
        print(line, file=sys.stderr)
    return EXIT_OK


def _quantize(args: argparse.Namespace) -> int:
    from bridge.ml.quantize import quantize

    if args.out.exists() and not args.force:
        return fail(f"{args.out}: exists (use --force to overwrite)")
    if args.out.resolve() == args.model.resolve():
        return fail(f"--out {args.out}: is the input model")
    try:
        report = quantize(args.model, args.out, args.data, method=args.method,
                          tolerance=args.tolerance, test_from=args.test_from)
    except (DataError, ModelContractError, ValueError) as exc:
        return fail(str(exc))
    for line in report.lines():
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
    if not report.accepted:
        print(f"refused: F1 drops by {report.f1_drop:.4f} > tolerance {report.tolerance:g}; "
              f"{args.out} not written", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.out}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``record``, ``train``, ``evaluate`` and ``quantize``; each sets ``func(args) -> int``."""
    p = sub.add_parser("record", help="record the configured tags into a CSV that `train` reads")
    p.add_argument("config")
    p.add_argument("--duration", required=True, help="how long: 90s, 15m, 2h, 1h30m")
    p.add_argument("--out", required=True, type=Path,
                   help="directory (writes DIR/<model>.csv) or a .csv file; quality log beside it")
    p.add_argument("--model", default=None,
                   help="record this model's inputs on its period (default: the only model; "
                   "every numeric tag when there is none)")
    p.add_argument("--period", type=float, default=None,
                   help="seconds between rows (default: the model contract's period, else 1)")
    p.add_argument("--format", choices=("csv",), default="csv",
                   help="csv (';'-separated, what train reads); Parquet is not supported")
    p.add_argument("--force", action="store_true", help="overwrite an existing recording")
    # Runs polling and sampling faster against a simulated plant at the same speed (tests).
    p.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_record)

    p = sub.add_parser("train", help="train an ONNX anomaly model on recorded normal data")
    p.add_argument("data", type=Path, nargs="?",
                   help="';'-separated CSV with a datetime column (SKAB format)")
    p.add_argument("--kind", required=True, choices=("pca", "iforest", "ae"))
    p.add_argument("--out", type=Path, help="model file to write (card: same name, .md)")
    p.add_argument("--export-stats", type=Path, default=None, metavar="STATS.json",
                   help="pca: write this site's count/mean/scatter statistics instead of a model")
    p.add_argument("--from-stats", type=Path, nargs="+", default=None, metavar="STATS.json",
                   help="pca: merge several sites' statistics into one model (no DATA)")
    p.add_argument("--inputs", help="comma-separated columns, in model order (default: all signals)")
    p.add_argument("--window", type=int, default=0,
                   help="window length in samples (default 5)")
    p.add_argument("--period", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-far", type=float, default=0.0,
                   help="false-alarm rate the threshold is calibrated for, as a fraction "
                   "(default 0.01)")
    p.add_argument("--features", choices=("level", "dynamic"), default="",
                   help="window features: level (mean per input) or dynamic (level where it holds still, "
                   "dispersion, trailing-baseline residual); default level")
    p.add_argument("--drift-limit", type=float, default=0.5,
                   help="dynamic: keep an input's level when its training block means stay within this "
                   "many within-block sd (default 0.5); a reading quantised in steps wider than its "
                   "training sd keeps its level whatever this says")
    p.add_argument("--threshold", choices=("margin", "evt"), default="",
                   help="margin: widened held-out quantile; evt: Pareto tail of cross-fitted scores "
                   "over the whole training part (default margin)")
    p.add_argument("--folds", type=int, default=4, help="evt: cross-fitting blocks (default 4)")
    p.add_argument("--guard-sd", type=float, default=0.0,
                   help="dynamic: an input whose level was dropped as drifting still alarms when its "
                   "window mean leaves the training mean by this many sd (default 0: off)")
    p.add_argument("--persist", type=int, default=0,
                   help="alarm only when this many consecutive windows exceed the threshold (in the "
                   "model; default 1)")
    p.add_argument("--margin", type=float, default=None,
                   help="threshold = median + MARGIN x (quantile - median); default per kind")
    p.add_argument("--calib-fraction", type=float, default=0.25,
                   help="last fraction of the rows held out to calibrate the threshold (default 0.25)")
    p.add_argument("--train-rows", type=int, default=None, help="use only the first N rows (SKAB: 400)")
    p.add_argument("--max-age", type=float, default=None, help="sample max age, s (default 2.5 x period)")
    p.add_argument("--name", default=None, help="model name in the contract")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a model on labelled CSVs (SKAB metrics)")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path, nargs="+", help="labelled CSVs (an 'anomaly' column)")
    p.add_argument("--test-from", type=int, default=0,
                   help="count rows from this index on (SKAB protocol: 400; earlier rows still fill windows)")
    p.add_argument("--max-age", type=float, default=None, help="sample max age, s (default 2.5 x period)")
    p.add_argument("--plot", type=Path, default=None, metavar="DIR", help="write a PNG per file")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the full report as JSON")
    g = p.add_argument_group("alarm hysteresis and online adaptation, as [models.alarm] and "
                             "[models.adapt] would run them (counts on the alarm output, and "
                             "the score alone beside them)")
    g.add_argument("--alarm-on", type=float, default=1.0, help="alarm starts at on x threshold")
    g.add_argument("--alarm-off", type=float, default=1.0, help="alarm ends below off x threshold")
    g.add_argument("--min-on-windows", type=int, default=1, help="consecutive windows to start it")
    g.add_argument("--min-off-windows", type=int, default=1, help="consecutive windows to end it")
    g.add_argument("--adapt", action="store_true", help="online adaptation (needs a model trained "
                   "by this version: its contract records the inputs' training mean and sd)")
    g.add_argument("--adapt-rate", type=float, default=None, help="[models.adapt] rate")
    g.add_argument("--adapt-max-shift-sd", type=float, default=None, help="[models.adapt] max_shift_sd")
    g.add_argument("--adapt-hold-off", type=int, default=None, help="[models.adapt] hold_off_windows")
    g.add_argument("--adapt-learn-below", type=float, default=None, help="[models.adapt] learn_below")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("quantize", help="int8-quantize a model; refuse if F1 on labelled data drops")
    p.add_argument("model", type=Path)
    p.add_argument("--out", required=True, type=Path, help="quantized model to write")
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="labelled CSVs (an 'anomaly' column) to compare and evaluate on")
    p.add_argument("--method", choices=("dynamic", "static"), default="dynamic",
                   help="dynamic (weights int8) or static (activations too, ranges from the "
                   "normal windows of --data)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="largest accepted F1 drop (absolute, default 0.02)")
    p.add_argument("--test-from", type=int, default=0, help="as for evaluate (SKAB: 400)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the report as JSON")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=_quantize)

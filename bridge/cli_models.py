"""`plcbridge train | evaluate`: the on-site model workflow (wired into bridge.cli by ``add_commands``).

Exit codes: 0 success, 2 bad input (missing or malformed file, unknown column, bad option),
each with one message naming the file, column or option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bridge.dataset import DataError, load_csv
from bridge.errors import ModelContractError

__all__ = ["add_commands"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_INPUT


def _train(args: argparse.Namespace) -> int:
    from bridge.train import TrainOptions, train

    inputs = tuple(s.strip() for s in args.inputs.split(",")) if args.inputs else None
    opts = TrainOptions(kind=args.kind, inputs=inputs, window=args.window, period=args.period,
                        seed=args.seed, target_far=args.target_far, margin=args.margin,
                        calib_fraction=args.calib_fraction, train_rows=args.train_rows,
                        max_age=args.max_age, name=args.name)
    try:
        opts.check()
        if args.out.exists() and not args.force:
            return _fail(f"{args.out}: exists (use --force to overwrite)")
        result = train(load_csv(args.data), args.out, opts)
    except (DataError, ValueError) as exc:
        return _fail(str(exc))
    c = result.contract
    print(f"wrote {result.path} ({result.path.stat().st_size} bytes) and {result.card}")
    print(f"  {c.kind}: {len(c.inputs)} inputs, window {c.window_length} x {c.period:g} s, "
          f"threshold {c.threshold:.6g} (target FAR {100 * opts.target_far:g} %)")
    print(f"  rows {result.rows}, bad rows dropped {result.bad_rows}, fit windows {result.fit_windows}, "
          f"calibration windows {result.calib_windows}, invalid windows dropped {result.dropped_windows}")
    return EXIT_OK


def _print_report(report: object) -> None:
    from bridge.evaluate import Report

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


def _evaluate(args: argparse.Namespace) -> int:
    from bridge.evaluate import evaluate, plot

    try:
        report = evaluate(args.model, args.data, test_from=args.test_from, max_age=args.max_age)
    except (DataError, ModelContractError) as exc:
        return _fail(str(exc))
    _print_report(report)
    if args.plot is not None:
        written = [plot(f, report.threshold, args.plot) for f in report.files]
        if any(p is None for p in written):
            print("note: matplotlib is not installed; no plots written", file=sys.stderr)
        else:
            print(f"plots: {args.plot}/")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train`` and ``evaluate``; each sets ``func(args) -> int`` like bridge.cli."""
    p = sub.add_parser("train", help="train an ONNX anomaly model on recorded normal data")
    p.add_argument("data", type=Path, help="';'-separated CSV with a datetime column (SKAB format)")
    p.add_argument("--kind", required=True, choices=("pca", "iforest", "ae"))
    p.add_argument("--out", required=True, type=Path, help="model file to write (card: same name, .md)")
    p.add_argument("--inputs", help="comma-separated columns, in model order (default: all signals)")
    p.add_argument("--window", type=int, default=5, help="window length in samples (default 5)")
    p.add_argument("--period", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-far", type=float, default=0.01,
                   help="false-alarm rate the threshold is calibrated for, as a fraction (default 0.01)")
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
    p.set_defaults(func=_evaluate)

"""Design round 2 of the dynamic pca recipe on the SKAB design files; write docs/skab.md's section.

Run: ``python -m models.recipes.skab_design [--data ../shared/data/skab] [--out docs/skab.md]``
(deterministic; a few minutes on one core). It replaces the part of ``--out`` between the
``<!-- design:begin -->`` and ``<!-- design:end -->`` markers (``models.recipes.skab_report`` keeps
that part where it belongs when it regenerates the rest), or prints the section with ``--out -``.
``--cache DIR`` keeps each setting's per-file counts in DIR (use a scratch folder such as /tmp, never
the repository) so that re-rendering during development does not retrain; without it nothing is kept.

Design files only: valve1/0-7 and anomaly-free. Every alternative is a set of ``TrainOptions``
(the library's real options: stated FAR, persistence, window, drift limit, gross-level guard),
trained and counted per file with the same ``train`` -> ``evaluate_table`` path as
``skab_report``; the anomaly-free FAR is ``skab_report.free_far`` (trained on its first 400 rows,
beside the FAR ``train`` states). valve1/8-15 are never read here.

Computed: (a) the selection grid (stated FAR x persistence at the recipe's window) and a table of
alternatives, (b) the selection rule (highest design F1 with FAR <= cap on the files and the
anomaly-free FAR within 0.5x-2x the stated one) applied to all 8 design files, and checked by
leave-one-file-out cross-validation over valve1/0-7 (choose on 7 files, count the 8th, sum).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bridge.ml.dataset import load_csv
from bridge.ml.detection import Counts
from bridge.ml.evaluate import evaluate_table
from bridge.ml.options import DYNAMIC_RECIPE
from bridge.ml.train import TrainOptions, train
from bridge.scoring.detector import Detector
from models.recipes import skab_report
from models.recipes.skab_report import DESIGN_FILES, TRAIN_ROWS, free_far

__all__ = ["BEGIN", "END", "Result", "lofo", "main", "pick", "section", "write_section"]

BEGIN, END = skab_report.DESIGN_BEGIN, skab_report.DESIGN_END
# The shipped recipe at the training length of the SKAB protocol; every alternative varies it.
BASE = TrainOptions(kind="pca", train_rows=TRAIN_ROWS, **DYNAMIC_RECIPE)  # type: ignore[arg-type]
# The selection grid at the recipe's window: stated FAR x alarm persistence.
FARS = (0.03, 0.05, 0.08, 0.1, 0.15)
PERSISTS = (1, 2, 3, 4, 5)
# The wider grid checked by cross-validation: other windows, at a few stated FARs and persistences.
WINDOWS = (10, 30, 40, 60)
WINDOW_FARS = (0.05, 0.08, 0.1)
WINDOW_PERSISTS = (1, 3, 5)
CAP = 8.0  # the rule's FAR cap on the design files (%), round 2
CAPS = (10.0, 8.0, 7.0, 6.0)  # caps the cross-validation compares (10 %: round 1's cap)
FREE_LOW, FREE_HIGH = 0.5, 2.0  # anomaly-free FAR within these multiples of the stated one
# Alternatives outside the grid, each one option changed from the shipped recipe.
EXTRA: tuple[tuple[str, dict[str, float]], ...] = (
    ("drift limit 0.4 (`--drift-limit 0.4`)", {"drift_limit": 0.4}),
    ("drift limit 0.6", {"drift_limit": 0.6}),
    ("drift limit 1.0", {"drift_limit": 1.0}),
    ("gross-level guard 8 sd (`--guard-sd 8`)", {"guard_sd": 8.0}),
    ("gross-level guard 4 sd", {"guard_sd": 4.0}),
)


@dataclasses.dataclass(frozen=True)
class Result:
    """One setting's counts per design file and its anomaly-free FAR (%) beside the stated one."""

    opts: TrainOptions
    per_file: dict[str, Counts]
    free: float
    stated: float

    def counts(self, files: Sequence[str] = DESIGN_FILES) -> Counts:
        return sum((self.per_file[f] for f in files), Counts())

    @property
    def free_ok(self) -> bool:
        return FREE_LOW * self.stated <= self.free <= FREE_HIGH * self.stated

    @property
    def label(self) -> str:
        o = self.opts
        return f"stated FAR {100 * o.target_far:g} %, persist {o.persist}, window {o.window}"


def _key(opts: TrainOptions) -> str:
    return "_".join(f"{f.name}={getattr(opts, f.name)!r}" for f in dataclasses.fields(opts))


def measure(opts: TrainOptions, data: Path, tmp: Path, cache: Path | None = None) -> Result:
    """Train ``opts`` on each design file's first 400 rows, count its test part; anomaly-free FAR."""
    stored = None if cache is None else cache / f"{hashlib.sha1(_key(opts).encode()).hexdigest()[:16]}.json"
    if stored is not None and stored.is_file():
        saved = json.loads(stored.read_text())
        if saved["key"] == _key(opts):
            return Result(opts, {f: Counts(**c) for f, c in saved["per_file"].items()}, saved["free"],
                          saved["stated"])
    per_file: dict[str, Counts] = {}
    for stem in DESIGN_FILES:
        table = load_csv(data / "valve1" / f"{stem}.csv")
        model = tmp / f"design_{stem}.onnx"
        train(table, model, opts)
        per_file[stem] = evaluate_table(Detector(model), table, test_from=TRAIN_ROWS).counts
    free, stated = free_far(opts, data, tmp)
    if stated is None:
        raise ValueError("the design round needs a recipe that states its FAR (--threshold evt)")
    if stored is not None:
        stored.write_text(json.dumps({"key": _key(opts), "free": free, "stated": stated,
                                      "per_file": {f: dataclasses.asdict(c) for f, c in per_file.items()}}))
    return Result(opts, per_file, free, stated)


def pick(results: Sequence[Result], files: Sequence[str], cap: float,
         free_rule: bool = True) -> Result | None:
    """The rule: highest F1 over ``files`` among settings with FAR <= ``cap`` % there and (with
    ``free_rule``) an anomaly-free FAR within 0.5x-2x the stated one; ties go to the first in
    grid order. ``free_rule=False`` keeps only the upper bound (round 1's reading of "within 2x")."""
    ok = [r for r in results
          if (r.free_ok if free_rule else r.free <= FREE_HIGH * r.stated) and r.counts(files).far <= cap]
    return max(ok, key=lambda r: round(r.counts(files).f1, 6), default=None)


def lofo(results: Sequence[Result], cap: float) -> tuple[Counts, list[Result]]:
    """Leave one design file out: choose on the other 7 by ``pick``, count the left-out file; sum."""
    total, picks = Counts(), []
    for stem in DESIGN_FILES:
        best = pick(results, [f for f in DESIGN_FILES if f != stem], cap)
        if best is None:
            raise ValueError(f"no setting meets the rule without valve1/{stem} at a {cap:g} % cap")
        picks.append(best)
        total += best.per_file[stem]
    return total, picks


def _grid() -> list[TrainOptions]:
    return [dataclasses.replace(BASE, target_far=far, persist=p) for far in FARS for p in PERSISTS]


def _window_grid() -> list[TrainOptions]:
    return [dataclasses.replace(BASE, window=w, target_far=far, persist=p)
            for w in WINDOWS for far in WINDOW_FARS for p in WINDOW_PERSISTS]


def _row(label: str, r: Result) -> str:
    c = r.counts()
    return f"| {label} | {c.f1:.3f} | {c.far:.2f} | {c.mar:.2f} | {r.free:.2f} ({r.stated:g}) |"


def _same(a: TrainOptions, b: TrainOptions) -> bool:
    return _key(a) == _key(b)


def section(data: Path, tmp: Path, cache: Path | None = None) -> str:
    started = time.perf_counter()
    grid = [measure(o, data, tmp, cache) for o in _grid()]
    windows = [measure(o, data, tmp, cache) for o in _window_grid()]
    extra = [(label, measure(dataclasses.replace(BASE, **change), data, tmp, cache))  # type: ignore[arg-type]
             for label, change in EXTRA]
    seconds = time.perf_counter() - started

    chosen = pick(grid, DESIGN_FILES, CAP)
    if chosen is None:
        raise ValueError(f"no grid setting meets the rule at a {CAP:g} % cap")
    shipped = next(r for r in grid if _same(r.opts, BASE))
    at_10 = pick(grid, DESIGN_FILES, 10.0)
    one_sided = pick(grid, DESIGN_FILES, CAP, free_rule=False)
    c = chosen.counts()

    def find(far: float, persist: int, window: int = BASE.window) -> Result:
        want = dataclasses.replace(BASE, target_far=far, persist=persist, window=window)
        return next(r for r in [*grid, *windows] if _same(r.opts, want))

    cells = []
    for far in FARS:
        line = []
        for p in PERSISTS:
            r = find(far, p)
            d = r.counts()
            mark = "" if r.free_ok else " ✗"
            text = f"{d.f1:.3f} / {d.far:.2f} / {r.free:.2f}{mark}"
            line.append(f"**{text}**" if r is chosen else text)
        cells.append(f"| {100 * far:g} % | " + " | ".join(line) + " |")

    shipped_note = ", the shipped recipe" if chosen is shipped else ""
    alternatives = [_row(f"**{chosen.label} (the pick{shipped_note})**", chosen)]
    other_fars = [f for f in FARS if f != BASE.target_far]
    alternatives += [_row(f"stated FAR {100 * f:g} %", find(f, BASE.persist)) for f in other_fars]
    if at_10 is not None and at_10 is not chosen:
        alternatives.append(_row(f"{at_10.label} (the pick with a 10 % FAR cap)", at_10))
    if one_sided is not None and one_sided is not chosen:
        alternatives.append(_row(f"{one_sided.label} (the pick with \"within 2x\" read one way)", one_sided))
    alternatives += [_row(f"window {w}", find(BASE.target_far, BASE.persist, w)) for w in WINDOWS]
    alternatives += [_row(label, r) for label, r in extra]

    families = {f"window {BASE.window} (the grid above, {len(grid)} settings)": grid,
                f"+ windows {', '.join(str(w) for w in WINDOWS)} ({len(grid) + len(windows)} settings)":
                    [*grid, *windows]}
    cv_lines = ["| settings chosen from | FAR cap % | held-out F1 | FAR % | MAR % | pick on all 8 files "
                "| distinct picks over the 8 folds |", "|---|---|---|---|---|---|---|"]
    cv: dict[tuple[str, float], Counts] = {}
    for name, results in families.items():
        for cap in CAPS:
            total, picks = lofo(results, cap)
            cv[name, cap] = total
            full = pick(results, DESIGN_FILES, cap)
            distinct = len({_key(r.opts) for r in picks})
            cv_lines.append(f"| {name} | {cap:g} | {total.f1:.3f} | {total.far:.2f} | {total.mar:.2f} | "
                            f"{'-' if full is None else full.label} | {distinct} |")
    narrow, wide = (cv[name, CAP] for name in families)
    main_cv = narrow
    if one_sided is not None and one_sided is not chosen:
        o = one_sided.counts()
        both_ways = (f"- **Reading \"within 2x\" both ways** (realised between half and twice the stated "
                     f"rate) rules out {one_sided.label} (F1 {o.f1:.3f}, FAR {o.far:.2f} %; anomaly-free "
                     f"{one_sided.free:.2f} % against a stated {one_sided.stated:g} %), the pick if only the "
                     "upper bound counted.")
    else:
        both_ways = "- Reading \"within 2x\" one way (upper bound only) picks the same setting."
    windows_text = (
        f"- **Window**: adding windows {', '.join(str(w) for w in WINDOWS)} to the grid gives held-out F1 "
        f"{wide.f1:.3f} at FAR {wide.far:.2f} % at the {CAP:g} % cap (window {BASE.window} alone: "
        f"{narrow.f1:.3f} at {narrow.far:.2f} %), "
        + ("so the window stays at the recipe's." if (wide.f1, -wide.far) <= (narrow.f1, -narrow.far)
           else "better held out: the window is worth a new look."))

    return "\n".join([
        BEGIN,
        "## Design round 2 (design files only)",
        "",
        "Generated by `python -m models.recipes.skab_design` (deterministic; "
        f"{seconds:.0f} s on this machine). Do not edit by hand.",
        "",
        "Each setting trained and counted per file exactly as in the table above (`train` -> "
        "`evaluate_table`, first 400 rows train); design = valve1/0-7 summed; anomaly-free FAR beside the "
        "FAR train stated. Every setting is the shipped recipe (`DYNAMIC_RECIPE`, which includes the "
        "quantised-level rule) with the library's own options changed; valve1/8-15 are not read.",
        "",
        f"- **Rule** (design files only): the highest F1 on valve1/0-7 among settings with FAR <= {CAP:g} % "
        f"there and an anomaly-free FAR between {FREE_LOW:g}x and {FREE_HIGH:g}x the stated one. Its pick: "
        f"**{chosen.label}**, F1 {c.f1:.3f} / FAR {c.far:.2f} % / MAR {c.mar:.2f} %, anomaly-free "
        f"{chosen.free:.2f} % against a stated {chosen.stated:g} %; "
        + ("the shipped recipe." if chosen is shipped else
           f"**not** the shipped recipe ({shipped.label}): `DYNAMIC_RECIPE` is out of date."),
        f"- **Leave-one-file-out check** of that rule (choose on 7 design files, count the 8th, sum): "
        f"held-out F1 {main_cv.f1:.3f} at FAR {main_cv.far:.2f} % (MAR {main_cv.mar:.2f} %). The table "
        "below compares the caps and the grid with other windows; a cap whose held-out FAR lands at the "
        "cap itself picked settings at its edge.",
        both_ways,
        windows_text,
        "",
        f"Grid at window {BASE.window}: design F1 / FAR % / anomaly-free FAR % per stated FAR (rows) and "
        "alarm persistence in windows (columns); ✗ = anomaly-free FAR outside "
        f"{FREE_LOW:g}x-{FREE_HIGH:g}x the stated one; bold = the pick.",
        "",
        "| stated FAR | " + " | ".join(f"persist {p}" for p in PERSISTS) + " |",
        "|---|" + "---|" * len(PERSISTS),
        *cells,
        "",
        "Alternatives (each the pick with one thing changed, unless said otherwise):",
        "",
        "| alternative | design F1 | FAR % | MAR % | anomaly-free FAR % (stated) |",
        "|---|---|---|---|---|",
        *alternatives,
        "",
        "Leave-one-file-out cross-validation over valve1/0-7:",
        "",
        *cv_lines,
        "",
        "- **Not in these tables** (the library has no option for them; round 2 measured them once with a "
        "throwaway script that patched library code, so they are not reproducible from the repository "
        "and are not quoted): the round-1 drift rule without the quantised-level rule (and the "
        "cross-validation restricted to it), a drift statistic with the quantum's variance added to the "
        "within-block variance, block medians instead of means, and a head that adds the max over inputs "
        "of each input's own feature group to the pca score. The quantised-level rule is therefore "
        "justified here by the diagnosis in *Reading the numbers honestly*, not by a measured "
        "comparison.",
        "- Scaling a drifting level down instead of dropping it changes nothing: the features are "
        "standardised and the pca head whitens every direction, so a per-feature scale cancels. Lagged "
        "features: the front end already has a one-window trailing-baseline residual and the dispersion "
        "(a one-step difference); a longer trailing baseline needs a longer window, which the window rows "
        "measure.",
        "",
        END,
    ])


def write_section(out: Path, text: str) -> None:
    """Replace this section of ``out`` with ``text`` (append it if the markers are absent)."""
    skab_report.write_section(out, text, BEGIN, END)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.recipes.skab_design",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/skab")
    parser.add_argument("--out", default="docs/skab.md", help="file to update, or - to print")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep per-setting counts here (a scratch folder, not the repository)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: SKAB data folder not found", flush=True)
        return 2
    logging.disable(logging.WARNING)  # capped-input warnings of the runs are expected
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = section(args.data, Path(tmp), args.cache)
    skab_report.emit_section(text, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

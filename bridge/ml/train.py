"""Train a self-describing ONNX anomaly model from recorded normal data.

Pipeline (every step deterministic for the same data and seed):

1. Replay the rows through TagStore -> WindowBuilder (``bridge.ml.replay``): the model learns from
   exactly the windows the bridge will build; bad-quality rows make their windows invalid,
   and those windows are dropped and counted.
2. Split by time: the first ``1 - calib_fraction`` of the rows fit the model, windows lying
   entirely in the rest are the held-out normal part for the threshold.
3. Fit the front end (z-score per signal, window mean, standardise) and the recipe's head.
4. Score the held-out windows with the built graph in onnxruntime (the numbers the bridge will
   see), threshold = median + margin x (quantile(1 - target_far) - median).
5. Write the model with its contract and a model card next to it.

Training imports ``onnx`` (and scikit-learn for ``iforest``/``ae``); the runtime never does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bridge.core.contract import ModelContract
from bridge.core.extras import require_extra
from bridge.core.moments import STATS_FORMAT, STATS_VERSION
from bridge.ml.card import write_card
from bridge.ml.dataset import DataError, Table
from bridge.ml.features import DRIFT_BLOCKS, Layout, drift, level_stable, quantised, quantum
from bridge.ml.guards import InputProblem, bad_row_reasons, input_problems, min_rows
from bridge.ml.options import KINDS, TrainOptions, TrainResult
from bridge.ml.replay import replay
from bridge.ml.threshold import blocked_folds, evt_threshold, margin_threshold

__all__ = ["KINDS", "STATS_FORMAT", "TrainOptions", "TrainResult", "export_stats", "train",
           "train_from_stats"]

RECIPE_VERSION = "1.0.0"
MIN_FIT_WINDOWS = 20
MIN_CALIB_WINDOWS = 20


# What each kind imports beyond onnx (bridge.ml.heads), checked before any work is done.
_NEEDS: dict[str, tuple[str, ...]] = {"pca": (), "iforest": ("sklearn", "skl2onnx"), "ae": ("sklearn",)}


def _require(kind: str, *more: str) -> None:
    for module in ("onnx", *_NEEDS.get(kind, ()), *more):
        require_extra(module, f"train --kind {kind}")


def _head(kind: str) -> Callable[[np.ndarray, int], Any]:
    # Imported lazily: each recipe pulls in onnx, two of them scikit-learn.
    if kind == "pca":
        from bridge.ml.heads import pca
        return pca.head
    if kind == "iforest":
        from bridge.ml.heads import iforest
        return iforest.head
    from bridge.ml.heads import ae
    return ae.head


def _score(model_bytes: bytes, windows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the same as the Detector, so float rounding is the same
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    (scores,) = session.run(["score"], {"window": np.ascontiguousarray(windows, dtype=np.float32)})
    return np.asarray(scores, dtype=np.float64)


def _contract(name: str, opts: TrainOptions, inputs: Sequence[str], part: Any, threshold: float,
              training: dict[str, Any]) -> ModelContract:
    return ModelContract(
        name=name,
        kind=part.kind,
        inputs=tuple(inputs),
        window_length=opts.window_length,
        period=opts.period,
        normalization="z-score per signal, window mean, standardised per feature; all fitted on the "
        "training rows and embedded in the graph; raw engineering units in",
        score=part.score,
        threshold=threshold,
        training=training,
        recipe=f"bridge.ml.train --kind {opts.kind} (models.recipes.{opts.kind}) {RECIPE_VERSION}",
        version=RECIPE_VERSION,
        outputs=("score", "contrib") if part.contrib else ("score",),
    )


def train(table: Table, out: Path, opts: TrainOptions) -> TrainResult:
    """Train on ``table`` (normal operation), write ``out`` and its card. Raises DataError/ValueError
    (MissingExtraError without the recipes extra)."""
    opts.check()
    _require(opts.kind)
    from bridge.ml.heads.graph import Front, Part, assemble, fit_front

    if opts.train_rows is not None:
        table = table.head(opts.train_rows)
    inputs = tuple(opts.inputs) if opts.inputs else table.columns
    if not inputs:
        raise DataError(f"{table.path}: no signal columns to train on")
    n_rows = len(table)
    need = min_rows(opts.window_length, opts.calib_fraction, MIN_FIT_WINDOWS, MIN_CALIB_WINDOWS)
    if n_rows < need:
        raise DataError(
            f"{table.path}: {n_rows} rows are too few for --window {opts.window} (--calib-fraction "
            f"{opts.calib_fraction:g}): {MIN_FIT_WINDOWS} fit and {MIN_CALIB_WINDOWS} calibration windows "
            f"need at least {need} good rows; record longer")
    n_fit = round(n_rows * (1.0 - opts.calib_fraction))
    row = np.arange(n_rows)
    inputs, dropped = _usable_inputs(table, inputs, (row < n_fit) & table.good, explicit=bool(opts.inputs))
    # The graph runs in float32: fit on the same float32 numbers it will see, so the fitted
    # means and spreads describe what is scored (float64 only for the arithmetic of the fit).
    values = table.select(inputs).astype(np.float32).astype(np.float64)
    # With --persist, the contract's window also holds the persist - 1 samples before the newest
    # sub-window (bridge.ml.heads.graph.assemble); the front end is fitted on sub-windows.
    rep = replay(table, inputs, length=opts.window_length, period=opts.period, max_age=opts.max_age)
    # A row's window holds it and the rows before it: a calibration window must start after
    # the fit part to be held out, so skip the first window-1 rows of the calibration part.
    fit_rows = rep.valid & (row < n_fit)
    calib_rows = rep.valid & (row >= n_fit + opts.window_length - 1)
    bad_reasons = bad_row_reasons(table.good, values, inputs)
    if fit_rows.sum() < MIN_FIT_WINDOWS or calib_rows.sum() < MIN_CALIB_WINDOWS:
        why = ", ".join(f"{k} {n}" for k, n in bad_reasons.items()) or "none"
        raise DataError(
            f"{table.path}: {int(fit_rows.sum())} valid fit windows and {int(calib_rows.sum())} "
            f"calibration windows from {n_rows} rows ({rep.bad_rows} bad: {why}); need at least "
            f"{MIN_FIT_WINDOWS} and {MIN_CALIB_WINDOWS}: record longer or fix the bad inputs")
    usable = table.good & ~np.isnan(values).any(axis=1)
    layout, feature_lines = _layout(opts, inputs, values[usable])
    windows = rep.windows[:, -opts.window:, :].astype(np.float64)  # float32 numbers the graph sees
    doc = f"plcbridge {opts.kind} {RECIPE_VERSION}"
    name = opts.name or f"{opts.kind}_{table.path.stem}"
    training: dict[str, Any] = {
        "source": str(table.path),
        "rows": n_rows,
        "bad_rows_dropped": rep.bad_rows,
        "bad_row_reasons": bad_reasons,
        "dropped_inputs": {p.name: p.reason for p in dropped},
        "features": opts.features,
        **({} if layout is None else {"level_inputs": [inputs[j] for j in layout.levels]}),
        "time_range": [float(table.times[0]), float(table.times[-1])],
        "sha256": table.sha256(inputs),
        "threshold_method": opts.threshold,
        "target_far": opts.target_far,
        "seed": opts.seed,
        "persist": opts.persist,
        "guard_sd": opts.guard_sd,
    }

    def fit(rows: np.ndarray, wins: np.ndarray) -> tuple[Front, Part]:
        front, a = fit_front(values[rows & usable], windows[wins], layout)
        return front, _head(opts.kind)(a, opts.seed)

    def draft_scores(front: Front, part: Part, wins: np.ndarray) -> np.ndarray:
        # Scored by the real graph in onnxruntime: the numbers the bridge will see.
        draft = assemble(front, part, _contract(name, opts, inputs, part, 0.0, training), doc,
                         opts.persist, opts.guard_sd)
        return _score(draft.SerializeToString(deterministic=True), rep.windows[wins])

    if opts.threshold == "evt":
        # Held-out scores over the whole training part by blocked cross-fitting, then the final
        # model on all of it (bridge.ml.threshold).
        held_scores = []
        for fold_fit, fold_held in blocked_folds(n_rows, opts.folds, opts.window_length - 1):
            if (rep.valid & fold_fit).sum() < MIN_FIT_WINDOWS or not (rep.valid & fold_held).any():
                continue  # a block too short for a window: it adds no held-out score
            front, part = fit(fold_fit, rep.valid & fold_fit)
            held_scores.append(draft_scores(front, part, rep.valid & fold_held))
        fit_rows = rep.valid.copy()
        front, part = fit(np.ones(n_rows, dtype=bool), fit_rows)
        pooled = np.concatenate(held_scores)
        if len(pooled) < MIN_CALIB_WINDOWS:
            raise DataError(f"{table.path}: {len(pooled)} cross-fitted held-out windows from {n_rows} rows; "
                            f"--threshold evt needs at least {MIN_CALIB_WINDOWS}: record longer or use "
                            "--threshold margin")
        fitted = evt_threshold(pooled, opts.target_far)
        training |= {"fit_rows": n_rows, "folds": opts.folds}
    else:
        front, part = fit(row < n_fit, fit_rows)
        fitted = margin_threshold(draft_scores(front, part, calib_rows), opts.target_far,
                                  opts.effective_margin)
        training |= {"fit_rows": n_fit, "margin": opts.effective_margin}
    training |= {"fit_windows": int(fit_rows.sum()), "calibration_windows": fitted.n_scores,
                 **_input_stats(values[(row < training["fit_rows"]) & usable])}
    threshold = fitted.threshold
    share = _check_own_windows(table, draft_scores(front, part, fit_rows), threshold, opts)
    # Shown in the card: a share well above the target FAR means the fit and calibration parts
    # differ (drift in the recording), worth knowing before deploying.
    training["fit_windows_flagged"] = round(share, 4)
    contract = _contract(name, opts, inputs, part, threshold, training)
    model = assemble(front, part, contract, doc, opts.persist, opts.guard_sd)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString(deterministic=True))
    result = TrainResult(out, out.with_suffix(".md"), contract, n_rows, rep.bad_rows,
                         int(fit_rows.sum()), fitted.n_scores, int((~rep.valid).sum()),
                         fitted.quantile, fitted.median, [*feature_lines, *part.card], dropped, bad_reasons,
                         threshold_how=fitted.how, expected_far=_expected_far(opts))
    write_card(result, opts)
    return result


def _input_stats(rows: np.ndarray) -> dict[str, list[float]]:
    """Each input's mean and sd over the fit rows, raw units: the baseline online adaptation
    (bridge.scoring.adapt) starts from and bounds its steps and total shift by."""
    return {"input_mean": [float(v) for v in rows.mean(axis=0)],
            "input_sd": [float(v) for v in rows.std(axis=0)]}


def _expected_far(opts: TrainOptions) -> float | None:
    """The false-alarm rate train states: the target itself for ``evt``; for ``margin`` the widened
    quantile's rate is not known (only bounded above by the target)."""
    return opts.target_far if opts.threshold == "evt" else None


def _layout(opts: TrainOptions, inputs: Sequence[str], rows: np.ndarray) -> tuple[Layout | None, list[str]]:
    """The dynamic front end's features, chosen from the training part alone (never labels)."""
    if opts.features == "level":
        return None, ["Features: window mean of each z-scored input (level front end)"]
    shift, steps = drift(rows), quantised(rows)
    layout = Layout(len(inputs), level_stable(rows, opts.drift_limit))
    slow = [f"`{inputs[j]}` ({shift[j]:.2f} sd)" for j in range(len(inputs)) if j not in layout.levels]
    coarse = [f"`{inputs[j]}` (step {quantum(rows[:, j]):.4g})" for j in layout.levels
              if steps[j] and shift[j] > opts.drift_limit]
    return layout, [
        "Features (dynamic front end, `bridge.ml.features`): per input the log mean absolute successive "
        "difference and the newest samples minus their trailing baseline; a level (window mean) only "
        f"for inputs whose {DRIFT_BLOCKS} block means over the training rows stay within "
        f"{opts.drift_limit:g} within-block sd of each other, or whose reading is quantised in steps "
        "wider than its training sd: "
        + (", ".join(f"`{inputs[j]}`" for j in layout.levels) or "none")
        + (f"; kept as quantised although its block means moved: {', '.join(coarse)}" if coarse else ""),
        "Level dropped as drifting over the training part (block-mean range / within-block sd): "
        + (", ".join(slow) or "none")
        + (f"; each still alarms when its window mean leaves the training mean by {opts.guard_sd:g} "
           "training sd (gross-level guard)" if slow and opts.guard_sd else
           "; a sustained level shift of these inputs shows only while it is inside the window "
           "(residual), not after (--guard-sd adds a gross-level alarm)" if slow else "")]


def _usable_inputs(table: Table, inputs: tuple[str, ...], fit: np.ndarray,
                   explicit: bool) -> tuple[tuple[str, ...], list[InputProblem]]:
    """Drop (train chose the inputs) or refuse (the user named them) inputs with no signal."""
    problems = input_problems(table.select(inputs)[fit], inputs)
    if problems and explicit:
        raise DataError(f"{table.path}: cannot train on {'; '.join(map(str, problems))}. Remove it from "
                        "--inputs (and from the model's inputs in the configuration) or record while "
                        "it moves")
    kept = tuple(n for n in inputs if n not in {p.name for p in problems})
    if not kept:
        raise DataError(f"{table.path}: no usable input: {'; '.join(map(str, problems))}")
    return kept, problems


# A model flagging most of its own fit windows is broken (an input the guards missed), not a
# model to deploy. Less than that is recorded, not refused: on real recordings (SKAB valve1/3:
# 10.1 %) a share above the target FAR comes from slow drift between the fit rows and the
# calibration rows, and refusing it would refuse the recording, not a broken fit.
MAX_FIT_ALARMS = 0.5


def _check_own_windows(table: Table, fit_scores: np.ndarray, threshold: float, opts: TrainOptions) -> float:
    """The share of fit windows the model flags; DataError when it is broken."""
    limit = MAX_FIT_ALARMS
    share = float((fit_scores >= threshold).mean()) if len(fit_scores) else 0.0
    if not np.isfinite(threshold) or share > limit:
        raise DataError(f"{table.path}: the trained model flags {100 * share:.1f} % of its own fit windows "
                        f"(threshold {threshold:.6g}; more than {100 * limit:g} % is a broken fit): check "
                        "the inputs for values that barely move or jump between two levels")
    return share


# ---------------------------------------------------- federated PCA baseline (issue 3, item 7)
#
# Each site exports the count, mean and scatter matrix of its good rows and of its valid
# windows' raw means (``export_stats``); ``train_from_stats`` merges them (Chan et al.) and
# builds the model training on the pooled rows and windows would build. No raw data leaves a
# site. A site uses all its rows: nothing is held out, because the merged model's threshold is
# set analytically (chi² law of T² and SPE, ``bridge.ml.heads.pca.analytic_threshold``), since
# the held-out scores a threshold normally needs would require a second round trip to the sites.



def export_stats(table: Table, opts: TrainOptions) -> dict[str, Any]:
    """Sufficient statistics of ``table`` for a federated PCA baseline (JSON-serialisable)."""
    opts.check()
    if opts.kind != "pca":
        raise ValueError(f"--export-stats: only --kind pca merges exactly, not {opts.kind!r}")
    _require(opts.kind)
    from bridge.core.moments import Moments

    if opts.train_rows is not None:
        table = table.head(opts.train_rows)
    inputs = tuple(opts.inputs) if opts.inputs else table.columns
    values = table.select(inputs)
    rep = replay(table, inputs, length=opts.window, period=opts.period, max_age=opts.max_age)
    good = table.good & ~np.isnan(values).any(axis=1)
    windows = rep.windows[rep.valid].astype(np.float64).mean(axis=1)
    if int(rep.valid.sum()) < MIN_FIT_WINDOWS:
        raise DataError(f"{table.path}: {int(rep.valid.sum())} valid windows from {len(table)} rows "
                        f"({rep.bad_rows} bad); need at least {MIN_FIT_WINDOWS}")
    return {"format": STATS_FORMAT, "version": STATS_VERSION, "inputs": list(inputs),
            "window": opts.window, "period": opts.period, "max_age": opts.max_age,
            "source": {"file": table.path.name, "sha256": table.sha256(inputs), "rows": len(table),
                       "bad_rows_dropped": rep.bad_rows,
                       "time_range": [float(table.times[0]), float(table.times[-1])]},
            "rows": Moments.of(values[good]).to_json(),
            "window_means": Moments.of(windows).to_json()}


def _load_stats(path: Path) -> dict[str, Any]:
    import json

    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read as statistics JSON ({exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != STATS_FORMAT or obj.get("version") != STATS_VERSION:
        raise DataError(f"{path}: not a {STATS_FORMAT} v{STATS_VERSION} file (from train --export-stats)")
    return obj


def train_from_stats(paths: Sequence[Path], out: Path, opts: TrainOptions) -> TrainResult:
    """Merge exported statistics and write the PCA model (and its card) they determine."""
    opts.check()
    if opts.kind != "pca":
        raise ValueError(f"--from-stats: only --kind pca, not {opts.kind!r}")
    _require(opts.kind, "scipy")  # the analytic threshold
    from bridge.ml.heads import pca
    from bridge.ml.heads.graph import assemble

    sites = [_load_stats(p) for p in paths]
    first = sites[0]
    n_f = len(first["inputs"])
    rows, wins = pca.Moments(0, np.zeros(n_f), np.zeros((n_f, n_f))), None
    for path, site in zip(paths, sites, strict=True):
        for key in ("inputs", "window", "period", "max_age"):
            if site.get(key) != first.get(key):
                raise DataError(f"{path}: {key} {site.get(key)!r} differs from {paths[0]}'s "
                                f"{first.get(key)!r}; every site must export with the same options")
        try:
            r, w = pca.Moments.from_json(site["rows"], n_f), pca.Moments.from_json(site["window_means"], n_f)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: bad statistics ({exc})") from exc
        rows, wins = rows.merge(r), w if wins is None else wins.merge(w)
    assert wins is not None  # paths is non-empty: the CLI requires one or more
    front, cov = pca.front_from_moments(rows, wins)
    part = pca.head_from_cov(cov)
    threshold, median, quantile = pca.analytic_threshold(cov, opts.target_far, opts.effective_margin)
    window_opts = TrainOptions(kind="pca", window=int(first["window"]), period=float(first["period"]),
                               target_far=opts.target_far, margin=opts.margin, name=opts.name,
                               features="level", threshold="margin", persist=1)
    source = f"federated: {len(sites)} sites ({', '.join(s['source']['file'] for s in sites)})"
    training: dict[str, Any] = {
        "source": source, "rows": rows.count, "fit_rows": rows.count, "fit_windows": wins.count,
        "bad_rows_dropped": sum(int(s["source"]["bad_rows_dropped"]) for s in sites),
        "time_range": [min(s["source"]["time_range"][0] for s in sites),
                       max(s["source"]["time_range"][1] for s in sites)],
        "sha256": ",".join(s["source"]["sha256"] for s in sites),
        "sites": [s["source"] for s in sites], "calibration": "analytic chi2 (T2, SPE independent)",
        "target_far": opts.target_far, "margin": opts.effective_margin, "seed": opts.seed,
        "input_mean": [float(v) for v in rows.mean],
        "input_sd": [float(v) for v in np.sqrt(np.diag(rows.scatter) / max(rows.count, 1))],
    }
    contract = _contract(opts.name or "pca_federated", window_opts, first["inputs"], part, threshold,
                         training)
    model = assemble(front, part, contract, f"plcbridge pca {RECIPE_VERSION} (federated)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString(deterministic=True))
    result = TrainResult(out, out.with_suffix(".md"), contract, rows.count,
                         training["bad_rows_dropped"], wins.count, 0, 0, quantile, median, list(part.card))
    _federated_card(result, opts, len(sites))
    return result


def _federated_card(result: TrainResult, opts: TrainOptions, n_sites: int) -> None:
    import hashlib

    c, data = result.contract, result.path.read_bytes()
    lines = [
        f"# Model card: `{result.path.name}` ({c.name}, {c.kind} {c.version}, federated)",
        "",
        f"Merged from {n_sites} sites' statistics by `plcbridge train --kind pca --from-stats`. "
        f"sha256 `{hashlib.sha256(data).hexdigest()}`, {len(data)} bytes. Contract: ONNX metadata "
        "`plcbridge.contract`.",
        "",
        f"- Inputs: {', '.join(f'`{n}`' for n in c.inputs)}; window {c.window_length} x {c.period:g} s.",
        f"- Pooled: {result.rows} good rows, {result.fit_windows} valid windows; "
        f"{result.bad_rows} bad rows dropped at the sites.",
        *[f"- {line}" for line in result.card_lines],
        f"- Threshold (analytic, no held-out data): median {result.calib_median:.4g} + "
        f"{opts.effective_margin:g} x (chi² quantile {1 - opts.target_far:g} = {result.calib_quantile:.4g} "
        f"- median) = **{c.threshold:.6g}**. This assumes Gaussian features; real windows have heavier "
        "tails, so measure the false-alarm rate with `plcbridge evaluate` on normal data from each "
        "site before enabling write-back.",
        "",
    ]
    result.card.write_text("\n".join(lines), encoding="utf-8")

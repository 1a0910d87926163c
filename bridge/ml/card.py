"""The model card written next to a trained model: what it is, what it was trained on, its limits."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from bridge.ml.options import TrainOptions, TrainResult

__all__ = ["write_card"]


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def write_card(result: TrainResult, opts: TrainOptions) -> None:
    c = result.contract
    data = result.path.read_bytes()
    t = c.training
    outputs = "`score` [batch]" + (", `contrib` [batch, F] (per-input share of the score)"
                                   if "contrib" in c.outputs else "")
    lines = [
        f"# Model card: `{result.path.name}` ({c.name}, {c.kind} {c.version})",
        "",
        f"Built by `plcbridge train {t['source']} --kind {opts.kind} --seed {opts.seed} "
        f"--target-far {opts.target_far} --window {opts.window}` (deterministic: same data, options and "
        f"seed give the same scores). sha256 `{hashlib.sha256(data).hexdigest()}`, {len(data)} bytes.",
        "The full contract is in the ONNX metadata under `plcbridge.contract`.",
        "",
        "## Inputs and outputs",
        "",
        f"- Input `window`: float32 `[batch, {c.window_length}, {len(c.inputs)}]`, raw engineering units, "
        f"one sample every {c.period:g} s, columns: " + ", ".join(f"`{n}`" for n in c.inputs) + ".",
        f"- Outputs: {outputs}.",
        f"- Score: {c.score}. **Anomalous when score >= {c.threshold:.6g}.**",
        "",
        "## Model",
        "",
        f"- Normalisation: {c.normalization}.",
        *[f"- {line}" for line in result.card_lines],
        "",
        "## Training data",
        "",
        f"- `{t['source']}`: {result.rows} rows, {_utc(t['time_range'][0])} to {_utc(t['time_range'][1])} "
        "(file timestamps read as UTC).",
        f"- Rows with bad quality or an empty value: **{result.bad_rows}**; their windows are invalid, "
        f"as in the live bridge. Invalid windows dropped (including the {c.window_length - 1}-sample "
        f"warm-up): **{result.dropped_windows}**.",
        # Inputs the train-time guards dropped and why rows were bad (bridge.ml.guards).
        *[f"- Guard: {line}." for line in result.guard_lines()],
        f"- Fit: the first {t['fit_rows']} rows ({result.fit_windows} windows). sha256 of times and "
        f"inputs: `{t['sha256']}`.",
        "",
        "## Threshold",
        "",
        *_threshold_lines(result, opts),
        "",
        "## Online adaptation (`[models.adapt]`, off by default)",
        "",
        *_adapt_lines(result),
        "",
        "## Limits",
        "",
        "- Trained only on the data above: a new operating point, season or sensor will look anomalous.",
        "- The held-out part is a few hundred windows at most on short recordings: the threshold's "
        "quantile is then estimated from its largest values. Measure the real false-alarm rate with "
        "`plcbridge evaluate` on more normal data before enabling write-back.",
        f"- A window needs {c.window_length} good, fresh samples: after a bad reading or a gap, no score "
        f"for {c.window_length} periods.",
        "",
    ]
    result.card.write_text("\n".join(lines), encoding="utf-8")


def _adapt_lines(result: TrainResult) -> list[str]:
    c = result.contract
    mean, sd = c.training.get("input_mean"), c.training.get("input_sd")
    if not (isinstance(mean, list) and isinstance(sd, list)):
        return ["- This model records no training baseline: it cannot adapt."]
    return [
        "The trained baseline each input's offset starts from (fit rows, raw units); the bridge "
        "bounds each step and the total shift in these sd, and shows the live offsets, their "
        "version and whether an input is capped in `GET /api/v1/models/{name}`:",
        "",
        "| input | mean | sd |",
        "|---|---|---|",
        *[f"| `{n}` | {m:.6g} | {s:.6g} |" for n, m, s in zip(c.inputs, mean, sd, strict=True)],
    ]


def _threshold_lines(result: TrainResult, opts: TrainOptions) -> list[str]:
    c = result.contract
    if opts.threshold == "evt":
        return [f"Threshold = {result.threshold_how} = **{c.threshold:.6g}**. Expected false-alarm rate on "
                f"normal data like the training part: **{100 * opts.target_far:g} % of windows** (what "
                "`plcbridge evaluate` on normal data should show; slow drift beyond the training part "
                "raises it)."]
    return [
        f"Held-out normal part: the windows entirely after the fit rows ({result.calib_windows} windows). "
        f"Threshold = median + {opts.effective_margin:g} x (quantile {1 - opts.target_far:g} - median) "
        "of their scores "
        f"= {result.calib_median:.4g} + {opts.effective_margin:g} x ({result.calib_quantile:.4g} - "
        f"{result.calib_median:.4g}) = **{c.threshold:.6g}**. The stated target is a false-alarm rate of "
        f"{100 * opts.target_far:g} % of windows on data like the held-out part; the margin pays for a "
        "held-out part that is short and for slow drift after it."]

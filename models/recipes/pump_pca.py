"""Recipe for ``models/pump_pca.onnx``: PCA residual + roughness model for the pump station.

Run: ``python -m models.recipes.pump_pca --out models/pump_pca.onnx`` (writes the card next to
the model as ``pump_pca.md``).  Deterministic: the same arguments give byte-identical files.

Model (everything inside the ONNX graph, normalisation included):

1. ``z = (window - mu) / sd`` per signal (``mu``/``sd`` from the training samples).
2. Level features ``m = mean_t z`` -> standardised -> PCA; whitened residual (SPE) and
   Hotelling T² on the retained components.  Slow operating-point moves stay inside the
   principal subspace (small SPE); broken correlations (drift of one sensor, cavitation)
   leave it.
3. Roughness features ``g = log(rms_t(diff z) + eps)`` -> semi-deviation scaled -> max square.
   A stuck sensor drives ``g`` to ``log(eps)``; spikes and cavitation noise drive it up.
4. ``score = max(SPE / L_spe, T² / L_t2, R_up / L_rough, R_low / L_flat)`` where each ``L`` is
   the 99.9th percentile on held-out normal data times a margin, so the threshold is 1.0.
5. ``contrib[f] = resid_f² / L_spe + rough_f² / L_rough``: which signal is to blame.

Only build-time code imports ``onnx``; the runtime (``bridge.scoring.detector``) does not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.recipes._pump_pca_eval import evaluate, write_card
from models.recipes._pump_pca_fit import (
    RECIPE_VERSION,
    TRAIN_RUNS,
    TRAIN_SEED,
    Fitted,
    build,
    fit,
    normal_data,
    part_values,
    window_features,
    windows_of,
)

__all__ = ["RECIPE_VERSION", "TRAIN_RUNS", "Fitted", "build", "fit", "main", "normal_data", "part_values",
           "window_features", "windows_of"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.recipes.pump_pca", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("models/pump_pca.onnx"))
    parser.add_argument("--train-seconds", type=float, default=7200.0)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--no-eval", action="store_true", help="skip evaluation and the model card")
    args = parser.parse_args(argv)
    _, fitted = build(args.out, train_seconds=args.train_seconds, seed=args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    if not args.no_eval:
        ev = evaluate(args.out)
        card = args.out.with_suffix(".md")
        write_card(card, args.out, fitted, args.train_seconds, ev)
        print(f"wrote {card}")
        print(ev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

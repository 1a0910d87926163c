"""Fit, calibration and ONNX graph of the ``pump_pca`` recipe (entry point: ``pump_pca.py``).

The model is described in ``models.recipes.pump_pca``. The entry point imports this module and
``_pump_pca_eval``; the evaluation imports this one; nothing here imports the entry point, so the
three form no cycle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adapters.sim.plant import SIGNALS, PumpPlant
from bridge.core.contract import ModelContract

__all__ = [
    "CALIB_RUNS", "CALIB_SEED", "EPS", "MARGIN", "MARGIN_FLAT", "N_COMPONENTS", "PERIOD", "QUANTILE",
    "RECIPE_VERSION", "TEST_SEED", "TRAIN_RUNS", "TRAIN_SEED", "WINDOW", "Fitted", "build", "fit",
    "normal_data", "part_values", "window_features", "windows_of",
]

RECIPE_NAME = "pump_pca"
RECIPE_VERSION = "1.0.0"
WINDOW = 16  # samples: a stuck sensor is flat for a whole window after ~WINDOW seconds
PERIOD = 1.0  # seconds between samples
EPS = 1e-3  # roughness floor in z units: log(EPS) is what a frozen sensor looks like
N_COMPONENTS = 3  # speed, valve opening, lagged temperature: the plant's hidden states
QUANTILE = 0.999  # target false-alarm rate per part on held-out normal windows
MARGIN = 2.0  # limits are QUANTILE × MARGIN (on squared statistics: ×1.41 in standard deviations)
# The lower tail of a log-RMS is heavy (log of a chi variable), so a generous margin; a frozen
# sensor sits at log(EPS), 10-30 times above even this limit.
MARGIN_FLAT = 3.0
TRAIN_RUNS = 3  # training runs (seeds TRAIN_SEED...), each train_seconds long
CALIB_RUNS = 4  # calibration runs (seeds CALIB_SEED...), each as long as the training run
TRAIN_SEED = 1001
CALIB_SEED = 2002
TEST_SEED = 3003
OPSET = 17


@dataclass(frozen=True)
class Fitted:
    """All numbers the graph needs (float64 while fitting, cast to float32 in the graph)."""

    mu: np.ndarray  # [F] signal means
    sd: np.ndarray  # [F] signal standard deviations
    m_mu: np.ndarray  # [F] level-feature means
    m_sd: np.ndarray  # [F]
    spe_proj: np.ndarray  # [F, F] Q diag(1/sqrt(lambda_minor)) Qᵀ: whitened residual
    t2_proj: np.ndarray  # [F, k] P diag(1/sqrt(lambda_major))
    g_mu: np.ndarray  # [F] roughness-feature means
    g_up: np.ndarray  # [F] upper semi-deviation of roughness
    g_low: np.ndarray  # [F] lower semi-deviation (log of a chi variable: heavier lower tail)
    lim_spe: float = 1.0
    lim_t2: float = 1.0
    lim_rough: float = 1.0
    lim_flat: float = 1.0


def windows_of(data: np.ndarray, length: int = WINDOW) -> np.ndarray:
    """All stride-1 windows [N, length, F] of a [T, F] series (window i ends at sample i+length-1)."""
    view = np.lib.stride_tricks.sliding_window_view(data, length, axis=0)  # [N, F, L]
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def window_features(windows: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level and roughness features, computed exactly as the graph does (numpy reference)."""
    z = (windows - mu) / sd
    m = z.mean(axis=1)
    d = np.diff(z, axis=1)
    g = np.log(np.sqrt((d * d).mean(axis=1)) + EPS)
    return m, g


def part_values(fit_: Fitted, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unscaled SPE, T², roughness and flatness statistics per window (numpy, for calibration)."""
    m, g = window_features(windows, fit_.mu, fit_.sd)
    a = (m - fit_.m_mu) / fit_.m_sd
    r = a @ fit_.spe_proj
    t = a @ fit_.t2_proj
    gc = g - fit_.g_mu
    up = np.maximum(gc, 0.0) / fit_.g_up
    low = np.maximum(-gc, 0.0) / fit_.g_low
    return (r * r).sum(axis=1), (t * t).sum(axis=1), (up * up).max(axis=1), (low * low).max(axis=1)


def fit(runs: list[np.ndarray]) -> Fitted:
    """Fit normalisation, PCA and roughness statistics on normal [T, F] runs."""
    train = np.concatenate(runs)
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    # Windows never straddle two runs.
    m, g = window_features(np.concatenate([windows_of(run) for run in runs]), mu, sd)
    m_mu, m_sd = m.mean(axis=0), m.std(axis=0)
    a = (m - m_mu) / m_sd
    eigval, eigvec = np.linalg.eigh(a.T @ a / len(a))
    order = np.argsort(eigval)[::-1]
    # Fix eigenvector signs so the file does not depend on LAPACK's arbitrary choice.
    eigvec = eigvec * np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(eigvec.shape[1])])
    major, minor = order[:N_COMPONENTS], order[N_COMPONENTS:]
    p, q = eigvec[:, major], eigvec[:, minor]
    t2_proj = p / np.sqrt(eigval[major])
    # Residual off the PCA plane, whitened per minor direction and rotated back to features:
    # its squared norm is the residual Mahalanobis distance and each entry is one signal's share.
    spe_proj = (q / np.sqrt(eigval[minor])) @ q.T
    g_mu = g.mean(axis=0)
    gc = g - g_mu
    g_up = np.sqrt((np.maximum(gc, 0.0) ** 2).mean(axis=0) * 2.0)
    g_low = np.sqrt((np.maximum(-gc, 0.0) ** 2).mean(axis=0) * 2.0)
    return Fitted(mu, sd, m_mu, m_sd, spe_proj, t2_proj, g_mu, g_up, g_low)


def calibrate(fit_: Fitted, calib: list[np.ndarray]) -> Fitted:
    """Set each part's limit to its QUANTILE on held-out normal runs × MARGIN."""
    per_run = [part_values(fit_, windows_of(run)) for run in calib]
    values = [np.concatenate([p[i] for p in per_run]) for i in range(4)]
    margins = (MARGIN, MARGIN, MARGIN, MARGIN_FLAT)
    lims = [float(np.quantile(x, QUANTILE)) * k for x, k in zip(values, margins, strict=True)]
    names = ("lim_spe", "lim_t2", "lim_rough", "lim_flat")
    return Fitted(**{**fit_.__dict__, **dict(zip(names, lims, strict=True))})


# ----------------------------------------------------------------------- graph
def _const(name: str, value: np.ndarray | float | list[int], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def build_graph(fit_: Fitted, contract: ModelContract) -> onnx.ModelProto:
    """The ONNX graph: window [batch, L, F] -> score [batch], contrib [batch, F]."""
    n_f = len(SIGNALS)
    inits = [
        _const("mu", fit_.mu),
        _const("inv_sd", 1.0 / fit_.sd),
        _const("m_mu", fit_.m_mu),
        _const("inv_m_sd", 1.0 / fit_.m_sd),
        _const("spe_proj", fit_.spe_proj),
        _const("t2_proj", fit_.t2_proj),
        _const("g_mu", fit_.g_mu),
        _const("inv_g_up", 1.0 / fit_.g_up),
        _const("inv_g_low", 1.0 / fit_.g_low),
        _const("eps", EPS),
        _const("inv_lim_spe", 1.0 / fit_.lim_spe),
        _const("inv_lim_t2", 1.0 / fit_.lim_t2),
        _const("inv_lim_rough", 1.0 / fit_.lim_rough),
        _const("inv_lim_flat", 1.0 / fit_.lim_flat),
        _const("axis_last", [-1], np.int64),
        _const("s_start0", [0], np.int64),
        _const("s_end0", [WINDOW - 1], np.int64),
        _const("s_start1", [1], np.int64),
        _const("s_end1", [WINDOW], np.int64),
        _const("s_axis", [1], np.int64),
    ]
    n = helper.make_node
    nodes = [
        # Standardise each signal (normalisation lives in the model, not in the bridge).
        n("Sub", ["window", "mu"], ["centered"]),
        n("Mul", ["centered", "inv_sd"], ["z"]),
        # Level: window mean -> standardised -> PCA residual and T².
        n("ReduceMean", ["z"], ["m"], axes=[1], keepdims=0),
        n("Sub", ["m", "m_mu"], ["m_c"]),
        n("Mul", ["m_c", "inv_m_sd"], ["a"]),
        n("MatMul", ["a", "spe_proj"], ["r"]),
        n("Mul", ["r", "r"], ["r2"]),
        n("Mul", ["r2", "inv_lim_spe"], ["r2_n"]),
        n("ReduceSum", ["r2_n", "axis_last"], ["spe_n"], keepdims=0),
        n("MatMul", ["a", "t2_proj"], ["t"]),
        n("Mul", ["t", "t"], ["t2v"]),
        n("ReduceSum", ["t2v", "axis_last"], ["t2"], keepdims=0),
        n("Mul", ["t2", "inv_lim_t2"], ["t2_n"]),
        # Roughness: log RMS of first differences -> standardised -> sum of squares.
        n("Slice", ["z", "s_start0", "s_end0", "s_axis"], ["z_head"]),
        n("Slice", ["z", "s_start1", "s_end1", "s_axis"], ["z_tail"]),
        n("Sub", ["z_tail", "z_head"], ["dz"]),
        n("Mul", ["dz", "dz"], ["dz2"]),
        n("ReduceMean", ["dz2"], ["ms"], axes=[1], keepdims=0),
        n("Sqrt", ["ms"], ["rms"]),
        n("Add", ["rms", "eps"], ["rms_eps"]),
        n("Log", ["rms_eps"], ["g"]),
        n("Sub", ["g", "g_mu"], ["g_c"]),
        # Rougher and smoother than usual are scaled by their own semi-deviation.
        n("Relu", ["g_c"], ["g_pos"]),
        n("Neg", ["g_c"], ["g_c_neg"]),
        n("Relu", ["g_c_neg"], ["g_neg"]),
        n("Mul", ["g_pos", "inv_g_up"], ["b_up"]),
        n("Mul", ["g_neg", "inv_g_low"], ["b_low"]),
        n("Mul", ["b_up", "b_up"], ["b_up2"]),
        n("Mul", ["b_low", "b_low"], ["b_low2"]),
        n("Mul", ["b_up2", "inv_lim_rough"], ["up_n"]),
        n("Mul", ["b_low2", "inv_lim_flat"], ["low_n"]),
        # Worst single signal: a sum over signals would add up five heavy tails.
        n("ReduceMax", ["up_n"], ["rough_n"], axes=[-1], keepdims=0),
        n("ReduceMax", ["low_n"], ["flat_n"], axes=[-1], keepdims=0),
        n("Add", ["up_n", "low_n"], ["b2_n"]),
        # Each part is 1.0 at its own calibrated limit; the score is the worst part.
        n("Max", ["spe_n", "t2_n", "rough_n", "flat_n"], ["score"]),
        n("Add", ["r2_n", "b2_n"], ["contrib"]),
    ]
    graph = helper.make_graph(
        nodes,
        RECIPE_NAME,
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", WINDOW, n_f])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("contrib", TensorProto.FLOAT, ["batch", n_f]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="plcbridge-recipe",
        producer_version=RECIPE_VERSION,
        doc_string=f"{RECIPE_NAME} {RECIPE_VERSION}: PCA SPE/T² on window levels + roughness",
    )
    model.ir_version = 8  # pinned so the file does not change with the onnx package version
    helper.set_model_props(model, contract.to_metadata())
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------- build
def make_contract(train: np.ndarray, train_seed: int, train_seconds: float) -> ModelContract:
    digest = hashlib.sha256(np.ascontiguousarray(train, dtype="<f8").tobytes()).hexdigest()
    return ModelContract(
        name=RECIPE_NAME,
        kind="pca-spe-t2+roughness",
        inputs=SIGNALS,
        window_length=WINDOW,
        period=PERIOD,
        normalization="z-score per signal embedded in graph (training mean/std); raw engineering units in",
        score="max of SPE, Hotelling T2 and roughness statistics, each divided by its calibrated limit; "
        "higher = more anomalous, >= threshold means anomalous",
        threshold=1.0,
        training={
            "source": f"adapters.sim.plant.PumpPlant(seed={train_seed}..{train_seed + TRAIN_RUNS - 1}), "
            f"{TRAIN_RUNS} runs x {train_seconds:.0f} s at {PERIOD:g} s, normal operation",
            "rows": int(train.shape[0]),
            "time_range_s": [0.0, float(train_seconds)],  # per run
            "sha256": digest,
            "calibration": f"PumpPlant(seed={CALIB_SEED}..{CALIB_SEED + CALIB_RUNS - 1}) {CALIB_RUNS} x "
            f"{train_seconds:.0f} s, per-part "
            f"quantile {QUANTILE} x margin {MARGIN}",
        },
        recipe=f"models.recipes.pump_pca {RECIPE_VERSION}",
        version=RECIPE_VERSION,
        outputs=("score", "contrib"),
    )


def normal_data(seed: int, seconds: float) -> np.ndarray:
    return PumpPlant(seed).run(seconds, PERIOD)


def build(
    out: Path, *, train_seconds: float = 7200.0, seed: int = TRAIN_SEED
) -> tuple[onnx.ModelProto, Fitted]:
    """Fit, calibrate and write the model to ``out``. Returns the model and its numbers."""
    # Several runs: one trajectory of the operating point does not reach every corner, and the
    # linear model must not extrapolate into normal low-demand periods.
    train_runs = [normal_data(seed + i, train_seconds) for i in range(TRAIN_RUNS)]
    # Several seeds, i.e. several operating-point trajectories: the 99.9th percentile needs
    # many windows, and tails come from the trajectory as much as from the noise.
    calib = [normal_data(CALIB_SEED + i, train_seconds) for i in range(CALIB_RUNS)]
    fitted = calibrate(fit(train_runs), calib)
    model = build_graph(fitted, make_contract(np.concatenate(train_runs), seed, train_seconds))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString(deterministic=True))
    return model, fitted

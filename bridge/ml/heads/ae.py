"""``ae`` head: a small tanh autoencoder (scikit-learn ``MLPRegressor`` trained to reproduce its
input through a bottleneck), exported by hand as MatMul/Add/Tanh nodes.

The bottleneck is narrower than the input, so the network can only reproduce the normal
relations between features; the score is the mean squared reconstruction error and
``contrib`` is each feature's share of it.
"""

from __future__ import annotations

import warnings

import numpy as np
from onnx import helper

from bridge.ml.heads.graph import Part, const

__all__ = ["head", "layers_for"]


def layers_for(n_features: int) -> tuple[int, int, int]:
    """Hidden layer sizes: wide, bottleneck (about half the features), wide."""
    wide = max(4, 2 * n_features)
    return wide, max(1, n_features // 2), wide


def head(a: np.ndarray, seed: int) -> Part:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    n_f = a.shape[1]
    sizes = layers_for(n_f)
    # L-BFGS: full-batch and deterministic for a given seed, and the best solver for a few
    # hundred samples; alpha keeps the weights small so unseen inputs do not explode.
    net = MLPRegressor(hidden_layer_sizes=sizes, activation="tanh", solver="lbfgs", alpha=1e-3,
                       max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the iteration cap is the design
        net.fit(a, a)
    n = helper.make_node
    nodes, inits, x = [], [], "a"
    for i, (w, b) in enumerate(zip(net.coefs_, net.intercepts_, strict=True)):
        inits += [const(f"ae_w{i}", w), const(f"ae_b{i}", b)]
        nodes += [n("MatMul", [x, f"ae_w{i}"], [f"ae_mm{i}"]),
                  n("Add", [f"ae_mm{i}", f"ae_b{i}"], [f"ae_h{i}"])]
        x = f"ae_h{i}"
        if i < len(net.coefs_) - 1:  # identity output layer, as MLPRegressor
            nodes.append(n("Tanh", [x], [f"ae_t{i}"]))
            x = f"ae_t{i}"
    nodes += [
        n("Sub", [x, "a"], ["ae_err"]),
        n("Mul", ["ae_err", "ae_err"], ["ae_sq"]),
        n("Mul", ["ae_sq", "ae_inv_f"], ["contrib"]),
        n("ReduceSum", ["contrib", "ae_axis"], ["score"], keepdims=0),
    ]
    inits += [const("ae_inv_f", 1.0 / n_f), const("ae_axis", [-1], np.int64)]
    return Part(
        nodes, inits,
        kind="autoencoder",
        score="mean squared reconstruction error of a tanh autoencoder on standardised window-mean "
        "features; higher = more anomalous",
        contrib=True,
        card=[f"Autoencoder: layers {n_f}-{'-'.join(map(str, sizes))}-{n_f}, tanh, L-BFGS "
              f"({net.n_iter_} iterations, final loss {net.loss_:.4g}), alpha 1e-3, random_state {seed}"],
    )

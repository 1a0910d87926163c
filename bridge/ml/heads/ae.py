"""``ae`` head: a small tanh autoencoder trained to reproduce its input through a bottleneck,
exported by hand as MatMul/Add/Tanh nodes.

The bottleneck is narrower than the input, so the network can only reproduce the normal
relations between features; the score is the mean squared reconstruction error and
``contrib`` is each feature's share of it.

Reproducible by construction (issue 12, item 5): the network is fitted here in numpy, not by
scikit-learn, with a stop rule that does not depend on any library's convergence test:

- initial weights: Glorot-uniform from the raw 64-bit stream of ``PCG64(seed)``, whose output
  numpy guarantees across versions (the distribution methods of ``Generator`` are not);
- full-batch Adam for exactly ``EPOCHS`` epochs with a cosine learning-rate decay to 0, so the
  last epochs barely move the weights: the fit ends at a settled point, not mid-stride, and
  always after the same number of steps;
- float64 throughout; the ONNX graph runs in float32 (the threshold is calibrated on the
  graph's own float32 scores, so the two cannot disagree about where it lies).

Before (scikit-learn ``MLPRegressor``, L-BFGS, ``max_iter=1000``) every fit stopped at the
iteration cap, so the weights moved with the scikit-learn/scipy version.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from onnx import helper

from bridge.ml.heads.graph import Part, const

__all__ = ["ALPHA", "EPOCHS", "LEARNING_RATE", "fit", "head", "layers_for"]

EPOCHS = 2000
LEARNING_RATE = 0.03  # Adam's step at epoch 0; cosine-decayed to 0 at EPOCHS
ALPHA = 1e-3  # L2 penalty: keeps the weights small so unseen inputs do not explode
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def layers_for(n_features: int) -> tuple[int, int, int]:
    """Hidden layer sizes: wide, bottleneck (about half the features), wide."""
    wide = max(4, 2 * n_features)
    return wide, max(1, n_features // 2), wide


def _uniform(bits: np.random.PCG64, shape: tuple[int, int]) -> np.ndarray:
    """Uniform [0, 1) from raw 64-bit draws (top 53 bits), stable across numpy versions."""
    raw = np.asarray(bits.random_raw(shape[0] * shape[1]), dtype=np.uint64)
    return ((raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)


def _forward(x: np.ndarray, ws: list[np.ndarray], bs: list[np.ndarray]) -> list[np.ndarray]:
    """Activations of every layer, input first; tanh hidden layers, identity output."""
    acts = [x]
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        z = acts[-1] @ w + b
        acts.append(np.tanh(z) if i < len(ws) - 1 else z)
    return acts


def fit(a: np.ndarray, seed: int, epochs: int = EPOCHS) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Fit the autoencoder to ``a`` [N, F]; return weights, biases and the final loss.

    Loss = mean squared error / 2 + ALPHA x sum of squared weights / 2N, scikit-learn's
    ``MLPRegressor`` loss, so ALPHA and the card's final loss mean what they meant before.
    """
    x = np.asarray(a, dtype=np.float64)
    n, n_f = x.shape
    sizes = [n_f, *layers_for(n_f), n_f]
    bits = np.random.PCG64(seed)
    ws, bs = [], []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot, for tanh
        ws.append((2.0 * _uniform(bits, (fan_in, fan_out)) - 1.0) * bound)
        bs.append((2.0 * _uniform(bits, (1, fan_out)) - 1.0)[0] * bound)
    params = [p for pair in zip(ws, bs, strict=True) for p in pair]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    loss = math.inf
    for t in range(epochs):
        acts = _forward(x, ws, bs)
        err = acts[-1] - x
        loss = (float((err * err).mean()) + ALPHA * sum(float((w * w).sum()) for w in ws) / n) / 2
        delta = err / (n * n_f)
        grads: list[np.ndarray] = []
        for i in range(len(ws) - 1, -1, -1):
            grads[:0] = [acts[i].T @ delta + ALPHA * ws[i] / n, delta.sum(axis=0)]
            if i:
                delta = (delta @ ws[i].T) * (1.0 - acts[i] ** 2)  # tanh' = 1 - tanh²
        lr = LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * t / epochs))
        for p, g, m_i, v_i in zip(params, grads, m, v, strict=True):
            m_i *= _BETA1
            m_i += (1 - _BETA1) * g
            v_i *= _BETA2
            v_i += (1 - _BETA2) * g * g
            p -= lr * (m_i / (1 - _BETA1 ** (t + 1))) / (np.sqrt(v_i / (1 - _BETA2 ** (t + 1))) + _EPS)
    return ws, bs, loss


def head(a: np.ndarray, seed: int) -> Part:
    n_f = a.shape[1]
    sizes = layers_for(n_f)
    ws, bs, loss = fit(a, seed)
    n = helper.make_node
    nodes, inits, x = [], [], "a"
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        inits += [const(f"ae_w{i}", w), const(f"ae_b{i}", b)]
        nodes += [n("MatMul", [x, f"ae_w{i}"], [f"ae_mm{i}"]),
                  n("Add", [f"ae_mm{i}", f"ae_b{i}"], [f"ae_h{i}"])]
        x = f"ae_h{i}"
        if i < len(ws) - 1:  # identity output layer
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
        card=[f"Autoencoder: layers {n_f}-{'-'.join(map(str, sizes))}-{n_f}, tanh, full-batch Adam "
              f"for exactly {EPOCHS} epochs (learning rate {LEARNING_RATE:g}, cosine decay to 0; a fixed "
              f"stop, not a convergence test), final loss {loss:.4g}, alpha {ALPHA:g}, weights from "
              f"PCG64({seed}) raw bits: same data and seed give the same file on any numpy/sklearn"],
    )

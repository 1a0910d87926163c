"""``pca`` head: Hotelling T² and SPE (Q) on standardised level features.

The principal subspace holds how the signals normally move together; T² measures how far a
window is inside it, SPE how far it is off it (a broken correlation). Both are whitened, so on
the training windows their means are exactly ``k`` and ``F - k``; dividing by those puts them on
one scale and the score is the larger, so neither statistic hides the other.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from bridge.core.moments import Moments
from bridge.ml.heads.graph import SD_FLOOR, Front, Part, const

__all__ = ["Moments", "analytic_threshold", "front_from_moments", "head", "head_from_cov"]

# Variance floor of a whitened direction (features are standardised, total variance = F):
# a direction with almost no training variance must not amplify float32 noise into alarms.
EIG_FLOOR = 1e-3


def components(eigval: np.ndarray) -> int:
    """Kaiser's rule on standardised features: keep directions with more variance than one feature."""
    return int(min(max(1, int((eigval > 1.0).sum())), max(1, len(eigval) - 1)))


def _eig(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return np.maximum(eigval[order], EIG_FLOOR), eigvec[:, order]


def head(a: np.ndarray, seed: int, n_components: int | None = None) -> Part:
    """Fit on standardised features ``a`` [N, F]. PCA is deterministic; ``seed`` is unused."""
    del seed
    return head_from_cov(a.T @ a / len(a), n_components)


def head_from_cov(cov: np.ndarray, n_components: int | None = None) -> Part:
    """The head from the [F, F] covariance of the standardised features (all PCA needs)."""
    n_f = cov.shape[0]
    eigval, eigvec = _eig(cov)
    # Fix eigenvector signs so the file does not depend on LAPACK's arbitrary choice.
    eigvec = eigvec * np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(n_f)])
    k = components(eigval) if n_components is None else n_components
    if not 1 <= k <= n_f:
        raise ValueError(f"n_components must be 1..{n_f}, got {k}")
    p, q = eigvec[:, :k], eigvec[:, k:]
    # Whitened and rotated back to feature space: squared norms are T² / SPE, entries are shares.
    t2_back = (p / np.sqrt(eigval[:k])) @ p.T
    spe_back = (q / np.sqrt(eigval[k:])) @ q.T if k < n_f else np.zeros((n_f, n_f))
    n = helper.make_node
    nodes = [
        n("MatMul", ["a", "pca_t2_back"], ["pca_t"]),
        n("Mul", ["pca_t", "pca_t"], ["pca_t_sq"]),
        n("Mul", ["pca_t_sq", "pca_inv_k"], ["pca_t_share"]),
        n("ReduceSum", ["pca_t_share", "pca_axis"], ["pca_t2"], keepdims=0),
        n("MatMul", ["a", "pca_spe_back"], ["pca_r"]),
        n("Mul", ["pca_r", "pca_r"], ["pca_r_sq"]),
        n("Mul", ["pca_r_sq", "pca_inv_rest"], ["pca_r_share"]),
        n("ReduceSum", ["pca_r_share", "pca_axis"], ["pca_spe"], keepdims=0),
        n("Max", ["pca_t2", "pca_spe"], ["score"]),
        n("Add", ["pca_t_share", "pca_r_share"], ["contrib"]),
    ]
    inits = [
        const("pca_t2_back", t2_back),
        const("pca_spe_back", spe_back),
        const("pca_inv_k", 1.0 / k),
        # No residual space when k = F: SPE is identically 0 and its scale is irrelevant.
        const("pca_inv_rest", 1.0 / (n_f - k) if k < n_f else 0.0),
        const("pca_axis", [-1], np.int64),
    ]
    explained = float(eigval[:k].sum() / eigval.sum())
    return Part(
        nodes, inits,
        kind="pca-t2-spe",
        score="max(T2 / k, SPE / (F - k)) on standardised window-mean features (each has mean 1 on "
        "the training windows); higher = more anomalous",
        contrib=True,
        card=[f"PCA: {k} of {n_f} components (Kaiser rule unless set), {100 * explained:.1f} % of the "
              f"standardised feature variance; eigenvalues {np.round(eigval, 3).tolist()}",
              "`contrib` = each feature's share of T²/k + SPE/(F-k)"],
    )


# ------------------------------------------------------------------ federated baseline (issue 3, item 7)


def front_from_moments(rows: Moments, window_means: Moments) -> tuple[Front, np.ndarray]:
    """The front end and the standardised-feature covariance, from merged statistics.

    The level feature is ``m = (window mean - mu) / sd``, linear in the raw window mean, so its
    mean and covariance follow from the raw window means' moments; the result equals
    ``fit_front`` + ``a.T @ a / N`` on the pooled data up to float rounding.
    """
    mu = rows.mean
    sd = np.maximum(np.sqrt(np.diag(rows.cov)), SD_FLOOR)
    m_mu = (window_means.mean - mu) / sd
    cov_m = window_means.cov / np.outer(sd, sd)
    m_sd = np.maximum(np.sqrt(np.diag(cov_m)), SD_FLOOR)
    return Front(mu, sd, m_mu, m_sd), cov_m / np.outer(m_sd, m_sd)


def analytic_threshold(cov: np.ndarray, target_far: float, margin: float,
                       n_components: int | None = None) -> tuple[float, float, float]:
    """Threshold without held-out data: (threshold, median, quantile) of the score's null law.

    For Gaussian features the whitened T² is chi²(k) and the whitened SPE chi²(F-k), and they
    are independent (orthogonal projections), so P(max(T²/k, SPE/(F-k)) <= x) =
    P(chi²_k <= kx) P(chi²_{F-k} <= (F-k)x). Real windows have heavier tails than this, which is
    what ``margin`` is for, as with the held-out calibration.
    """
    from scipy.optimize import brentq  # scipy comes with scikit-learn (the recipes extra)
    from scipy.stats import chi2

    n_f = cov.shape[0]
    k = components(_eig(cov)[0]) if n_components is None else n_components
    rest = n_f - k

    def cdf(x: float) -> float:
        p = float(chi2.cdf(k * x, k))
        return p * float(chi2.cdf(rest * x, rest)) if rest else p

    def solve(p: float) -> float:
        return float(brentq(lambda x: cdf(x) - p, 0.0, 1e6, xtol=1e-12))

    median, quantile = solve(0.5), solve(1.0 - target_far)
    return median + margin * (quantile - median), median, quantile

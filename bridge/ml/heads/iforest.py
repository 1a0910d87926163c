"""``iforest`` head: scikit-learn Isolation Forest, converted by skl2onnx (training needs sklearn,
the model runs in onnxruntime alone).

Trees are few and shallow on purpose: a 100-tree skl2onnx forest costs ~640 µs per window on
this class of machine (../shared/DESIGN.md); 50 trees of 256 samples stay well under that.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from bridge.ml.heads.graph import OPSET, Part, const

__all__ = ["head"]

TREES = 50
MAX_SAMPLES = 256


def head(a: np.ndarray, seed: int, trees: int = TREES) -> Part:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=trees, max_samples=min(MAX_SAMPLES, len(a)),
                             random_state=seed).fit(a.astype(np.float32))
    converted = convert_sklearn(
        forest, initial_types=[("a", FloatTensorType([None, a.shape[1]]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    nodes = list(converted.graph.node)
    scores = converted.graph.output[1].name  # (label, scores): scores = decision_function
    nodes += [
        helper.make_node("Reshape", [scores, "if_flat"], ["if_decision"]),
        # sklearn: lower = more abnormal; the contract wants higher = more anomalous.
        helper.make_node("Neg", ["if_decision"], ["score"]),
    ]
    opsets = {o.domain: o.version for o in converted.opset_import if o.domain not in ("", "ai.onnx")}
    return Part(
        nodes, [*converted.graph.initializer, const("if_flat", [-1], np.int64)],
        kind="isolation-forest",
        score="-decision_function of an Isolation Forest on standardised window-mean features "
        "(0 = sklearn's default outlier boundary); higher = more anomalous",
        contrib=False,
        card=[f"Isolation Forest: {trees} trees, max_samples {min(MAX_SAMPLES, len(a))}, "
              f"random_state {seed}, converted by skl2onnx ({len(nodes)} graph nodes)"],
        opsets=opsets,
    )

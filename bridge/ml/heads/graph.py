"""ONNX graph helpers shared by the recipes (build time only: imports ``onnx``).

``level_front`` is the feature front end of the ``pca``, ``iforest`` and ``ae`` recipes, as
graph nodes plus the numpy twin (``level_features``) that training uses, so the fitted numbers
and the graph compute the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bridge.core.contract import ModelContract

__all__ = ["IR_VERSION", "OPSET", "Front", "Part", "assemble", "const", "fit_front", "level_features"]

OPSET = 17
# Pinned so the bytes of a model do not change with the installed onnx package version.
IR_VERSION = 8
# Floor on a standard deviation: a signal constant in the training data (a quantised flow
# that never moved) must not divide by zero; 1e-6 of a unit still flags any later movement.
SD_FLOOR = 1e-6


def const(name: str, value: np.ndarray | float | Sequence[int], dtype: type = np.float32) -> onnx.TensorProto:
    """An initializer, cast to ``dtype`` (numbers are fitted in float64, run in float32)."""
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


@dataclass(frozen=True)
class Front:
    """Per-signal z-score, window mean (level), then per-feature standardisation."""

    mu: np.ndarray  # [F] signal means (training rows)
    sd: np.ndarray  # [F]
    m_mu: np.ndarray  # [F] level-feature means (training windows)
    m_sd: np.ndarray  # [F]


def level_features(windows: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Window mean of each z-scored signal: [N, L, F] -> [N, F] (numpy twin of the graph)."""
    return ((windows - mu) / sd).mean(axis=1)  # type: ignore[no-any-return]


def fit_front(rows: np.ndarray, windows: np.ndarray) -> tuple[Front, np.ndarray]:
    """Fit the front end on good training rows [T, F] and their windows; return it and the features."""
    mu = rows.mean(axis=0)
    sd = np.maximum(rows.std(axis=0), SD_FLOOR)
    m = level_features(windows, mu, sd)
    m_mu = m.mean(axis=0)
    m_sd = np.maximum(m.std(axis=0), SD_FLOOR)
    return Front(mu, sd, m_mu, m_sd), (m - m_mu) / m_sd


def front_nodes(front: Front) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """window [batch, L, F] -> ``a`` [batch, F] (standardised level features)."""
    n = helper.make_node
    nodes = [
        # Normalisation lives in the model, so the bridge feeds raw engineering units.
        n("Sub", ["window", "f_mu"], ["f_centered"]),
        n("Mul", ["f_centered", "f_inv_sd"], ["f_z"]),
        n("ReduceMean", ["f_z"], ["f_m"], axes=[1], keepdims=0),
        n("Sub", ["f_m", "f_m_mu"], ["f_mc"]),
        n("Mul", ["f_mc", "f_inv_m_sd"], ["a"]),
    ]
    inits = [const("f_mu", front.mu), const("f_inv_sd", 1.0 / front.sd),
             const("f_m_mu", front.m_mu), const("f_inv_m_sd", 1.0 / front.m_sd)]
    return nodes, inits


@dataclass(frozen=True)
class Part:
    """A scoring head: consumes ``a`` [batch, F] and produces ``score`` (and maybe ``contrib``)."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    kind: str  # contract `kind`
    score: str  # contract `score`: what the number means
    contrib: bool  # the head also produces `contrib` [batch, F]
    card: list[str] = field(default_factory=list)  # model-card lines about the fitted head
    opsets: dict[str, int] = field(default_factory=dict)  # extra domains (ai.onnx.ml for trees)


def assemble(front: Front, part: Part, contract: ModelContract, doc: str) -> onnx.ModelProto:
    """Front + head + contract -> a checked model with a dynamic batch dimension."""
    f_nodes, f_inits = front_nodes(front)
    n_f = len(contract.inputs)
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])]
    if part.contrib:
        outputs.append(helper.make_tensor_value_info("contrib", TensorProto.FLOAT, ["batch", n_f]))
    graph = helper.make_graph(
        f_nodes + part.nodes,
        contract.name,
        [helper.make_tensor_value_info("window", TensorProto.FLOAT,
                                       ["batch", contract.window_length, n_f])],
        outputs,
        initializer=f_inits + part.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [helper.make_opsetid(domain, v) for domain, v in sorted(part.opsets.items())]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="plcbridge-recipe",
                              producer_version=contract.version, doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, contract.to_metadata())
    onnx.checker.check_model(model)
    return model

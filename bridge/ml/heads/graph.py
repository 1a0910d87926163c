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
from bridge.ml.features import Layout, dynamic_features, dynamic_nodes

__all__ = ["IR_VERSION", "OPSET", "Front", "Part", "assemble", "const", "features", "fit_front",
           "level_features", "raw_features"]

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
    """Per-signal z-score, window features, then per-feature standardisation.

    ``layout`` None: the level front end (one window mean per input); otherwise the dynamic
    features of ``bridge.ml.features`` (level where it holds still, dispersion, residual).
    """

    mu: np.ndarray  # [F] signal means (training rows)
    sd: np.ndarray  # [F]
    m_mu: np.ndarray  # [K] feature means (training windows)
    m_sd: np.ndarray  # [K]
    layout: Layout | None = None

    @property
    def owners(self) -> list[int] | None:
        """Input index of each feature when there is not one feature per input, else None."""
        return None if self.layout is None else self.layout.owners


def level_features(windows: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Window mean of each z-scored signal: [N, L, F] -> [N, F] (numpy twin of the graph)."""
    return ((windows - mu) / sd).mean(axis=1)  # type: ignore[no-any-return]


def raw_features(windows: np.ndarray, mu: np.ndarray, sd: np.ndarray, layout: Layout | None) -> np.ndarray:
    """Unstandardised features of windows [N, L, F] (numpy twin of the graph up to ``f_m``)."""
    if layout is None:
        return level_features(windows, mu, sd)
    return dynamic_features((windows - mu) / sd, layout)


def features(front: Front, windows: np.ndarray) -> np.ndarray:
    """Standardised features ``a`` [N, K] of windows [N, L, F], as the graph computes them."""
    return (raw_features(windows, front.mu, front.sd, front.layout) - front.m_mu) / front.m_sd  # type: ignore[no-any-return]


def fit_front(rows: np.ndarray, windows: np.ndarray,
              layout: Layout | None = None) -> tuple[Front, np.ndarray]:
    """Fit the front end on good training rows [T, F] and their windows; return it and the features."""
    mu = rows.mean(axis=0)
    sd = np.maximum(rows.std(axis=0), SD_FLOOR)
    m = raw_features(windows, mu, sd, layout)
    m_mu = m.mean(axis=0)
    m_sd = np.maximum(m.std(axis=0), SD_FLOOR)
    return Front(mu, sd, m_mu, m_sd, layout), (m - m_mu) / m_sd


def front_nodes(front: Front, length: int, source: str = "window") -> tuple[list[onnx.NodeProto],
                                                                          list[onnx.TensorProto]]:
    """``source`` [batch, L, F] -> ``a`` [batch, K] (standardised features)."""
    n = helper.make_node
    nodes = [
        # Normalisation lives in the model, so the bridge feeds raw engineering units.
        n("Sub", [source, "f_mu"], ["f_centered"]),
        n("Mul", ["f_centered", "f_inv_sd"], ["f_z"]),
    ]
    inits = [const("f_mu", front.mu), const("f_inv_sd", 1.0 / front.sd)]
    if front.layout is None:
        nodes.append(n("ReduceMean", ["f_z"], ["f_m"], axes=[1], keepdims=0))
    else:
        d_nodes, d_inits = dynamic_nodes(front.layout, length, "f_z", "f_m")
        nodes += d_nodes
        inits += d_inits
    nodes += [n("Sub", ["f_m", "f_m_mu"], ["f_mc"]),
              n("Mul", ["f_mc", "f_inv_m_sd"], ["a"])]
    inits += [const("f_m_mu", front.m_mu), const("f_inv_m_sd", 1.0 / front.m_sd)]
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


def assemble(front: Front, part: Part, contract: ModelContract, doc: str,
             persist: int = 1, guard_sd: float = 0.0) -> onnx.ModelProto:
    """Front + head + contract -> a checked model with a dynamic batch dimension.

    ``persist`` > 1: the window holds ``persist`` overlapping sub-windows of
    ``window_length - persist + 1`` samples, each is scored, and the score is their minimum, so
    it crosses the threshold only when ``persist`` consecutive windows do (an alarm's minimum
    duration, computed in the graph: the runtime stays stateless and the rule stays causal).
    """
    length = contract.window_length - persist + 1
    f_nodes, f_inits = front_nodes(front, length, "window" if persist == 1 else "p_stack")
    n_f = len(contract.inputs)
    h_nodes, h_inits = list(part.nodes), list(part.initializers)
    owners = front.owners
    if part.contrib and owners is not None:
        # The head's `contrib` is per feature; the contract promises one entry per input, so
        # each input gets the sum of its features' shares.
        h_nodes = [_rename(node, "contrib", "h_contrib") for node in h_nodes]
        to_input = np.zeros((len(owners), n_f))
        to_input[np.arange(len(owners)), owners] = 1.0
        h_nodes.append(helper.make_node("MatMul", ["h_contrib", "f_to_input"], ["contrib"]))
        h_inits.append(const("f_to_input", to_input))
    drifting = front.layout.drifting if front.layout is not None else ()
    if drifting and guard_sd > 0 and contract.threshold > 0:
        # Gross-level guard (opt-in): an input whose level feature was dropped as drifting still
        # alarms when its window mean leaves the training mean by guard_sd training sd (a pipe
        # that empties is not drift). Off by default: on anomaly-free the thermocouple drifts
        # 40 training sd in 2.6 h, so no fixed number of sd separates drift from a gross fault.
        # Scaled so |z| = guard_sd lands exactly on the threshold; left out of the draft
        # (threshold 0) so it cannot move the calibration.
        n = helper.make_node
        h_nodes = [_rename(node, "score", "g_head") for node in h_nodes]
        h_nodes += [n("ReduceMean", ["f_z"], ["g_mean"], axes=[1], keepdims=0),
                    n("Gather", ["g_mean", "g_inputs"], ["g_level"], axis=1),
                    n("Abs", ["g_level"], ["g_abs"]),
                    n("ReduceMax", ["g_abs"], ["g_max"], axes=[1], keepdims=0),
                    n("Mul", ["g_max", "g_scale"], ["g_score"]),
                    n("Max", ["g_head", "g_score"], ["score"])]
        h_inits += [const("g_inputs", list(drifting), np.int64),
                    const("g_scale", contract.threshold / guard_sd)]
    if persist > 1:
        pre, post, p_inits = _persist_nodes(persist, length, part.contrib, n_f)
        h_nodes = [_rename(_rename(node, "score", "p_scores"), "contrib", "p_contribs") for node in h_nodes]
        f_nodes, h_nodes = pre + f_nodes, h_nodes + post
        h_inits += p_inits
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])]
    if part.contrib:
        outputs.append(helper.make_tensor_value_info("contrib", TensorProto.FLOAT, ["batch", n_f]))
    graph = helper.make_graph(
        f_nodes + h_nodes,
        contract.name,
        [helper.make_tensor_value_info("window", TensorProto.FLOAT,
                                       ["batch", contract.window_length, n_f])],
        outputs,
        initializer=f_inits + h_inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [helper.make_opsetid(domain, v) for domain, v in sorted(part.opsets.items())]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="plcbridge-recipe",
                              producer_version=contract.version, doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, contract.to_metadata())
    onnx.checker.check_model(model)
    return model


def _rename(node: onnx.NodeProto, old: str, new: str) -> onnx.NodeProto:
    """``node`` with the tensor ``old`` called ``new`` wherever it reads or writes it."""
    if old not in node.output and old not in node.input:
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for names in (copy.input, copy.output):
        for i, name in enumerate(names):
            if name == old:
                names[i] = new
    return copy


def _persist_nodes(persist: int, length: int, contrib: bool, n_f: int) -> tuple[
        list[onnx.NodeProto], list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes before the front (sub-windows stacked on the batch axis: sub-window 0 of every
    window, then 1, ...) and after the head (min score over them; newest ``contrib``)."""
    n = helper.make_node
    pre = [n("Slice", ["window", f"p_start{i}", f"p_stop{i}", "p_time"], [f"p_w{i}"]) for i in range(persist)]
    pre.append(n("Concat", [f"p_w{i}" for i in range(persist)], ["p_stack"], axis=0))
    inits = [const("p_time", [1], np.int64), const("p_by_sub", [persist, -1], np.int64)]
    for i in range(persist):
        inits += [const(f"p_start{i}", [i], np.int64), const(f"p_stop{i}", [i + length], np.int64)]
    post = [n("Reshape", ["p_scores", "p_by_sub"], ["p_score_grid"]),
            n("ReduceMin", ["p_score_grid"], ["score"], axes=[0], keepdims=0)]
    if contrib:
        # `contrib` of the newest sub-window: what the operator sees is about the latest samples.
        post += [n("Reshape", ["p_contribs", "p_by_sub_f"], ["p_contrib_grid"]),
                 n("Gather", ["p_contrib_grid", "p_newest"], ["contrib"], axis=0)]
        inits += [const("p_by_sub_f", [persist, -1, n_f], np.int64), const("p_newest", persist - 1, np.int64)]
    return pre, post, inits

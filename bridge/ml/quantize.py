"""`plcbridge quantize`: int8 (ONNX Runtime) quantization, measured against the float model.

Nothing is taken on trust: both models are loaded as the bridge loads them (``Detector``) and
run in the same process on the same labelled data through the live path (``bridge.ml.evaluate``),
and the report gives file size, per-window latency, score agreement and F1 for each. A
quantized model whose F1 drops by more than the tolerance is not written.

Expect little from tiny models: the recipes' heads are a few MatMuls of e.g. 3x3 or 8x16
matrices, so the int8 graph adds quantize/dequantize nodes (bigger file, more kernel launches)
and saves nothing measurable; the report says so when that happens. Build-time tool: it needs
the ``onnx`` package (``onnxruntime.quantization`` imports it); the runtime never does.

Portability: weights and activations are uint8 (U8U8), never int8 weights, because ONNX
Runtime's u8 x s8 kernel on x86 CPUs without AVX-512 VNNI saturates (see ``_quantize``). Under
``qemu-x86_64 -cpu Haswell`` an int8-weight pca model agreed with the float model on 13.6 % of
the flags, the U8U8 one on 100 % (as on this AVX-512 VNNI box). ``quantize`` is meant to run on
the box that will run the model, and the report names the CPU it measured on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.core.errors import ModelContractError
from bridge.core.extras import require_extra
from bridge.ml.dataset import DataError, Table, load_csv
from bridge.ml.detection import Counts
from bridge.ml.evaluate import FileResult, evaluate_table, latency_us
from bridge.ml.replay import replay
from bridge.scoring.detector import Detector

__all__ = ["METHODS", "QuantReport", "Side", "cpu", "portability_problems", "quantize"]

METHODS = ("dynamic", "static")
# A change smaller than this (10 %) is within run-to-run noise of the latency median.
HELPS = 0.9


@dataclass(frozen=True)
class Side:
    """One model's measurements."""

    size: int  # bytes
    latency_median_us: float
    latency_p99_us: float
    f1: float
    far: float
    mar: float


@dataclass(frozen=True)
class QuantReport:
    method: str
    float_: Side
    int8: Side
    windows: int  # windows compared
    max_abs_diff: float
    max_rel_diff: float  # relative to max(|float score|, threshold): a score near 0 is not a ratio
    flag_agreement: float  # fraction of windows with the same anomaly flag
    f1_drop: float
    tolerance: float
    # The box both models ran on (``cpu()``): the F1 guard is a measurement on this CPU; the
    # U8U8 graph makes it hold on the others too (``portability_problems``).
    cpu: str = ""

    @property
    def accepted(self) -> bool:
        return self.f1_drop <= self.tolerance

    @property
    def helps(self) -> bool:
        return (self.int8.size < HELPS * self.float_.size
                or self.int8.latency_median_us < HELPS * self.float_.latency_median_us)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["float"] = data.pop("float_")
        return {**data, "accepted": self.accepted, "helps": self.helps}

    def lines(self) -> list[str]:
        f, q = self.float_, self.int8
        out = [
            f"{'':14} {'bytes':>8} {'median µs':>10} {'p99 µs':>8} {'F1':>6} {'FAR %':>7} {'MAR %':>7}",
            *(f"{name:14} {s.size:>8} {s.latency_median_us:>10.1f} {s.latency_p99_us:>8.1f} "
              f"{s.f1:>6.3f} {s.far:>7.2f} {s.mar:>7.2f}" for name, s in (("float", f), (self.method, q))),
            f"score agreement on {self.windows} windows: max abs diff {self.max_abs_diff:.3g}, "
            f"max rel diff {self.max_rel_diff:.3g}, same anomaly flag {100 * self.flag_agreement:.2f} %",
            f"F1 drop {self.f1_drop:+.4f} (tolerance {self.tolerance:g}), measured on "
            f"{self.cpu or 'this CPU'}; uint8 x uint8 kernels: the same integer results on AVX2, "
            "AVX-512 and arm64",
        ]
        if not self.helps:
            out.append(f"note: int8 does not help this model: {q.size} vs {f.size} bytes, "
                       f"{q.latency_median_us:.1f} vs {f.latency_median_us:.1f} µs median; the graph is "
                       "too small for int8 kernels to pay for their quantize/dequantize steps. Keep the "
                       "float model.")
        return out


class _Windows:
    """onnxruntime CalibrationDataReader over normal windows (static quantization)."""

    def __init__(self, windows: np.ndarray, batch: int = 256) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [np.ascontiguousarray(windows[i:i + batch], dtype=np.float32)
             for i in range(0, len(windows), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"window": batch}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # onnxruntime.quantization warns on the root logger to run its pre-processing; that step
    # is shape inference for big vision graphs and changes nothing on these.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path, method: str, calib: np.ndarray) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    # U8U8 (uint8 activations and weights), never U8S8/S8S8: on x86 without AVX-512 VNNI,
    # ONNX Runtime multiplies uint8 by int8 with VPMADDUBSW, which adds two u8 x s8 products into
    # a saturating int16 (255 x 127 x 2 > 32767), so the same model scores differently on an
    # AVX2 box than on the VNNI box it was checked on (14 % flag agreement on an AVX2-only CPU).
    # U8U8 kernels widen to 16 bits before multiplying on every CPU: the integer sums are exact
    # on AVX2, AVX-512 and arm64 alike, so the F1 measured here holds where the model runs.
    # `portability_problems` checks the written graph for this.
    with _quiet():
        if method == "dynamic":
            quantize_dynamic(src, dst, weight_type=QuantType.QUInt8)
        else:
            quantize_static(src, dst, _Windows(calib), activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QUInt8)


# Where a quantized weight enters the graph: the weight input of the integer matmuls ONNX
# Runtime may run with the saturating u8 x s8 instruction (MatMulInteger A, B; QLinearMatMul
# a, a_scale, a_zp, b, ...), and the DequantizeLinear of a QDQ graph, which ORT fuses into one.
_INT_MATMULS = {"MatMulInteger": 1, "QLinearMatMul": 3, "DynamicQuantizeMatMul": 1,
                "MatMulIntegerToFloat": 1, "DequantizeLinear": 0}
# With 7-bit weights (|w| <= 64, ORT's reduce_range) a pair sum 2 x 255 x 64 fits in int16.
_S8_SAFE = 64


def portability_problems(model: Path) -> list[str]:
    """Integer matmuls of ``model`` whose int8 weights could saturate the AVX2 u8 x s8 kernel.

    Empty for a U8U8 or reduced-range model: its integer results are the same on every x86-64
    (AVX2, AVX-512, VNNI) and arm64 CPU, so agreement measured on one box holds on the others.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(model).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    problems = []
    for node in graph.node:
        slot = _INT_MATMULS.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        w = weights.get(node.input[slot])
        if w is None:
            # An activation (static QDQ): its DequantizeLinear is not a weight.
            if node.op_type != "DequantizeLinear":
                problems.append(f"{node.name or node.op_type}: weight {node.input[slot]!r} is not a "
                                "constant, its range is unknown")
        elif w.dtype == np.int8 and int(np.abs(w.astype(np.int16)).max(initial=0)) > _S8_SAFE:
            problems.append(f"{node.name or node.op_type}: int8 weight {node.input[slot]!r} reaches "
                            f"{int(np.abs(w.astype(np.int16)).max())} > {_S8_SAFE}; AVX2 u8 x s8 "
                            "kernels saturate")
    return problems


def cpu() -> str:
    """The box the measurement ran on: architecture and the ISA features int8 kernels use."""
    import platform

    machine = platform.machine() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return machine
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith(("flags", "Features"))), []))
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
    return " ".join([machine, *(f for f in wanted if f in flags)])


def _side(path: Path, detector: Detector, results: Sequence[FileResult], window: np.ndarray) -> Side:
    total = sum((r.counts for r in results), Counts())
    median, p99 = latency_us(detector, window)
    return Side(path.stat().st_size, median, p99, total.f1, total.far, total.mar)


def quantize(model: Path, out: Path, data: Sequence[Path], *, method: str = "dynamic",
             tolerance: float = 0.02, test_from: int = 0) -> QuantReport:
    """Quantize ``model``; write ``out`` only when accepted. Raises DataError/ModelContractError."""
    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    require_extra("onnx", "quantize")  # before the evaluation, not after it
    ref = Detector(model)
    tables: list[Table] = [load_csv(p) for p in data]
    c = ref.contract
    reps = [replay(t, c.inputs, length=c.window_length, period=c.period) for t in tables]
    if not any(r.valid.any() for r in reps):
        raise DataError(f"{data[0]}: no valid window to compare the models on")
    # Static ranges come from normal windows only: an anomaly must not widen the int8 scale.
    calib = np.concatenate([r.windows[r.valid & (t.labels == 0 if t.labels is not None else True)]
                            for r, t in zip(reps, tables, strict=True)])
    window = next(r.windows[r.valid][0] for r in reps if r.valid.any())
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _quantize(model, tmp, method, calib if len(calib) else np.concatenate([r.windows for r in reps]))
        problems = portability_problems(tmp)
        if problems:  # a guard on the onnxruntime.quantization options, not expected to fire
            raise ModelContractError(f"{out}: the quantized model would score differently on AVX2-only "
                                     f"CPUs: {'; '.join(problems)}")
        try:
            q = Detector(tmp)  # contract metadata survived, graph still matches it
        except ModelContractError as exc:
            raise ModelContractError(f"{out}: the quantized model does not load as a plcbridge model "
                                     f"({exc})") from exc
        ref_res = [evaluate_table(ref, t, test_from=test_from) for t in tables]
        q_res = [evaluate_table(q, t, test_from=test_from) for t in tables]
        a = np.concatenate([r.scores for r in ref_res])
        b = np.concatenate([r.scores for r in q_res])
        both = np.isfinite(a) & np.isfinite(b)
        diff = np.abs(a[both] - b[both])
        scale = np.maximum(np.abs(a[both]), ref.threshold)
        flags_a = np.concatenate([r.alarms for r in ref_res])[both]
        flags_b = np.concatenate([r.alarms for r in q_res])[both]
        f, s = _side(model, ref, ref_res, window), _side(tmp, q, q_res, window)
        report = QuantReport(method, f, s, int(both.sum()), float(diff.max(initial=0.0)),
                             float((diff / scale).max(initial=0.0)),
                             float((flags_a == flags_b).mean()) if both.any() else 1.0,
                             f.f1 - s.f1, tolerance, cpu())
        if report.accepted:
            os.replace(tmp, out)  # atomic: a reader never sees half a model
        return report
    finally:
        tmp.unlink(missing_ok=True)

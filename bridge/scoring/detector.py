"""Model loading and scoring: one onnxruntime session per model, loaded once.

Only onnxruntime and numpy are imported here; the ``onnx`` package is a build-time tool for
recipes and never needed at runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bridge.core.contract import ModelContract
from bridge.core.errors import ModelContractError

__all__ = ["Detector"]

INPUT_NAME = "window"


def _dim_ok(dim: object, expected: int) -> bool:
    return isinstance(dim, int) and dim == expected


def _is_dynamic(dim: object) -> bool:
    # onnxruntime reports symbolic dims as str and unknown ones as None.
    return dim is None or isinstance(dim, str)


class Detector:
    """A loaded anomaly model whose graph has been checked against its own contract."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        where = str(self._path)
        if not self._path.is_file():
            raise ModelContractError(f"{where}: model file not found")
        options = ort.SessionOptions()
        # One thread each: a second intra-op thread makes small models slower on 2 cores and
        # competes with the event loop.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                where, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelContractError(f"{where}: not a loadable ONNX model ({exc})") from exc
        props = dict(self._session.get_modelmeta().custom_metadata_map)
        try:
            self._contract = ModelContract.from_metadata(props)
        except ModelContractError as exc:
            raise ModelContractError(f"{where}: {exc}") from exc
        self._check_graph(where)

    def _check_graph(self, where: str) -> None:
        c = self._contract
        n_features = len(c.inputs)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelContractError(
                f"{where}: graph inputs are {[i.name for i in inputs]}, expected exactly [{INPUT_NAME!r}]"
            )
        inp = inputs[0]
        if inp.type != "tensor(float)":
            raise ModelContractError(
                f"{where}: input {INPUT_NAME!r} has type {inp.type}, expected tensor(float)"
            )
        shape = list(inp.shape)
        if (
            len(shape) != 3
            or not _is_dynamic(shape[0])
            or not _dim_ok(shape[1], c.window_length)
            or not _dim_ok(shape[2], n_features)
        ):
            raise ModelContractError(
                f"{where}: input {INPUT_NAME!r} has shape {shape}, contract expects "
                f"[batch, {c.window_length}, {n_features}] (window_length, len(inputs)) with dynamic batch"
            )
        outputs = {o.name: o for o in self._session.get_outputs()}
        names = [o.name for o in self._session.get_outputs()]
        if names[: len(c.outputs)] != list(c.outputs) or set(names) != set(c.outputs):
            raise ModelContractError(
                f"{where}: graph outputs are {names}, contract declares {list(c.outputs)}"
            )
        score_shape = list(outputs["score"].shape)
        if len(score_shape) != 1:
            raise ModelContractError(f"{where}: output 'score' has shape {score_shape}, expected [batch]")
        if "contrib" in outputs:
            contrib_shape = list(outputs["contrib"].shape)
            if len(contrib_shape) != 2 or not _dim_ok(contrib_shape[1], n_features):
                raise ModelContractError(
                    f"{where}: output 'contrib' has shape {contrib_shape}, expected [batch, {n_features}]"
                )
        self._output_names = list(c.outputs)

    def relocate(self, path: Path) -> None:
        """The model file was moved (an atomic install); the session is already in memory."""
        self._path = Path(path)

    # ------------------------------------------------------------ properties
    @property
    def contract(self) -> ModelContract:
        return self._contract

    @property
    def threshold(self) -> float:
        return self._contract.threshold

    @property
    def path(self) -> Path:
        return self._path

    @property
    def version(self) -> str:
        return self._contract.version

    @property
    def has_contrib(self) -> bool:
        return "contrib" in self._output_names

    # --------------------------------------------------------------- checks
    def check_inputs(self, configured: Sequence[str]) -> None:
        """Refuse a configuration whose ordered input tags differ from the contract's."""
        expected = self._contract.inputs
        got = tuple(configured)
        for pos, (want, have) in enumerate(zip(expected, got, strict=False)):
            if want != have:
                raise ModelContractError(
                    f"{self._path}: input {pos} is {have!r} in the configuration, "
                    f"the model contract expects {want!r} (contract inputs: {list(expected)})"
                )
        if len(got) != len(expected):
            raise ModelContractError(
                f"{self._path}: configuration has {len(got)} inputs, the model contract expects "
                f"{len(expected)} {list(expected)}"
            )

    def _checked(self, windows: np.ndarray, ndim: int) -> np.ndarray:
        c = self._contract
        want = (c.window_length, len(c.inputs))
        arr = np.asarray(windows)
        if arr.ndim != ndim or arr.shape[-2:] != want:
            shape = "[L, F]" if ndim == 2 else "[N, L, F]"
            raise ModelContractError(
                f"{self._path}: window has shape {list(arr.shape)}, expected {shape} = "
                f"{list(want) if ndim == 2 else ['N', *want]}"
            )
        # A copy only when needed: most callers already pass contiguous float32.
        return np.ascontiguousarray(arr, dtype=np.float32)

    # -------------------------------------------------------------- scoring
    def score(self, window: np.ndarray) -> tuple[float, np.ndarray | None]:
        """Score one [window_length, n_inputs] window; return (score, contrib or None)."""
        arr = self._checked(window, 2)[np.newaxis]
        results = self._session.run(self._output_names, {INPUT_NAME: arr})
        contrib = np.asarray(results[1][0]) if len(results) > 1 else None
        return float(results[0][0]), contrib

    def score_batch(self, windows: np.ndarray) -> np.ndarray:
        """Score [N, window_length, n_inputs] windows; return scores [N]."""
        arr = self._checked(windows, 3)
        (scores,) = self._session.run(["score"], {INPUT_NAME: arr})
        return np.asarray(scores)

"""Detector: loads the shipped model, checks contracts, scores normal vs faulty windows."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from adapters.sim.plant import SIGNALS, PumpPlant
from bridge.core.contract import CONTRACT_KEY, ModelContract
from bridge.core.errors import ModelContractError
from bridge.scoring.detector import Detector

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "pump_pca.onnx"


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL)


@pytest.fixture(scope="module")
def normal_windows(detector: Detector) -> np.ndarray:
    length = detector.contract.window_length
    data = PumpPlant(424242).run(900, detector.contract.period).astype(np.float32)
    view = np.lib.stride_tricks.sliding_window_view(data, length, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def test_shipped_model_contract(detector: Detector) -> None:
    c = detector.contract
    assert c.inputs == SIGNALS
    assert c.outputs == ("score", "contrib")
    assert detector.threshold == c.threshold == 1.0
    assert detector.version == c.version and detector.path == MODEL
    assert c.training["rows"] > 0 and len(c.training["sha256"]) == 64
    detector.check_inputs(list(SIGNALS))


def test_normal_windows_score_below_threshold(detector: Detector, normal_windows: np.ndarray) -> None:
    scores = detector.score_batch(normal_windows)
    assert scores.shape == (len(normal_windows),)
    assert float(scores.max()) < detector.threshold
    score, contrib = detector.score(normal_windows[0])
    assert score == pytest.approx(float(scores[0]), rel=1e-5)
    assert contrib is not None and contrib.shape == (len(SIGNALS),)


@pytest.mark.parametrize("fault", ["stuck", "spike"])
def test_faulty_window_scores_above_threshold_and_blames_the_sensor(
    detector: Detector, normal_windows: np.ndarray, fault: str
) -> None:
    window = normal_windows[100].copy()
    if fault == "stuck":
        sensor = SIGNALS.index("flow")
        window[:, sensor] = window[0, sensor]
    else:
        sensor = SIGNALS.index("pressure")
        window[-1, sensor] *= 1.25
    score, contrib = detector.score(window)
    assert score >= detector.threshold
    assert contrib is not None and int(np.argmax(contrib)) == sensor


def test_bad_window_shape_is_a_clear_error(detector: Detector) -> None:
    message = r"window has shape \[10, 5\], expected \[L, F\] = \[16, 5\]"
    with pytest.raises(ModelContractError, match=message):
        detector.score(np.zeros((10, 5), dtype=np.float32))
    with pytest.raises(ModelContractError, match=r"expected \[N, L, F\]"):
        detector.score_batch(np.zeros((16, 5), dtype=np.float32))


def test_check_inputs_names_the_position(detector: Detector) -> None:
    swapped = ["pressure", "current", "flow", "temperature", "vibration"]
    with pytest.raises(ModelContractError, match=r"input 1 is 'current'.*expects 'flow'"):
        detector.check_inputs(swapped)
    with pytest.raises(ModelContractError, match="has 4 inputs, the model contract expects 5"):
        detector.check_inputs(list(SIGNALS[:4]))


def test_missing_and_corrupted_files(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match="model file not found"):
        Detector(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelContractError, match=r"bad\.onnx: not a loadable ONNX model"):
        Detector(bad)


def _contract(**changes: object) -> ModelContract:
    base = ModelContract(
        name="tiny",
        kind="test",
        inputs=("a", "b"),
        window_length=4,
        period=1.0,
        normalization="none",
        score="mean",
        threshold=0.5,
        training={"rows": 0},
        recipe="tests",
        version="0",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _tiny_model(path: Path, window: int, features: int, metadata: dict[str, str] | None) -> Path:
    """score = mean over the window and features; written with onnx.helper."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["window"], ["score"], axes=[1, 2], keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", window, features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    path.write_bytes(model.SerializeToString())
    return path


def test_a_valid_tiny_model_loads_and_scores(tmp_path: Path) -> None:
    det = Detector(_tiny_model(tmp_path / "ok.onnx", 4, 2, _contract().to_metadata()))
    score, contrib = det.score(np.ones((4, 2), dtype=np.float32))
    assert score == pytest.approx(1.0) and contrib is None


def test_missing_contract_is_refused(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "plain.onnx", 4, 2, None)
    with pytest.raises(ModelContractError, match=r"plain\.onnx: model metadata has no 'plcbridge.contract'"):
        Detector(path)


def test_graph_shape_that_differs_from_the_contract_is_refused(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "shape.onnx", 6, 2, _contract().to_metadata())
    message = r"shape \[.batch., 6, 2\], contract expects \[batch, 4, 2\]"
    with pytest.raises(ModelContractError, match=message):
        Detector(path)
    path = _tiny_model(tmp_path / "outs.onnx", 4, 2, _contract(outputs=("score", "contrib")).to_metadata())
    with pytest.raises(ModelContractError, match="graph outputs are"):
        Detector(path)


def test_contract_round_trip_and_field_errors() -> None:
    c = _contract()
    assert ModelContract.from_metadata(c.to_metadata()) == c
    obj = json.loads(c.to_json())
    for key, value, message in [
        ("threshold", "high", "'threshold': expected int or float"),
        ("window_length", 0, "'window_length': must be >= 1"),
        ("inputs", [], "'inputs': expected a non-empty list"),
        ("schema", 2, "'schema': version 2 is not supported"),
        # Echoed in every Score and reply: a model file cannot make them kilobytes long.
        ("version", "v" * 65, "'version' is 65 characters \\(at most 64\\)"),
        ("recipe", "r" * 257, "'recipe' is 257 characters \\(at most 256\\)"),
        ("inputs", ["x" * 300], "input or output of 300 characters"),
    ]:
        bad = dict(obj, **{key: value})
        with pytest.raises(ModelContractError, match=message):
            ModelContract.from_metadata({CONTRACT_KEY: json.dumps(bad)})
    del obj["period"]
    with pytest.raises(ModelContractError, match="'period' is missing"):
        ModelContract.from_metadata({CONTRACT_KEY: json.dumps(obj)})
    with pytest.raises(ModelContractError, match="not valid JSON"):
        ModelContract.from_metadata({CONTRACT_KEY: "{"})


def test_runtime_does_not_import_onnx_or_sklearn() -> None:
    code = (
        "import sys; from bridge.scoring.detector import Detector; "
        f"Detector({str(MODEL)!r}); "
        "bad = [m for m in ('onnx', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert onnx  # the tests themselves may use onnx to build broken models

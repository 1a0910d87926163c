"""The model contract: what an ONNX model promises, carried inside the model file.

The whole contract is one JSON object stored in the ONNX ``metadata_props`` under the key
``plcbridge.contract``; one key keeps the contract atomic (no half-written set of keys) and
lets onnxruntime's ``custom_metadata_map`` hand it back without the ``onnx`` package.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from bridge.core.errors import ModelContractError

__all__ = ["CONTRACT_KEY", "SCHEMA_VERSION", "ModelContract"]

CONTRACT_KEY = "plcbridge.contract"
SCHEMA_VERSION = 1


# Contract strings are echoed in every Score (version) and in every model reply: a model file
# (uploaded, dropped in the folder or named by the config) cannot make each of them carry
# kilobytes. Generous for real versions, recipe names and tag names.
MAX_VERSION_CHARS = 64
MAX_STRING_CHARS = 256


def _check_sizes(contract: ModelContract) -> ModelContract:
    if len(contract.version) > MAX_VERSION_CHARS:
        raise ModelContractError(f"contract field 'version' is {len(contract.version)} characters "
                                 f"(at most {MAX_VERSION_CHARS})")
    for field in ("name", "kind", "normalization", "score", "recipe"):
        value = getattr(contract, field)
        if len(value) > MAX_STRING_CHARS:
            raise ModelContractError(f"contract field {field!r} is {len(value)} characters "
                                     f"(at most {MAX_STRING_CHARS})")
    for value in (*contract.inputs, *contract.outputs):
        if len(value) > MAX_STRING_CHARS:
            raise ModelContractError(f"contract names an input or output of {len(value)} "
                                     f"characters (at most {MAX_STRING_CHARS})")
    return contract


def _need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise ModelContractError(f"contract field {key!r} is missing")
    value = obj[key]
    # bool is an int subclass: never accept it where a number is expected.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ModelContractError(f"contract field {key!r}: expected {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise ModelContractError(f"contract field {key!r}: expected {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _names(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = _need(obj, key, list)
    if not value or not all(isinstance(v, str) and v for v in value):
        raise ModelContractError(f"contract field {key!r}: expected a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise ModelContractError(f"contract field {key!r}: duplicate names in {value!r}")
    return tuple(value)


@dataclass(frozen=True, kw_only=True)
class ModelContract:
    """What a model expects and what its score means. Higher score = more anomalous.

    Keyword-only so ``schema`` can come first with its default, as in the JSON.
    """

    schema: int = SCHEMA_VERSION
    name: str
    kind: str
    inputs: tuple[str, ...]
    window_length: int
    period: float
    normalization: str
    score: str
    threshold: float
    training: dict[str, Any]
    recipe: str
    version: str
    outputs: tuple[str, ...] = ("score",)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace) so the same contract gives the same bytes."""
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        data["outputs"] = list(self.outputs)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries carrying this contract."""
        return {CONTRACT_KEY: self.to_json()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelContract:
        """Parse and validate; ``ModelContractError`` names the missing or bad field."""
        if CONTRACT_KEY not in props:
            raise ModelContractError(
                f"model metadata has no {CONTRACT_KEY!r} key (keys present: {sorted(props)})"
            )
        try:
            obj = json.loads(props[CONTRACT_KEY])
        except json.JSONDecodeError as exc:
            raise ModelContractError(f"{CONTRACT_KEY!r} is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ModelContractError(f"{CONTRACT_KEY!r} must be a JSON object, got {type(obj).__name__}")
        schema = _need(obj, "schema", int)
        if schema != SCHEMA_VERSION:
            raise ModelContractError(
                f"contract field 'schema': version {schema} is not supported (expected {SCHEMA_VERSION})"
            )
        window_length = _need(obj, "window_length", int)
        if window_length < 1:
            raise ModelContractError(f"contract field 'window_length': must be >= 1, got {window_length}")
        period = float(_need(obj, "period", (int, float)))
        if not (math.isfinite(period) and period > 0):
            raise ModelContractError(f"contract field 'period': must be > 0 seconds, got {period}")
        threshold = float(_need(obj, "threshold", (int, float)))
        if not math.isfinite(threshold):
            raise ModelContractError(f"contract field 'threshold': must be finite, got {threshold}")
        outputs = _names(obj, "outputs")
        if outputs[0] != "score" or not set(outputs) <= {"score", "contrib"}:
            raise ModelContractError(
                f"contract field 'outputs': expected ['score'] or ['score', 'contrib'], got {list(outputs)}"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ModelContractError(f"contract has unknown fields {unknown}")
        return _check_sizes(cls(
            schema=schema,
            name=_need(obj, "name", str),
            kind=_need(obj, "kind", str),
            inputs=_names(obj, "inputs"),
            window_length=window_length,
            period=period,
            normalization=_need(obj, "normalization", str),
            score=_need(obj, "score", str),
            threshold=threshold,
            training=_need(obj, "training", dict),
            recipe=_need(obj, "recipe", str),
            version=_need(obj, "version", str),
            outputs=outputs,
        ))

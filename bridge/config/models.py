"""``[[models]]``: an anomaly model, the tags that feed it, and where its results may be
written back (``[models.writeback]``: holding registers or OPC UA nodes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bridge.config.base import ConfigPath, Name, StrictModel
from bridge.config.checks import check_fail_safe, check_span, check_valid_range
from bridge.config.opcua import check_node_id
from bridge.core.datatypes import Order, register_count

__all__ = [
    "DEFAULT_MODEL",
    "AdaptConfig",
    "AlarmConfig",
    "ModelConfig",
    "ModelWritebackConfig",
    "NodeTarget",
    "RegisterTarget",
    "ShadowRuleConfig",
    "Target",
]

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "pump_pca.onnx"


class RegisterTarget(StrictModel):
    """A holding register (or pair/quad) the bridge may write."""

    address: Annotated[int, Field(ge=0, le=65535)]
    type: Literal["int16", "uint16", "int32", "uint32", "float32", "float64"] = "uint16"
    byte_order: Order | None = None
    word_order: Order | None = None
    min: float | None = None
    max: float | None = None
    # Written instead of the live value when the bridge cannot vouch for the result (window
    # not valid, model error) and once at shutdown. None: the target is left alone then.
    fail_safe: float | None = None

    @model_validator(mode="after")
    def _check_fail_safe(self) -> RegisterTarget:
        check_span(self.address, self.registers)
        check_valid_range(self.min, self.max, key="")
        check_fail_safe(self.fail_safe, self.type, self.min, self.max)
        return self

    @property
    def registers(self) -> int:
        return register_count(self.type)


class NodeTarget(StrictModel):
    """An OPC UA variable the bridge may write; the value takes the node's own DataType."""

    node_id: str
    min: float | None = None
    max: float | None = None
    fail_safe: float | None = None

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str) -> str:
        return check_node_id(value)

    @model_validator(mode="after")
    def _check_fail_safe(self) -> NodeTarget:
        # The node's DataType is known only once connected: the adapter checks the encoding.
        check_valid_range(self.min, self.max, key="")
        check_fail_safe(self.fail_safe, None, self.min, self.max)
        return self


Target = RegisterTarget | NodeTarget


class ModelWritebackConfig(StrictModel):
    """Where a model's results go on a device. Each target is optional: holding registers
    (``address``) on a Modbus device, nodes (``node_id``) on an OPC UA device."""

    device: str
    score: Target | None = None
    anomaly: Target | None = None
    heartbeat: Target | None = None
    window_valid: Target | None = None
    allow_overlap_with_tags: bool = False

    @field_validator("score")
    @classmethod
    def _score_is_float(cls, value: Target | None) -> Target | None:
        if isinstance(value, RegisterTarget) and value.type not in ("float32", "float64"):
            raise ValueError(f"type: score needs float32 or float64, not {value.type!r}")
        return value

    def targets(self) -> dict[str, Target]:
        found = {
            "score": self.score, "anomaly": self.anomaly,
            "heartbeat": self.heartbeat, "window_valid": self.window_valid,
        }
        return {key: target for key, target in found.items() if target is not None}


class ShadowRuleConfig(StrictModel):
    """When a model staged in shadow beside the active one is promoted or rejected."""

    # Seconds of observation (at the bridge's own pace) before the rule decides.
    period_s: Annotated[float, Field(gt=0, le=90 * 86400)] = 3600.0
    # Windows both models must have scored by then; fewer is a rejection (no evidence).
    min_windows: Annotated[int, Field(ge=1)] = 100
    # The shadow's flag rate on windows the active model called normal: its would-be false
    # alarm rate on this bridge's own recent normal data.
    max_far: Annotated[float, Field(ge=0, le=1)] = 0.01
    # Share of windows where both models reached the same verdict; 0 does not check it.
    min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.0


class AdaptConfig(StrictModel):
    """Guarded online adaptation (opt-in): the model's input baseline follows slow normal drift."""

    enabled: bool = False
    # Share of the gap between the window mean and the current baseline taken per learning
    # window (an exponentially weighted mean): it sets which drift is followed and which ramp
    # is caught (docs/skab.md, "Online adaptation and alarm hysteresis").
    rate: Annotated[float, Field(gt=0, le=0.5)] = 0.001
    # Largest move of one input's baseline per window, in that input's training sd.
    max_step_sd: Annotated[float, Field(gt=0, le=1)] = 0.01
    # Largest total move of one input's baseline, in training sd: past it the baseline stops
    # following, so a slow fault is hidden at most this far (reported as capped).
    max_shift_sd: Annotated[float, Field(gt=0, le=20)] = 3.0
    # Valid windows after the last anomalous one before learning resumes.
    hold_off_windows: Annotated[int, Field(ge=0, le=1_000_000)] = 300
    # Learn only from windows scoring below this share of the threshold: a fault that builds
    # up slowly pushes the score toward the threshold and stops the learning before it alarms.
    learn_below: Annotated[float, Field(gt=0, le=1)] = 0.8
    # A moving baseline changes what is written to a PLC: refused with [models.writeback]
    # unless this says so.
    allow_with_writeback: bool = False


class AlarmConfig(StrictModel):
    """Alarm hysteresis between the score and the anomaly flag (write-back, sinks, events)."""

    # The alarm starts when the score is at or above on x threshold ...
    on: Annotated[float, Field(gt=0, le=1000)] = 1.0
    # ... and ends when it is below off x threshold (off <= on).
    off: Annotated[float, Field(gt=0, le=1000)] = 1.0
    # Consecutive valid windows at or above the on level before the alarm starts.
    min_on_windows: Annotated[int, Field(ge=1, le=86400)] = 1
    # Consecutive valid windows below the off level before the alarm ends.
    min_off_windows: Annotated[int, Field(ge=1, le=86400)] = 1

    @model_validator(mode="after")
    def _check_levels(self) -> AlarmConfig:
        if self.off > self.on:
            raise ValueError(f"off ({self.off:g}) must not be above on ({self.on:g}): the alarm "
                             "would end while the score is still over the level that starts it")
        return self

    @property
    def plain(self) -> bool:
        """The defaults: the alarm is the score at or over the threshold, window by window."""
        return self.on == self.off == 1.0 and self.min_on_windows == self.min_off_windows == 1


class ModelConfig(StrictModel):
    """One anomaly model and the tags that feed it."""

    name: Name
    file: ConfigPath | None = None
    inputs: list[str] | dict[str, str]
    max_age: Annotated[float, Field(gt=0)] | None = None
    threshold: float | None = None
    writeback: ModelWritebackConfig | None = None
    shadow: ShadowRuleConfig = Field(default_factory=ShadowRuleConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    alarm: AlarmConfig = Field(default_factory=AlarmConfig)

    @model_validator(mode="after")
    def _adapt_and_writeback(self) -> ModelConfig:
        if self.adapt.enabled and self.writeback is not None and not self.adapt.allow_with_writeback:
            raise ValueError("adapt.enabled: online adaptation moves the baseline of a model that "
                             "writes back to a device; set adapt.allow_with_writeback = true to "
                             "accept that, or remove [models.writeback]")
        return self

    @property
    def input_tags(self) -> list[str]:
        """The bridge tags feeding the model, in the order the config gives them."""
        return list(self.inputs.values()) if isinstance(self.inputs, dict) else list(self.inputs)

    @property
    def feature_names(self) -> list[str]:
        """The model's feature names as the config states them (keys of a mapping)."""
        return list(self.inputs.keys()) if isinstance(self.inputs, dict) else list(self.inputs)

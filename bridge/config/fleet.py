"""The ``[fleet]`` config section: this bridge as a member of a federated fleet (docs/fleet.md).

Kept apart from the sink so that loading a config never imports aiomqtt. The broker keys mean
what they mean in ``[mqtt]``; the section is independent of ``[mqtt]`` (its own client id).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from bridge.config.base import StrictModel
from bridge.config.models import ShadowRuleConfig
from bridge.config.mqtt import BrokerConfig, topic_safe_hostname

__all__ = ["FLEET_PREFIX", "FleetConfig", "RolloutSpec", "selection_bucket", "topic_level"]

FLEET_PREFIX = "plcbridge/fleet"

# One topic level: no "/", "+" or "#", and "$" at the start is the broker's.
_LEVEL = re.compile(r"^[^/+#$\x00\s][^/+#\x00]*$")
_PREFIX = re.compile(r"^[^/+#$\x00][^+#\x00]*$")


def topic_level(value: str) -> str:
    """``value`` if it is one MQTT topic level (a bridge id, a model name); ValueError if not."""
    if not _LEVEL.match(value) or len(value) > 100:
        raise ValueError(f"{value!r} is not one topic level (no / + # or leading $ or space)")
    return value


class FleetConfig(BrokerConfig):
    topic_prefix: Annotated[str, Field(min_length=1, max_length=200)] = FLEET_PREFIX
    bridge_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None  # None: host name
    # The models that take fleet models (names from [[models]]); empty: every configured model.
    models: list[str] = Field(default_factory=list)
    # Accumulate this bridge's PCA statistics from its own valid windows the active model
    # scored normal, and publish them on F/M/stats/B (bridge.sinks.fleet_stats).
    live_stats: bool = False
    stats_every: Annotated[float, Field(gt=0, le=86400)] = 600.0  # seconds between publications

    @field_validator("bridge_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        return None if value is None else topic_level(value)

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _PREFIX.match(value) or value.endswith("/"):
            raise ValueError(f"{value!r} is not a topic prefix (no wildcards + or #, no leading "
                             "$ or /, no trailing /)")
        return value

    @model_validator(mode="after")
    def _check(self) -> FleetConfig:
        for name in self.models:
            topic_level(name)
        return self

    @property
    def effective_bridge_id(self) -> str:
        return self.bridge_id or topic_safe_hostname()

    @property
    def effective_client_id(self) -> str:
        # Not the [mqtt] sink's id: the broker would kick one of two clients sharing an id.
        return self.client_id or f"plcbridge-fleet-{self.effective_bridge_id}"


def selection_bucket(bridge_id: str, model_sha256: str) -> float:
    """Where a bridge falls in [0, 1) for a fraction rollout of one model: the first 8 bytes of
    sha256("<bridge id>/<model sha256>") over 2**64. Deterministic (every bridge and the
    operator compute the same), independent between models (a new model picks another
    canary set), and stable when bridges join or leave (no list of the fleet is needed)."""
    digest = hashlib.sha256(f"{bridge_id}/{model_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class RolloutSpec(StrictModel):
    """A rollout as the card states it (``"rollout"`` key of ``F/M/card``): which bridges take
    the model and how. No bridges and no fraction: every bridge. Both: their union."""

    bridges: list[str] = Field(default_factory=list)
    fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    # True: stage in shadow beside the active model, promoted or rejected by the rule; False:
    # install at once (the REST upload's path).
    shadow: bool = False
    # Overrides of the bridge's [models.shadow] rule (period_s, min_windows, max_far,
    # min_agreement); what is not given is the bridge's own.
    rule: dict[str, int | float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> RolloutSpec:
        for name in self.bridges:
            topic_level(name)
        unknown = set(self.rule) - set(ShadowRuleConfig.model_fields)
        if unknown:
            raise ValueError(f"rule: unknown keys {', '.join(sorted(unknown))}")
        if self.rule and not self.shadow:
            raise ValueError("rule: only a shadow rollout has a rule")
        return self

    def selects(self, bridge_id: str, model_sha256: str) -> bool:
        if not self.bridges and self.fraction is None:
            return True
        if bridge_id in self.bridges:
            return True
        return self.fraction is not None and selection_bucket(bridge_id, model_sha256) < self.fraction

    def shadow_rule(self, base: ShadowRuleConfig) -> ShadowRuleConfig:
        """The bridge's rule with the card's overrides (ValidationError if one is out of range)."""
        return ShadowRuleConfig.model_validate({**base.model_dump(), **self.rule})

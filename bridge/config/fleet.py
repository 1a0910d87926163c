"""The ``[fleet]`` config section: this bridge as a member of a federated fleet (docs/fleet.md).

Kept apart from the sink so that loading a config never imports aiomqtt. The broker keys mean
what they mean in ``[mqtt]``; the section is independent of ``[mqtt]`` (its own client id).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from bridge.config.base import StrictModel
from bridge.config.checks import check_backoff, check_credentials
from bridge.config.mqtt import MqttTlsConfig

__all__ = ["FLEET_PREFIX", "FleetConfig", "topic_level"]

FLEET_PREFIX = "plcbridge/fleet"

# One topic level: no "/", "+" or "#", and "$" at the start is the broker's.
_LEVEL = re.compile(r"^[^/+#$\x00\s][^/+#\x00]*$")
_PREFIX = re.compile(r"^[^/+#$\x00][^+#\x00]*$")


def topic_level(value: str) -> str:
    """``value`` if it is one MQTT topic level (a bridge id, a model name); ValueError if not."""
    if not _LEVEL.match(value) or len(value) > 100:
        raise ValueError(f"{value!r} is not one topic level (no / + # or leading $ or space)")
    return value


class FleetConfig(StrictModel):
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # None: 1883, or 8883 with [fleet.tls]
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    username: Annotated[str, Field(min_length=1)] | None = None
    password_env: Annotated[str, Field(min_length=1)] | None = None
    password_file: Path | None = None
    tls: MqttTlsConfig | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 60
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0  # connect and per-publish
    reconnect_min: Annotated[float, Field(gt=0, le=600)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    topic_prefix: Annotated[str, Field(min_length=1, max_length=200)] = FLEET_PREFIX
    bridge_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None  # None: host name
    # The models that take fleet models (names from [[models]]); empty: every configured model.
    models: list[str] = Field(default_factory=list)

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
        check_credentials(self.username, self.password_env, self.password_file)
        check_backoff(self.reconnect_min, self.reconnect_max)
        for name in self.models:
            topic_level(name)
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883

    @property
    def effective_bridge_id(self) -> str:
        return self.bridge_id or re.sub(r"[+#/\s]", "_", socket.gethostname()) or "bridge"

    @property
    def effective_client_id(self) -> str:
        # Not the [mqtt] sink's id: the broker would kick one of two clients sharing an id.
        return self.client_id or f"plcbridge-fleet-{self.effective_bridge_id}"

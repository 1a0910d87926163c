"""The ``[sparkplug]`` config section: the bridge as a Sparkplug B edge node (docs/sparkplug.md).

Kept apart from the sink so that loading a config never imports aiomqtt or protobuf. The broker
keys mean what they mean in ``[mqtt]``; the two sections are independent (a bridge may publish
plain JSON, Sparkplug, both or neither), each with its own client id and spool.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from bridge.config.base import ConfigPath, StrictModel
from bridge.config.checks import check_backoff, check_credentials
from bridge.config.mqtt import MqttTlsConfig, broker_port, topic_safe_hostname

__all__ = ["SparkplugConfig"]

# Sparkplug B 3.0: group, edge node and host ids are one topic level each, so they may not hold
# "/", "+" or "#" (and "$" at the start is the broker's).
_ID = re.compile(r"^[^/+#$\x00\s][^/+#\x00]*$")


class SparkplugConfig(StrictModel):
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # None: 1883, or 8883 with [sparkplug.tls]
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    username: Annotated[str, Field(min_length=1)] | None = None
    password_env: Annotated[str, Field(min_length=1)] | None = None
    password_file: ConfigPath | None = None
    tls: MqttTlsConfig | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0  # connect and per-publish
    reconnect_min: Annotated[float, Field(gt=0, le=600)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    group_id: Annotated[str, Field(min_length=1, max_length=100)] = "plcbridge"
    edge_node_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None  # None: host name
    # The primary host application's id: births wait for its STATE "online", and while it is
    # offline data stays in the spool (sent in order when it returns). None: publish always.
    primary_host_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    deadband: Annotated[float, Field(ge=0)] = 0.0  # report-by-exception: smallest change sent
    # Per-metric deadbands by metric name, e.g. {"Tags/flow" = 0.5, "Models/pump/Score" = 0.01}.
    deadbands: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    spool_dir: ConfigPath
    spool_max_messages: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not _ID.match(value):
            raise ValueError(f"{value!r} is not a Sparkplug id (one topic level: no / + # or "
                             "leading $ or space)")
        return value

    @model_validator(mode="after")
    def _check(self) -> SparkplugConfig:
        check_credentials(self.username, self.password_env, self.password_file)
        check_backoff(self.reconnect_min, self.reconnect_max)
        return self

    @property
    def effective_port(self) -> int:
        return broker_port(self.port, self.tls)

    @property
    def effective_edge_node_id(self) -> str:
        return self.edge_node_id or topic_safe_hostname()

    @property
    def effective_client_id(self) -> str:
        # Not the [mqtt] sink's id: the broker would kick one of two clients sharing an id.
        return self.client_id or f"plcbridge-spb-{self.group_id}-{self.effective_edge_node_id}"

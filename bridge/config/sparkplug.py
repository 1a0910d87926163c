"""The ``[sparkplug]`` config section: the bridge as a Sparkplug B edge node (docs/sparkplug.md).

Kept apart from the sink so that loading a config never imports aiomqtt or protobuf. The broker
keys mean what they mean in ``[mqtt]``; the two sections are independent (a bridge may publish
plain JSON, Sparkplug, both or neither), each with its own client id and spool.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from bridge.config.base import ConfigPath
from bridge.config.mqtt import BrokerConfig, topic_safe_hostname

__all__ = ["SparkplugConfig"]

# Sparkplug B 3.0: group, edge node and host ids are one topic level each, so they may not hold
# "/", "+" or "#" (and "$" at the start is the broker's).
_ID = re.compile(r"^[^/+#$\x00\s][^/+#\x00]*$")


class SparkplugConfig(BrokerConfig):
    # Shorter than [mqtt]'s: the NDEATH will is how a host learns the node died, after 1.5 x this.
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
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

    @property
    def effective_edge_node_id(self) -> str:
        return self.edge_node_id or topic_safe_hostname()

    @property
    def effective_client_id(self) -> str:
        # Not the [mqtt] sink's id: the broker would kick one of two clients sharing an id.
        return self.client_id or f"plcbridge-spb-{self.group_id}-{self.effective_edge_node_id}"

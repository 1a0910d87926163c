"""The ``[mqtt]`` config section (pydantic). Kept apart from the sink so that loading a config
never imports aiomqtt: the MQTT client library is only needed when the sink runs."""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bridge.config.base import ConfigPath, NotBool, StrictModel
from bridge.config.checks import check_backoff, check_credentials

__all__ = ["BrokerConfig", "MqttConfig", "MqttTlsConfig"]

# An MQTT topic level may not hold wildcards; "$" at the start is reserved for the broker.
_PREFIX = re.compile(r"^[^/+#$\x00][^+#\x00]*$")


class MqttTlsConfig(StrictModel):
    ca_file: ConfigPath | None = None  # None: the system's trust store
    cert_file: ConfigPath | None = None  # client certificate (mutual TLS)
    key_file: ConfigPath | None = None
    insecure: bool = False  # skip certificate and host name checks: test benches only

    @model_validator(mode="after")
    def _pair(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise ValueError(f"{missing}: cert_file and key_file go together (client certificate)")
        return self


class BrokerConfig(StrictModel):
    """The broker connection keys of ``[mqtt]``, ``[sparkplug]`` and ``[fleet]``: one
    declaration, so the three sections accept the same values and check them alike. Each
    section adds its own keys after these and its own ``effective_client_id``."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # None: 1883, or 8883 with tls
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    username: Annotated[str, Field(min_length=1)] | None = None
    password_env: Annotated[str, Field(min_length=1)] | None = None
    password_file: ConfigPath | None = None
    tls: MqttTlsConfig | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 60
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0  # connect and per-publish acknowledgement
    reconnect_min: Annotated[float, Field(gt=0, le=600)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _check_broker(self) -> BrokerConfig:
        check_credentials(self.username, self.password_env, self.password_file)
        check_backoff(self.reconnect_min, self.reconnect_max)
        return self

    @property
    def effective_port(self) -> int:
        return broker_port(self.port, self.tls)


class MqttConfig(BrokerConfig):
    topic_prefix: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    qos: Annotated[Literal[0, 1, 2], NotBool] = 1
    events: bool = True
    summary: bool = True
    summary_every: Annotated[int, Field(ge=1, le=1_000_000)] = 60
    summary_interval: Annotated[float, Field(gt=0, le=86400)] = 60.0
    scores: bool = False
    spool_dir: ConfigPath
    spool_max_messages: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is not None and (not _PREFIX.match(value) or value.endswith("/")):
            raise ValueError(f"{value!r} is not a topic prefix (no wildcards + or #, no leading "
                             "$ or /, no trailing /)")
        return value

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if not (self.events or self.summary or self.scores):
            raise ValueError("events: events, summary and scores are all off: nothing to publish")
        return self

    @property
    def effective_prefix(self) -> str:
        return self.topic_prefix or f"plcbridge/{topic_safe_hostname()}"

    @property
    def effective_client_id(self) -> str:
        # Stable across restarts (a broker kicks the older of two clients with one id), and
        # different per box by default.
        return self.client_id or f"plcbridge-{topic_safe_hostname()}"


def topic_safe_hostname() -> str:
    """This host's name as a topic level / id: a host name can hold nothing that is illegal in a
    topic level except, in theory, "+#/" (and blanks)."""
    return re.sub(r"[+#/\s]", "_", socket.gethostname()) or "bridge"


def broker_port(port: int | None, tls: MqttTlsConfig | None) -> int:
    """The configured port, else MQTT's default for the transport: 8883 with TLS, 1883 without
    (shared by [mqtt], [sparkplug] and [fleet])."""
    if port is not None:
        return port
    return 8883 if tls is not None else 1883

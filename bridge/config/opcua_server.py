"""``[opcua_server]``: plcbridge serves its results as an OPC UA server (pure pydantic).

``bridge.config.Config`` embeds ``OpcuaServerConfig``; the server itself is
``adapters.opcua.server.OpcuaServerSink`` (asyncua stays in ``adapters/``).

Security mirrors the client side (``[[devices]] protocol = "opcua"``): a security policy and
mode, the server's application certificate and key, a username whose password comes from an
environment variable or a file (never from the config). A secure endpoint must also say whose
client certificates it accepts: a folder of trusted client certificates, or explicitly any.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from bridge.config.base import ConfigPath, StrictModel
from bridge.config.checks import check_credentials, effective_security_mode
from bridge.config.opcua import OpcuaSecurityPolicy

__all__ = ["OpcuaServerConfig"]


class OpcuaServerConfig(StrictModel):
    """``[opcua_server]``: results served to SCADA over OPC UA (read-only nodes)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 4841  # 0: a free port (tests)
    namespace_uri: Annotated[str, Field(min_length=1)] = "urn:plcbridge:results"
    application_uri: Annotated[str, Field(min_length=1)] = "urn:plcbridge:server"
    # How often Devices/<name>/* are refreshed (Models/<name>/* change on every score).
    refresh_interval: Annotated[float, Field(ge=0.05, le=60)] = 1.0
    security_policy: OpcuaSecurityPolicy = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] | None = None  # default SignAndEncrypt
    certificate: ConfigPath | None = None  # the server's application certificate (DER or PEM)
    private_key: ConfigPath | None = None
    trusted_clients: ConfigPath | None = None  # folder of client certificates accepted (DER or PEM)
    accept_any_client_certificate: bool = False
    allow_anonymous: bool = True
    # Hostile or broken clients: connections at once (when full, a new one closes the oldest
    # without an activated session), seconds to activate a session, largest request message.
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 32
    activation_timeout: Annotated[float, Field(ge=1, le=600)] = 10.0
    max_message_size: Annotated[int, Field(ge=65536, le=64 * 1024 * 1024)] = 1024 * 1024
    # Alarms & Conditions: an AlarmConditionType event per model on anomaly start and end
    # (adapters/opcua/alarms.py), severities 1..1000; acknowledgement by the configured user.
    alarms: bool = True
    alarm_severity_start: Annotated[int, Field(ge=1, le=1000)] = 700
    alarm_severity_end: Annotated[int, Field(ge=1, le=1000)] = 100
    alarm_acknowledgement: bool = False
    username: str | None = None
    password_env: str | None = None
    password_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _check(self) -> OpcuaServerConfig:
        if self.security_policy == "None":
            for key in ("security_mode", "certificate", "private_key", "trusted_clients"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: has no meaning with security_policy 'None'")
            if self.accept_any_client_certificate:
                raise ValueError("accept_any_client_certificate: has no meaning with "
                                 "security_policy 'None'")
        else:
            if self.certificate is None or self.private_key is None:
                missing = "certificate" if self.certificate is None else "private_key"
                raise ValueError(f"{missing}: required for security_policy {self.security_policy!r} "
                                 "(the server's application certificate and its key)")
            if (self.trusted_clients is None) == (not self.accept_any_client_certificate):
                raise ValueError("trusted_clients: give a folder of trusted client certificates "
                                 "or accept_any_client_certificate = true (not both)")
        if self.username is None and not self.allow_anonymous:
            raise ValueError("allow_anonymous: false needs a username (nobody could log in)")
        if self.username is not None and self.security_policy == "None":
            # asyncua would accept the password in clear text on an unsecured channel.
            raise ValueError("username: needs a security_policy other than 'None' (the password "
                             "would cross the network unencrypted)")
        if self.alarm_acknowledgement and (not self.alarms or self.username is None):
            # Anonymous clients never acknowledge: an operator's action needs a name.
            raise ValueError("alarm_acknowledgement: needs alarms = true and a username (only "
                             "that authenticated user may acknowledge)")
        check_credentials(self.username, self.password_env, self.password_file)
        return self

    @property
    def effective_security_mode(self) -> str:
        return effective_security_mode(self.security_policy, self.security_mode)

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/plcbridge"

"""``[[devices]]`` with ``protocol = "opcua"`` and their ``[[devices.tags]]``, and the
NodeId and security policy vocabulary the OPC UA server section shares."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bridge.config.base import ConfigPath, Name, StrictModel
from bridge.config.checks import (
    check_backoff,
    check_credentials,
    check_valid_range,
    effective_security_mode,
)
from bridge.core.extras import MissingExtraError, require_extra

__all__ = ["NAMESPACE_URI_IN_PATH", "OpcuaDeviceConfig", "OpcuaSecurityPolicy", "OpcuaTagConfig",
           "check_node_id", "path_with_indexes"]

# NodeId strings as OPC UA Part 6 writes them: numeric, string, GUID or opaque (base64),
# with an optional namespace index. Checked here so a typo is a config error, not a poll error.
_IDENTIFIER = (r"(i=\d{1,10}|s=.+|b=[A-Za-z0-9+/=]+|"
               r"g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$")
_NODE_ID = r"^(ns=\d{1,5};)?" + _IDENTIFIER
# ``nsu=<namespace URI>;`` is what UaExpert copies: stable across server restarts, resolved
# to an index through the server's namespace array on every session.
_NODE_ID_URI = r"^nsu=[^;]+;" + _IDENTIFIER
# In a browse path a namespace may be named by its URI, ``{urn:plant:line3}Pump`` (Clark
# notation; braces because URIs hold the '/', ':' and '.' a path uses as separators).
NAMESPACE_URI_IN_PATH = re.compile(r"\{([^{}]+)\}")
# The policies asyncua implements, for the client (devices) and the server ([opcua_server]).
OpcuaSecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]


def check_node_id(value: str, *, allow_uri: bool = False) -> str:
    """``value`` if it is a NodeId string; ``allow_uri`` also accepts the ``nsu=`` form (tags
    resolve it per session; write targets do not, so a write never goes to a guessed node)."""
    if re.match(_NODE_ID, value) or (allow_uri and re.match(_NODE_ID_URI, value)):
        return value
    uri = " | nsu=<namespace URI>;..." if allow_uri else ""
    raise ValueError(f"{value!r} is not a NodeId (ns=<index>;i=<number> | s=<string> | "
                     f"g=<guid> | b=<base64>{uri}, e.g. 'ns=2;s=Pump1.Pressure')")


def path_with_indexes(path: str, namespaces: Sequence[str]) -> str:
    """A browse path with every ``{URI}`` replaced by ``<index>:`` from the server's
    namespace array. Raises KeyError(uri) for a URI the server does not have."""
    def index(found: re.Match[str]) -> str:
        uri = found.group(1)
        if uri not in namespaces:
            raise KeyError(uri)
        return f"{list(namespaces).index(uri)}:"
    return NAMESPACE_URI_IN_PATH.sub(index, path)


def _browse_path(value: str) -> str:
    # asyncua is imported only for a config that has a browse path (Modbus-only stays lean);
    # without it the path cannot be checked, which is this key's error, not a traceback.
    try:
        RelativePathFormatter = require_extra("asyncua.ua.relative_path", "browse_path").RelativePathFormatter
    except MissingExtraError as exc:
        raise ValueError(str(exc)) from None
    try:
        # A namespace URI stands for an index the server gives later: any index parses alike.
        elements = RelativePathFormatter.parse(NAMESPACE_URI_IN_PATH.sub("1:", value)).build().Elements
    except Exception:
        elements = []
    if not elements or any(e.TargetName is None or not e.TargetName.Name for e in elements):
        raise ValueError(f"{value!r} is not a browse path (OPC UA relative path from the Objects "
                         "folder, e.g. '/2:Pump1/2:Pressure': <namespace index>:<BrowseName> "
                         "or {<namespace URI>}<BrowseName> per level, '&' escapes '/', '.' and "
                         "':' in names)")
    return value


class OpcuaTagConfig(StrictModel):
    """One OPC UA variable read (or subscribed) by NodeId, or by browse path from the Objects
    folder (resolved again on every new session: a server restart may renumber its nodes)."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    node_id: str | None = None
    browse_path: str | None = None
    unit: str = ""
    valid_min: float | None = None
    valid_max: float | None = None
    description: str = ""

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str | None) -> str | None:
        return None if value is None else check_node_id(value, allow_uri=True)

    @field_validator("browse_path")
    @classmethod
    def _check_browse_path(cls, value: str | None) -> str | None:
        return None if value is None else _browse_path(value)

    @model_validator(mode="after")
    def _check_range(self) -> OpcuaTagConfig:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("node_id: give exactly one of node_id and browse_path")
        check_valid_range(self.valid_min, self.valid_max)
        return self

    @property
    def address(self) -> str:
        """The node as configured: its NodeId or its browse path."""
        return self.node_id if self.node_id is not None else f"path {self.browse_path}"


class OpcuaDeviceConfig(StrictModel):
    """One OPC UA server endpoint, read by polling or by a subscription."""

    name: Name
    protocol: Literal["opcua"]
    endpoint: str
    mode: Literal["poll", "subscribe"] = "subscribe"
    poll_interval: Annotated[float, Field(gt=0, le=86400)] = 1.0
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    publishing_interval: Annotated[float, Field(gt=0, le=3600)] = 0.5
    sampling_interval: Annotated[float, Field(ge=0, le=3600)] | None = None
    queue_size: Annotated[int, Field(ge=1, le=10000)] = 1
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    deadband_value: Annotated[float, Field(ge=0)] = 0.0
    keepalive_interval: Annotated[float, Field(gt=0, le=600)] = 1.0
    reconnect_min: Annotated[float, Field(gt=0, le=600)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_nodes_per_read: Annotated[int, Field(ge=0, le=100_000)] = 0
    security_policy: OpcuaSecurityPolicy = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] | None = None
    certificate: ConfigPath | None = None
    private_key: ConfigPath | None = None
    server_certificate: ConfigPath | None = None
    trusted_servers: ConfigPath | None = None
    trust_on_first_use: bool = False
    application_uri: Annotated[str, Field(min_length=1)] = "urn:plcbridge:client"
    username: str | None = None
    password_env: str | None = None
    password_file: ConfigPath | None = None
    user_certificate: ConfigPath | None = None
    user_private_key: ConfigPath | None = None
    tags: list[OpcuaTagConfig] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if not re.match(r"^opc\.tcp://[^\s/:]+(:\d{1,5})?(/\S*)?$", value):
            raise ValueError(f"{value!r} is not an OPC UA endpoint (opc.tcp://host:port[/path])")
        return value

    @model_validator(mode="after")
    def _check_options(self) -> OpcuaDeviceConfig:
        if self.security_policy == "None":
            if self.security_mode not in (None, "None"):
                raise ValueError(f"security_mode: {self.security_mode!r} needs a security_policy "
                                 "other than 'None'")
            for key in ("certificate", "private_key", "server_certificate", "trusted_servers",
                        "user_certificate"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: has no meaning with security_policy 'None'")
        else:
            if self.security_mode == "None":
                raise ValueError(f"security_mode: 'None' contradicts security_policy "
                                 f"{self.security_policy!r} (use Sign or SignAndEncrypt)")
            if self.certificate is None or self.private_key is None:
                missing = "certificate" if self.certificate is None else "private_key"
                raise ValueError(f"{missing}: required for security_policy {self.security_policy!r} "
                                 "(the client's application certificate and its key)")
            # An unchecked server certificate proves only that *someone* holds a key.
            if (self.server_certificate is None and self.trusted_servers is None
                    and not self.trust_on_first_use):  # that one has its own message below
                raise ValueError(f"trusted_servers: required for security_policy "
                                 f"{self.security_policy!r}: a folder of trusted server certificates "
                                 "(with trust_on_first_use = true the first one seen is saved there), "
                                 "or pin one with server_certificate")
        if (self.user_certificate is None) != (self.user_private_key is None):
            missing = "user_certificate" if self.user_certificate is None else "user_private_key"
            raise ValueError(f"{missing}: user_certificate and user_private_key go together "
                             "(certificate user identity)")
        if self.user_certificate is not None and self.username is not None:
            raise ValueError("user_certificate: give username or user_certificate, not both")
        if self.trust_on_first_use and self.trusted_servers is None:
            raise ValueError("trust_on_first_use: needs trusted_servers (the folder it saves to)")
        if self.server_certificate is not None and self.trusted_servers is not None:
            raise ValueError("trusted_servers: give server_certificate (one pinned certificate) "
                             "or trusted_servers (a folder), not both")
        check_credentials(self.username, self.password_env, self.password_file)
        if self.deadband_type == "none" and self.deadband_value != 0:
            raise ValueError("deadband_value: has no meaning with deadband_type 'none'")
        if self.deadband_type == "percent" and self.deadband_value > 100:
            raise ValueError(f"deadband_value: {self.deadband_value} is more than 100 percent")
        if self.mode == "poll":
            for key in ("sampling_interval",):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only valid for mode 'subscribe'")
            if self.deadband_type != "none":
                raise ValueError("deadband_type: only valid for mode 'subscribe'")
        check_backoff(self.reconnect_min, self.reconnect_max)
        return self

    @property
    def effective_security_mode(self) -> str:
        return effective_security_mode(self.security_policy, self.security_mode)

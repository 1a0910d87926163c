"""The TOML configuration: pydantic models, loading, and cross-field checks.

This is the one place configuration is validated. Every error names the key path and the
bad value, e.g. ``devices[0].tags[3].type: 'flaot32' is not one of int16, uint16, ...``.
Modbus addresses are zero-based protocol (wire) addresses: 40001 in vendor documentation is
``table = "holding", address = 0``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.config.checks import check_backoff, check_credentials, effective_security_mode
from bridge.config.mqtt import MqttConfig
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.config.servers import MetricsConfig, ModbusServerConfig, check_modbus_server
from bridge.core.errors import ConfigError

__all__ = [
    "DEFAULT_MODEL",
    "ApiConfig",
    "BridgeConfig",
    "BridgeSection",
    "Config",
    "DeviceConfig",
    "ModbusDeviceConfig",
    "ModbusTagConfig",
    "ModelConfig",
    "NodeTarget",
    "OpcuaDeviceConfig",
    "OpcuaTagConfig",
    "RegisterTarget",
    "StorageSection",
    "Target",
    "WritebackConfig",
    "WritebackSection",
    "load_config",
    "parse_config",
    "register_count",
]

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "pump_pca.onnx"

DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "string", "bit", "bool",
]
Order = Literal["big", "little"]
Table = Literal["holding", "input", "coil", "discrete"]

# Registers per type; "string" uses the tag's ``length``, "bit"/"bool" read one register/bit.
_WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "bit": 1, "bool": 1,
    "int32": 2, "uint32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "float64": 4,
}
_BIT_TABLES = ("coil", "discrete")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusTagConfig(_Strict):
    """One value read from a Modbus device."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    table: Table = "holding"
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType | None = None
    length: Annotated[int, Field(ge=1, le=125)] | None = None
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    valid_min: float | None = None
    valid_max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_type_options(self) -> ModbusTagConfig:
        kind = self.type
        if self.table in _BIT_TABLES:
            if kind not in (None, "bool"):
                raise ValueError(f"type: {kind!r} is not allowed on table {self.table!r} (only 'bool')")
            for key in ("length", "bit", "byte_order", "word_order"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: has no meaning on table {self.table!r}")
            return self
        if kind is None:
            raise ValueError(f"type: required for table {self.table!r}")
        if kind == "bool":
            raise ValueError("type: 'bool' is for coil/discrete tables; "
                             "use 'bit' with bit = N for a bit of a register")
        if kind == "string":
            if self.length is None:
                raise ValueError("length: required for type 'string' "
                                 "(number of registers, 2 characters each)")
        elif self.length is not None:
            raise ValueError(f"length: only valid for type 'string', not {kind!r}")
        if kind == "bit":
            if self.bit is None:
                raise ValueError("bit: required for type 'bit' (0 = least significant)")
        elif self.bit is not None:
            raise ValueError(f"bit: only valid for type 'bit', not {kind!r}")
        if self.word_order is not None and (self.registers < 2 or kind == "string"):
            what = "a string (characters are in register order)" if kind == "string" \
                else f"a one-register type ({kind!r})"
            raise ValueError(f"word_order: has no meaning for {what}")
        if kind in ("string", "bit") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"scale/offset: have no meaning for type {kind!r}")
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            raise ValueError(f"valid_min: {self.valid_min} is greater than valid_max {self.valid_max}")
        return self

    @property
    def registers(self) -> int:
        """Registers (or bits, for coil/discrete) this tag occupies."""
        return register_count(self.type or "bool", self.length)

    @property
    def data_type(self) -> str:
        return self.type or "bool"


def register_count(data_type: str, length: int | None = None) -> int:
    if data_type == "string":
        return length or 1
    return _WIDTH[data_type]


class ModbusDeviceConfig(_Strict):
    """One Modbus device: a unit id behind a TCP endpoint or on a serial line."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
    protocol: Literal["modbus"] = "modbus"
    transport: Literal["tcp", "rtu", "rtu-over-tcp"] = "tcp"
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    serial_port: str | None = None
    baudrate: Annotated[int, Field(ge=300, le=921600)] = 19200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    poll_interval: Annotated[float, Field(gt=0, le=86400)] = 1.0
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    max_gap: Annotated[int, Field(ge=0, le=124)] = 8
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    inter_request_delay_ms: Annotated[float, Field(ge=0, le=10000)] = 0.0
    reconnect_min: Annotated[float, Field(gt=0, le=600)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    byte_order: Order = "big"
    word_order: Order = "big"
    tags: list[ModbusTagConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_transport(self) -> ModbusDeviceConfig:
        check_backoff(self.reconnect_min, self.reconnect_max)
        if self.transport == "rtu":
            if not self.serial_port:
                raise ValueError("serial_port: required for transport 'rtu'")
            if self.host is not None:
                raise ValueError("host: has no meaning for transport 'rtu' (use serial_port)")
        else:
            if not self.host:
                raise ValueError(f"host: required for transport {self.transport!r}")
            if self.serial_port is not None:
                raise ValueError(f"serial_port: has no meaning for transport {self.transport!r}")
        return self

    @property
    def line(self) -> str:
        """Identity of the physical connection; devices on the same line share one client."""
        if self.transport == "rtu":
            return f"rtu:{self.serial_port}"
        return f"{self.transport}:{self.host}:{self.port}"


# NodeId strings as OPC UA Part 6 writes them: numeric, string, GUID or opaque (base64),
# with an optional namespace index. Checked here so a typo is a config error, not a poll error.
_NODE_ID = (r"^(ns=\d{1,5};)?(i=\d{1,10}|s=.+|b=[A-Za-z0-9+/=]+|"
            r"g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$")
OpcuaSecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]


def _node_id(value: str) -> str:
    if not re.match(_NODE_ID, value):
        raise ValueError(f"{value!r} is not a NodeId (ns=<index>;i=<number> | s=<string> | "
                         "g=<guid> | b=<base64>, e.g. 'ns=2;s=Pump1.Pressure')")
    return value


def _fail_safe_in_range(fail_safe: float | None, low: float | None, high: float | None) -> None:
    if fail_safe is not None:
        if low is not None and fail_safe < low:
            raise ValueError(f"fail_safe: {fail_safe} is below min {low}")
        if high is not None and fail_safe > high:
            raise ValueError(f"fail_safe: {fail_safe} is above max {high}")


def _browse_path(value: str) -> str:
    # asyncua is imported only for a config that has a browse path (Modbus-only stays lean).
    from asyncua.ua.relative_path import RelativePathFormatter

    try:
        elements = RelativePathFormatter.parse(value).build().Elements
    except Exception:
        elements = []
    if not elements or any(e.TargetName is None or not e.TargetName.Name for e in elements):
        raise ValueError(f"{value!r} is not a browse path (OPC UA relative path from the Objects "
                         "folder, e.g. '/2:Pump1/2:Pressure': <namespace index>:<BrowseName> "
                         "per level, '&' escapes '/', '.' and ':' in names)")
    return value


class OpcuaTagConfig(_Strict):
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
        return None if value is None else _node_id(value)

    @field_validator("browse_path")
    @classmethod
    def _check_browse_path(cls, value: str | None) -> str | None:
        return None if value is None else _browse_path(value)

    @model_validator(mode="after")
    def _check_range(self) -> OpcuaTagConfig:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("node_id: give exactly one of node_id and browse_path")
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            raise ValueError(f"valid_min: {self.valid_min} is greater than valid_max {self.valid_max}")
        return self

    @property
    def address(self) -> str:
        """The node as configured: its NodeId or its browse path."""
        return self.node_id if self.node_id is not None else f"path {self.browse_path}"


class OpcuaDeviceConfig(_Strict):
    """One OPC UA server endpoint, read by polling or by a subscription."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
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
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    trusted_servers: Path | None = None
    trust_on_first_use: bool = False
    application_uri: Annotated[str, Field(min_length=1)] = "urn:plcbridge:client"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    user_certificate: Path | None = None
    user_private_key: Path | None = None
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


def _device_protocol(value: Any) -> str:
    """Discriminator of ``devices``: the ``protocol`` key, "modbus" when absent."""
    protocol = value.get("protocol", "modbus") if isinstance(value, dict) \
        else getattr(value, "protocol", "modbus")
    return str(protocol)


_PROTOCOLS = ("modbus", "opcua")
DeviceConfig = Annotated[
    Annotated[ModbusDeviceConfig, Tag("modbus")] | Annotated[OpcuaDeviceConfig, Tag("opcua")],
    Discriminator(_device_protocol),
]


class RegisterTarget(_Strict):
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
        _fail_safe_in_range(self.fail_safe, self.min, self.max)
        return self

    @property
    def registers(self) -> int:
        return register_count(self.type)


class NodeTarget(_Strict):
    """An OPC UA variable the bridge may write; the value takes the node's own DataType."""

    node_id: str
    min: float | None = None
    max: float | None = None
    fail_safe: float | None = None

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str) -> str:
        return _node_id(value)

    @model_validator(mode="after")
    def _check_fail_safe(self) -> NodeTarget:
        _fail_safe_in_range(self.fail_safe, self.min, self.max)
        return self


Target = RegisterTarget | NodeTarget


class WritebackConfig(_Strict):
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


class ModelConfig(_Strict):
    """One anomaly model and the tags that feed it."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
    file: Path | None = None
    inputs: list[str] | dict[str, str]
    max_age: Annotated[float, Field(gt=0)] | None = None
    threshold: float | None = None
    writeback: WritebackConfig | None = None

    @property
    def input_tags(self) -> list[str]:
        """The bridge tags feeding the model, in the order the config gives them."""
        return list(self.inputs.values()) if isinstance(self.inputs, dict) else list(self.inputs)

    @property
    def feature_names(self) -> list[str]:
        """The model's feature names as the config states them (keys of a mapping)."""
        return list(self.inputs.keys()) if isinstance(self.inputs, dict) else list(self.inputs)


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ApiConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    score_history: Annotated[int, Field(ge=1, le=1_000_000)] = 3600
    tokens_file: Path | None = None
    tokens_env: str | None = None
    allow_anonymous_remote: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: Annotated[int, Field(ge=1024, le=512 * 1024 * 1024)] = 1024 * 1024

    @model_validator(mode="after")
    def _check_security(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: tls_cert and tls_key go together")
        has_tokens = self.tokens_file is not None or self.tokens_env is not None
        if self.enabled and self.host not in _LOOPBACK and not has_tokens \
                and not self.allow_anonymous_remote:
            raise ValueError(
                f"host: {self.host!r} is not loopback and no tokens_file/tokens_env is set; "
                "set allow_anonymous_remote = true to serve without authentication")
        return self


class StorageSection(_Strict):
    data_dir: Path | None = None
    retention_days: Annotated[float, Field(gt=0, le=3650)] = 30.0
    flush_interval: Annotated[float, Field(gt=0, le=60)] = 1.0


class WritebackSection(_Strict):
    mode: Literal["off", "dry-run", "on"] = "off"
    min_interval: Annotated[float, Field(ge=0)] = 0.5


class BridgeSection(_Strict):
    history_size: Annotated[int, Field(ge=1, le=100_000)] = 60
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Strict):
    bridge: BridgeSection = Field(default_factory=BridgeSection)
    api: ApiConfig = Field(default_factory=ApiConfig)
    writeback: WritebackSection = Field(default_factory=WritebackSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    modbus_server: ModbusServerConfig = Field(default_factory=ModbusServerConfig)
    opcua_server: OpcuaServerConfig = Field(default_factory=OpcuaServerConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    mqtt: MqttConfig | None = None
    devices: list[DeviceConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)

    def device(self, name: str) -> ModbusDeviceConfig | OpcuaDeviceConfig:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)

    def tag_names(self) -> list[str]:
        return [tag.name for device in self.devices for tag in device.tags]


BridgeConfig = Config


def _loc(parts: tuple[int | str, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _format_pydantic(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        # Union members and validator wrappers add noise to the location; keep real keys.
        loc = err["loc"]
        parts = tuple(
            p for i, p in enumerate(loc)
            if isinstance(p, int) or not (str(p).startswith(("function-", "literal[")) or p in (
                "list[str]", "dict[str,str]", "RegisterTarget", "float", "constrained-float")
                # the protocol tag of a device union member: devices[0].opcua.tags -> devices[0].tags
                or (p in _PROTOCOLS and i > 0 and isinstance(loc[i - 1], int)))
        )
        path = _loc(parts)
        message = err["msg"]
        if err["type"] == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag")
            lines.append(f"{path}.protocol: {tag!r} is not one of {', '.join(_PROTOCOLS)}")
            continue
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
            # Model validators report "key: message"; join the key onto the path.
            key, sep, rest = message.partition(": ")
            if sep and key.isidentifier():
                path, message = (f"{path}.{key}" if path else key), rest
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or err["type"] in ("missing", "value_error") \
            else f" (got {value!r})"
        lines.append(f"{path or '<root>'}: {message}{shown}")
    return lines


def _check_cross_refs(config: Config) -> list[str]:
    errors: list[str] = []
    seen_devices: dict[str, int] = {}
    seen_tags: dict[str, str] = {}
    for d_index, device in enumerate(config.devices):
        if device.name in seen_devices:
            errors.append(f"devices[{d_index}].name: duplicate device name {device.name!r} "
                          f"(also devices[{seen_devices[device.name]}])")
        seen_devices.setdefault(device.name, d_index)
        tags: Sequence[ModbusTagConfig | OpcuaTagConfig] = device.tags
        for t_index, tag in enumerate(tags):
            where = f"devices[{d_index}].tags[{t_index}]"
            if tag.name in seen_tags:
                errors.append(f"{where}.name: duplicate tag name {tag.name!r} (also {seen_tags[tag.name]})")
            seen_tags.setdefault(tag.name, where)
    seen_models: set[str] = set()
    for m_index, model in enumerate(config.models):
        where = f"models[{m_index}]"
        if model.name in seen_models:
            errors.append(f"{where}.name: duplicate model name {model.name!r}")
        seen_models.add(model.name)
        if not model.input_tags:
            errors.append(f"{where}.inputs: a model needs at least one input tag")
        for key, tag_name in zip(model.feature_names, model.input_tags, strict=True):
            if tag_name not in seen_tags:
                sub = f"{where}.inputs.{key}" if isinstance(model.inputs, dict) else f"{where}.inputs"
                errors.append(f"{sub}: {tag_name!r} is not a configured tag")
        if model.writeback is not None:
            errors.extend(_check_writeback(config, model, f"{where}.writeback"))
    errors.extend(_check_writeback_overlaps(config))
    errors.extend(_check_serial_lines(config))
    errors.extend(check_modbus_server(config.modbus_server, [m.name for m in config.models],
                                      [d.name for d in config.devices]))
    return errors


_LINE_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize")


def _check_serial_lines(config: Config) -> list[str]:
    """Devices on one serial line share one port, so they must agree on its settings."""
    errors = []
    first: dict[str, int] = {}
    for index, device in enumerate(config.devices):
        if not isinstance(device, ModbusDeviceConfig) or device.transport != "rtu":
            continue
        owner = first.setdefault(device.line, index)
        if owner == index:
            continue
        other = config.devices[owner]
        for key in _LINE_SETTINGS:
            if getattr(device, key) != getattr(other, key):
                errors.append(f"devices[{index}].{key}: {getattr(device, key)!r} differs from "
                              f"devices[{owner}].{key} {getattr(other, key)!r} on the same serial line "
                              f"{device.serial_port!r}")
    return errors


def _check_writeback(config: Config, model: ModelConfig, where: str) -> list[str]:
    wb = model.writeback
    assert wb is not None
    if wb.device not in {d.name for d in config.devices}:
        return [f"{where}.device: {wb.device!r} is not a configured device"]
    if not wb.targets():
        return [f"{where}: names no target (score, anomaly, heartbeat, window_valid)"]
    errors = []
    device = config.device(wb.device)
    wanted = RegisterTarget if isinstance(device, ModbusDeviceConfig) else NodeTarget
    for key, target in wb.targets().items():
        if not isinstance(target, wanted):
            what = "address (a holding register)" if wanted is RegisterTarget else "node_id"
            errors.append(f"{where}.{key}: device {wb.device!r} is {device.protocol}: "
                          f"the target needs {what}")
    if errors:
        return errors
    if isinstance(device, OpcuaDeviceConfig):
        nodes = [t.node_id for t in wb.targets().values() if isinstance(t, NodeTarget)]
        duplicated = sorted({n for n in nodes if nodes.count(n) > 1})
        return [f"{where}: node {n!r} is the target of more than one result" for n in duplicated]
    if not wb.allow_overlap_with_tags:
        for key, target in wb.targets().items():
            assert isinstance(target, RegisterTarget)
            span = range(target.address, target.address + target.registers)
            for tag in device.tags:
                if tag.table == "holding" and \
                        set(span) & set(range(tag.address, tag.address + tag.registers)):
                    errors.append(
                        f"{where}.{key}.address: {target.address} overlaps polled tag {tag.name!r} "
                        f"(holding {tag.address}..{tag.address + tag.registers - 1}); "
                        "set allow_overlap_with_tags = true if that is intended")
    return errors


def _check_writeback_overlaps(config: Config) -> list[str]:
    errors = []
    owners: dict[tuple[str, int], str] = {}
    for m_index, model in enumerate(config.models):
        if model.writeback is None:
            continue
        for key, target in model.writeback.targets().items():
            if not isinstance(target, RegisterTarget):
                continue  # nodes: checked per model; OPC UA has no address ranges to overlap
            where = f"models[{m_index}].writeback.{key}.address"
            for address in range(target.address, target.address + target.registers):
                owner = owners.get((model.writeback.device, address))
                if owner is not None:
                    errors.append(f"{where}: {target.address} overlaps {owner} "
                                  f"at holding register {address} on device {model.writeback.device!r}")
                    break
                owners[(model.writeback.device, address)] = where
    return errors


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a TOML document already parsed into a dict. Raises ConfigError."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_pydantic(exc)) from None
    errors = _check_cross_refs(config)
    if errors:
        raise ConfigError(errors)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    config = parse_config(data)
    # Relative paths are relative to the config file, not to wherever the bridge was started.
    base = path.parent

    def rel(value: Path | None) -> Path | None:
        return base / value if value is not None and not value.is_absolute() else value

    models = [m.model_copy(update={"file": rel(m.file)}) for m in config.models]
    api = config.api.model_copy(update={
        "tokens_file": rel(config.api.tokens_file), "tls_cert": rel(config.api.tls_cert),
        "tls_key": rel(config.api.tls_key)})
    storage = config.storage.model_copy(update={"data_dir": rel(config.storage.data_dir)})
    return config.model_copy(update={"models": models, "api": api, "storage": storage})

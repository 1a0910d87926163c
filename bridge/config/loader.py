"""The config root: ``Config``, loading a TOML file, the checks that span sections, and the
error messages.

Every error names the key path and the bad value, e.g.
``devices[0].tags[3].type: 'flaot32' is not one of int16, uint16, ...``.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, ValidationError

from bridge.config.base import StrictModel
from bridge.config.fleet import FleetConfig
from bridge.config.modbus import ModbusDeviceConfig, ModbusTagConfig
from bridge.config.models import ModelConfig, NodeTarget, RegisterTarget
from bridge.config.mqtt import MqttConfig
from bridge.config.opcua import OpcuaDeviceConfig, OpcuaTagConfig
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.config.sections import ApiConfig, BridgeSection, StorageSection, WritebackPolicyConfig
from bridge.config.servers import MetricsConfig, ModbusServerConfig, check_modbus_server
from bridge.config.sparkplug import SparkplugConfig
from bridge.core.errors import ConfigError
from bridge.core.files import decode_text, read_regular_file

__all__ = ["MAX_CONFIG_BYTES", "MAX_NESTING", "BridgeConfig", "Config", "DeviceConfig", "decode_config",
           "load_config", "parse_config", "parse_toml", "read_config_bytes", "server_sockets"]


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


class Config(StrictModel):
    bridge: BridgeSection = Field(default_factory=BridgeSection)
    api: ApiConfig = Field(default_factory=ApiConfig)
    writeback: WritebackPolicyConfig = Field(default_factory=WritebackPolicyConfig)
    storage: StorageSection = Field(default_factory=StorageSection)
    modbus_server: ModbusServerConfig = Field(default_factory=ModbusServerConfig)
    opcua_server: OpcuaServerConfig = Field(default_factory=OpcuaServerConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    mqtt: MqttConfig | None = None
    sparkplug: SparkplugConfig | None = None
    fleet: FleetConfig | None = None
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
    errors.extend(_check_server_ports(config))
    errors.extend(check_modbus_server(config.modbus_server, [m.name for m in config.models],
                                      [d.name for d in config.devices]))
    return errors


_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # listen on every address


def server_sockets(config: Config) -> list[tuple[str, str, int]]:
    """``(section, host, port)`` of every socket the bridge will listen on."""
    return [(name, section.host, section.port)
            for name, section in (("api", config.api), ("modbus_server", config.modbus_server),
                                  ("opcua_server", config.opcua_server))
            if section.enabled]


def _check_server_ports(config: Config) -> list[str]:
    """Two of the bridge's own servers on one port: the second fails inside ``Bridge.start``
    after the first is up. Port 0 (a free one each) never clashes; different addresses do not
    either, unless one listens on all of them."""
    errors = []
    sockets = server_sockets(config)
    for index, (name, host, port) in enumerate(sockets):
        for other, other_host, other_port in sockets[:index]:
            same_host = host == other_host or host in _WILDCARDS or other_host in _WILDCARDS
            if port != 0 and port == other_port and same_host:
                errors.append(f"{name}.port: {port} is also {other}.port on {other_host!r}: "
                              "each server needs its own port")
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
    if _nesting(data) > MAX_NESTING:
        # Before pydantic: its error reporting walks the input recursively too.
        raise ConfigError([f"<root>: nested deeper than {MAX_NESTING} levels"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_pydantic(exc)) from None
    errors = _check_cross_refs(config)
    if errors:
        raise ConfigError(errors)
    return config


# A config is a few KB; 1 MiB leaves room for thousands of tags and stops /dev/zero, a FIFO or
# a mistyped log file from being read forever or into memory.
MAX_CONFIG_BYTES = 1 << 20
# The deepest real key is ~5 levels (models[0].writeback.score.address); tomllib and the
# validators recurse, so a file of 1,000 nested arrays would end in RecursionError.
MAX_NESTING = 32

def read_config_bytes(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The config file's bytes (``bridge.core.files.read_regular_file``: a regular file, at
    most ``limit`` bytes); ValueError with the reason."""
    try:
        return read_regular_file(path, limit)
    except ValueError as exc:
        if str(exc).startswith("larger than"):
            raise ValueError(f"{exc}: not a configuration file") from None
        raise


decode_config = decode_text  # TOML's only encoding is UTF-8


def _nesting(data: Any) -> int:
    """Depth of nested tables and arrays, iteratively (a recursive walk is what must not fail)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads`` with every way it can fail as ValueError("why")."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML ({exc})") from None
    except RecursionError:
        raise ValueError(f"not valid TOML (nested deeper than {MAX_NESTING} levels)") from None
    except ValueError:  # int("9" * 5000) raises past Python's digit limit (CVE-2020-10735)
        raise ValueError(f"not valid TOML (an integer of more than {sys.get_int_max_str_digits()} "
                         "digits)") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError naming the file on any problem."""
    path = Path(path)
    try:
        data = parse_toml(decode_config(read_config_bytes(path)))
    except ValueError as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
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

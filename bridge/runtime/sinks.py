"""Which sinks and adapters a config asks for, built without importing what it does not use.

The server sinks live beside their protocol's client in ``adapters/`` and the MQTT sink needs
aiomqtt: each is imported only when its section is enabled, so a Modbus-only bridge never
loads asyncua (~25 MB) and a bridge without ``[mqtt]`` runs without aiomqtt installed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bridge.config import Config, ModbusDeviceConfig, OpcuaDeviceConfig
from bridge.core.errors import ConfigError
from bridge.core.extras import MissingExtraError, require_extra
from bridge.ports import Adapter, BridgeView, Sink

__all__ = ["AdapterFactory", "build_sinks"]

AdapterFactory = Callable[[ModbusDeviceConfig | OpcuaDeviceConfig], Adapter]


def build_sinks(config: Config, view: BridgeView,
                install: Callable[[str, bytes, str], Awaitable[object]] | None = None,
                **rollout: Any) -> list[Sink]:
    """The configured sinks other than write-back, in a fixed order. Raises ConfigError when
    a sink's files, secrets or library are unusable, before anything connects. ``install`` is
    the model updater's install (the fleet sink installs models through it); ``rollout`` the
    fleet sink's other updater callbacks (``stage``, ``shadow``, ``events``, ``windows``:
    FleetSink)."""
    sinks: list[Sink] = []
    if config.modbus_server.enabled:
        from adapters.modbus.server import ModbusServerSink

        sinks.append(ModbusServerSink(config.modbus_server))
    if config.opcua_server.enabled:
        _require("asyncua", "opcua_server")
        from adapters.opcua.server import OpcuaServerSink

        sinks.append(OpcuaServerSink(config.opcua_server))  # ConfigError: password env/file
    if config.mqtt is not None:
        _require("aiomqtt", "mqtt")
        from bridge.sinks.mqtt import MqttSink

        sinks.append(MqttSink(config.mqtt))  # ConfigError: password env/file, TLS files, spool_dir
    if config.sparkplug is not None:
        sinks.append(_sparkplug(config))
    if config.fleet is not None and install is not None:
        _require("aiomqtt", "fleet")
        from bridge.sinks.fleet import FleetSink

        sinks.append(FleetSink(config.fleet, install, [m.name for m in config.models],
                               config.storage.data_dir, rules={m.name: m.shadow for m in config.models},
                               features={m.name: (tuple(m.feature_names), m.max_age) for m in config.models},
                               **rollout))  # ConfigError: secrets, TLS, fleet.models
    if config.metrics.enabled:
        from bridge.sinks.metrics import PrometheusMetrics  # prometheus-client only when scraped

        sinks.append(PrometheusMetrics(view))
    return sinks


def _require(module: str, section: str) -> None:
    """A missing optional package is a config error naming the section and the extra."""
    try:
        require_extra(module, f"[{section}]")
    except MissingExtraError as exc:
        raise ConfigError([f"{section}: {exc}"]) from None


def _sparkplug(config: Config) -> Sink:
    """The Sparkplug B edge node: each device a Sparkplug device, each model's metrics on the
    device of its first input tag."""
    assert config.sparkplug is not None
    _require("aiomqtt", "sparkplug")
    _require("google.protobuf", "sparkplug")
    from bridge.sinks.sparkplug import SparkplugSink

    owner = {tag.name: device.name for device in config.devices for tag in device.tags}
    devices = {device.name: [tag.name for tag in device.tags] for device in config.devices}
    homes = {model.name: owner[model.input_tags[0]] for model in config.models if model.input_tags}
    return SparkplugSink(config.sparkplug, devices, homes)  # ConfigError: secrets, TLS, spool_dir

"""A missing optional package is a config error that names the key and the pip extra, never a
ModuleNotFoundError traceback (issue 13, item 9). The package is hidden the way Python itself
does it: ``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.demo import DEMO_TOML
from bridge.config import parse_config
from bridge.core.errors import ConfigError
from bridge.runtime.bridge import Bridge


def _demo(**sections: Any) -> dict[str, Any]:
    data = tomllib.loads(DEMO_TOML.format(port=1502))
    data["api"] = {"enabled": False}
    data.update(sections)
    return data


def _opcua_device(tag: dict[str, str]) -> dict[str, Any]:
    return {"name": "line", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
            "tags": [{"name": "t", **tag}]}


@pytest.fixture
def no_asyncua(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncua", None)


def test_an_opcua_device_without_asyncua_is_a_config_error(no_asyncua: None) -> None:
    data = _demo()
    data["devices"].append(_opcua_device({"node_id": "ns=2;s=T"}))
    config = parse_config(data)
    with pytest.raises(ConfigError) as caught:
        Bridge(config)
    assert caught.value.errors == [
        "devices[1] (line): protocol opcua needs asyncua, which is not installed: "
        "pip install 'plcbridge[opcua]'"]


def test_a_browse_path_without_asyncua_is_that_key_s_error(no_asyncua: None) -> None:
    data = _demo()
    data["devices"].append(_opcua_device({"browse_path": "/2:Pump/2:Pressure"}))
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    [line] = caught.value.errors
    assert line.startswith("devices[1].tags[0].browse_path:")
    assert "pip install 'plcbridge[opcua]'" in line


def test_the_opcua_server_without_asyncua_is_a_config_error(no_asyncua: None) -> None:
    config = parse_config(_demo(opcua_server={"enabled": True}))
    with pytest.raises(ConfigError) as caught:
        Bridge(config)
    assert caught.value.errors == [
        "opcua_server: [opcua_server] needs asyncua, which is not installed: "
        "pip install 'plcbridge[opcua]'"]


def test_mqtt_without_aiomqtt_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "aiomqtt", None)
    config = parse_config(_demo(mqtt={"host": "127.0.0.1", "spool_dir": str(tmp_path)}))
    with pytest.raises(ConfigError) as caught:
        Bridge(config)
    assert caught.value.errors == [
        "mqtt: [mqtt] needs aiomqtt, which is not installed: pip install 'plcbridge[mqtt]'"]


def test_with_the_packages_installed_the_same_configs_build() -> None:
    data = _demo()
    data["devices"].append(_opcua_device({"browse_path": "/2:Pump/2:Pressure"}))
    bridge = Bridge(parse_config(data))
    assert set(bridge.adapters) == {"plant", "line"}


def test_sparkplug_without_protobuf_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    config = parse_config(_demo(sparkplug={"host": "127.0.0.1", "group_id": "g", "edge_node_id": "e",
                                           "spool_dir": str(tmp_path)}))
    with pytest.raises(ConfigError) as caught:
        Bridge(config)
    assert caught.value.errors == [
        "sparkplug: [sparkplug] needs protobuf, which is not installed: pip install 'plcbridge[sparkplug]'"]

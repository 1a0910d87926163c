"""The broker keys of [mqtt], [sparkplug] and [fleet] are one declaration (BrokerConfig): the
three sections accept the same values and refuse them with the same messages."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.demo import DEMO_TOML
from bridge.config import parse_config
from bridge.config.mqtt import BrokerConfig
from bridge.core.errors import ConfigError

SECTIONS = {"mqtt": {"spool_dir": "spool"}, "sparkplug": {"spool_dir": "spool"}, "fleet": {}}


def _config(section: str, **keys: Any) -> Any:
    data = tomllib.loads(DEMO_TOML.format(port=5020))
    data[section] = {"host": "broker.local", **SECTIONS[section], **keys}
    return getattr(parse_config(data), section)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_broker_section_takes_the_same_keys(section: str, tmp_path: Path) -> None:
    password = tmp_path / "pw"
    # A path from TOML is a string: [fleet] refused it while it declared its own keys.
    config = _config(section, username="line3", password_file=str(password), tls={}, keepalive=5)
    assert isinstance(config, BrokerConfig)
    assert config.password_file == password and config.effective_port == 8883
    assert _config(section).effective_port == 1883


@pytest.mark.parametrize(("keys", "message"), [
    ({"keepalive": 1}, "keepalive"),
    ({"username": "u"}, "password_env"),
    ({"reconnect_min": 5.0, "reconnect_max": 1.0}, "reconnect"),
    ({"port": 0}, "port"),
])
def test_every_broker_section_refuses_alike(keys: dict[str, Any], message: str) -> None:
    errors = []
    for section in sorted(SECTIONS):
        with pytest.raises(ConfigError) as caught:
            _config(section, **keys)
        text = str(caught.value)
        assert message in text and section in text, text
        errors.append(text.replace(section, "S"))
    assert len(set(errors)) == 1, errors  # one message, whichever section


def test_sparkplug_keeps_its_shorter_keepalive() -> None:
    # The NDEATH will comes 1.5 x keepalive after a silent node: Sparkplug's default is 30 s.
    assert _config("sparkplug").keepalive == 30
    assert _config("mqtt").keepalive == _config("fleet").keepalive == 60

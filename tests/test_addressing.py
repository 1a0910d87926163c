"""Addressing without ambiguity (issue 13 item 3): vendor notation under its own key, a warning
for a plain address that looks prefixed, a per-device address_offset, and `check` printing the
table, zero-based address, vendor number, byte/word order and scale of every tag."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.main import main
from bridge.config import parse_config
from bridge.config.modbus import parse_register, vendor_register
from bridge.core.errors import ConfigError


def _text(tags: str, device: str = "") -> str:
    return f'[[devices]]\nname = "plc"\nhost = "127.0.0.1"\n{device}\n{tags}'


def _config(tags: str, device: str = "") -> dict[str, Any]:
    return tomllib.loads(_text(tags, device))


def _tags(text: dict[str, Any]) -> list[tuple[str, int]]:
    config = parse_config(text)
    return [(t.table, t.address) for t in config.devices[0].tags]  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "expected"), [
    ("40001", ("holding", 0)), ("400001", ("holding", 0)), ("4x00001", ("holding", 0)),
    ("4X1", ("holding", 0)), ("30010", ("input", 9)), ("00001", ("coil", 0)),
    ("10001", ("discrete", 0)), ("465536", ("holding", 65535)), ("49999", ("holding", 9998)),
])
def test_vendor_notation(text: str, expected: tuple[str, int]) -> None:
    assert parse_register(text) == expected
    assert parse_register(vendor_register(*expected)) == expected


@pytest.mark.parametrize("text", ["1", "40000", "50001", "%MW100", "4x0", "465537", "4001"])
def test_not_vendor_notation(text: str) -> None:
    with pytest.raises(ValueError):
        parse_register(text)


def test_register_key_sets_table_and_address() -> None:
    tags = _config('[[devices.tags]]\nname = "a"\nregister = "40101"\ntype = "float32"\n'
                   '[[devices.tags]]\nname = "b"\nregister = "3x00001"\ntype = "int16"\n'
                   '[[devices.tags]]\nname = "c"\nregister = "00003"\n')
    assert _tags(tags) == [("holding", 100), ("input", 0), ("coil", 2)]


@pytest.mark.parametrize(("tag", "message"), [
    ('register = "40001"\naddress = 0', "not both"),
    ('register = "30001"\ntable = "holding"', "is an input register"),
    ("register = 40001", "as a string"),
    ('register = "%MW100"', "differ by vendor"),
])
def test_register_key_errors(tag: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(f'[[devices.tags]]\nname = "a"\ntype = "uint16"\n{tag}\n'))
    assert message in str(info.value.errors)


def test_address_offset_for_one_based_documentation() -> None:
    tags = ('[[devices.tags]]\nname = "a"\naddress = 1\ntype = "uint16"\n'
            '[[devices.tags]]\nname = "b"\nregister = "40001"\ntype = "uint16"\n')
    assert _tags(_config(tags, "address_offset = -1")) == [("holding", 0), ("holding", 0)]
    with pytest.raises(ConfigError, match=r"outside 0\.\.65535"):
        parse_config(_config('[[devices.tags]]\nname = "a"\naddress = 0\ntype = "uint16"\n',
                             "address_offset = -1"))
    with pytest.raises(ConfigError):
        parse_config(_config("", "address_offset = 1"))


def test_check_warns_and_prints_each_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_text(
        '[[devices.tags]]\nname = "volts"\naddress = 40001\ntype = "float32"\nword_order = "little"\n'
        '[[devices.tags]]\nname = "amps"\nregister = "30003"\ntype = "int16"\nscale = 0.1\n'))
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert ("devices[0].tags[0].address: 40001 on table 'holding' looks like vendor notation"
            in err)
    assert 'register = "40001" (address 0)' in err
    volts = next(line for line in out.splitlines() if "volts" in line)
    assert "holding" in volts and "40001 (440002)" in volts
    assert "CDAB (byte big, word little)" in volts and "scale 1, offset 0" in volts
    amps = next(line for line in out.splitlines() if "amps" in line)
    assert "input" in amps and "2 (30003)" in amps and "scale 0.1" in amps

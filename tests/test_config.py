"""Config validation: the example loads; every error class names its key path; check exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import DEFAULT_MODEL, load_config, parse_config
from bridge.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((ROOT / "tests" / "cases").iterdir())


def test_example_config_loads() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert [d.name for d in config.devices] == ["pump1"]
    assert config.models[0].input_tags == ["pressure", "flow", "current", "temperature", "vibration"]
    assert config.writeback.mode == "off"
    assert config.api.host == "127.0.0.1"
    # That every key of every section is explained there: tests/test_config_reference.py.


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_error_case(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = (case / "error.txt").read_text().strip()
    with pytest.raises(ConfigError) as info:
        load_config(case / "config.toml")
    assert any(expected in line for line in info.value.errors), info.value.errors
    assert main(["check", str(case / "config.toml")]) == 2
    assert expected in capsys.readouterr().err


def test_check_prints_plan_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "config.example.toml")]) == 0
    out = capsys.readouterr().out
    assert "device pump1" in out
    assert "request(s) per cycle" in out
    assert "model pump" in out and "input pressure" in out
    assert "write-back (off) to pump1" in out


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_relative_model_file_is_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        '[[devices]]\nname="a"\nhost="h"\n[[devices.tags]]\nname="p"\naddress=0\ntype="int16"\n'
        '[[models]]\nname="m"\nfile="sub/x.onnx"\ninputs=["p"]\n')
    config = load_config(tmp_path / "c.toml")
    assert config.models[0].file == tmp_path / "sub" / "x.onnx"


def test_model_contract_mismatch_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.toml").write_text(
        '[[devices]]\nname="a"\nhost="h"\n[[devices.tags]]\nname="p"\naddress=0\ntype="int16"\n'
        f'[[models]]\nname="m"\nfile="{DEFAULT_MODEL}"\ninputs=["p"]\n')
    assert main(["check", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err
    assert "models[0] (m)" in err and "inputs" in err


def test_defaults_are_safe() -> None:
    config = parse_config({})
    assert config.writeback.mode == "off"
    assert config.api.host == "127.0.0.1"


def test_readme_config_snippets_are_valid() -> None:
    import re
    import tomllib

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README shows no config"
    for block in blocks:
        parse_config(tomllib.loads(block))


def test_every_config_model_is_strict() -> None:
    import inspect

    from pydantic import BaseModel, ValidationError

    import bridge.config as facade
    from bridge.config import OpcuaServerConfig, StrictModel

    models = [v for v in vars(facade).values() if inspect.isclass(v) and issubclass(v, BaseModel)]
    assert len(models) >= 20
    for model in models:
        assert issubclass(model, StrictModel), model
        assert model.model_config.get("extra") == "forbid" and model.model_config.get("frozen"), model
    # The one that used to declare its own config: unknown keys and assignment still refused.
    with pytest.raises(ValidationError, match="Extra inputs"):
        OpcuaServerConfig.model_validate({"securty_policy": "None"})
    with pytest.raises(ValidationError, match="frozen"):
        OpcuaServerConfig().port = 1  # type: ignore[misc]


def test_facade_exports_every_public_name() -> None:
    import importlib

    import bridge.config as facade

    for module in ("base", "modbus", "opcua", "models", "sections", "loader", "servers",
                   "opcua_server", "mqtt"):
        names = importlib.import_module(f"bridge.config.{module}").__all__
        assert set(names) <= set(facade.__all__), (module, set(names) - set(facade.__all__))


def test_one_security_policy_for_client_and_server() -> None:
    from bridge.config import OpcuaDeviceConfig, OpcuaSecurityPolicy, OpcuaServerConfig

    policies: list[object] = [m.model_fields["security_policy"].annotation
                              for m in (OpcuaDeviceConfig, OpcuaServerConfig)]
    assert all(p is OpcuaSecurityPolicy for p in policies)  # one definition, not two equal ones

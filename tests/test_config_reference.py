"""docs/config-reference.md is generated from the schema and config.example.toml: it must be
current, and every key must have a meaning in the example."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config.reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_reference_is_current() -> None:
    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == render(), (
        "docs/config-reference.md is stale: run `python -m bridge.config.reference > "
        "docs/config-reference.md`")


def test_every_key_is_explained_in_the_example() -> None:
    missing = [line.split("|")[1].strip() for line in render().splitlines()
               if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert not missing, f"keys without a comment in config.example.toml: {missing}"


def test_register_map_doc_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main

    assert main(["registers", str(ROOT / "config.example.toml")]) == 0
    table = capsys.readouterr().out
    doc = (ROOT / "docs" / "register-map.md").read_text()
    assert table in doc, "docs/register-map.md is stale: see its first lines to regenerate it"

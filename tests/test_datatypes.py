"""The one type table (bridge.core.datatypes): widths, limits and orders, checked against
numpy and struct rather than against itself, and the places that read it."""

from __future__ import annotations

import struct
import sys
from typing import Any, get_args

import numpy as np
import pytest

from bridge.config import ModbusTagConfig, RegisterTarget
from bridge.core.datatypes import TYPES, DataTypeName, register_count

WIDTHS = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "string": 0, "bit": 1, "bool": 1,
}
INTEGERS: dict[str, np.iinfo[Any]] = {
    "int16": np.iinfo(np.int16), "uint16": np.iinfo(np.uint16),
    "int32": np.iinfo(np.int32), "uint32": np.iinfo(np.uint32),
    "int64": np.iinfo(np.int64), "uint64": np.iinfo(np.uint64),
}
FLOATS: dict[str, np.finfo[Any]] = {"float32": np.finfo(np.float32), "float64": np.finfo(np.float64)}


def test_the_literal_of_type_names_is_the_table() -> None:
    # The config's Literal (what a TOML file may say) and the table list the same types.
    assert list(get_args(DataTypeName)) == list(TYPES) == list(WIDTHS)


@pytest.mark.parametrize("name", list(WIDTHS))
def test_widths(name: str) -> None:
    info = TYPES[name]
    assert info.registers == WIDTHS[name]
    limits = INTEGERS.get(name) or FLOATS.get(name)
    if limits is not None:
        assert limits.bits == 16 * info.registers
        assert info.pack is not None and info.pack.size == 2 * info.registers


@pytest.mark.parametrize("name", list(INTEGERS))
def test_integer_limits(name: str) -> None:
    info, limits = TYPES[name], INTEGERS[name]
    assert info.numeric and not info.is_float and info.float_max is None
    assert (info.min, info.max) == (int(limits.min), int(limits.max))
    assert info.signed == (limits.min < 0)


@pytest.mark.parametrize("name", list(FLOATS))
def test_float_limits(name: str) -> None:
    info = TYPES[name]
    assert info.numeric and info.is_float and info.min is None and info.max is None
    assert info.float_max == float(FLOATS[name].max)


def test_float_limits_are_the_largest_finite_values() -> None:
    assert TYPES["float64"].float_max == sys.float_info.max
    assert struct.pack(">f", TYPES["float32"].float_max) == b"\x7f\x7f\xff\xff"


def test_non_numeric_types() -> None:
    for name in ("string", "bit", "bool"):
        info = TYPES[name]
        assert not info.numeric and info.min is None and info.max is None and info.float_max is None
    assert TYPES["bit"].struct_code == "H"  # a bit is read from its whole register
    assert TYPES["string"].pack is None and TYPES["bool"].pack is None


def test_which_orders_apply() -> None:
    assert [n for n, i in TYPES.items() if i.word_order] == \
        ["int32", "uint32", "int64", "uint64", "float32", "float64"]
    assert [n for n, i in TYPES.items() if not i.byte_order] == ["bool"]


@pytest.mark.parametrize("name", ["int16", "uint16", "int32", "uint32", "int64", "uint64"])
def test_clamp_at_and_beyond_limits(name: str) -> None:
    info = TYPES[name]
    assert info.min is not None and info.max is not None
    assert info.clamp(info.max) == info.max and info.clamp(info.max + 1) == info.max
    assert info.clamp(info.min) == info.min and info.clamp(info.min - 1) == info.min
    assert info.clamp(float("inf")) == info.max and info.clamp(float("-inf")) == info.min


def test_register_counts_of_config_follow_the_table() -> None:
    assert register_count("string", 7) == 7
    assert register_count("float64") == 4
    for name in ("int16", "uint16", "int32", "uint32", "float32", "float64"):
        assert RegisterTarget.model_validate({"address": 0, "type": name}).registers == TYPES[name].registers
    assert ModbusTagConfig(name="t", address=0, type="uint64").registers == 4
    assert ModbusTagConfig(name="c", table="coil", address=0).registers == 1

"""Read planner: table tests (sparse, dense, limits, gaps, bits, never straddling)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.modbus.plan import ReadRequest, describe, plan_reads
from bridge.config import ModbusTagConfig


def tag(name: str, address: int, data_type: str | None = "uint16", table: str = "holding",
        **kw: Any) -> ModbusTagConfig:
    if table in ("coil", "discrete"):
        return ModbusTagConfig(name=name, table=table, address=address)
    return ModbusTagConfig(name=name, table=table, address=address, type=data_type, **kw)


def spans(requests: list[ReadRequest]) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in requests]


def check_invariants(tags: list[ModbusTagConfig], requests: list[ReadRequest], limit_regs: int,
                     limit_bits: int) -> None:
    seen = [t.name for r in requests for t, _ in r.tags]
    assert sorted(seen) == sorted(t.name for t in tags), "every tag exactly once"
    for r in requests:
        limit = limit_bits if r.is_bits else limit_regs
        assert 1 <= r.count <= limit
        for t, offset in r.tags:
            assert t.table == r.table
            assert offset == t.address - r.address
            assert offset >= 0 and offset + t.registers <= r.count, f"{t.name} straddles"


CASES: list[tuple[str, list[ModbusTagConfig], dict[str, int], list[tuple[str, int, int]]]] = [
    ("empty", [], {}, []),
    ("single", [tag("a", 5)], {}, [("holding", 5, 1)]),
    ("dense", [tag(f"t{i}", i) for i in range(10)], {}, [("holding", 0, 10)]),
    ("dense_mixed_widths",
     [tag("a", 0, "float32"), tag("b", 2, "int64"), tag("c", 6, "uint16")], {},
     [("holding", 0, 7)]),
    ("gap_within_max_gap", [tag("a", 0), tag("b", 9)], {"max_gap": 8}, [("holding", 0, 10)]),
    ("gap_beyond_max_gap", [tag("a", 0), tag("b", 10)], {"max_gap": 8},
     [("holding", 0, 1), ("holding", 10, 1)]),
    ("max_gap_zero_only_adjacent", [tag("a", 0), tag("b", 1), tag("c", 3)], {"max_gap": 0},
     [("holding", 0, 2), ("holding", 3, 1)]),
    ("sparse", [tag("a", 0), tag("b", 1000), tag("c", 40000, "float32")], {},
     [("holding", 0, 1), ("holding", 1000, 1), ("holding", 40000, 2)]),
    ("unsorted_input", [tag("b", 4), tag("a", 0), tag("c", 2)], {}, [("holding", 0, 5)]),
    ("limit_125_exact", [tag("a", 0), tag("b", 124)], {"max_gap": 124}, [("holding", 0, 125)]),
    ("limit_125_split", [tag("a", 0), tag("b", 125)], {"max_gap": 124},
     [("holding", 0, 1), ("holding", 125, 1)]),
    ("dense_250_registers", [tag(f"t{i}", i) for i in range(250)], {},
     [("holding", 0, 125), ("holding", 125, 125)]),
    ("never_straddles", [tag("a", 0), tag("f", 124, "float32")], {"max_gap": 124},
     [("holding", 0, 1), ("holding", 124, 2)]),
    ("custom_max_registers", [tag(f"t{i}", i) for i in range(10)], {"max_registers": 4},
     [("holding", 0, 4), ("holding", 4, 4), ("holding", 8, 2)]),
    ("overlap_bit_and_register",
     [tag("reg", 7), tag("b3", 7, "bit", bit=3), tag("b4", 7, "bit", bit=4)], {},
     [("holding", 7, 1)]),
    ("string_counts_its_length", [tag("s", 0, "string", length=10), tag("x", 10)], {"max_gap": 0},
     [("holding", 0, 11)]),
    ("tables_are_separate",
     [tag("h", 0), tag("i", 0, table="input"), tag("c", 0, None, "coil"), tag("d", 0, None, "discrete")],
     {}, [("holding", 0, 1), ("input", 0, 1), ("coil", 0, 1), ("discrete", 0, 1)]),
    ("bits_dense_2000", [tag(f"c{i}", i, None, "coil") for i in range(2001)], {},
     [("coil", 0, 2000), ("coil", 2000, 1)]),
    ("bits_gap_counts_in_bits", [tag("c0", 0, None, "coil"), tag("c9", 9, None, "coil"),
                                 tag("c30", 30, None, "coil")], {"max_gap": 8},
     [("coil", 0, 10), ("coil", 30, 1)]),
    ("bits_custom_limit", [tag(f"d{i}", i, None, "discrete") for i in range(5)], {"max_bits": 2},
     [("discrete", 0, 2), ("discrete", 2, 2), ("discrete", 4, 1)]),
    ("address_65535", [tag("last", 65535)], {}, [("holding", 65535, 1)]),
]


@pytest.mark.parametrize(("tags", "limits", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_table(tags: list[ModbusTagConfig], limits: dict[str, int],
                    expected: list[tuple[str, int, int]]) -> None:
    requests = plan_reads(tags, **limits)
    assert spans(requests) == expected
    check_invariants(tags, requests, limits.get("max_registers", 125), limits.get("max_bits", 2000))


def test_offsets_point_at_each_tag() -> None:
    requests = plan_reads([tag("a", 10), tag("b", 12, "float32"), tag("c", 15)])
    assert [(t.name, off) for t, off in requests[0].tags] == [("a", 0), ("b", 2), ("c", 5)]


def test_tag_wider_than_limit_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"'s'.*10 registers.*limit 4"):
        plan_reads([tag("s", 0, "string", length=10)], max_registers=4)


def test_tag_running_past_address_space_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'f'.*65535"):
        plan_reads([tag("f", 65535, "float32")])


@pytest.mark.parametrize("bad", [{"max_registers": 126}, {"max_registers": 0}, {"max_bits": 2001},
                                 {"max_gap": -1}])
def test_limits_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        plan_reads([tag("a", 0)], **bad)


def test_describe() -> None:
    requests = plan_reads([tag("pump.pressure", 0, "float32"), tag("pump.flow", 8, "float32"),
                           tag("run", 3, None, "coil")])
    assert describe(requests) == [
        "holding 0..9 (10 registers): pump.pressure, pump.flow",
        "coil 3..3 (1 bit): run",
    ]


def test_plan_is_deterministic_and_pure() -> None:
    tags = [tag(f"t{i}", (i * 37) % 500) for i in range(100)]
    first = plan_reads(tags)
    assert plan_reads(list(reversed(tags))) == first
    check_invariants(tags, first, 125, 2000)

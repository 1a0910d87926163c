"""The poll path in columns: a reply's good numbers go into the TagStore as one ``Columns``
and come back out as exactly the Readings a Reading-per-tag path would have stored."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest

from adapters.modbus.client import ModbusAdapter
from bridge.config import ModbusDeviceConfig
from bridge.core.tags import BOOL, FLOAT, INT, Columns, Quality, Reading, TagStore, bad, expand, good
from bridge.scoring.windows import WindowBuilder
from tests.modbus_servers import Unit, tcp_server

pytestmark = pytest.mark.timeout(30)


def test_columns_and_readings_store_the_same_thing() -> None:
    names = ("f", "i", "b")
    by_columns, by_readings = TagStore(names, 4), TagStore(names, 4)
    kinds = np.array([FLOAT, INT, BOOL], dtype=np.uint8)
    for step in range(6):  # wraps the ring
        values = [0.5 + step, -(2**53) + step, bool(step % 2)]
        by_columns.put_many([Columns(names, values, kinds, 100.0 + step)])
        by_readings.put_many([good(n, v, received_time=100.0 + step)
                              for n, v in zip(names, values, strict=True)])
    for name in names:
        assert by_columns.latest(name) == by_readings.latest(name)
        assert by_columns.history(name) == by_readings.history(name)
        assert type(by_columns.latest(name).value) is type(by_readings.latest(name).value)  # type: ignore[union-attr]
    assert by_columns.updates == by_readings.updates == 18


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "a", "b"), ("b", "c", "a")],
                         ids=["rows-in-order", "rows-out-of-order", "rows-wrapped"])
def test_columns_land_where_readings_would_whatever_the_row_order(order: tuple[str, ...]) -> None:
    """A reply whose rows follow each other in the store is written through a slice, others
    through row numbers; tags whose counts drifted apart (one got a single Reading, as when a
    re-plan isolates it) each take their own slot. All must match the Reading-per-tag path."""
    rows = ("x", *order, "y")
    by_columns, by_readings = TagStore(rows, 5), TagStore(rows, 5)
    names = ("a", "b", "c")
    kinds = np.array([FLOAT, INT, FLOAT], dtype=np.uint8)
    for step in range(8):
        if step == 3:  # "b" alone gets a bad reading: its slot runs one ahead of a and c
            for store in (by_columns, by_readings):
                store.put(bad("b", "timeout", received_time=50.0))
        values = [0.25 * step, step, -1.5 * step]
        by_columns.put_columns(Columns(names, values, kinds, 10.0 + step))
        by_readings.put_many([good(n, v, received_time=10.0 + step)
                              for n, v in zip(names, values, strict=True)])
    for name in (*names, "x", "y"):
        assert by_columns.history(name) == by_readings.history(name), name
    assert by_columns.latest("b") == good("b", 7, received_time=17.0)
    assert by_columns.latest("x") is None and by_columns.updates == by_readings.updates == 25


def test_every_kind_of_reading_round_trips() -> None:
    store = TagStore(["a"], history_size=8)
    readings = [good("a", 1.5, received_time=1.0), bad("a", "timeout", received_time=2.0),
                bad("a", "out of range: 7 > valid_max 5", value=7, received_time=3.0),
                good("a", 2**60, received_time=4.0), good("a", True, received_time=5.0),
                good("a", "text", received_time=6.0), Reading("a", 5, Quality.UNCERTAIN, 7.0, 6.5)]
    for reading in readings:
        store.put(reading)
        assert store.latest("a") == reading
    assert store.history("a") == readings
    assert store.history("a")[3].value == 2**60  # beyond float64's exact integers: kept exact


def test_columns_refuse_unknown_and_repeated_tags() -> None:
    store = TagStore(["a", "b"])
    kinds = np.zeros(2, dtype=np.uint8)
    with pytest.raises(KeyError, match="'zz'"):
        store.put_columns(Columns(("a", "zz"), [1.0, 2.0], kinds, 0.0))
    with pytest.raises(ValueError, match="twice"):
        store.put_columns(Columns(("a", "a"), [1.0, 2.0], kinds, 0.0))
    assert store.latest("a") is None and store.updates == 0


def test_an_outage_does_not_grow_memory_per_reading() -> None:
    # A device down for a history's length used to leave one Reading object per tag and slot.
    tags = [f"t{i}" for i in range(1000)]
    store = TagStore(tags, history_size=60)
    reason = "not connected: connection refused"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for step in range(60):
            store.put_many([bad(t, reason, received_time=float(step)) for t in tags])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes for 60,000 bad readings"
    assert store.latest("t5") == bad("t5", reason, received_time=59.0)


def test_windows_read_columns_and_explain_bad_inputs() -> None:
    store = TagStore(["a", "b"], history_size=4)
    builder = WindowBuilder(store, ["a", "b"], length=2, max_age=5.0)
    kinds = np.zeros(2, dtype=np.uint8)
    store.put_columns(Columns(("a", "b"), [1.0, 2.0], kinds, 10.0))
    builder.sample(now=10.0)
    store.put_columns(Columns(("a", "b"), [3.0, 4.0], kinds, 11.0))
    window = builder.sample(now=11.0)
    assert window.valid
    np.testing.assert_array_equal(window.values, np.array([[1, 2], [3, 4]], dtype=np.float32))
    store.put(bad("b", "timeout", received_time=12.0))
    window = builder.sample(now=12.0)
    assert not window.valid and "b: timeout" in window.reason


def _tags(count: int) -> list[dict[str, Any]]:
    kinds = [("float32", 2), ("int16", 1), ("uint32", 2), ("bit", 1)]
    tags, address = [], 0
    for i in range(count):
        kind, width = kinds[i % len(kinds)]
        tag: dict[str, Any] = {"name": f"t{i}", "address": address, "type": kind}
        if kind == "bit":
            tag["bit"] = i % 16
        tags.append(tag)
        address += width
    return tags


async def test_a_modbus_poll_delivers_columns_that_match_read() -> None:
    image = {a: (a * 37 + 11) & 0x3FFF for a in range(60)}
    # A uint64 beyond 2**53 in a reply of its own (registers 200..203): that reply must stay
    # Reading-exact while the 40-tag one goes as columns.
    big = 2**60 + 3
    image.update(dict(zip(range(200, 204), struct.unpack(">4H", struct.pack(">Q", big)), strict=True)))
    tags = [*_tags(40), {"name": "big", "address": 200, "type": "uint64"},
            {"name": "scaled", "address": 1, "type": "int16", "scale": 0.5}]
    async with tcp_server({1: Unit(holding=image)}) as server:
        config = ModbusDeviceConfig(name="d", host="127.0.0.1", port=server.port, timeout=1.0, tags=tags,
                                    max_gap=0)
        adapter = ModbusAdapter(config)
        await adapter.connect()
        try:
            parts = await adapter.poll()
            readings = await adapter.read()
        finally:
            await adapter.close()
    assert any(type(p) is Columns for p in parts), "a 40-tag reply should arrive as columns"
    polled = expand(parts)
    assert [r.tag for r in polled] == [r.tag for r in readings]
    assert [(r.value, r.quality) for r in polled] == [(r.value, r.quality) for r in readings]
    assert all(r.quality is Quality.GOOD for r in polled)
    store = TagStore([t["name"] for t in tags])
    store.put_many(parts)
    latest = {name: store.latest(name) for name in ("big", "t0", "t3", "scaled")}
    assert all(r is not None for r in latest.values())
    assert latest["big"].value == big  # type: ignore[union-attr]
    assert type(latest["t3"].value) is bool  # type: ignore[union-attr]
    t0 = struct.unpack(">f", struct.pack(">2H", image[0], image[1]))[0]
    assert latest["t0"].value == t0  # type: ignore[union-attr]
    assert latest["scaled"].value == image[1] * 0.5  # type: ignore[union-attr]


def test_reasons_are_interned_and_the_table_stays_bounded() -> None:
    # Reasons can embed values ("out of range: 7.25 > ..."): every one distinct. The table of
    # reason strings must not grow with them, and each slot must keep its own text.
    store = TagStore(["a", "b"], history_size=4)
    for i in range(20_000):
        store.put(bad("a" if i % 2 else "b", f"out of range: {i} > valid_max 5", received_time=float(i)))
    assert [r.reason for r in store.history("a")] == [f"out of range: {i} > valid_max 5"
                                                      for i in (19_993, 19_995, 19_997, 19_999)]
    assert len(store._reasons.text) <= 4097 + 1


def test_a_window_may_read_one_tag_for_two_features() -> None:
    store = TagStore(["a", "b"], history_size=4)
    builder = WindowBuilder(store, ["a", "b", "a"], length=1, max_age=5.0)
    store.put_columns(Columns(("a", "b"), [1.0, 2.0], np.zeros(2, dtype=np.uint8), 10.0))
    window = builder.sample(now=10.0)
    assert window.valid
    np.testing.assert_array_equal(window.values, np.array([[1, 2, 1]], dtype=np.float32))

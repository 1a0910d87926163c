from __future__ import annotations

import numpy as np

from bridge.core.tags import Quality, Reading, TagStore, bad, good
from bridge.scoring.windows import WindowBuilder


def test_window_fills_then_is_valid_and_ordered() -> None:
    store = TagStore(["a", "b"], history_size=10)
    builder = WindowBuilder(store, ["a", "b"], length=3, max_age=5.0)
    for i in range(3):
        store.put(good("a", float(i), received_time=100.0 + i))
        store.put(good("b", float(10 * i), received_time=100.0 + i))
        window = builder.sample(now=100.0 + i)
    assert window.valid, window.reason
    np.testing.assert_array_equal(window.values, np.array([[0, 0], [1, 10], [2, 20]], dtype=np.float32))


def test_filling_window_is_not_valid() -> None:
    store = TagStore(["a"])
    builder = WindowBuilder(store, ["a"], length=4, max_age=5.0)
    store.put(good("a", 1.0, received_time=10.0))
    window = builder.sample(now=10.0)
    assert not window.valid and "filling (1/4" in window.reason


def test_bad_or_stale_input_invalidates_window_until_it_leaves() -> None:
    store = TagStore(["a"])
    builder = WindowBuilder(store, ["a"], length=2, max_age=2.0)
    store.put(good("a", 1.0, received_time=0.0))
    builder.sample(now=0.0)
    assert builder.sample(now=1.0).valid
    store.put(bad("a", "timeout", received_time=2.0))
    window = builder.sample(now=2.0)
    assert not window.valid and "a: timeout" in window.reason
    store.put(good("a", 2.0, received_time=3.0))
    assert not builder.sample(now=3.0).valid  # the bad row is still in the window
    assert builder.sample(now=4.0).valid
    # No new reading for longer than max_age: the held value is stale, not fresh.
    window = builder.sample(now=6.5)
    assert not window.valid and "stale" in window.reason


def test_non_finite_and_string_values_are_not_numeric() -> None:
    assert Reading("a", float("nan"), Quality.GOOD, 0.0).numeric() is None
    assert Reading("a", "text", Quality.GOOD, 0.0).numeric() is None
    assert Reading("a", True, Quality.GOOD, 0.0).numeric() == 1.0
    assert Reading("a", 3, Quality.UNCERTAIN, 0.0).numeric() is None


def test_tag_store_is_bounded_and_refuses_unknown_tags() -> None:
    store = TagStore(["a"], history_size=5)
    for i in range(100):
        store.put(good("a", i, received_time=float(i)))
    assert len(store.history("a")) == 5
    assert store.latest("a") is not None and store.latest("a").value == 99  # type: ignore[union-attr]
    assert [r.value for r in store.history("a", since=97.0)] == [98, 99]
    assert [r.value for r in store.history("a", limit=2)] == [98, 99]
    try:
        store.put(good("zzz", 1))
    except KeyError as exc:
        assert "zzz" in str(exc)
    else:
        raise AssertionError("unknown tag accepted")


def test_history_keeps_every_kind_of_reading_through_the_ring() -> None:
    store = TagStore(["a"], history_size=4)
    readings = [
        Reading("a", 1.5, Quality.GOOD, 1.0, source_time=0.5),
        Reading("a", 2**62, Quality.GOOD, 2.0),
        Reading("a", 2**64, Quality.GOOD, 3.0),  # beyond int64: kept as the object
        Reading("a", True, Quality.GOOD, 4.0),
        Reading("a", "text", Quality.UNCERTAIN, 5.0),
        Reading("a", None, Quality.BAD, 6.0, reason="timeout"),
        Reading("a", 7.0, Quality.BAD, 7.0, reason="out of range: 7.0 > valid_max 5"),
        Reading("a", -3, Quality.GOOD, 8.0),
    ]
    for reading in readings[:4]:
        store.put(reading)
    assert store.history("a") == readings[:4]
    assert type(store.history("a")[1].value) is int and store.history("a")[0].source_time == 0.5
    for reading in readings[4:]:
        store.put(reading)
    assert store.history("a") == readings[4:]  # wrapped: the oldest four are gone
    assert store.history("a", since=6.5) == readings[6:]
    assert len(store._other) == 3  # side table bounded by the ring: overwritten slots leave it

"""ScoreStore: a columnar ring that reads back exactly the Scores put in it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.core.scores import Score, ScoreStore

INPUTS = ("pressure", "flow", "current", "temperature", "vibration")


def scored(i: int, names: tuple[str, ...] = INPUTS, model: str = "pump") -> Score:
    contributions = {name: 0.1 * i + k / 3 for k, name in enumerate(names)}
    return Score(model, 1_700_000_000.0 + i, 0.25 * i + 1e-9, 1.5, i % 3 == 0, True, "", contributions,
                 "v1", i, i // 3, 0.000123 * i)


def unscored(i: int, model: str = "pump") -> Score:
    return Score(model, 1_700_000_000.0 + i, None, 1.5, False, False, f"flow: stale ({i} s)",
                 version="v1", scored=i, anomalies=0)


def test_round_trip_keeps_every_field_and_none() -> None:
    store = ScoreStore(["pump"], 10)
    put = [scored(1), unscored(2),
           Score("pump", -3.5, -0.0, 0.0, True, False, "odd", {}, "", -1, 7, 0.0),
           Score("pump", 4.0, float("inf"), 2.0, False, True),
           Score("pump", 5.0, 1.0, 2.0, False, True, contributions={"a": math.pi, "b": -1e300})]
    for score in put:
        store.put(score)
    assert store.history("pump", limit=100) == put
    assert store.latest("pump") == put[-1]
    back = store.history("pump")
    assert back[1].score is None and back[1].contributions is None and back[1].inference_seconds is None
    assert back[2].contributions == {} and back[2].score is not None \
        and math.copysign(1.0, back[2].score) == -1.0
    assert [type(s.scored) for s in back] == [int] * 5
    assert list(back[0].contributions or {}) == list(INPUTS)  # the contract's order


def test_float32_contributions_read_back_as_the_runner_made_them() -> None:
    store = ScoreStore(["pump"], 4, {"pump": INPUTS})
    raw = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)
    score = Score("pump", 1.0, float(np.float32(0.7)), 0.5, True, True, "",
                  {f: float(c) for f, c in zip(INPUTS, raw, strict=True)}, "v", 1, 1, 0.001)
    store.put(score)
    assert store.latest("pump") == score


def test_empty_store_and_unknown_model() -> None:
    store = ScoreStore(["pump"], 3)
    assert store.latest("pump") is None
    assert store.history("pump") == []
    assert "pump" in store and "other" not in store
    with pytest.raises(KeyError):
        store.latest("other")
    with pytest.raises(KeyError):
        store.put(scored(1, model="other"))


def test_ring_wraps_keeping_the_newest() -> None:
    store = ScoreStore(["pump"], 4)
    put = [scored(i) if i % 2 else unscored(i) for i in range(11)]
    for count, score in enumerate(put, 1):
        store.put(score)
        assert store.latest("pump") == score
        assert store.history("pump") == put[max(0, count - 4):count]


def test_since_and_limit_as_before() -> None:
    store = ScoreStore(["pump"], 5)
    put = [scored(i) for i in range(8)]  # the ring keeps 3..7
    for score in put:
        store.put(score)
    t = put[5].time
    assert store.history("pump", since=t) == put[6:]  # strictly after
    assert store.history("pump", since=t - 0.5) == put[5:]
    assert store.history("pump", since=put[7].time) == []
    assert store.history("pump", since=0.0, limit=2) == put[6:]  # the newest of the matches
    assert store.history("pump", limit=1) == put[7:]
    assert store.history("pump", limit=0) == []
    assert store.history("pump", limit=-3) == []
    assert store.history("pump", limit=100) == put[3:]


def test_since_filters_out_of_order_times() -> None:
    store = ScoreStore(["pump"], 5)
    put = [Score("pump", t, 1.0, 2.0, False, True) for t in (5.0, 1.0, 7.0, 3.0)]
    for score in put:
        store.put(score)
    assert store.history("pump", since=2.0) == [put[0], put[2], put[3]]


def test_model_replaced_with_other_inputs() -> None:
    """A model update can bring another input set: older Scores keep theirs, wider or not."""
    store = ScoreStore(["pump", "fan"], 6, {"pump": INPUTS[:2]})
    wide = (*INPUTS, "speed", "torque")
    put = [scored(0, INPUTS[:2]), unscored(1), scored(2, wide), scored(3, ("x",)), scored(4, wide),
           scored(5, INPUTS[:2]), scored(6, ())]
    for score in put:
        store.put(score)
    assert store.history("pump") == put[1:]
    assert store.latest("pump") == put[-1]
    fan = [scored(i, ("a", "b"), model="fan") for i in range(3)]
    for score in fan:
        store.put(score)
    assert store.history("fan") == fan
    assert store.history("pump") == put[1:]  # one model's ring never touches another's


def test_memory_is_allocated_at_construction_not_as_it_fills() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        store = ScoreStore(["pump"], 3600, {"pump": INPUTS})
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3600):
            store.put(scored(i))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, grown  # a few strings at most; the deque of Scores grew ~1.9 MB

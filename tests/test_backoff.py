"""bridge.core.backoff: capped, jittered exponential backoff as a pure function."""

from __future__ import annotations

import pytest

from bridge.core.backoff import Backoff


def test_grows_exponentially_then_caps_without_jitter() -> None:
    policy = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(jitter=0.0, maximum=30.0).delay(10_000) == 30.0


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_stays_within_bounds_and_under_the_cap(rand: float) -> None:
    policy = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.25)
    for attempt in range(1, 10):
        low, high = policy.bounds(attempt)
        value = policy.delay(attempt, lambda r=rand: r)
        assert low <= value <= high <= 8.0
    assert policy.delay(1, lambda: 0.0) == 0.75
    assert policy.delay(1, lambda: 0.5) == 1.0


def test_default_random_jitter_differs_between_calls() -> None:
    policy = Backoff(initial=1.0, maximum=100.0, jitter=0.5)
    assert len({policy.delay(3) for _ in range(20)}) > 1


@pytest.mark.parametrize("kwargs", [
    {"initial": 0.0}, {"initial": 2.0, "maximum": 1.0}, {"factor": 0.5}, {"jitter": 1.0},
    {"jitter": -0.1},
])
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_attempt_starts_at_one() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(0)

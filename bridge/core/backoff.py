"""Reconnect timing: capped exponential backoff with jitter, as one small pure policy.

Adapters ask ``Backoff.delay(attempt)`` how long to wait before reconnect attempt ``attempt``
(1 = the first retry after a failure). Jitter spreads reconnects of many devices that lost a
shared network at the same moment, so they do not hammer a recovering server in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """``initial * factor**(attempt-1)``, capped at ``maximum``, then scaled by a random factor
    in ``[1 - jitter, 1 + jitter]`` (and capped again, so ``maximum`` is a hard ceiling)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError("initial must be > 0")
        if self.maximum < self.initial:
            raise ValueError("maximum must be >= initial")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt ``attempt`` (>= 1). ``rand`` returns [0, 1)."""
        if attempt < 1:
            raise ValueError("attempt must be >= 1")
        # Cap the exponent first: factor**attempt overflows floats long before uptime ends.
        base = self.initial
        for _ in range(attempt - 1):
            base *= self.factor
            if base >= self.maximum:
                base = self.maximum
                break
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return min(self.maximum, base * spread)

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay ``delay(attempt)`` can return."""
        return self.delay(attempt, lambda: 0.0), self.delay(attempt, lambda: 1.0 - 1e-12)

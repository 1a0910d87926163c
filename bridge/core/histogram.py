"""A labelled histogram's counts, kept in plain lists (no locks, no library): observations
run in the event loop; ``bridge.sinks.prometheus`` renders them at scrape time."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["Histogram"]


class Histogram:
    """One labelled Prometheus histogram's state: per label value, a count per bucket (the last
    is +Inf) and the sum. Bucket semantics as Prometheus': a value lands in the first bucket
    whose upper bound is >= it."""

    def __init__(self, name: str, documentation: str, label: str, bounds: Sequence[float]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = tuple(bounds)
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def add(self, value: str) -> None:
        """A series that shows (at 0) from the first scrape on."""
        self.series.setdefault(value, ([0] * (len(self.bounds) + 1), [0.0]))

    def observe(self, value: str, amount: float) -> None:
        found = self.series.get(value)
        if found is None:
            self.add(value)
            found = self.series[value]
        counts, total = found
        counts[bisect_left(self.bounds, amount)] += 1
        total[0] += amount

    def cumulative(self, value: str) -> tuple[list[int], float]:
        """(cumulative count per bucket, +Inf last; sum) of one series."""
        counts, total = self.series[value]
        running, out = 0, []
        for count in counts:
            running += count
            out.append(running)
        return out, total[0]

"""Benchmarks for plcbridge: ``python -m bench [--quick] [--only NAME ...]``.

Every benchmark starts its own servers on loopback, runs bounded in time and reports the
bridge's number next to a raw-library baseline measured in the same run, as a ratio: absolute
numbers on a shared 2-core box move by tens of percent between runs, ratios much less.
Results go to ``bench/results.json``; ``BENCHMARKS.md`` is regenerated from it.
"""

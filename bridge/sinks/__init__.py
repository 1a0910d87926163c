"""Sinks: consumers of Scores that hand results to the outside world (one module per sink).

Each sink implements ``bridge.runtime.bridge.Sink``; a sink that does I/O queues in ``on_score`` and
sends from its own task, so a dead peer never delays scoring, write-back or the API.
"""

__all__: list[str] = []

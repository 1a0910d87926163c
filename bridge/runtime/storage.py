"""Anomaly events and score history in SQLite (stdlib, WAL), with bounded retention.

Scores arrive every cycle, so they are buffered in memory (bounded) and written in one
transaction per flush, off the event loop. WAL with ``synchronous=NORMAL`` keeps the file
consistent through a kill -9 or power loss; at worst the last flush interval is lost.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from bridge.core.scores import Score

__all__ = ["EventStore"]

log = logging.getLogger("plcbridge.storage")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL,
    score REAL, threshold REAL, detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS scores (
    time REAL NOT NULL, model TEXT NOT NULL, score REAL, threshold REAL NOT NULL,
    anomaly INTEGER NOT NULL, window_valid INTEGER NOT NULL, reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scores_model_time ON scores(model, time);
"""
_PRUNE_EVERY = 60  # flushes between retention sweeps: deleting is the expensive part


class EventStore:
    def __init__(self, data_dir: Path, retention_days: float, buffer_size: int = 100_000) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "plcbridge.sqlite3"
        self.retention_s = retention_days * 86400
        # The API reads from its thread pool and flushes run in a worker thread: one connection
        # shared under a lock is simpler and cheaper than a connection per thread.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._scores: deque[Score] = deque(maxlen=buffer_size)
        self._events: deque[dict[str, Any]] = deque(maxlen=buffer_size)
        self.dropped = 0
        self._flushes = 0
        self._closed = False

    def add_score(self, score: Score) -> None:
        if len(self._scores) == self._scores.maxlen:
            self.dropped += 1
        self._scores.append(score)

    def add_event(self, event: dict[str, Any]) -> None:
        self._events.append(event)

    def flush(self) -> int:
        """Write buffered rows in one transaction; returns rows written. Thread-safe."""
        scores = [self._scores.popleft() for _ in range(len(self._scores))]
        events = [self._events.popleft() for _ in range(len(self._events))]
        if not scores and not events:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(s.time, s.model, s.score, s.threshold, int(s.anomaly), int(s.window_valid),
                      s.reason) for s in scores])
                self._db.executemany(
                    "INSERT INTO events (time, model, kind, score, threshold, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(e["time"], e["model"], e["kind"], e.get("score"), e.get("threshold"),
                      json.dumps(e.get("detail", {}))) for e in events])
                self._flushes += 1
                if self._flushes % _PRUNE_EVERY == 1:
                    cutoff = time.time() - self.retention_s
                    self._db.execute("DELETE FROM scores WHERE time < ?", (cutoff,))
                    self._db.execute("DELETE FROM events WHERE time < ?", (cutoff,))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
        return len(scores) + len(events)

    def events(self, limit: int = 100, since: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, time, model, kind, score, threshold, detail FROM events "
                "WHERE time > ? ORDER BY id DESC LIMIT ?", (since or 0.0, limit)).fetchall()
        return [{"id": r[0], "time": r[1], "model": r[2], "kind": r[3], "score": r[4],
                 "threshold": r[5], "detail": json.loads(r[6])} for r in reversed(rows)]

    def scores(self, model: str, since: float | None = None, limit: int = 100) -> list[Score]:
        with self._lock:
            rows = self._db.execute(
                "SELECT time, model, score, threshold, anomaly, window_valid, reason FROM scores "
                "WHERE model = ? AND time > ? ORDER BY time DESC LIMIT ?",
                (model, since or 0.0, limit)).fetchall()
        return [Score(r[1], r[0], r[2], r[3], bool(r[4]), bool(r[5]), r[6]) for r in reversed(rows)]

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._db.close()
        self._closed = True

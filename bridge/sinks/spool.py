"""A bounded on-disk FIFO of outgoing messages (SQLite, WAL): store-and-forward for sinks.

Every message is appended here before it is sent and deleted only once the peer has
acknowledged it, so a broker outage or a restart of plcbridge loses nothing that fits.
When the spool is full the OLDEST messages are dropped (and counted): after a long outage
the recent state of the plant is worth more than the start of the outage.

Each message carries a sequence number that only ever grows, also across restarts (SQLite
AUTOINCREMENT never reuses a number; ``next_seq`` says where to go on), so a consumer sees a
dropped message as a gap.

Not thread-safe: the sink calls it from one worker thread only (disk I/O off the event loop).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Spool", "SpooledMessage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    seq: int
    topic: str
    payload: bytes


class Spool:
    def __init__(self, directory: Path, max_messages: int, name: str = "mqtt-spool.sqlite") -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
        self.max_messages = max_messages
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last transactions but never corrupts
        # the file; FULL would fsync on every message.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        self._next_seq = (row[0] if row else 0) + 1
        self._count: int = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def __len__(self) -> int:
        return self._count

    @property
    def next_seq(self) -> int:
        """The first sequence number never used in this spool (also after a restart)."""
        return self._next_seq

    def append(self, items: list[tuple[int, str, dict[str, Any]]]) -> int:
        """Store (seq, topic, body) in order, ``seq`` added to the body as its first key; seqs
        must grow. Drop the oldest beyond ``max_messages``; return how many were dropped."""
        if not items:
            return 0
        rows = []
        for seq, topic, body in items:
            if seq < self._next_seq:
                raise ValueError(f"seq {seq} was already used (next is {self._next_seq})")
            self._next_seq = seq + 1
            payload = json.dumps({"seq": seq, **body}, separators=(",", ":"), allow_nan=False)
            rows.append((seq, topic, payload.encode()))
        with self._db:  # one transaction: one disk sync for the whole batch
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO messages (seq, topic, payload) VALUES (?, ?, ?)", rows)
            self._count += len(rows)
            dropped = max(0, self._count - self.max_messages)
            if dropped:
                self._db.execute("DELETE FROM messages WHERE seq IN "
                                 "(SELECT seq FROM messages ORDER BY seq LIMIT ?)", (dropped,))
                self._count -= dropped
        return dropped

    def oldest(self, limit: int) -> list[SpooledMessage]:
        rows = self._db.execute("SELECT seq, topic, payload FROM messages ORDER BY seq LIMIT ?",
                                (limit,)).fetchall()
        return [SpooledMessage(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def delete(self, seqs: list[int]) -> None:
        """Forget acknowledged messages. A seq already dropped for space is ignored."""
        if not seqs:
            return
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in seqs])
            self._count -= cursor.rowcount

    def close(self) -> None:
        self._db.close()

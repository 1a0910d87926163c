"""SQLite persistence: round trip, restart, retention, and a kill -9 in the middle of writing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.core.scores import Score
from bridge.runtime.storage import EventStore

ROOT = Path(__file__).resolve().parent.parent


def _event(t: float, kind: str = "anomaly-start") -> dict[str, object]:
    return {"model": "pump", "time": t, "kind": kind, "score": 2.5, "threshold": 1.0,
            "detail": {"contributions": {"flow": 0.9}}}


def test_round_trip_and_restart(tmp_path: Path) -> None:
    store = EventStore(tmp_path, retention_days=1)
    now = time.time()
    for i in range(5):
        store.add_score(Score("pump", now + i, 0.1 * i, 1.0, False, True))
    store.add_event(_event(now + 3))
    assert store.flush() == 6
    assert store.flush() == 0
    store.close()
    again = EventStore(tmp_path, retention_days=1)
    (event,) = again.events()
    assert event["kind"] == "anomaly-start" and event["detail"] == {"contributions": {"flow": 0.9}}
    scores = again.scores("pump", since=now + 1.5, limit=10)
    assert [s.time for s in scores] == [now + 2, now + 3, now + 4]
    assert again.scores("pump", limit=2)[-1].score == pytest.approx(0.4)
    again.close()


def test_retention_deletes_old_rows(tmp_path: Path) -> None:
    store = EventStore(tmp_path, retention_days=1)
    now = time.time()
    store.add_event(_event(now - 2 * 86400))
    store.add_score(Score("pump", now - 2 * 86400, 0.5, 1.0, False, True))
    store.add_event(_event(now))
    store.flush()  # the first flush sweeps
    assert [e["time"] for e in store.events()] == [now]
    assert store.scores("pump") == []
    store.close()


_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from bridge.core.scores import Score
from bridge.runtime.storage import EventStore
store = EventStore(Path({path!r}), retention_days=1)
i = 0
while True:
    for _ in range(200):
        store.add_score(Score("pump", time.time(), float(i), 1.0, False, True))
        i += 1
    store.add_event({{"model": "pump", "time": time.time(), "kind": "anomaly-start"}})
    store.flush()
    print(i, flush=True)
"""


@pytest.mark.timeout(30)
def test_kill_9_while_writing_leaves_a_consistent_database(tmp_path: Path) -> None:
    script = _WRITER.format(root=str(ROOT), path=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    flushed = 0
    while flushed < 5000:  # bounded by the test timeout
        line = proc.stdout.readline()
        assert line, "writer died"
        flushed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    db = sqlite3.connect(tmp_path / "plcbridge.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    db.close()
    # Every flush the writer reported happened before the kill; WAL keeps committed rows.
    assert rows >= flushed
    store = EventStore(tmp_path, retention_days=1)
    assert len(store.events(limit=10)) == 10
    store.close()

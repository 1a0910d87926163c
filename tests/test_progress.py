from __future__ import annotations

import io

from bridge.core.progress import clock, track


def test_track_in_a_log_writes_a_start_and_a_final_line() -> None:
    out = io.StringIO()  # not a TTY: rate-limited to a line a minute, no carriage returns
    assert list(track(["a.csv", "b.csv", "c.csv"], "evaluating", out)) == ["a.csv", "b.csv", "c.csv"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("evaluating 1/3  a.csv  elapsed 0:00:00")
    assert lines[-1].startswith("evaluating 3/3 done in 0:00:0")
    assert len(lines) == 2 and "\r" not in out.getvalue()


def test_clock() -> None:
    assert clock(3725.4) == "1:02:05" and clock(-3) == "0:00:00"

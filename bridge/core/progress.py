"""Progress for long commands (record, evaluate, ...): one status line on stderr.

On a terminal the line is rewritten in place about once a second; in a log (not a TTY) a line
is written at most once a minute, so a systemd journal or CI log is not flooded.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO, TypeVar

__all__ = ["ProgressLine", "clock", "track"]

T = TypeVar("T")


def clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressLine:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._last = -math.inf

    def show(self, line: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (1.0 if self.tty else 60.0):
            return
        self._last = now
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + end)
        self.stream.flush()


def track(items: Sequence[T], label: str, stream: TextIO | None = None) -> Iterator[T]:
    """Yield ``items`` while showing ``label i/n`` with the elapsed time and an ETA."""
    line = ProgressLine(stream)
    started = time.monotonic()
    for index, item in enumerate(items):
        elapsed = time.monotonic() - started
        eta = elapsed / index * (len(items) - index) if index else 0.0
        line.show(f"{label} {index + 1}/{len(items)}  {item}  elapsed {clock(elapsed)}"
                  + (f"  ETA {clock(eta)}" if index else ""))
        yield item
    line.show(f"{label} {len(items)}/{len(items)} done in {clock(time.monotonic() - started)}",
              final=True)

"""The broker connection's counters, one shape for the MQTT, Sparkplug and fleet sinks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from bridge.core.timefmt import iso

__all__ = ["LinkStats"]


@dataclass(slots=True)
class LinkStats:
    """What /api/v1/health shows of a sink's broker connection (sinks add their own counters
    in a subclass)."""

    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    last_error: str | None = None
    last_error_time: float | None = None

    def up(self) -> None:
        """A connection was made."""
        self.connects += 1
        self.connected = True

    def down(self, error: str) -> bool:
        """A connection was lost, or an attempt failed, with ``error``. True when it is the
        error already recorded (callers log a repeat at DEBUG, not as a new failure)."""
        repeated = error == self.last_error
        if self.connected:
            self.disconnects += 1
        else:
            self.connect_failures += 1
        self.connected = False
        self.last_error, self.last_error_time = error, time.time()
        return repeated

    def body(self) -> dict[str, Any]:
        """The counters as /api/v1/health renders them (times as RFC 3339)."""
        body = asdict(self)
        body["last_error_time"] = None if self.last_error_time is None else iso(self.last_error_time)
        return body

"""The one time format: RFC 3339, UTC, millisecond precision, ``Z`` suffix.

Every time plcbridge shows or writes (REST API, MQTT, record CSVs, events) goes through
``iso``, so a SCADA client, a broker consumer and a spreadsheet see the same text for the same
instant. Inside the process times are UTC epoch seconds (floats).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["finite", "iso", "iso_or_none"]


def iso(timestamp: float) -> str:
    """``1700000000.5`` -> ``"2023-11-14T22:13:20.500Z"``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def iso_or_none(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso(timestamp)


def finite(value: float | None) -> float | None:
    """JSON has no NaN or Infinity: a non-finite number is shown as null (its quality or
    reason says why)."""
    return value if value is not None and math.isfinite(value) else None

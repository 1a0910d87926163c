"""The adapter interface: what the core needs from any protocol module."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bridge.core.tags import Reading

__all__ = ["Adapter", "DeviceStatus"]


@dataclass
class DeviceStatus:
    """Per-device health, shown by /api/v1/health. Updated by the adapter only."""

    name: str
    connected: bool = False
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    polls: int = 0
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_latency: float | None = None

    def record_success(self, latency: float) -> None:
        self.connected = True
        self.polls += 1
        self.last_success = time.time()
        self.last_latency = latency

    def record_error(self, kind: str, message: str) -> None:
        self.polls += 1
        self.count(kind)
        self.last_error = message
        self.last_error_time = time.time()

    def count(self, kind: str) -> None:
        """Count a problem that is not a failed poll (e.g. an unusable value)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@runtime_checkable
class Adapter(Protocol):
    """One device (one unit id / endpoint). Adapters raise typed errors from bridge.core.errors;
    ``read`` never raises for a device fault: it returns bad-quality Readings with a reason."""

    name: str
    status: DeviceStatus

    async def connect(self) -> None: ...

    async def read(self) -> list[Reading]: ...

    async def write(self, target: object, value: float) -> None:
        """Write ``value`` to a write-back target (a config object the adapter understands)."""
        ...

    async def write_many(self, items: Sequence[tuple[object, float]]) -> None:
        """Write several targets; adjacent ones change together (one request where possible)."""
        ...

    async def close(self) -> None: ...

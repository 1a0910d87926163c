"""The contracts between the layers: what the runtime needs from an adapter, what a sink gets.

Adapters (``adapters/``) implement ``Adapter`` and, for devices that take write-back,
``Writer``; sinks (``bridge/sinks/``, the server sinks in ``adapters/``) implement ``Sink``.
A sink never sees the running ``Bridge``: it gets Scores, poll durations and a read-only
``BridgeView`` (devices' status, models' status, latest score and readings, start time). Everything a sink
reads back about a scoring cycle travels in the Score itself (counters, inference time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from bridge.config import NodeTarget, RegisterTarget
from bridge.core.scores import Score
from bridge.core.tags import Part, Reading

__all__ = [
    "Adapter",
    "BridgeView",
    "DeviceStatus",
    "ModelStatus",
    "OnReadings",
    "Sink",
    "SinkBase",
    "WriteStats",
    "WriteTarget",
    "Writer",
]

WriteTarget = RegisterTarget | NodeTarget
TargetT_contra = TypeVar("TargetT_contra", RegisterTarget, NodeTarget, contravariant=True)
OnReadings = Callable[[list[Reading]], None]


@dataclass
class DeviceStatus:
    """Per-device health, shown by /api/v1/health, /metrics and the server sinks. Updated by
    the adapter only; everyone else reads it."""

    name: str
    connected: bool = False
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    polls: int = 0
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_latency: float | None = None
    # Polls in a row that failed (0 after any successful poll): "is it still broken?"
    consecutive_errors: int = 0
    # Protocol exception code of the last failed request (e.g. Modbus 2), None if none yet.
    last_exception_code: int | None = None
    last_rtt: float | None = None  # round trip of the last answered request, seconds
    # Polls still running when the next was due (counted by the runtime's scheduler).
    overruns: int = 0
    # No successful poll within the device's stale window (see the runtime).
    stale: bool = False
    # "ok", or "backoff": the unit stopped answering and is only probed now and then.
    unit_state: str = "ok"
    read_plan: list[str] = field(default_factory=list)  # requests per poll, as planned/learned
    holes: list[str] = field(default_factory=list)  # address ranges learned to be unreadable
    write_mismatches: int = 0  # written registers that read back different (write_verify)

    def record_success(self, latency: float) -> None:
        self.connected = True
        self.polls += 1
        self.last_success = time.time()
        self.last_latency = latency
        self.consecutive_errors = 0

    def record_error(self, kind: str, message: str) -> None:
        self.polls += 1
        self.consecutive_errors += 1
        self.count(kind)
        self.last_error = message
        self.last_error_time = time.time()

    def count(self, kind: str) -> None:
        """Count a problem that is not a failed poll (e.g. an unusable value)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class WriteStats:
    """One model's write-back counters (updated by the write-back sink only)."""

    written: int = 0
    dry_run: int = 0
    refused: int = 0
    failed: int = 0
    skipped_rate: int = 0
    last_error: str | None = None
    last_write: float | None = None
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A model as the sinks see it: a snapshot taken when asked (a model update makes a new
    one), so holding it never pins an old ONNX session."""

    name: str
    version: str
    path: Path  # the model file, for fingerprints; never shown to clients as is
    inputs: tuple[str, ...]
    period: float
    threshold: float
    scored: int
    anomalies: int
    writeback_device: str | None = None
    writeback_mode: str | None = None
    writeback: WriteStats | None = None


@runtime_checkable
class Adapter(Protocol):
    """One device (one unit id / endpoint), polled or subscribed.

    Adapters raise typed errors from ``bridge.core.errors``; ``read`` never raises for a device
    fault: it returns bad-quality Readings with a reason. Reconnect timing is the adapter's,
    through ``bridge.core.backoff``.
    """

    name: str
    status: DeviceStatus

    @property
    def requests_per_poll(self) -> int:
        """Requests one ``read`` sends at most: the runtime's watchdog budget scales with it."""
        ...

    async def connect(self) -> None: ...

    async def read(self) -> list[Reading]:
        """One Reading per tag (a convenience for tools and tests; the runtime uses ``poll``)."""
        ...

    async def poll(self) -> list[Part]:
        """What ``read`` returns, in the form the TagStore takes cheapest: good numbers of a
        whole reply may come as one ``Columns`` instead of a Reading each."""
        ...

    async def subscribe(self, on_readings: OnReadings) -> bool:
        """Push instead of poll: True means the adapter calls ``on_readings`` with every change
        (and with bad-quality Readings when it loses the device) from now on, and the runtime
        does not poll it. Adapters that only poll return False."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Writer(Protocol[TargetT_contra]):
    """An adapter that takes write-back values for the targets of its own protocol
    (Modbus: ``RegisterTarget``; OPC UA: ``NodeTarget``). The config check guarantees a model's
    targets match its device's protocol; the safety rules live in ``bridge.sinks.writeback``."""

    async def write(self, target: TargetT_contra, value: float) -> None: ...

    async def write_many(self, items: Sequence[tuple[TargetT_contra, float]]) -> None:
        """Write several targets; adjacent ones change together (one request where possible)."""
        ...


class BridgeView(Protocol):
    """What a sink may read of the running bridge. Read-only: nothing here changes state."""

    @property
    def started_at(self) -> float:
        """UTC epoch seconds."""
        ...

    def devices(self) -> Mapping[str, DeviceStatus]:
        """Every configured device's live status, in config order."""
        ...

    def models(self) -> Mapping[str, ModelStatus]:
        """Every configured model, in config order (a fresh snapshot per call)."""
        ...

    def latest_score(self, model: str) -> Score | None: ...

    def latest_reading(self, tag: str) -> Reading | None:
        """The tag store's latest Reading of ``tag`` (None before the first)."""
        ...


@runtime_checkable
class Sink(Protocol):
    """Consumes Scores (Modbus/OPC UA server, MQTT, Prometheus, write-back, ...).

    ``on_score`` and ``on_poll`` run in the event loop right after each cycle and must not
    block: a sink that does I/O queues and sends from its own task, so a dead broker never
    delays scoring, write-back or the API. ``status`` is the sink's own counters for
    /api/v1/health (None: nothing to show).
    """

    name: str

    async def start(self, view: BridgeView) -> None: ...

    def on_score(self, score: Score) -> None: ...

    def on_poll(self, device: str, seconds: float) -> None: ...

    def status(self) -> Mapping[str, Any] | None: ...

    async def stop(self) -> None: ...


class SinkBase:
    """Defaults for the optional parts of ``Sink``: most sinks ignore polls and show no
    counters of their own."""

    name: str

    def on_poll(self, device: str, seconds: float) -> None:
        return None

    def status(self) -> Mapping[str, Any] | None:
        return None

"""Config sections of the sinks that hand results to the plant's own tools.

Pure pydantic (no pymodbus, no prometheus-client): ``bridge.config.Config`` embeds these,
``plcbridge registers`` reads them without starting anything.

``[modbus_server]``: plcbridge serves its results as a Modbus TCP server ("slave"). The map
must never move under a SCADA project that already points at it, so every model and device
gets an explicit *slot* number and the layout around the slots is fixed (see
``adapters.modbus.register_map``): adding a model, removing one, or reordering ``[[models]]`` never moves
another model's registers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from bridge.config.base import NAME_PATTERN, StrictModel
from bridge.core.datatypes import Order

__all__ = [
    "DEVICE_BLOCK",
    "DEVICE_SLOTS",
    "DEVICE_START",
    "HEADER_WORDS",
    "MAP_WORDS",
    "MODEL_BLOCK",
    "MODEL_SLOTS",
    "MODEL_START",
    "MetricsConfig",
    "ModbusServerConfig",
    "check_modbus_server",
]

# The fixed layout, as offsets from ``base_address``. Round numbers on purpose: a SCADA
# engineer finds model slot 3 at base + 1000 + 3 * 20 = 1060 without a tool. Changing any
# of these moves every register in the field: that needs a new LAYOUT_VERSION (adapters.modbus.register_map).
HEADER_WORDS = 10
DEVICE_START, DEVICE_BLOCK, DEVICE_SLOTS = 100, 10, 90  # devices: 100 .. 999
MODEL_START, MODEL_BLOCK, MODEL_SLOTS = 1000, 20, 100  # models: 1000 .. 2999
MAP_WORDS = MODEL_START + MODEL_BLOCK * MODEL_SLOTS  # 3000

_SlotKey = Annotated[str, Field(pattern=NAME_PATTERN)]


def _unique_slots(kind: str, slots: dict[str, int]) -> dict[str, int]:
    owner: dict[int, str] = {}
    for name, slot in slots.items():
        if slot in owner:
            raise ValueError(f"{name}: slot {slot} is already used by {kind} {owner[slot]!r}")
        owner[slot] = name
    return slots


class ModbusServerConfig(StrictModel):
    """``[modbus_server]``: results served to SCADA over Modbus TCP (read-only)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 5020  # 0: a free port (tests)
    # 0 would mean "answer every unit id" to pymodbus; 248-255 are reserved by the spec.
    unit_id: Annotated[int, Field(ge=1, le=247)] = 1
    base_address: Annotated[int, Field(ge=0, le=65536 - MAP_WORDS)] = 0
    # Word order of float32/uint32 values; bytes within a word are always big-endian (Modbus).
    word_order: Order = "big"
    # How often the header and device blocks are refreshed (model blocks change on each score).
    refresh_interval: Annotated[float, Field(ge=0.05, le=60)] = 1.0
    # Hostile or broken clients: at most this many connections (more are accepted and closed
    # at once), closed after idle_timeout s without a request or frame_timeout s between the
    # first and the last byte of a request frame.
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 32
    idle_timeout: Annotated[float, Field(ge=1, le=86400)] = 120.0
    frame_timeout: Annotated[float, Field(ge=0.1, le=60)] = 5.0
    # model name -> slot. Slots, not list positions, so the map survives edits of [[models]].
    models: dict[_SlotKey, Annotated[int, Field(ge=0, lt=MODEL_SLOTS)]] = Field(default_factory=dict)
    # device name -> slot.
    devices: dict[_SlotKey, Annotated[int, Field(ge=0, lt=DEVICE_SLOTS)]] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _models_unique(cls, slots: dict[str, int]) -> dict[str, int]:
        return _unique_slots("model", slots)

    @field_validator("devices")
    @classmethod
    def _devices_unique(cls, slots: dict[str, int]) -> dict[str, int]:
        return _unique_slots("device", slots)

    @model_validator(mode="after")
    def _fits(self) -> ModbusServerConfig:
        # base_address' own bound already guarantees this; kept as the one place that says why.
        if self.base_address + MAP_WORDS > 65536:
            raise ValueError(f"base_address: {self.base_address} + {MAP_WORDS} registers passes 65535")
        return self


class MetricsConfig(StrictModel):
    """``[metrics]``: Prometheus text exposition at GET /metrics on the API server."""

    enabled: bool = True


def _free_slot(slots: dict[str, int], limit: int) -> int | None:
    used = set(slots.values())
    return next((s for s in range(limit) if s not in used), None)


def check_modbus_server(config: ModbusServerConfig, model_names: Iterable[str],
                        device_names: Iterable[str]) -> list[str]:
    """Cross-checks against the rest of the config; messages name the key path.

    When enabled, every model and device needs a slot: an implicit slot would be a list
    position, and that is exactly what moves when someone edits the config.
    """
    if not config.enabled:
        return []
    errors: list[str] = []
    for kind, names, slots, limit in (("models", list(model_names), config.models, MODEL_SLOTS),
                                      ("devices", list(device_names), config.devices, DEVICE_SLOTS)):
        for name in slots:
            if name not in names:
                errors.append(f"modbus_server.{kind}.{name}: {name!r} is not a configured "
                              f"{kind[:-1]} (one of {', '.join(names) or 'none'})")
        for name in names:
            if name not in slots:
                free = _free_slot(slots, limit)
                hint = f"; add {name} = {free}" if free is not None else ""
                errors.append(f"modbus_server.{kind}: {kind[:-1]} {name!r} has no slot{hint} "
                              "(slots keep the register map stable)")
    return errors

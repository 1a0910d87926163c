"""``[[devices]]`` with ``protocol = "modbus"`` (the default) and their ``[[devices.tags]]``.

Modbus addresses are zero-based protocol (wire) addresses: 40001 in vendor documentation is
``table = "holding", address = 0``. Widths and which orders apply come from the one type
table, ``bridge.core.datatypes``.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from bridge.config.base import Name, NotBool, StrictModel
from bridge.config.checks import check_backoff, check_span, check_valid_range
from bridge.core.datatypes import TYPES, DataTypeName, Order, register_count

__all__ = ["BIT_TABLES", "TABLES", "ModbusDeviceConfig", "ModbusTagConfig", "Table"]

Table = Literal["holding", "input", "coil", "discrete"]
TABLES: tuple[str, ...] = get_args(Table)  # in this order wherever tables are listed
BIT_TABLES = frozenset({"coil", "discrete"})  # one bit per address; the rest are registers


class ModbusTagConfig(StrictModel):
    """One value read from a Modbus device."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    table: Table = "holding"
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataTypeName | None = None
    length: Annotated[int, Field(ge=1, le=125)] | None = None
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    valid_min: float | None = None
    valid_max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_type_options(self) -> ModbusTagConfig:
        kind = self.type
        if self.table in BIT_TABLES:
            if kind not in (None, "bool"):
                raise ValueError(f"type: {kind!r} is not allowed on table {self.table!r} (only 'bool')")
            for key in ("length", "bit", "byte_order", "word_order"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: has no meaning on table {self.table!r}")
            return self
        if kind is None:
            raise ValueError(f"type: required for table {self.table!r}")
        if kind == "bool":
            raise ValueError("type: 'bool' is for coil/discrete tables; "
                             "use 'bit' with bit = N for a bit of a register")
        info = TYPES[kind]
        if kind == "string":
            if self.length is None:
                raise ValueError("length: required for type 'string' "
                                 "(number of registers, 2 characters each)")
        elif self.length is not None:
            raise ValueError(f"length: only valid for type 'string', not {kind!r}")
        if kind == "bit":
            if self.bit is None:
                raise ValueError("bit: required for type 'bit' (0 = least significant)")
        elif self.bit is not None:
            raise ValueError(f"bit: only valid for type 'bit', not {kind!r}")
        if self.word_order is not None and not info.word_order:
            what = "a string (characters are in register order)" if kind == "string" \
                else f"a one-register type ({kind!r})"
            raise ValueError(f"word_order: has no meaning for {what}")
        if not info.numeric and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"scale/offset: have no meaning for type {kind!r}")
        check_span(self.address, self.registers, self.name)
        check_valid_range(self.valid_min, self.valid_max)
        return self

    @property
    def registers(self) -> int:
        """Registers (or bits, for coil/discrete) this tag occupies."""
        return register_count(self.data_type, self.length)

    @property
    def data_type(self) -> str:
        return self.type or "bool"


class ModbusDeviceConfig(StrictModel):
    """One Modbus device: a unit id behind a TCP endpoint or on a serial line."""

    name: Name
    protocol: Literal["modbus"] = "modbus"
    transport: Literal["tcp", "rtu", "rtu-over-tcp"] = "tcp"
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    serial_port: str | None = None
    baudrate: Annotated[int, Field(ge=300, le=921600)] = 19200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Annotated[Literal[1, 2], NotBool] = 1
    bytesize: Annotated[Literal[7, 8], NotBool] = 8
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    poll_interval: Annotated[float, Field(gt=0, le=86400)] = 1.0
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    max_gap: Annotated[int, Field(ge=0, le=124)] = 8
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    inter_request_delay_ms: Annotated[float, Field(ge=0, le=10000)] = 0.0
    reconnect_min: Annotated[float, Field(gt=0, le=600)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    byte_order: Order = "big"
    word_order: Order = "big"
    tags: list[ModbusTagConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_transport(self) -> ModbusDeviceConfig:
        check_backoff(self.reconnect_min, self.reconnect_max)
        if self.transport == "rtu":
            if not self.serial_port:
                raise ValueError("serial_port: required for transport 'rtu'")
            if self.host is not None:
                raise ValueError("host: has no meaning for transport 'rtu' (use serial_port)")
        else:
            if not self.host:
                raise ValueError(f"host: required for transport {self.transport!r}")
            if self.serial_port is not None:
                raise ValueError(f"serial_port: has no meaning for transport {self.transport!r}")
        return self

    @property
    def line(self) -> str:
        """Identity of the physical connection; devices on the same line share one client."""
        if self.transport == "rtu":
            return f"rtu:{self.serial_port}"
        return f"{self.transport}:{self.host}:{self.port}"

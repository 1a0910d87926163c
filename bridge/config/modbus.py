"""``[[devices]]`` with ``protocol = "modbus"`` (the default) and their ``[[devices.tags]]``.

Modbus addresses are zero-based protocol (wire) addresses: 40001 in vendor documentation is
``table = "holding", address = 0``. Vendor notation is accepted only under its own key,
``register = "40001"`` (or ``"4x00001"``), so a number is never read two ways; a plain
``address`` that looks like vendor notation gets a warning (``addressing_warnings``). A
device documented one-based sets ``address_offset = -1``. Widths and which orders apply
come from the one type table, ``bridge.core.datatypes``.
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from bridge.config.base import Name, NotBool, StrictModel
from bridge.config.checks import check_backoff, check_span, check_valid_range
from bridge.core.datatypes import TYPES, DataTypeName, Order, register_count

__all__ = ["BIT_TABLES", "TABLES", "ModbusDeviceConfig", "ModbusTagConfig", "Table",
           "addressing_warnings", "parse_register", "vendor_register"]

Table = Literal["holding", "input", "coil", "discrete"]
TABLES: tuple[str, ...] = get_args(Table)  # in this order wherever tables are listed
BIT_TABLES = frozenset({"coil", "discrete"})  # one bit per address; the rest are registers

# Vendor ("Modicon") notation: the first digit names the table, the rest is one-based.
_PREFIX_TABLE: dict[str, Table] = {"0": "coil", "1": "discrete", "3": "input", "4": "holding"}
_TABLE_PREFIX: dict[str, str] = {table: prefix for prefix, table in _PREFIX_TABLE.items()}
_VENDOR = re.compile(r"^([0134])(?:[xX](\d{1,5})|(\d{4,5}))$")


def parse_register(text: str) -> tuple[Table, int]:
    """Vendor notation -> (table, zero-based address): "40001" and "400001" and "4x00001" ->
    ("holding", 0); "30010" -> ("input", 9); "00001" coil 0; "10001" discrete 0. Five digits
    reach register 9999, six digits or the "4x" form reach 65536. Raises ValueError."""
    found = _VENDOR.match(text.strip())
    if found is None:
        hint = (" (IEC %M/%I addresses differ by vendor: use table and address)"
                if text.strip().startswith("%") else "")
        raise ValueError(f"{text!r} is not vendor notation: 5 or 6 digits whose first digit is "
                         f"the table (0 coil, 1 discrete input, 3 input, 4 holding), e.g. "
                         f"'40001', '400001' or '4x00001'{hint}")
    prefix, x_form, digits = found.groups()
    number = int(x_form or digits)
    if not 1 <= number <= 65536:
        raise ValueError(f"{text!r}: register numbers in vendor notation run from 1 to 65536 "
                         f"(one-based: {prefix}0001 is address 0)")
    return _PREFIX_TABLE[prefix], number - 1


def vendor_register(table: str, address: int) -> str:
    """(table, zero-based address) -> vendor notation, six digits beyond 9999: the inverse of
    ``parse_register``, for printing."""
    number = address + 1
    return f"{_TABLE_PREFIX[table]}{number:04d}" if number <= 9999 else f"{_TABLE_PREFIX[table]}{number:05d}"


# ``register`` is the key operators know from vendor manuals; it shadows only ABCMeta.register
# (a class method of every pydantic model, never called on a tag), which pydantic warns about.
warnings.filterwarnings("ignore", message='Field name "register" in "ModbusTagConfig" shadows',
                        category=UserWarning)


class ModbusTagConfig(StrictModel):
    """One value read from a Modbus device."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    table: Table = "holding"
    address: Annotated[int, Field(ge=0, le=65535)]
    register: str | None = None  # vendor notation; sets table and address (see _from_register)
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

    @model_validator(mode="before")
    @classmethod
    def _from_register(cls, data: Any) -> Any:
        """``register = "40001"`` -> table and zero-based address, before anything else is
        checked; giving ``address`` too, or a table the notation contradicts, is an error."""
        if not isinstance(data, dict) or data.get("register") is None:
            return data
        text = data["register"]
        if not isinstance(text, str):
            raise ValueError(f"register: write vendor notation as a string, register = \"{text}\" "
                             "(a leading 0 of a coil number would be lost otherwise)")
        if "address" in data:
            raise ValueError("register: give address (zero-based) or register (vendor notation), "
                             "not both")
        table, address = parse_register(text)
        if data.get("table", table) != table:
            raise ValueError(f"register: {text!r} is {'an' if table == 'input' else 'a'} {table} "
                             f"register, but table = "
                             f"{data['table']!r}")
        return {**data, "table": table, "address": address}

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
    address_offset: Annotated[int, Field(ge=-1, le=0)] = 0  # -1: documented one-based
    poll_interval: Annotated[float, Field(gt=0, le=86400)] = 1.0
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    max_gap: Annotated[int, Field(ge=0, le=124)] = 8
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    inter_request_delay_ms: Annotated[float, Field(ge=0, le=10000)] = 0.0
    # Seconds before address ranges learned to be unreadable (a merged read answered with
    # exception 2/3 and bisected) are forgotten and read merged again.
    hole_retry: Annotated[float, Field(gt=0, le=86400)] = 600.0
    # Per-unit circuit breaker: after this many polls in a row the unit did not answer
    # (timeout, or gateway exception 10/11) it is only probed, on a backoff; 0 = off.
    breaker_after: Annotated[int, Field(ge=0, le=1000)] = 3
    # "persistent" keeps the connection open; "per_cycle" closes it after every poll, for
    # gateways that accept one master at a time.
    connection: Literal["persistent", "per_cycle"] = "persistent"
    # Seconds to wait after connecting before the first request (gateways that need it).
    connect_delay: Annotated[float, Field(ge=0, le=60)] = 0.0
    # Seconds without a successful poll after which the device is flagged stale and its
    # tags' last values turn bad ("stale"); None: flag only, after three poll intervals.
    stale_after: Annotated[float, Field(gt=0, le=86400)] | None = None
    # Write-back requests: fc16 (write multiple registers) or fc06 (one register per request,
    # for devices that refuse FC16; a 32-bit value then takes two requests).
    write_function: Literal["fc16", "fc06"] = "fc16"
    # Read written registers back (FC3) and count/audit a mismatch.
    write_verify: bool = False
    reconnect_min: Annotated[float, Field(gt=0, le=600)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    byte_order: Order = "big"
    word_order: Order = "big"
    tags: list[ModbusTagConfig] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _apply_address_offset(cls, data: Any) -> Any:
        """``address_offset`` is added to every tag's plain ``address`` before the tag is
        checked, so the adapter only ever sees protocol addresses. Vendor notation
        (``register``) is one-based by definition and is not shifted."""
        if not isinstance(data, dict):
            return data
        shift = data.get("address_offset", 0)
        tags = data.get("tags")
        if not isinstance(shift, int) or isinstance(shift, bool) or shift not in (-1,) \
                or not isinstance(tags, list):
            return data
        shifted = []
        for index, tag in enumerate(tags):
            address = tag.get("address") if isinstance(tag, dict) else None
            if isinstance(address, int) and not isinstance(address, bool) \
                    and tag.get("register") is None:
                if not 0 <= address + shift <= 65535:
                    raise ValueError(f"tags[{index}].address: {address} with address_offset "
                                     f"{shift} is protocol address {address + shift}, outside "
                                     "0..65535")
                tag = {**tag, "address": address + shift}
            shifted.append(tag)
        return {**data, "tags": shifted}

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


def addressing_warnings(device: ModbusDeviceConfig, where: str) -> list[str]:
    """One line per plain ``address`` that looks like vendor notation (40001 on a holding
    tag is accepted as protocol address 40001, which is rarely what the manual meant).
    Warnings, not errors: large devices do serve such addresses. ``where`` is the device's
    key path, e.g. ``devices[0]``."""
    lines = []
    for index, tag in enumerate(device.tags):
        if tag.register is not None or tag.table not in _TABLE_PREFIX:
            continue
        configured = tag.address - device.address_offset
        prefix = _TABLE_PREFIX[tag.table]
        for digits in (5, 6):
            first = int(prefix) * 10 ** (digits - 1)
            if first > 0 and first < configured < first + 10 ** (digits - 1):
                meant = configured - first - 1
                lines.append(
                    f"{where}.tags[{index}].address: {configured} on table "
                    f"{tag.table!r} looks like vendor notation; it is read as protocol address "
                    f"{tag.address}. If the manual says {configured}, write register = "
                    f"\"{configured}\" (address {meant}) or address = {meant}")
                break
    return lines

"""The register map plcbridge's own Modbus server serves, as data: one table for the server
(``adapters.modbus.server`` encodes each field as its kind says, saturating) and for people
(``plcbridge registers``).

Pure Python: no pymodbus, so printing the map never needs the server's dependencies.

Layout (offsets from ``[modbus_server] base_address``; the same image is served as input
registers, FC 4, and as read-only holding registers, FC 3, because SCADA drivers differ in
which one they can poll):

=============  ============================================================================
0 .. 9         header: layout version, alive counter, uptime, counts
100 + 10 * s   device slot s (0..89): connected, errors, polls, latency, age of last success
1000 + 20 * s  model slot s (0..99): score, threshold, anomaly, window valid, heartbeat, ...
=============  ============================================================================

Words inside a block that no field uses read as 0 (reserved for later fields); slots that no
model or device uses are not served at all (exception 2), so a wrong slot fails loudly.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridge.config import DEFAULT_MODEL, Config
from bridge.config.servers import (
    DEVICE_BLOCK,
    DEVICE_START,
    HEADER_WORDS,
    MODEL_BLOCK,
    MODEL_START,
    ModbusServerConfig,
)
from bridge.core.datatypes import TYPES

__all__ = [
    "LAYOUT_VERSION",
    "RegisterRow",
    "format_register_table",
    "model_fingerprint",
    "register_map",
    "registers_command",
]

LAYOUT_VERSION = 1

Kind = Literal["uint16", "uint32", "float32"]


@dataclass(frozen=True, slots=True)
class FieldDef:
    offset: int  # from the start of its block
    key: str
    kind: Kind
    description: str


HEADER_FIELDS: tuple[FieldDef, ...] = (
    FieldDef(0, "layout_version", "uint16",
             f"register map layout version ({LAYOUT_VERSION}); changes only if addresses move"),
    FieldDef(1, "alive", "uint16", "+1 every refresh_interval while plcbridge runs; wraps to 0"),
    FieldDef(2, "uptime", "uint32", "seconds since plcbridge started"),
    FieldDef(4, "models", "uint16", "number of models served"),
    FieldDef(5, "devices", "uint16", "number of devices served"),
)
DEVICE_FIELDS: tuple[FieldDef, ...] = (
    FieldDef(0, "connected", "uint16", "1 = the last poll reached the device"),
    FieldDef(1, "errors", "uint32", "failed polls and unusable values since start"),
    FieldDef(3, "polls", "uint32", "polls since start"),
    FieldDef(5, "poll_latency_ms", "uint16", "last good poll, ms (0 = none yet; max 65535)"),
    FieldDef(6, "last_success_age_s", "uint16", "seconds since the last good poll (65535 = never/longer)"),
)
MODEL_FIELDS: tuple[FieldDef, ...] = (
    FieldDef(0, "score", "float32", "anomaly score of the latest window; NaN if not scored"),
    FieldDef(2, "threshold", "float32", "anomalous at or above this score"),
    FieldDef(4, "anomaly", "uint16", "1 = the latest window is anomalous"),
    FieldDef(5, "window_valid", "uint16", "1 = the latest window was scored (0: bad/stale input)"),
    FieldDef(6, "heartbeat", "uint16", "+1 per scoring cycle; wraps to 0"),
    FieldDef(7, "model_version", "uint16", "first 16 bits of the model file's SHA-256"),
    FieldDef(8, "score_time", "uint32", "UTC epoch seconds of the latest window's last sample"),
    FieldDef(10, "windows_scored", "uint32", "windows scored since start"),
    FieldDef(12, "anomalies", "uint32", "windows scored anomalous since start"),
)


@dataclass(frozen=True, slots=True)
class RegisterRow:
    address: int  # zero-based protocol address (what goes on the wire)
    words: int
    kind: Kind
    name: str  # "header.uptime", "device.plant.connected", "model.pump.score"
    description: str
    order: str = ""  # "ABCD" / "CDAB" for 32-bit values

    @property
    def type(self) -> str:
        return f"{self.kind} {self.order}".strip()


def _rows(start: int, prefix: str, fields: Iterable[FieldDef], order: str,
          notes: Mapping[str, str] | None = None) -> list[RegisterRow]:
    rows = []
    for f in fields:
        note = (notes or {}).get(f.key)
        words = TYPES[f.kind].registers
        rows.append(RegisterRow(start + f.offset, words, f.kind, f"{prefix}.{f.key}",
                                f"{f.description} ({note})" if note else f.description,
                                order if words == 2 else ""))
    return rows


def header_start(config: ModbusServerConfig) -> int:
    return config.base_address


def device_start(config: ModbusServerConfig, slot: int) -> int:
    return config.base_address + DEVICE_START + DEVICE_BLOCK * slot


def model_start(config: ModbusServerConfig, slot: int) -> int:
    return config.base_address + MODEL_START + MODEL_BLOCK * slot


def register_map(config: ModbusServerConfig, model_names: Iterable[str], device_names: Iterable[str],
                 *, versions: Mapping[str, int] | None = None) -> list[RegisterRow]:
    """Every served value, by address. Names without a slot are left out (config check
    reports them); ``versions`` (model -> fingerprint) only adds the value to the description."""
    order = "ABCD" if config.word_order == "big" else "CDAB"
    rows = _rows(header_start(config), "header", HEADER_FIELDS, order)
    for name in sorted((n for n in device_names if n in config.devices), key=config.devices.__getitem__):
        rows += _rows(device_start(config, config.devices[name]), f"device.{name}", DEVICE_FIELDS, order)
    for name in sorted((n for n in model_names if n in config.models), key=config.models.__getitem__):
        version = (versions or {}).get(name)
        notes = {"model_version": f"now {version} = 0x{version:04x}"} if version is not None else None
        rows += _rows(model_start(config, config.models[name]), f"model.{name}", MODEL_FIELDS, order, notes)
    return rows


def served_blocks(config: ModbusServerConfig) -> list[tuple[int, int]]:
    """(start address, word count) of every block the server answers for."""
    blocks = [(header_start(config), HEADER_WORDS)]
    blocks += [(device_start(config, s), DEVICE_BLOCK) for s in sorted(config.devices.values())]
    blocks += [(model_start(config, s), MODEL_BLOCK) for s in sorted(config.models.values())]
    return blocks


def model_fingerprint(path: Path) -> int:
    """The model_version register: 16 bits of the file's SHA-256, so SCADA sees a model swap."""
    digest = hashlib.sha256(path.read_bytes()).digest()
    return int.from_bytes(digest[:2], "big")


def _notation(address: int, table: int, wide: bool) -> str:
    # Vendor numbering: 30001/40001 + address; six digits once addresses pass 9998.
    return str(table * (100_000 if wide else 10_000) + 1 + address)


def format_register_table(rows: Iterable[RegisterRow]) -> str:
    """A fixed-width table SCADA engineers can copy (one line per value)."""
    rows = list(rows)
    wide = any(r.address + r.words - 1 > 9998 for r in rows)

    def span(r: RegisterRow, table: int | None) -> str:
        last = r.address + r.words - 1
        first_text = str(r.address) if table is None else _notation(r.address, table, wide)
        if r.words == 1:
            return first_text
        return f"{first_text}-{last if table is None else _notation(last, table, wide)}"

    header = ("address", "input (FC4)", "holding (FC3)", "words", "type", "name", "description")
    lines = [(span(r, None), span(r, 3), span(r, 4), str(r.words), r.type, r.name, r.description)
             for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


def registers_command(config: Config) -> int:
    """``plcbridge registers CONFIG``: print the served map; exit status 0."""
    server = config.modbus_server
    versions: dict[str, int] = {}
    for model in config.models:
        path = Path(model.file) if model.file is not None else DEFAULT_MODEL
        # An unreadable file only drops the current value from the description.
        with contextlib.suppress(OSError):
            versions[model.name] = model_fingerprint(path)
    state = "enabled" if server.enabled else "disabled ([modbus_server] enabled = false)"
    order = "ABCD, high word first" if server.word_order == "big" else "CDAB, low word first"
    print(f"Modbus TCP server {server.host}:{server.port} unit {server.unit_id}: {state}")
    print("Zero-based protocol addresses. The same values are served as input registers (FC 4) and as "
          "read-only holding registers (FC 3); writes are refused with exception 2.")
    print(f"32-bit values: word order {order}; bytes in a word big-endian.\n")
    rows = register_map(server, [m.name for m in config.models], [d.name for d in config.devices],
                        versions=versions)
    print(format_register_table(rows))
    missing = [m.name for m in config.models if m.name not in server.models] + \
              [d.name for d in config.devices if d.name not in server.devices]
    if missing:
        print(f"\nnot served (no slot in [modbus_server.models] / [modbus_server.devices]): "
              f"{', '.join(missing)}")
    return 0

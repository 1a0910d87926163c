"""Simulated Modbus devices in their own processes, and the tag layouts the benchmarks poll.

A pymodbus server is the ceiling of any Modbus benchmark here (~6k requests/s per process),
so devices never share the benchmark's process: ``python -m bench._servers --registers N
--units K`` serves K unit ids of N holding registers each on a free loopback port and prints
``PORT <n>``. The server itself is the tests' ``tcp_server`` (one home for datastore code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import select
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

from bench._common import PYTHON, ROOT

__all__ = ["ServerProcess", "fleet_config", "mixed_tags", "register_value", "registers_for", "servers",
           "to_toml"]

PUMP_FEATURES = ("pressure", "flow", "current", "temperature", "vibration")

# (type, registers): a mix of widths and signedness, so decode cost is not that of one type.
_MIX: tuple[tuple[str, int], ...] = (
    ("float32", 2), ("uint16", 1), ("int32", 2), ("int16", 1), ("float64", 4), ("uint32", 2), ("bit", 1),
)


def register_value(address: int) -> int:
    # & 0x3FFF keeps the exponent of any float built on this word finite: every tag decodes good.
    return (address * 37 + 11) & 0x3FFF


def mixed_tags(prefix: str, registers: int, *, max_tags: int | None = None) -> list[dict[str, Any]]:
    """Tags covering holding 0..registers-1 back to back, types cycling through ``_MIX``."""
    tags: list[dict[str, Any]] = []
    address = 0
    index = 0
    while True:
        kind, width = _MIX[index % len(_MIX)]
        if address + width > registers or (max_tags is not None and len(tags) >= max_tags):
            break
        tag: dict[str, Any] = {"name": f"{prefix}.t{index}", "table": "holding", "address": address,
                               "type": kind}
        if kind == "bit":
            tag["bit"] = index % 16
        tags.append(tag)
        address += width
        index += 1
    return tags


def fleet_config(started: list[ServerProcess], tags_per_device: int, *, poll_interval: float = 1.0,
                 model: bool = False, api: bool = True, devices: int | None = None) -> dict[str, Any]:
    """A bridge config polling every unit of ``started`` (or the first ``devices``) at ``poll_interval``.

    With ``model`` the default pump model reads five float32 tags of the first device.
    """
    units = [(server.port, unit) for server in started for unit in server.units][:devices]
    config: dict[str, Any] = {
        "bridge": {"log_level": "info"},
        "api": {"enabled": api, "port": 0},
        "devices": [{"name": f"d{i}", "host": "127.0.0.1", "port": port, "unit_id": unit,
                     "poll_interval": poll_interval, "timeout": 2.0,
                     "tags": mixed_tags(f"d{i}", 10 * tags_per_device, max_tags=tags_per_device)}
                    for i, (port, unit) in enumerate(units)],
    }
    if model:
        floats = [t["name"] for t in config["devices"][0]["tags"] if t["type"] == "float32"]
        if len(floats) < len(PUMP_FEATURES):
            raise ValueError("the pump model needs five float32 tags on the first device")
        config["models"] = [{"name": "pump", "inputs": dict(zip(PUMP_FEATURES, floats, strict=False))}]
    return config


def registers_for(tags_per_device: int) -> int:
    """Holding registers a server needs for ``mixed_tags(..., max_tags=tags_per_device)``."""
    return sum(t["registers"] for t in _widths(tags_per_device))


def _widths(count: int) -> list[dict[str, int]]:
    return [{"registers": _MIX[i % len(_MIX)][1]} for i in range(count)]


def to_toml(data: dict[str, Any]) -> str:
    """Just enough TOML for bridge configs: [sections], [[arrays]] and inline values."""
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {_inline(v)}" for k, v in value.items())
        elif isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {_inline(v)}" for k, v in item.items())
        else:
            raise TypeError(f"top-level {key!r} must be a table or an array of tables")
        lines.append("")
    return "\n".join(lines)


def _inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'{k} = {_inline(v)}' for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


class ServerProcess:
    """One server process; ``port`` is known once the server answers a request."""

    def __init__(self, registers: int, units: int, first_unit: int = 1) -> None:
        self.units = list(range(first_unit, first_unit + units))
        self._process = subprocess.Popen(
            [PYTHON, "-m", "bench._servers", "--port", "0", "--registers", str(registers),
             "--units", str(units), "--first-unit", str(first_unit)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], 30)
        line = self._process.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"bench server did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.pid = self._process.pid

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@contextlib.contextmanager
def servers(processes: int, registers: int, units_each: int) -> Iterator[list[ServerProcess]]:
    """``processes`` server processes started in parallel-ish, stopped on exit."""
    started: list[ServerProcess] = []
    try:
        for _ in range(processes):
            started.append(ServerProcess(registers, units_each))
        yield started
    finally:
        for server in started:
            server.stop()


async def _serve(port: int, registers: int, units: int, first_unit: int) -> None:
    # Imported here: the parent only needs the layout helpers, not pymodbus or the tests.
    from tests.modbus_servers import Unit, tcp_server

    image = {a: register_value(a) for a in range(registers)}
    layout = {uid: Unit(holding=image) for uid in range(first_unit, first_unit + units)}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with tcp_server(layout, port=port) as server:
        print(f"PORT {server.port}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--units", type=int, default=1)
    parser.add_argument("--first-unit", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.first_unit <= args.first_unit + args.units - 1 <= 247:
        parser.error("unit ids must stay within 1..247")
    asyncio.run(_serve(args.port, args.registers, args.units, args.first_unit))


if __name__ == "__main__":
    main()

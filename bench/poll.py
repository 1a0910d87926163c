"""Poll throughput: ``ModbusAdapter.poll()`` vs a raw pymodbus client issuing the same requests.

M devices (unit ids spread over separate server processes) × N holding registers of mixed
types, polled back to back for a fixed time. Three variants run in the same process, in turn:

* raw: one ``AsyncModbusTcpClient`` per server, cycling through its devices' planned requests
  (the bridge's own plan, so both send the same bytes); no decoding.
* bridge: one ``ModbusAdapter`` per device, ``poll()`` into a ``TagStore`` (decode, quality
  checks, the store's columns): the runtime's own path. Devices on one server share a line,
  and one task per line walks them in turn, as the runtime does (``Bridge._walk_line``).
* uncoalesced: the bridge with one request per tag, i.e. without the planner.

Throughput is tag registers delivered per second.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import pstats
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from adapters.modbus.client import ModbusAdapter
from adapters.modbus.plan import ReadRequest
from bench._common import PYTHON, ROOT, Context, Result, Section, profile_rows
from bench._servers import ServerProcess, mixed_tags, servers
from bridge.config import ModbusDeviceConfig
from bridge.core.tags import TagStore

NAME = "poll"
TITLE = "Poll throughput"


def devices_on(servers: Iterable[tuple[int, Iterable[int]]], registers: int) -> list[ModbusDeviceConfig]:
    """One device per (port, unit id), each with ``registers`` holding registers of mixed tags."""
    devices = []
    for port, units in servers:
        for unit in units:
            name = f"s{port}u{unit}"
            devices.append(ModbusDeviceConfig.model_validate({
                "name": name, "host": "127.0.0.1", "port": port, "unit_id": unit,
                "timeout": 5.0, "retries": 0, "tags": mixed_tags(name, registers)}))
    return devices


def _devices(started: list[ServerProcess], registers: int) -> list[ModbusDeviceConfig]:
    return devices_on([(server.port, server.units) for server in started], registers)


def _unplanned(adapter: ModbusAdapter) -> list[ReadRequest]:
    # What a bridge without a planner does: one request per tag.
    return [ReadRequest(tag.table, tag.address, tag.registers, ((tag, 0),)) for tag in adapter.config.tags]


async def _timed(workers: list[Callable[[float], Awaitable[int]]], seconds: float) -> float:
    """Run workers until the deadline; registers per second over the real elapsed time."""
    started = time.perf_counter()
    deadline = started + seconds
    counts = await asyncio.gather(*(worker(deadline) for worker in workers))
    return sum(counts) / (time.perf_counter() - started)


async def _bridge_rate(adapters: list[ModbusAdapter], seconds: float) -> float:
    store = TagStore([tag.name for adapter in adapters for tag in adapter.config.tags])
    lines = by_server(adapters)  # one line per server, as the runtime groups them

    def worker(members: list[ModbusAdapter]) -> Callable[[float], Awaitable[int]]:
        per_read = [sum(tag.registers for tag in adapter.config.tags) for adapter in members]

        async def run(deadline: float) -> int:
            done = 0
            while time.perf_counter() < deadline:
                for adapter, registers in zip(members, per_read, strict=True):
                    store.put_many(await adapter.poll())
                    done += registers
            for adapter in members:
                latest = store.latest(adapter.config.tags[0].name)
                if adapter.status.errors or latest is None or latest.quality.value != "good":
                    raise RuntimeError(f"{adapter.name}: {adapter.status.last_error or latest}")
            return done
        return run

    return await _timed([worker(m) for m in lines.values()], seconds)


def by_server(adapters: list[ModbusAdapter]) -> dict[int, list[ModbusAdapter]]:
    """The adapters of each server port (one line each), in order."""
    found: dict[int, list[ModbusAdapter]] = {}
    for adapter in adapters:
        found.setdefault(adapter.config.port, []).append(adapter)
    return found


async def raw_clients(ports: Iterable[int]) -> dict[int, Any]:
    """One connected bare pymodbus client per server port: the raw baseline's."""
    from pymodbus.client import AsyncModbusTcpClient

    clients = {port: AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0)
               for port in ports}
    for client in clients.values():
        await client.connect()
    return clients


async def _raw_rate(adapters: list[ModbusAdapter], seconds: float) -> float:
    by_port = by_server(adapters)
    clients = await raw_clients(by_port)

    def worker(port: int) -> Callable[[float], Awaitable[int]]:
        client, members = clients[port], by_port[port]
        jobs = [(a.config.unit_id, r.address, r.count) for a in members for r in a.plan]

        async def run(deadline: float) -> int:
            done = 0
            while time.perf_counter() < deadline:
                for unit, address, count in jobs:
                    response = await client.read_holding_registers(address, count=count, device_id=unit)
                    if response.isError():
                        raise RuntimeError(f"raw read failed: {response}")
                    done += count
            return done
        return run

    try:
        return await _timed([worker(p) for p in clients], seconds)
    finally:
        for client in clients.values():
            client.close()


async def _measure(devices: list[ModbusDeviceConfig], seconds: float, rounds: int) -> dict[str, Any]:
    adapters = [ModbusAdapter(d) for d in devices]
    plain = [ModbusAdapter(d) for d in devices]
    for adapter in plain:
        adapter.plan = _unplanned(adapter)
    try:
        for adapter in adapters + plain:
            await adapter.connect()
        await _bridge_rate(adapters, 0.2)  # warm up: connections, first allocations
        best = {"raw": 0.0, "bridge": 0.0, "uncoalesced": 0.0}
        # Interleaved rounds, best of each: background noise only ever slows a variant down.
        for _ in range(rounds):
            best["raw"] = max(best["raw"], await _raw_rate(adapters, seconds))
            best["bridge"] = max(best["bridge"], await _bridge_rate(adapters, seconds))
            best["uncoalesced"] = max(best["uncoalesced"], await _bridge_rate(plain, seconds))
        return {**best, "requests": len(adapters[0].plan), "requests_unplanned": len(plain[0].plan),
                "tags": len(devices[0].tags)}
    finally:
        for adapter in adapters + plain:
            await adapter.close()


def _profile(devices: list[ModbusDeviceConfig], seconds: float) -> list[str]:
    """Top functions by own time while the bridge polls back to back."""
    profiler = cProfile.Profile()

    async def go() -> None:
        adapters = [ModbusAdapter(d) for d in devices]
        for adapter in adapters:
            await adapter.connect()
        profiler.enable()
        await _bridge_rate(adapters, seconds)
        profiler.disable()
        for adapter in adapters:
            await adapter.close()

    asyncio.run(go())
    return profile_rows(pstats.Stats(profiler, stream=io.StringIO()))


def _callgrind(variant: str, started: list[ServerProcess], registers: int) -> float:
    """Instructions per request of one variant (``bench._instructions``), counted by callgrind
    between the child's READY and DONE."""
    spec = json.dumps([[server.port, server.units] for server in started])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        child = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             PYTHON, "-m", "bench._instructions", variant, spec, str(registers)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None

        def step(expect: str, control: str) -> None:
            line = child.stdout.readline().strip()  # type: ignore[union-attr]
            if line != expect:
                child.kill()
                why = child.communicate()[1][-2000:]
                raise RuntimeError(f"instructions child ({variant}): {line!r}; {why}")
            subprocess.run(["callgrind_control", "-i", control, str(child.pid)], check=True,
                           capture_output=True, timeout=60)
            child.stdin.write("\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]

        try:
            step("READY", "on")
            step("DONE", "off")
            requests = int(child.stdout.readline())
            child.wait(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        totals = [line for line in out.read_text().splitlines() if line.startswith("totals:")]
    return int(totals[0].split()[1]) / requests


def _instructions(section: Section, configs: list[tuple[int, int]]) -> None:
    """Instructions per request, bridge against raw: the CPU each side spends, free of the
    run-to-run noise of wall-clock rates (see ``bench._instructions``)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        section.notes.append("Instructions per request: skipped (valgrind not installed; "
                             "`apt-get install valgrind`).")
        return
    for count, registers in configs:
        processes, units = _layout(count)
        with servers(processes, registers, units) as started:
            raw = _callgrind("raw", started, registers)
            bridge = _callgrind("bridge", started, registers)
        section.results.append(Result(
            f"instructions per request, {count} dev × {registers} reg", round(bridge), "instructions",
            round(raw), "raw pymodbus, same requests (callgrind)", higher_is_better=False,
            params={"devices": count, "registers": registers, "server_processes": processes}))
    section.notes.append(
        "Instructions per request: user-space instructions of the polling process per Modbus "
        "request, counted by callgrind over ~2,000 requests after a warm-up (servers uncounted); "
        "ratio = raw / bridge, so > 1 means the bridge does less work per request than the raw "
        "client. Unlike the rates above it does not move with the load on the box.")


def _layout(devices: int) -> tuple[int, int]:
    """(server processes, units each): spread load so the server is not the only limit."""
    processes = 1 if devices == 1 else 2 if devices <= 10 else 4
    return processes, devices // processes


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    seconds = ctx.pick(0.6, 2.5, smoke=0.2)
    rounds = ctx.pick(1, 2)
    configs = ctx.pick([(1, 100), (1, 1000), (10, 100), (10, 1000), (100, 100)],
                       [(m, n) for m in (1, 10, 100) for n in (100, 1000)], smoke=[(1, 100)])
    for count, registers in configs:
        processes, units = _layout(count)
        with servers(processes, registers, units) as started:
            m = asyncio.run(_measure(_devices(started, registers), seconds, rounds))
        params = {"devices": count, "registers": registers, "tags_per_device": m["tags"],
                  "requests_per_poll": m["requests"], "server_processes": processes}
        section.results.append(Result(
            f"registers/s, {count} dev × {registers} reg", round(m["bridge"]), "registers/s",
            round(m["raw"]), "raw pymodbus, same requests", params=params))
        section.results.append(Result(
            f"planner gain, {count} dev × {registers} reg", round(m["bridge"]), "registers/s",
            round(m["uncoalesced"]), f"bridge, 1 request per tag ({m['requests_unplanned']}/poll)",
            params=params))
    if not ctx.smoke:
        with servers(1, 1000, 1) as started:
            section.profile = _profile(_devices(started, 1000), ctx.pick(0.5, 2.0))
    if not ctx.quick:
        _instructions(section, [(1, 100), (10, 100), (100, 100)])
    if ctx.quick:
        section.notes.append("Quick mode skips 100 devices × 1,000 registers (its 1-request-per-tag "
                             "variant alone takes seconds per poll); the full run has it.")
    section.notes.append("Target: ratio ≥ 0.8 of raw registers/s. Best of "
                         f"{rounds} interleaved round(s) of {seconds:g} s per variant.")
    return section

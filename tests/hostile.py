"""Shared pieces of the hostile-input tests (tests/test_hostile_*.py): a real bridge polling
the simulated plant with its Modbus and OPC UA server sinks and its uvicorn API on port 0,
process figures (descriptors, RSS), a subprocess that floods a port with idle connections,
and the liveness check every attack test ends with: through GET /api/v1/health the bridge
is still polling and scoring.

FUZZ_CASES (environment) scales the fuzz targets: a few hundred cases per target in
``make test``, as many as asked for under ``make fuzz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.modbus.server import ModbusServerSink
from adapters.opcua.server import OpcuaServerSink
from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.api.serve import ApiServer
from bridge.cli.demo import DEMO_TOML
from bridge.config import parse_config
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.config.servers import ModbusServerConfig
from bridge.runtime.bridge import Bridge
from tests.waiting import until

__all__ = ["FUZZ_CASES", "Flood", "Plant", "assert_alive", "check_fuzz_outcome", "descriptors",
           "hostile_plant", "rss_mb"]

FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "300"))
SPEED = 10.0


def descriptors() -> int:
    """Open file descriptors of this process (the bridge's side of every socket)."""
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    """Resident set size of this process in MB (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Plant:
    sim: SimulatorHandle
    bridge: Bridge
    api: ApiServer
    http: httpx.AsyncClient
    modbus: ModbusServerSink | None
    opcua: OpcuaServerSink | None
    config: dict[str, Any]  # the TOML data the bridge was built from (a restart rebuilds it)


@contextlib.asynccontextmanager
async def hostile_plant(*, modbus: dict[str, Any] | None = None, opcua: dict[str, Any] | None = None,
                        api: dict[str, Any] | None = None, data_dir: Path | None = None,
                        ) -> AsyncIterator[Plant]:
    """The demo bridge at 10x with the sinks asked for (their options), its API on a free port."""
    # The sinks first: a bad option fails before anything runs.
    modbus_sink = opcua_sink = None
    if modbus is not None:
        modbus_sink = ModbusServerSink(ModbusServerConfig(
            **({"enabled": True, "port": 0, "models": {"pump": 0}, "devices": {"plant": 0}} | modbus)))
    if opcua is not None:
        opcua_sink = OpcuaServerSink(OpcuaServerConfig.model_validate(
            {"enabled": True, "port": 0, "refresh_interval": 0.1} | opcua))
    sim = await start_simulator("127.0.0.1", 0, seed=5, step=0.01, speed=SPEED)
    data: dict[str, Any] = tomllib.loads(DEMO_TOML.format(port=sim.port))
    data["api"] = {"host": "127.0.0.1", "port": 0} | (api or {})
    if data_dir is not None:
        data.setdefault("storage", {})["data_dir"] = str(data_dir)
    try:
        bridge = Bridge(parse_config(data), speed=SPEED)
    except BaseException:
        await sim.stop()
        raise
    bridge.sinks.extend(s for s in (modbus_sink, opcua_sink) if s is not None)
    server = ApiServer(bridge, "127.0.0.1", 0)
    try:
        await bridge.start()
        await server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            plant = Plant(sim, bridge, server, http, modbus_sink, opcua_sink, data)
            await assert_alive(plant, timeout=20)
            yield plant
    finally:
        await server.stop()
        await bridge.stop()
        await sim.stop()


async def assert_alive(plant: Plant, timeout: float = 5.0) -> None:
    """Through GET /api/v1/health over a new TCP connection: devices connected and the pump
    model scoring a new window within ``timeout`` seconds."""

    async def health() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=plant.api.url, timeout=5) as fresh:
            reply = await fresh.get("/api/v1/health")
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    before = {m["name"]: m["scored"] for m in (await health())["models"]}

    async def progressed() -> bool:
        body = await health()
        scored = {m["name"]: m["scored"] for m in body["models"]}
        return body["status"] == "ok" and scored["pump"] > before["pump"]

    await until(progressed, timeout, "the bridge to poll and score (GET /api/v1/health)", 0.05)


async def check_fuzz_outcome(plant: Plant, target: str, cases: int, failures: list[str],
                             baseline_fds: int, start_rss: float) -> None:
    """The end of every fuzz target: descriptors back to baseline, RSS within 50 MB of the
    start, no failed case, the bridge still polling and scoring. Prints the figures."""
    await until(lambda: descriptors() <= baseline_fds + 2, 10, "descriptors back to baseline")
    grown = rss_mb() - start_rss
    print(f"\n{target} fuzz: {cases} cases, {len(failures)} failures, rss +{grown:.1f} MB")
    assert not failures, failures[:5]
    assert grown < 50
    await assert_alive(plant)


_FLOOD = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(count):
    s = socket.socket()
    s.connect((host, port))
    held.append(s)
print("ready", flush=True)
sys.stdin.read()  # hold every connection, silent, until the test closes stdin
"""


class Flood:
    """``count`` idle TCP connections from another process (its descriptors are not ours)."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Flood:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _FLOOD, "127.0.0.1", str(self.port), str(self.count),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        assert line.strip() == b"ready", line
        return self

    async def __aexit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

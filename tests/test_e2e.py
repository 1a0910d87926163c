"""End to end: simulator → Modbus → bridge → model → REST and register write-back.

Both the simulated plant and the bridge run ``SPEED`` times faster than real time, so a
minute of plant time takes a few seconds here; everything still crosses real TCP sockets.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.api.serve import ApiServer
from bridge.cli.demo import demo_config
from bridge.config import parse_config
from bridge.runtime.bridge import Bridge
from tests.waiting import until

SPEED = 10.0
# The plant steps 0.1 s of plant time every 10 ms; the bridge samples every 1 s of plant time,
# so a sample is never a duplicate or a skip of the plant's own step (as in real time).
pytestmark = pytest.mark.timeout(90)


@pytest_asyncio.fixture
async def plant() -> AsyncIterator[tuple[SimulatorHandle, Bridge, ApiServer]]:
    sim = await start_simulator("127.0.0.1", 0, seed=11, step=0.01, speed=SPEED)
    bridge = Bridge(demo_config(sim.port, api_port=0), speed=SPEED)
    api = ApiServer(bridge, "127.0.0.1", 0)
    await bridge.start()
    await api.start()
    try:
        yield sim, bridge, api
    finally:
        await api.stop()
        await bridge.stop()
        await sim.stop()


def _float32(registers: list[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *registers))[0]
    return value


async def test_normal_operation_then_fault_raises_flag_in_register_and_api(
        plant: tuple[SimulatorHandle, Bridge, ApiServer]) -> None:
    sim, bridge, api = plant
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:
        async def scoring() -> bool:
            response = await http.get("/api/v1/models/pump/score")
            return response.status_code == 200 and response.json()["window_valid"]

        await until(scoring, 20, "a valid window")
        # 60 s of plant time of normal operation: no anomaly in the API or the register.
        heartbeats = set()
        loop = asyncio.get_running_loop()
        end = loop.time() + 60 / SPEED
        while loop.time() < end:
            score = (await http.get("/api/v1/models/pump/score")).json()
            assert score["anomaly"] is False, score
            assert sim.holding(102, 1) == [0]
            heartbeats.add(sim.holding(103, 1)[0])
            await asyncio.sleep(0.1)
        assert len(heartbeats) > 10, "heartbeat register is not counting"
        assert sim.holding(104, 1) == [1]
        written = _float32(sim.holding(100, 2))
        assert 0 < written < score["threshold"]
        normal_scored = bridge.runners["pump"].scored

        await sim.inject("cavitation")
        injected = loop.time()

        async def flagged() -> bool:
            api_flag = (await http.get("/api/v1/models/pump/score")).json()["anomaly"]
            return bool(api_flag) and sim.holding(102, 1) == [1]

        await until(flagged, 30 / SPEED + 5, "the anomaly flag in register 102 and the API")
        delay_plant_s = (loop.time() - injected) * SPEED
        assert delay_plant_s < 30 + 5 * SPEED
        assert _float32(sim.holding(100, 2)) >= score["threshold"]
        events = (await http.get("/api/v1/events")).json()
        assert events[-1]["kind"] == "anomaly-start" and events[-1]["model"] == "pump"
        assert normal_scored >= 50


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.serial  # counts polls in a fixed 2 s span
async def test_dead_device_does_not_slow_the_live_one() -> None:
    sim = await start_simulator("127.0.0.1", 0, seed=3)
    tags = '[[devices.tags]]\nname = "{n}"\ntable = "input"\naddress = 0\ntype = "float32"\n'
    import tomllib
    text = (f'[[devices]]\nname = "live"\nhost = "127.0.0.1"\nport = {sim.port}\npoll_interval = 0.05\n'
            + tags.format(n="live_p")
            + f'[[devices]]\nname = "dead"\nhost = "127.0.0.1"\nport = {_dead_port()}\n'
            'poll_interval = 0.05\ntimeout = 0.5\nretries = 2\n'
            + tags.format(n="dead_p"))
    bridge = Bridge(parse_config(tomllib.loads(text) | {"api": {"enabled": False}}))
    try:
        await bridge.start()
        await asyncio.sleep(2.0)  # measuring a rate over a fixed span, not waiting for a state
        live = bridge.adapters["live"].status
        dead = bridge.adapters["dead"].status
        # 2 s at 50 ms: 40 polls if nothing interferes; the dead device must not take them.
        assert live.polls >= 30, live
        assert live.error_count == 0
        assert not dead.connected and dead.error_count >= 1
        latest = bridge.store.latest("dead_p")
        assert latest is not None and latest.quality.value == "bad" and latest.reason
        assert bridge.store.latest("live_p").quality.value == "good"  # type: ignore[union-attr]
    finally:
        await bridge.stop()
        await sim.stop()

"""Write-back to OPC UA nodes: the same rules as registers, values in the nodes' DataTypes."""

from __future__ import annotations

import tomllib

import pytest

from adapters.sim.modbus import start_simulator
from bridge.cli.demo import DEMO_TOML
from bridge.config import parse_config
from bridge.runtime.bridge import Bridge
from tests.opcua_servers import OpcuaTestServer
from tests.waiting import until

SPEED = 10.0
pytestmark = pytest.mark.timeout(60)


async def test_scores_reach_opcua_nodes_and_the_fault_raises_the_flag() -> None:
    sim = await start_simulator("127.0.0.1", 0, seed=41, step=0.01, speed=SPEED)
    plc = await OpcuaTestServer().start()
    try:
        data = tomllib.loads(DEMO_TOML.format(port=sim.port))
        data["api"] = {"enabled": False}
        data["devices"].append({"name": "plc", "protocol": "opcua", "endpoint": plc.url,
                                "mode": "poll", "poll_interval": 1.0,
                                "tags": [{"name": "plc.p", "node_id": plc.node_id("pressure")}]})
        data["models"][0]["writeback"] = {
            "device": "plc",
            "score": {"node_id": plc.node_id("score")},
            "anomaly": {"node_id": plc.node_id("anomaly")},
            "heartbeat": {"node_id": plc.node_id("heartbeat"), "max": 65535},
        }
        bridge = Bridge(parse_config(data), speed=SPEED)
        await bridge.start()
        try:
            async def value(name: str) -> object:
                return await plc.nodes[name].read_value()

            async def beating() -> bool:
                return int(await value("heartbeat")) > 3  # type: ignore[call-overload]

            await until(beating, 30, "the heartbeat node to count")

            async def scored() -> bool:
                latest = bridge.scores.latest("pump")
                return latest is not None and latest.window_valid and \
                    float(await value("score")) > 0  # type: ignore[arg-type]

            await until(scored, 30, "a score in the score node")
            assert await value("anomaly") is False
            assert 0 < float(await value("score")) < 1  # type: ignore[arg-type]
            await sim.inject("cavitation")

            async def flagged() -> bool:
                return await value("anomaly") is True

            await until(flagged, 10, "the anomaly node to turn true")
            assert float(await value("score")) >= 1  # type: ignore[arg-type]
            stats = bridge.writebacks["pump"].stats
            assert stats.written > 0 and stats.failed == 0 and stats.refused == 0
        finally:
            await bridge.stop()
    finally:
        await plc.stop()
        await sim.stop()

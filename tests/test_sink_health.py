"""The Sparkplug B and fleet sinks' counters in GET /api/v1/health (typed: SparkplugStatus,
FleetStatus), checked against what a real mosquitto carried: the Tahu node host's decoded
messages (bdSeq, seq, message counts) and a tap on every fleet topic; then through a broker
outage (disconnected with the error, data spooled, a new session after it)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.api.app import create_app
from bridge.api.schemas import FleetLiveStats, FleetStatus, SparkplugStatus
from bridge.cli.demo import demo_config
from bridge.config.fleet import FleetConfig
from bridge.config.sparkplug import SparkplugConfig
from bridge.runtime.bridge import Bridge
from bridge.sinks.fleet import FleetStats
from bridge.sinks.sparkplug import SparkplugStats
from tests.mqtt_broker import MOSQUITTO, Broker
from tests.test_fleet import PREFIX, Tap
from tests.test_sparkplug import EDGE, GROUP, Host, broker, host, needs_peers
from tests.waiting import until

__all__ = ["broker", "host"]  # the fixtures, shared with tests/test_sparkplug.py

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")

SPEED = 10.0


def test_the_health_blocks_have_every_counter_of_their_sinks() -> None:
    # The blocks ignore keys they do not know (a new counter must not break /health): this
    # is where a counter added to a sink without a field in its block is noticed.
    names = {f.name for f in dataclasses.fields(SparkplugStats)}
    assert set(SparkplugStatus.model_fields) == names | {"broker", "group_id", "edge_node_id"}
    names = {f.name for f in dataclasses.fields(FleetStats)}
    assert set(FleetStatus.model_fields) == names | {"broker", "topic_prefix", "bridge_id", "results",
                                                     "models", "live_stats"}
    from bridge.sinks.fleet_stats import LiveStats

    figures = LiveStats("pump", ("a",), 4, 1.0, None).figures()
    assert set(FleetLiveStats.model_fields) == set(figures)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    handle = await start_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=SPEED)
    try:
        yield handle
    finally:
        await handle.stop()


def _bridge(tmp_path: Path, sim_port: int, broker_port: int) -> Bridge:
    config = demo_config(sim_port, api_port=0)
    fast = {"reconnect_min": 0.1, "reconnect_max": 0.5}
    config = config.model_copy(update={
        "storage": config.storage.model_copy(update={"data_dir": tmp_path / "data"}),
        "sparkplug": SparkplugConfig.model_validate({
            "host": "127.0.0.1", "port": broker_port, "group_id": GROUP, "edge_node_id": EDGE,
            "spool_dir": tmp_path / "spool", "keepalive": 5, **fast}),
        "fleet": FleetConfig(host="127.0.0.1", port=broker_port, bridge_id="b0", live_stats=True, **fast)})
    return Bridge(config, speed=SPEED)


async def _health(client: httpx.AsyncClient) -> dict[str, Any]:
    reply = await client.get("/api/v1/health")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def _request_stats(port: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"health-test-{os.getpid()}") as client:
        await client.publish(f"{PREFIX}/pump/request-stats", b"{}", qos=1)


@needs_peers
@pytest.mark.timeout(30)
async def test_health_counters_match_what_the_broker_carried(
        broker: Broker, host: Host, sim: SimulatorHandle, tmp_path: Path) -> None:
    bridge = _bridge(tmp_path, sim.port, broker.port)
    tap = Tap(broker.port)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(bridge)), base_url="http://bridge")
    try:
        await tap.start()
        await bridge.start()
        await until(lambda: host.scored("Models/pump/Score"), 15, "a model score in DDATA")

        async def counted() -> bool:
            live = (await _health(client))["fleet"]["live_stats"]
            return live.get("pump", {}).get("windows", 0) >= 3
        await until(counted, 15, "live statistics")
        await _request_stats(broker.port)
        await until(lambda: tap.latest(f"{PREFIX}/pump/stats/b0") is not None, 5, "the statistics")

        running = await _health(client)
        sp, fleet = running["sparkplug"], running["fleet"]
        nbirth = host.of("NBIRTH")
        assert sp["connected"] and sp["births"] == 1 and len(nbirth) == 1
        assert sp["bdseq"] == nbirth[0]["payload"]["metrics"][0]["value"]  # the NBIRTH's bdSeq
        assert (sp["broker"], sp["group_id"], sp["edge_node_id"]) == (f"127.0.0.1:{broker.port}", GROUP, EDGE)
        assert fleet["connected"] and fleet["bridge_id"] == "b0" and fleet["connects"] == 1
        # What the fleet member sent: its status and the statistics asked for, each acknowledged.
        mine = [t for t, _ in tap.messages if t.endswith("/b0") and t.startswith(PREFIX)]
        assert mine == [f"{PREFIX}/status/b0", f"{PREFIX}/pump/stats/b0"], mine
        assert fleet["published"] == 2 and fleet["stats_published"] == 1
        stats = json.loads(tap.latest(f"{PREFIX}/pump/stats/b0") or b"{}")
        assert fleet["live_stats"]["pump"]["windows"] >= stats["window_means"]["count"] >= 3
        assert fleet["last_error"] is None and sp["last_error"] is None
    finally:
        await bridge.stop()
        await tap.stop()
    # Stopped, so nothing more comes: every NBIRTH, DBIRTH, DDATA and DDEATH the sink counted
    # was decoded by Tahu, and the last sequence number it gave is the last one Tahu saw.
    stopped = (await _health(client))["sparkplug"]
    await client.aclose()
    data = ("NBIRTH", "DBIRTH", "DDATA", "DDEATH")
    await until(lambda: sum(len(host.of(k)) for k in data) >= stopped["published"], 5, "every message")
    assert sum(len(host.of(k)) for k in data) == stopped["published"] > 0
    assert host.node_messages()[-1]["payload"]["seq"] == stopped["seq"]
    print(f"\nhealth vs wire: sparkplug published {stopped['published']} = Tahu decoded, seq "
          f"{stopped['seq']}, bdSeq {stopped['bdseq']}; fleet published {fleet['published']}")


@pytest.mark.timeout(30)
async def test_health_through_a_broker_outage(broker: Broker, sim: SimulatorHandle, tmp_path: Path) -> None:
    bridge = _bridge(tmp_path, sim.port, broker.port)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(bridge)), base_url="http://bridge")
    try:
        await bridge.start()

        async def state(check: Any) -> bool:
            body = await _health(client)
            return bool(check(body["sparkplug"], body["fleet"]))
        await until(lambda: state(lambda sp, fl: sp["connected"] and fl["connected"] and sp["published"] > 0),
                    10, "both sinks connected")
        before = (await _health(client))["sparkplug"]
        await broker.stop()
        await until(lambda: state(lambda sp, fl: not sp["connected"] and not fl["connected"]
                                  and sp["last_error"] and fl["last_error"]), 10, "both sinks down")
        # Scores go on into the spool while the broker is away.
        await until(lambda: state(lambda sp, fl: sp["queued"] > 0), 10, "data queued")
        down = await _health(client)
        assert down["sparkplug"]["last_error_time"] and down["fleet"]["last_error_time"]
        assert down["fleet"]["disconnects"] == 1 and down["sparkplug"]["disconnects"] >= 1
        await broker.start()
        await until(lambda: state(lambda sp, fl: sp["connected"] and fl["connected"] and sp["queued"] == 0),
                    15, "both sinks back, the spool sent")
        after = await _health(client)
        sp = after["sparkplug"]
        # A new session: the next bdSeq, a second NBIRTH, its data after it.
        assert sp["births"] == 2 and sp["bdseq"] == (before["bdseq"] + 1) % 256
        assert sp["published"] > before["published"] and sp["dropped"] == 0
        assert after["fleet"]["connects"] == 2
    finally:
        await bridge.stop()
        await client.aclose()

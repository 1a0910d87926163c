"""The Sparkplug B edge node against independent peers: mosquitto as the broker and a node
host (tests/sparkplug_peer/host.js: mqtt.js + Eclipse Tahu's sparkplug-payload decoder) that
prints every message it decodes. A real Bridge scores the simulated plant; a `plcbridge run`
process is killed with SIGKILL to see the broker deliver the NDEATH will."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters.sim.modbus import start_simulator
from bridge.cli.demo import DEMO_TOML, demo_config
from bridge.config.sparkplug import SparkplugConfig
from bridge.core.backoff import Backoff
from bridge.core.scores import Score
from bridge.runtime.bridge import Bridge
from bridge.sinks import sparkplug_metrics as spm
from bridge.sinks.sparkplug import SparkplugSink
from tests.mqtt_broker import MOSQUITTO, Broker
from tests.waiting import until

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "sparkplug_peer"
NODE = shutil.which("node")
FAST = Backoff(initial=0.05, maximum=0.2)
GROUP, EDGE = "plant1", "bridge1"


def _missing_peer() -> str | None:
    if MOSQUITTO is None:
        return "mosquitto is not installed"
    if NODE is None:
        return "node is not installed"
    # host.js needs both packages (a partial node_modules must skip, not fail).
    if not all((PEER / "node_modules" / p).exists() for p in ("sparkplug-payload", "mqtt")):
        return "run: npm ci --prefix tests/sparkplug_peer"
    return None


needs_peers = pytest.mark.skipif(_missing_peer() is not None, reason=_missing_peer() or "")


def sp_config(port: int, spool: Path, **extra: Any) -> SparkplugConfig:
    return SparkplugConfig.model_validate({
        "host": "127.0.0.1", "port": port, "group_id": GROUP, "edge_node_id": EDGE,
        "spool_dir": spool, "keepalive": 5, **extra})


class Host:
    """host.js as a subprocess: ``messages`` is every decoded message so far."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[dict[str, Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert NODE is not None
        self._proc = await asyncio.create_subprocess_exec(
            NODE, str(PEER / "host.js"), str(self.port), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=PEER)
        self._reader = asyncio.create_task(self._read())
        await until(lambda: any(m.get("ready") for m in self.messages), 10, "the node host subscribed")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            self.messages.append(json.loads(line))

    async def send(self, **cmd: Any) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self._proc.stdin.drain()

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("topic", "").split("/")[2:3] == [kind]]

    def scored(self, name: str) -> bool:
        """A DDATA carried a value of metric ``name`` (by the alias its DBIRTH gave it)."""
        births = self.of("DBIRTH")
        if not births:
            return False
        alias = next(m["alias"] for m in births[0]["payload"]["metrics"] if m["name"] == name)
        return any(m["alias"] == alias and m.get("value") is not None
                   for d in self.of("DDATA") for m in d["payload"]["metrics"])

    def node_messages(self) -> list[dict[str, Any]]:
        """Everything the edge node sent (not its will, not the host's own commands)."""
        kinds = {"NBIRTH", "NDATA", "DBIRTH", "DDATA", "DDEATH"}
        return [m for m in self.messages if m.get("topic", "").split("/")[2:3] != []
                and m["topic"].split("/")[2] in kinds]


def check_session(messages: list[dict[str, Any]]) -> dict[str, int]:
    """Decoded, seq never skips (0 at each NBIRTH, +1 mod 256), every DDATA alias was
    defined in its device's DBIRTH of the session. Returns counts per message type."""
    counts: dict[str, int] = {}
    expected: int | None = None
    aliases: dict[str, dict[int, str]] = {}
    for message in messages:
        assert "error" not in message, message
        kind = message["topic"].split("/")[2]
        counts[kind] = counts.get(kind, 0) + 1
        payload = message["payload"]
        seq = payload["seq"]
        if kind == "NBIRTH":
            assert seq == 0
            aliases = {}
        else:
            assert seq == expected, f"seq skipped: {seq} after {expected - 1 if expected else None}"
        expected = (seq + 1) % 256
        device = message["topic"].split("/")[-1]
        if kind == "DBIRTH":
            aliases[device] = {m["alias"]: m["name"] for m in payload["metrics"]}
            assert all(m["name"] and m["type"] for m in payload["metrics"])
        if kind == "DDATA":
            for metric in payload["metrics"]:
                assert metric["alias"] in aliases[device], f"unresolved alias {metric}"
                assert "name" not in metric
    return counts


@pytest_asyncio.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest_asyncio.fixture
async def host(broker: Broker) -> AsyncIterator[Host]:
    peer = Host(broker.port)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


@needs_peers
@pytest.mark.timeout(20)
async def test_births_aliases_seq_and_rebirth_decode_with_tahu(
        broker: Broker, host: Host, tmp_path: Path) -> None:
    sim = await start_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=10)
    bridge = Bridge(demo_config(sim.port, api_port=0), speed=10)
    sink = SparkplugSink(sp_config(broker.port, tmp_path / "spool"), {"plant": bridge.config.tag_names()},
                         {"pump": "plant"}, backoff=FAST)
    bridge.sinks.append(sink)
    try:
        await bridge.start()
        await until(lambda: host.scored("Models/pump/Score"), 15, "a model score in DDATA")
        # Tag values are metrics too, read through the sink's BridgeView.
        await until(lambda: host.scored("Tags/pressure") and host.scored("Tags/flow"), 5, "tag values")
        started = time.monotonic()
        await host.send(cmd="rebirth", group=GROUP, node=EDGE)
        await until(lambda: len(host.of("NBIRTH")) >= 2 and len(host.of("DBIRTH")) >= 2, 5, "rebirth")
        rebirth_s = time.monotonic() - started
        before = len(host.of("DDATA"))
        await until(lambda: len(host.of("DDATA")) > before + 2, 10, "data after the rebirth")
    finally:
        await bridge.stop()
        await sim.stop()
    counts = check_session(host.node_messages())
    nbirth = host.of("NBIRTH")
    names = {m["name"]: m for m in nbirth[0]["payload"]["metrics"]}
    assert names["bdSeq"]["type"] == "Int64" and names["Node Control/Rebirth"]["value"] is False
    assert nbirth[1]["payload"]["metrics"][0]["value"] == names["bdSeq"]["value"]  # same session
    dbirth = {m["name"]: m for m in host.of("DBIRTH")[0]["payload"]["metrics"]}
    assert dbirth["Device/Connected"]["value"] is True
    assert {"Models/pump/Threshold", "Models/pump/Anomaly", "Models/pump/Window Valid",
            "Models/pump/Version"} <= set(dbirth)
    assert sink.stats.rebirths == 1 and rebirth_s < 2
    # The clean stop said goodbye: NDEATH with the session's bdSeq.
    await until(lambda: bool(host.of("NDEATH")), 5, "NDEATH on stop")
    assert host.of("NDEATH")[-1]["payload"]["metrics"][0]["value"] == names["bdSeq"]["value"]
    print(f"\ninterop: {len(host.node_messages())} messages decoded by Tahu, {counts}, "
          f"rebirth answered in {rebirth_s:.2f} s")


@needs_peers
@pytest.mark.timeout(20)
async def test_primary_host_offline_spools_then_sends_in_order(
        broker: Broker, host: Host, tmp_path: Path) -> None:
    sink = SparkplugSink(sp_config(broker.port, tmp_path / "spool", primary_host_id="scada"),
                         {"plant": []}, {"pump": "plant"}, backoff=FAST)
    await sink.start()
    t0 = time.time()
    try:
        for n in range(5):  # host never seen: nothing may be born, all is spooled
            sink.on_score(Score("pump", t0 + n, float(n), 10.0, False, True, version="v1"))
        await until(lambda: sink.stats.spooled == 5, 5, "five records spooled")
        await asyncio.sleep(0.3)
        assert not host.of("NBIRTH") and sink.stats.births == 0
        await host.send(cmd="state", host="scada", online=True)
        await until(lambda: len(host.of("DDATA")) >= 5, 5, "the spooled data after STATE online")
        scores = [m["value"] for d in host.of("DDATA") for m in d["payload"]["metrics"]
                  if m["type"] == "Double" and m.get("isHistorical")]
        assert scores[:1] == [0.0]  # the first of the outage; threshold sent once (no change)
        await host.send(cmd="state", host="scada", online=False)
        await until(lambda: bool(host.of("NDEATH")), 5, "NDEATH when the primary host goes offline")
        sink.on_score(Score("pump", t0 + 10, 42.0, 10.0, True, True, version="v1"))
        await asyncio.sleep(0.3)
        assert not any(m.get("value") == 42.0 for d in host.of("DDATA") for m in d["payload"]["metrics"])
        await host.send(cmd="state", host="scada", online=True)
        await until(lambda: any(m.get("value") == 42.0 for d in host.of("DDATA")
                                for m in d["payload"]["metrics"]), 5, "the score kept while offline")
    finally:
        await sink.stop()
    # The host returns to a new session: a new NBIRTH with the next bdSeq.
    bdseqs = [b["payload"]["metrics"][0]["value"] for b in host.of("NBIRTH")]
    assert len(bdseqs) == 2 and bdseqs[1] == (bdseqs[0] + 1) % 256
    check_session(host.node_messages())
    scores = [m["value"] for d in host.of("DDATA") for m in d["payload"]["metrics"]
              if m["type"] == "Double" and m["value"] != 10.0]
    assert scores == [0.0, 1.0, 2.0, 3.0, 4.0, 42.0]  # in order, none lost


def _bridge_config(tmp_path: Path, sim_port: int, broker_port: int) -> Path:
    text = DEMO_TOML.format(port=sim_port)
    text = ("[api]\nport = 0\n\n[sparkplug]\nhost = \"127.0.0.1\"\n"
            f"port = {broker_port}\ngroup_id = \"{GROUP}\"\nedge_node_id = \"{EDGE}\"\n"
            f"keepalive = 5\nspool_dir = \"{tmp_path / 'spool'}\"\n\n") + text
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


async def _run_bridge(config: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "run", str(config), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env=env)


@needs_peers
@pytest.mark.timeout(30)
async def test_ndeath_will_when_the_bridge_is_killed_and_a_new_bdseq_after_restart(
        broker: Broker, host: Host, tmp_path: Path) -> None:
    sim = await start_simulator("127.0.0.1", 0, seed=5, step=0.01, speed=1)
    config = _bridge_config(tmp_path, sim.port, broker.port)
    proc = await _run_bridge(config)
    try:
        await until(lambda: bool(host.of("DBIRTH")), 10, "NBIRTH and DBIRTH from plcbridge run")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        killed = time.monotonic()
        await until(lambda: bool(host.of("NDEATH")), 10, "the NDEATH will")
        death_s = time.monotonic() - killed
        proc = await _run_bridge(config)
        await until(lambda: len(host.of("NBIRTH")) >= 2, 10, "NBIRTH after the restart")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        await sim.stop()
    first, second = (b["payload"]["metrics"][0]["value"] for b in host.of("NBIRTH")[:2])
    ndeath = host.of("NDEATH")[0]["payload"]
    assert [m["name"] for m in ndeath["metrics"]] == ["bdSeq"] and "seq" not in ndeath
    assert ndeath["metrics"][0]["value"] == first and second == (first + 1) % 256
    assert death_s <= 1.5 * 5 + 1  # keepalive 5 s: the broker gives up after 1.5 keepalives
    print(f"\nkill -9: NDEATH (bdSeq {first}) {death_s:.2f} s after SIGKILL; restart bdSeq {second}")


def test_deadband_and_null_values() -> None:
    metrics = spm.EdgeMetrics({"d": ["flow"]}, {}, deadband=0.5, deadbands={"Tags/flow": 2.0})
    sent = metrics.update("d", [spm.Sample("Tags/flow", 10.0, 1), spm.Sample("Device/Errors", 0, 1)])
    assert len(sent) == 2
    assert metrics.update("d", [spm.Sample("Tags/flow", 11.5, 2)]) == []  # within its 2.0
    assert [s.value for s in metrics.update("d", [spm.Sample("Tags/flow", 12.5, 3)])] == [12.5]
    assert [s.value for s in metrics.update("d", [spm.Sample("Tags/flow", float("nan"), 4, False)])] == [None]
    aliases = [d.alias for defs in (metrics.node, metrics.devices["d"]) for d in defs.values()]
    assert aliases == list(range(1, len(aliases) + 1))  # unique across the edge node
    payload = spm.decode(spm.encode_data(metrics.devices["d"], [spm.Sample("Tags/flow", None, 5, False)],
                                         seq=7, now_ms=9))
    assert payload.seq == 7 and payload.metrics[0].is_null and not payload.metrics[0].name

"""MQTT sink against a real mosquitto: outage and restart, spool limits, authentication.

Scores are fed straight into the sink (alternating normal/anomalous windows, so every score
is an anomaly-start or -end event): the counts are exact and the test does not wait for a
plant. The sink talks to the broker over real TCP exactly as in production.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiomqtt import TLSParameters

from adapters.sim.modbus import start_simulator
from bridge.cli.demo import demo_config
from bridge.config.mqtt import MqttConfig
from bridge.core.backoff import Backoff
from bridge.core.errors import ConfigError
from bridge.core.scores import Score
from bridge.runtime.bridge import Bridge
from bridge.sinks.mqtt import MqttSink
from tests.mqtt_broker import MOSQUITTO, Broker, Subscriber, make_password_file, make_tls_files
from tests.waiting import until

pytestmark = [pytest.mark.timeout(40),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")]

PREFIX = "plcbridge/test"
FAST = Backoff(initial=0.05, maximum=0.2)  # reconnect quickly: the test measures, not waits


def config(port: int, spool: Path, **extra: Any) -> MqttConfig:
    return MqttConfig.model_validate({
        "host": "127.0.0.1", "port": port, "client_id": "plcbridge-under-test",
        "topic_prefix": PREFIX, "spool_dir": spool, "summary_every": 10, **extra})


class Plant:
    """Scores that flip between normal and anomalous: one event per score."""

    def __init__(self) -> None:
        self.n = 0
        self.t = time.time()

    def score(self) -> Score:
        self.n += 1
        anomaly = self.n % 2 == 1
        return Score("pump", self.t + self.n, 2.0 if anomaly else 0.5, 1.0, anomaly, True,
                     contributions={"pressure": 1.0})


@pytest_asyncio.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def test_outage_spools_then_delivers_every_event_once_in_order(
        broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, PREFIX + "/#")
    await sub.start()
    sink = MqttSink(config(broker.port, tmp_path / "spool"), backoff=FAST)
    await sink.start()
    plant = Plant()
    before, during, after = 40, 60, 20
    try:
        for _ in range(before):
            sink.on_score(plant.score())
        await until(lambda: len(sub.seqs("events")) == before, 10, "the events before the outage")

        await broker.stop()
        await until(lambda: not sink.stats.connected, 10, "the sink to notice the outage")
        for _ in range(during):
            sink.on_score(plant.score())
        await until(lambda: sink.stats.queued >= during, 10, "the outage's events in the spool")
        spooled_during = sink.stats.queued

        await broker.start()  # same port, persistent sessions restored
        await sub.start()
        await until(lambda: sink.stats.connected, 10, "the sink to reconnect")
        for _ in range(after):
            sink.on_score(plant.score())
        total = before + during + after
        await until(lambda: len(set(sub.seqs("events"))) == total, 15, "every event")
        await until(lambda: sink.stats.queued == 0, 5, "an empty spool")
    finally:
        await sink.stop()
        await sub.stop()

    events = sub.seqs("events")
    all_seqs = sub.seqs()
    unique = sorted(set(all_seqs))
    duplicates = len(all_seqs) - len(unique)
    # No gaps: events and summaries share one sequence, and nothing was dropped.
    assert unique == list(range(1, len(unique) + 1))
    # In order: the first arrival of each seq comes after the first arrival of the one before.
    first_seen: list[int] = []
    for seq in all_seqs:
        if seq not in first_seen:
            first_seen.append(seq)
    assert first_seen == unique
    kinds = [body["kind"] for topic, body in sub.messages if "/events/" in topic]
    assert len(set(events)) == total and kinds[:2] == ["anomaly-start", "anomaly-end"]
    summaries = [body for topic, body in sub.messages if "/summary/" in topic]
    assert len({s["seq"] for s in summaries}) == total // 10
    assert summaries[0]["count"] == 10 and summaries[0]["anomalies"] == 5
    assert summaries[0]["from"].endswith("Z") and summaries[0]["max_score"] == 2.0
    assert sink.stats.dropped == 0 and sink.stats.reconnects >= 1
    assert sink.stats.published >= len(unique)
    print(f"\nMQTT outage: published before={before} during={during} (spooled {spooled_during}) "
          f"after={after}; events received={len(set(events))}/{total}, messages received="
          f"{len(all_seqs)} unique={len(unique)} duplicates={duplicates} "
          f"dropped={sink.stats.dropped} reconnects={sink.stats.reconnects}")


async def test_full_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    # The subscriber's persistent session exists before the outage, so whatever the sink
    # sends after the restart is queued for it even if the sink reconnects first.
    await broker.start()
    sub = Subscriber(broker.port, PREFIX + "/events/#")
    await sub.start()
    await sub.stop()
    await broker.stop()
    cfg = config(broker.port, tmp_path / "spool", summary=False, spool_max_messages=5)
    sink = MqttSink(cfg, backoff=FAST)
    await sink.start()
    plant = Plant()
    try:
        for _ in range(12):
            sink.on_score(plant.score())
        await until(lambda: sink.stats.dropped + sink.stats.queued == 12, 5, "the events in the spool")
        assert sink.stats.dropped == 7 and sink.stats.queued == 5
        assert sink.stats.connect_failures >= 1 and "127.0.0.1" in (sink.stats.last_error or "")

        await broker.start()
        await sub.start()
        try:
            await until(lambda: len(sub.seqs()) >= 5, 10, "the spooled events")
            await until(lambda: sink.stats.queued == 0, 5, "an empty spool")
            assert sub.seqs() == [8, 9, 10, 11, 12]  # the newest five, oldest first
        finally:
            await sub.stop()
    finally:
        await sink.stop()
        await broker.stop()


async def test_spool_survives_a_restart_of_the_sink(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    cfg = config(broker.port, tmp_path / "spool", summary=False)
    plant = Plant()
    first = MqttSink(cfg, backoff=FAST)
    await first.start()
    for _ in range(3):
        first.on_score(plant.score())
    await first.stop(timeout=0.5)  # broker down: the events stay on disk

    await broker.start()
    sub = Subscriber(broker.port, PREFIX + "/events/#")
    await sub.start()
    second = MqttSink(cfg, backoff=FAST)
    await second.start()
    try:
        second.on_score(Plant().score())  # a restarted bridge starts with no anomaly open
        await until(lambda: len(sub.seqs()) >= 4, 10, "old and new events")
        assert sub.seqs() == [1, 2, 3, 4]
    finally:
        await second.stop()
        await sub.stop()
        await broker.stop()


async def test_username_password_and_a_wrong_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broker").mkdir()
    passwords = make_password_file(tmp_path / "broker", "bridge", "s3cret-pass")
    broker = Broker(tmp_path / "broker", password_file=passwords)
    await broker.start()
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "s3cret-pass")
    (tmp_path / "wrong").write_text("not-the-password\n")
    good = MqttSink(config(broker.port, tmp_path / "good", summary=False, username="bridge",
                           password_env="TEST_MQTT_PASSWORD"), backoff=FAST)
    bad = MqttSink(config(broker.port, tmp_path / "bad", summary=False, username="bridge",
                          client_id="plcbridge-wrong", password_file=tmp_path / "wrong"),
                   backoff=FAST)
    sub = Subscriber(broker.port, PREFIX + "/events/#", username="bridge", password="s3cret-pass")
    await sub.start()
    await good.start()
    await bad.start()
    plant = Plant()
    try:
        for _ in range(3):
            score = plant.score()
            good.on_score(score)
            bad.on_score(score)  # keeps accepting: a broker problem never stops the bridge
        await until(lambda: len(sub.seqs()) == 3, 10, "the authenticated sink's events")
        await until(lambda: bad.stats.connect_failures >= 2, 10, "repeated login failures")
        assert "check username and password" in (bad.stats.last_error or "")
        assert "not-the-password" not in (bad.stats.last_error or "")
        assert not bad.stats.connected and bad.stats.queued == 3 and good.stats.published >= 3
        assert bad.status()["connect_failures"] >= 2  # what /health shows
    finally:
        await bad.stop()
        await good.stop()
        await sub.stop()
        await broker.stop()


def test_config_rejects_a_password_without_source_and_wildcards(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="password_env"):
        MqttConfig.model_validate({"host": "h", "spool_dir": tmp_path, "username": "u"})
    with pytest.raises(ValueError, match="password"):
        MqttConfig.model_validate({"host": "h", "spool_dir": tmp_path, "password": "x"})
    with pytest.raises(ValueError, match="topic prefix"):
        MqttConfig.model_validate({"host": "h", "spool_dir": tmp_path, "topic_prefix": "a/#"})
    tls = MqttConfig.model_validate({"host": "h", "spool_dir": tmp_path, "tls": {}})
    assert tls.effective_port == 8883 and tls.effective_prefix.startswith("plcbridge/")
    with pytest.raises(ConfigError, match="TEST_MQTT_UNSET"):
        MqttSink(MqttConfig.model_validate({"host": "h", "spool_dir": tmp_path, "username": "u",
                                            "password_env": "TEST_MQTT_UNSET"}))


@pytest.mark.serial  # 1000 calls within a wall-clock bound
async def test_on_score_never_waits_for_the_broker(tmp_path: Path) -> None:
    sink = MqttSink(config(1, tmp_path / "spool", scores=True), backoff=FAST)
    await sink.start()
    plant = Plant()
    try:
        started = time.perf_counter()
        for _ in range(1000):
            sink.on_score(plant.score())
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5, f"on_score took {elapsed * 1000:.1f} ms for 1000 scores"
        await until(lambda: sink.stats.spooled == 2100, 10, "everything in the spool")
    finally:
        await asyncio.wait_for(sink.stop(), 5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_tls_with_a_private_ca_and_a_refused_unknown_ca(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    files = make_tls_files(tmp_path / "broker")
    broker = Broker(tmp_path / "broker", tls=files)
    await broker.start()
    sub = Subscriber(broker.port, PREFIX + "/events/#",
                     tls_params=TLSParameters(ca_certs=str(files.ca), cert_reqs=ssl.CERT_REQUIRED))
    await sub.start()
    trusted = MqttSink(config(broker.port, tmp_path / "a", summary=False,
                              tls={"ca_file": str(files.ca)}), backoff=FAST)
    # The system trust store does not know the private CA: the handshake must fail.
    untrusted = MqttSink(config(broker.port, tmp_path / "b", summary=False, tls={},
                                client_id="plcbridge-untrusted"), backoff=FAST)
    await trusted.start()
    await untrusted.start()
    try:
        score = Plant().score()
        trusted.on_score(score)
        untrusted.on_score(score)
        await until(lambda: sub.seqs() == [1], 10, "the event over TLS")
        await until(lambda: untrusted.stats.connect_failures >= 1, 10, "the refused handshake")
        assert "certificate" in (untrusted.stats.last_error or "").lower()
        assert untrusted.stats.queued == 1 and untrusted.stats.published == 0
    finally:
        await untrusted.stop()
        await trusted.stop()
        await sub.stop()
        await broker.stop()


async def test_a_running_bridge_feeds_the_sink_through_bridge_sinks(
        broker: Broker, tmp_path: Path) -> None:
    """The wiring the runtime uses: the sink in ``bridge.sinks``, started and stopped by the
    bridge, fed by real scoring of the simulated plant."""
    sub = Subscriber(broker.port, PREFIX + "/#")
    await sub.start()
    sim = await start_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=10)
    bridge = Bridge(demo_config(sim.port, api_port=0), speed=10)
    sink = MqttSink(config(broker.port, tmp_path / "spool", summary_every=5), backoff=FAST)
    bridge.sinks.append(sink)
    try:
        await bridge.start()
        await until(lambda: len(sub.seqs("summary")) >= 2, 20, "two summaries from the bridge")
    finally:
        await bridge.stop()
        await sim.stop()
        await sub.stop()
    summary = next(body for topic, body in sub.messages if topic == PREFIX + "/summary/pump")
    assert summary["count"] == 5 and summary["model"] == "pump"
    assert summary["to"].endswith("Z") and summary["threshold"] > 0
    status = [body for topic, body in sub.messages if topic == PREFIX + "/status"]
    assert status and status[0]["online"] is True

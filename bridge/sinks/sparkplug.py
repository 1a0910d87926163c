"""Sparkplug B edge node sink: the bridge is one edge node, each configured device a device.

Topics (``G`` = group id, ``E`` = edge node id, ``D`` = device name; docs/sparkplug.md):
``spBv1.0/G/NBIRTH/E`` (bdSeq, Node Control/Rebirth), ``spBv1.0/G/NDEATH/E`` (the MQTT will,
bdSeq), ``spBv1.0/G/DBIRTH/E/D`` (every metric: name, alias, type, value), ``DDATA`` (changed
metrics by alias, by exception with deadbands), ``DDEATH`` (device lost); it listens on
``spBv1.0/G/NCMD/E`` for ``Node Control/Rebirth`` and, with ``primary_host_id``, on
``spBv1.0/STATE/<host>``.

Delivery: ``on_poll``/``on_score`` only compute what changed and queue it; one task writes
the data to the on-disk spool (``bridge.sinks.spool``) and publishes from it oldest first. A
spooled record holds the device and its samples by metric name; seq (0-255, 0 on NBIRTH) and
aliases are given when it is sent, in the session in force. While the broker is unreachable,
or the primary host is offline, records stay in the spool and are sent in order after the
(re)birth, flagged historical. Births and deaths are state, not history: they come from the
devices' live status at (re)birth; a device born or lost since then travels as a marker record
in the spool, in order with its data. Births and data are QoS 0 as the specification demands
(a record is deleted once handed to the connection); the NDEATH will is QoS 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config.sparkplug import SparkplugConfig
from bridge.core.backoff import Backoff
from bridge.core.errors import ConfigError
from bridge.core.scores import Score
from bridge.core.tags import Quality
from bridge.ports import BridgeView
from bridge.sinks import sparkplug_metrics as spm
from bridge.sinks.link import LinkStats
from bridge.sinks.mqtt import (
    Client,
    MqttError,
    Will,
    describe,
    new_client,
    read_password,
    tls_context,
)
from bridge.sinks.spool import Spool
from bridge.sinks.spooled import SpooledSink

__all__ = ["SparkplugSink", "SparkplugStats"]

log = logging.getLogger("plcbridge.sparkplug")


_BATCH = 200
NAMESPACE = "spBv1.0"


@dataclass(slots=True)
class SparkplugStats(LinkStats):
    host_online: bool | None = None  # None: no primary host configured
    bdseq: int | None = None
    seq: int | None = None  # of the last message given one (0-255; 0 is the session's NBIRTH)
    births: int = 0  # NBIRTHs sent (first and rebirths)
    rebirths: int = 0  # NCMD Node Control/Rebirth obeyed
    published: int = 0  # NBIRTH, DBIRTH, DDATA, DDEATH handed to the broker (QoS 0: not acknowledged)
    spooled: int = 0
    dropped: int = 0
    queued: int = 0


class _HostOffline(Exception):
    """The primary host went offline: end the session (NDEATH sent) and connect again."""


class SparkplugSink(SpooledSink[SparkplugStats]):
    name = "sparkplug"
    _log = log

    def __init__(self, config: SparkplugConfig, devices: Mapping[str, Sequence[str]],
                 models: Mapping[str, str], *, backoff: Backoff | None = None) -> None:
        """``devices``: device -> its tags; ``models``: model -> the device carrying it.
        Raises ConfigError for an unusable password, TLS file or spool_dir."""
        self.config = config
        self.stats = SparkplugStats()
        self.broker = f"{config.host}:{config.effective_port}"
        self.group = config.group_id
        self.node = config.effective_edge_node_id
        self.metrics = spm.EdgeMetrics(devices, models, deadband=config.deadband,
                                       deadbands=config.deadbands)
        self._tags = {device: list(tags) for device, tags in devices.items()}
        self._homes = dict(models)
        self._password = read_password(config, "sparkplug")
        self._tls = None if config.tls is None else tls_context(config.tls, "sparkplug")
        self._backoff = backoff or Backoff(config.reconnect_min, config.reconnect_max)
        spool = _open_spool(config)
        super().__init__(spool)
        self._next_id = spool.next_seq
        self._up: dict[str, bool] = dict.fromkeys(devices, False)  # as last seen by on_poll
        self._view: BridgeView | None = None
        # Session state, owned by the publisher task.
        self._seq = 0
        self._born: set[str] = set()
        self._birth_ms = 0
        self._node_born = False
        self._rebirth = False
        self._host_online = config.primary_host_id is None

    def topic(self, kind: str, device: str | None = None) -> str:
        tail = "" if device is None else f"/{device}"
        return f"{NAMESPACE}/{self.group}/{kind}/{self.node}{tail}"

    # -- Sink protocol ----------------------------------------------------------------------

    async def start(self, view: BridgeView | None = None) -> None:
        self._view = view
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="plcbridge-sparkplug-spool")
        if self._spool is None:
            self._spool = await self._io(_open_spool, self.config)
        self.stats.queued = len(self._spool)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="plcbridge.sparkplug")

    def on_poll(self, device: str, seconds: float) -> None:
        self._observe(device, [])

    def on_score(self, score: Score) -> None:
        home = self._homes.get(score.model)
        if home is not None:
            self._observe(home, spm.model_samples(score))

    def status(self) -> dict[str, Any]:
        return {"broker": self.broker, "group_id": self.group, "edge_node_id": self.node,
                **self.stats.body()}

    # -- queueing (event loop, never blocks) -------------------------------------------------

    def _observe(self, device: str, extra: list[spm.Sample]) -> None:
        if device not in self._up:
            return
        now = time.time()
        samples = list(extra)
        status = None if self._view is None else self._view.devices().get(device)
        if status is not None:
            up = bool(status.connected)
            if up != self._up[device]:
                self._up[device] = up
                self._queue("birth" if up else "death", device, [])
            samples += spm.health_samples(status, now)
        if self._view is not None:
            for tag in self._tags[device]:
                reading = self._view.latest_reading(tag)
                if reading is not None:
                    samples.append(spm.Sample(f"Tags/{tag}", reading.numeric(), spm.ms(reading.time),
                                              reading.quality is Quality.GOOD))
        changed = self.metrics.update(device, samples)
        if changed:
            self._queue("data", device, changed)

    def _queue(self, kind: str, device: str, samples: list[spm.Sample]) -> None:
        body = {"kind": kind, "device": device, "t": spm.ms(time.time()),
                "metrics": [s.to_json() for s in samples]}
        self._pending.append((self._next_id, device, body))
        self._next_id += 1
        for _ in range(max(0, len(self._pending) - self.config.spool_max_messages)):
            self._pending.popleft()
            self.stats.dropped += 1
        self._wakeup.set()

    # -- publisher task ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            await self._flush_pending()
            bdseq = await self._io(_next_bdseq, self.config.spool_dir)
            will = Will(self.topic("NDEATH"), spm.encode_death(now_ms=spm.ms(time.time()), bdseq=bdseq),
                        qos=1, retain=False)
            try:
                async with new_client(self.config, self._password, self._tls,
                                      "plcbridge.sparkplug.client", will) as client:
                    self._on_connected(bdseq)
                    attempt = 0
                    await self._session(client, bdseq)
                    return  # stopping
            except _HostOffline:
                log.warning("sparkplug primary host %s offline: NDEATH sent, data is spooled "
                            "until it is back", self.config.primary_host_id)
                self.stats.connected = False
                continue  # reconnect at once, then wait for the host's STATE
            except MqttError as exc:
                self._on_failure(exc)
            finally:
                self._node_born = False
            if self._stopping:
                return
            attempt += 1
            await self._idle(self._backoff.delay(attempt))
            if self._stopping:
                return

    async def _session(self, client: Client, bdseq: int) -> None:
        self._born.clear()
        self._rebirth = False
        self._host_online = self.config.primary_host_id is None
        await client.subscribe(self.topic("NCMD"), qos=1)
        if self.config.primary_host_id is not None:
            await client.subscribe(f"{NAMESPACE}/STATE/{self.config.primary_host_id}", qos=1)
        reader = asyncio.create_task(self._read(client), name="plcbridge.sparkplug.read")
        reader.add_done_callback(lambda _: self._wakeup.set())
        try:
            await self._pump(client, bdseq, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await reader

    async def _pump(self, client: Client, bdseq: int, reader: asyncio.Task[None]) -> None:
        assert self._spool is not None
        while True:
            self._wakeup.clear()
            if reader.done():
                reader.result()
                raise MqttError("disconnected")
            await self._flush_pending()
            if not self._host_online:
                if self._node_born:
                    await self._publish_ndeath(client, bdseq)
                    raise _HostOffline
                if self._stopping:
                    return
                await self._wakeup.wait()
                continue
            if not self._node_born or self._rebirth:
                await self._birth(client, bdseq)
            batch = await self._io(self._spool.oldest, _BATCH)
            if not batch:
                if self._stopping:
                    # A clean disconnect sends no will: say goodbye ourselves.
                    await self._publish_ndeath(client, bdseq)
                    return
                await self._wakeup.wait()
                continue
            sent: list[int] = []
            try:
                for message in batch:
                    if self._rebirth or not self._host_online:
                        break  # rebirth or go offline first; the rest stays in the spool
                    await self._send_record(client, json.loads(message.payload))
                    sent.append(message.seq)
            finally:
                if sent:
                    await self._io(self._spool.delete, sent)
                    self.stats.queued = len(self._spool)

    async def _read(self, client: Client) -> None:
        rebirth_alias = self.metrics.node[spm.REBIRTH].alias
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic.startswith(f"{NAMESPACE}/STATE/"):
                self._host_online = _state_online(payload)
                self.stats.host_online = self._host_online
            else:
                try:
                    metrics = spm.decode(payload).metrics
                except Exception:  # a malformed command must not end the session
                    log.warning("sparkplug: undecodable NCMD ignored")
                    continue
                if any((m.name == spm.REBIRTH or (not m.name and m.alias == rebirth_alias))
                       and m.boolean_value for m in metrics):
                    self._rebirth = True
            self._wakeup.set()

    async def _birth(self, client: Client, bdseq: int) -> None:
        """NBIRTH (seq 0, the will's bdSeq) and a DBIRTH per connected device."""
        if self._rebirth:
            self.stats.rebirths += 1
        self._rebirth = False
        self._seq = 0
        now = spm.ms(time.time())
        self._birth_ms = now
        node = [spm.Sample(spm.BDSEQ, bdseq, now), spm.Sample(spm.REBIRTH, False, now)]
        await self._publish(client, self.topic("NBIRTH"),
                            spm.encode_birth(self.metrics.node, node, seq=self._take_seq(), now_ms=now))
        self._node_born = True
        self.stats.births += 1
        self._born.clear()
        for device, up in self._up.items():
            if up:
                await self._device_birth(client, device)
        log.info("sparkplug NBIRTH group=%s node=%s bdSeq=%d devices=%s", self.group, self.node,
                 bdseq, sorted(self._born))

    async def _device_birth(self, client: Client, device: str) -> None:
        defs = self.metrics.devices[device]
        now = spm.ms(time.time())
        await self._publish(client, self.topic("DBIRTH", device), spm.encode_birth(
            defs, self.metrics.latest(device), seq=self._take_seq(), now_ms=now))
        self._born.add(device)

    async def _send_record(self, client: Client, body: dict[str, Any]) -> None:
        kind, device = body["kind"], body["device"]
        if device not in self.metrics.devices:
            return  # a device no longer configured (spooled before a config change)
        if kind == "death":
            if device in self._born:
                self._born.discard(device)
                await self._publish(client, self.topic("DDEATH", device), spm.encode_death(
                    now_ms=spm.ms(time.time()), seq=self._take_seq()))
            return
        if device not in self._born:
            await self._device_birth(client, device)
        if kind == "data":
            samples = [spm.Sample.from_json(item) for item in body["metrics"]]
            await self._publish(client, self.topic("DDATA", device), spm.encode_data(
                self.metrics.devices[device], samples, seq=self._take_seq(),
                now_ms=spm.ms(time.time()), historical=body["t"] < self._birth_ms))

    async def _publish_ndeath(self, client: Client, bdseq: int) -> None:
        await client.publish(self.topic("NDEATH"), spm.encode_death(now_ms=spm.ms(time.time()),
                             bdseq=bdseq), qos=1, timeout=self.config.timeout)
        self._node_born = False

    async def _publish(self, client: Client, topic: str, payload: bytes) -> None:
        await client.publish(topic, payload, qos=0, timeout=self.config.timeout)
        self.stats.published += 1

    def _take_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        self.stats.seq = seq
        return seq

    # -- bookkeeping ------------------------------------------------------------------------

    def _on_connected(self, bdseq: int) -> None:
        self.stats.up()
        self.stats.bdseq = bdseq
        log.info("sparkplug connected broker=%s bdSeq=%d", self.broker, bdseq)

    def _on_failure(self, exc: MqttError) -> None:
        text = describe(exc, self.broker)
        level = logging.DEBUG if self.stats.down(text) else logging.ERROR
        log.log(level, "sparkplug %s; data is spooled in %s", text, self.config.spool_dir)

def _state_online(payload: bytes) -> bool:
    """Sparkplug 3.0 STATE is JSON ``{"online": bool, "timestamp": ms}``; 2.2 hosts send the
    text ONLINE / OFFLINE."""
    text = payload.decode("utf-8", "replace").strip()
    if text in ("ONLINE", "OFFLINE"):
        return text == "ONLINE"
    try:
        return bool(json.loads(text).get("online"))
    except (ValueError, AttributeError):
        return False


def _next_bdseq(directory: Path) -> int:
    """The bdSeq of the next connection (0-255), kept on disk so that a restarted bridge never
    repeats the bdSeq of the NDEATH a host may still be waiting for."""
    path = directory / "sparkplug-bdseq"
    try:
        last = int(path.read_text().strip())
    except (OSError, ValueError):
        last = -1
    value = (last + 1) % 256
    path.write_text(f"{value}\n")
    return value


def _open_spool(config: SparkplugConfig) -> Spool:
    try:
        return Spool(config.spool_dir, config.spool_max_messages, name="sparkplug-spool.sqlite")
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError([f"sparkplug.spool_dir: cannot use {config.spool_dir} ({exc})"]) from None

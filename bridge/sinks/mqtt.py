"""MQTT sink: anomaly events and per-window summaries as JSON, QoS 1, store-and-forward.

Topics (``P`` = ``[mqtt] topic_prefix``, default ``plcbridge/<hostname>``; ``M`` = model name):

=====================  =========================================================  =========
topic                  payload (JSON, times ISO 8601 UTC)                         when
=====================  =========================================================  =========
``P/events/M``         seq, model, kind (anomaly-start | anomaly-end), time,      on change
                       score, threshold, contributions, version
``P/summary/M``        seq, model, from, to, count, valid, anomalies,             every
                       mean_score, max_score, threshold, version,                 window
                       invalid_reasons
``P/scores/M``         seq, model, time, score, threshold, anomaly,               every score
                       window_valid, reason, version                              (opt-in)
``P/status``           online (bool), time, client_id; retained; the broker       (re)connect,
                       publishes ``online: false`` as the last will                stop
=====================  =========================================================  =========

``seq`` grows by one per message across all topics of one bridge and survives restarts: a
consumer that sees a gap knows messages were dropped (spool full), one that sees a repeat has a
QoS 1 duplicate and can ignore it.

Delivery: ``on_score`` only builds messages and queues them in memory; one task appends them
to the on-disk spool (``bridge.sinks.spool``) and publishes from the spool oldest first, one
at a time, deleting each only after the broker acknowledged it (PUBACK for QoS 1). While the
broker is unreachable, messages accumulate in the spool (at most ``spool_max_messages``; when
full the oldest are dropped and counted) and are sent in order after reconnect, before newer
ones. A crash between PUBACK and the delete re-sends that message: at least once, as QoS 1
promises. Reconnects use capped exponential backoff with jitter (``bridge.core.backoff``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiomqtt

from bridge.config.mqtt import MqttConfig, MqttTlsConfig
from bridge.core.backoff import Backoff
from bridge.core.errors import ConfigError
from bridge.core.files import read_text_file
from bridge.core.scores import Score
from bridge.core.timefmt import iso
from bridge.ports import BridgeView
from bridge.sinks.link import LinkStats
from bridge.sinks.mqtt_messages import MessageBuilder
from bridge.sinks.spool import Spool
from bridge.sinks.spooled import SpooledSink

if TYPE_CHECKING:
    pass

__all__ = ["Client", "Credentials", "MqttError", "MqttSink", "MqttStats", "Will", "describe", "new_client",
           "read_password", "tls_context", "until_disconnected"]

# The aiomqtt names the Sparkplug sink needs: it speaks MQTT through this module, which is the
# one place in bridge/ allowed to import the client library (tests/test_layers.py).
Client = aiomqtt.Client
MqttError = aiomqtt.MqttError
Will = aiomqtt.Will

log = logging.getLogger("plcbridge.mqtt")


_BATCH = 200  # messages read from the spool at a time


@dataclass(slots=True)
class MqttStats(LinkStats):
    published: int = 0  # acknowledged by the broker (or written, for QoS 0)
    spooled: int = 0  # written to the spool
    dropped: int = 0  # oldest messages dropped because the spool was full
    queued: int = 0  # in the spool now, not yet acknowledged
    reconnects: int = 0  # successful connections after the first


class MqttSink(SpooledSink[MqttStats]):
    """Implements ``bridge.ports.Sink``. Construction reads the password and TLS files and
    raises ConfigError if they are unusable, so a bad setup stops ``plcbridge run`` early."""

    name = "mqtt"
    _log = log

    def __init__(self, config: MqttConfig, *, backoff: Backoff | None = None) -> None:
        self.config = config
        self.stats = MqttStats()
        self.broker = f"{config.host}:{config.effective_port}"
        self._builder = MessageBuilder(config)
        self._password = read_password(config, "mqtt")
        self._tls = None if config.tls is None else tls_context(config.tls, "mqtt")
        self._backoff = backoff or Backoff(config.reconnect_min, config.reconnect_max)
        # Opened here, not in start(): an unusable spool_dir stops `plcbridge run` early, and
        # the next sequence number is known before the first score. ``_pending`` (between
        # on_score and the spool) is bounded like the spool itself in case the disk stalls.
        spool = _open_spool(config)
        super().__init__(spool)
        self._next_seq = spool.next_seq
        self._down_since: float | None = None

    # -- Sink protocol ----------------------------------------------------------------------

    async def start(self, view: BridgeView | None = None) -> None:
        # One thread for all spool I/O: SQLite calls are serialized and never block the loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="plcbridge-mqtt-spool")
        if self._spool is None:  # started again after stop()
            self._spool = await self._io(_open_spool, self.config)
        self.stats.queued = len(self._spool)
        if self.stats.queued:
            log.info("mqtt spool holds %d messages from before; sending them first", self.stats.queued)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="plcbridge.mqtt")

    def on_score(self, score: Score) -> None:
        messages = self._builder.on_score(score)
        if not messages:
            return
        # The seq is given here, so a message dropped before it reached the disk is a gap too.
        for topic, body in messages:
            self._pending.append((self._next_seq, topic, body))
            self._next_seq += 1
        overflow = len(self._pending) - self.config.spool_max_messages
        for _ in range(max(0, overflow)):
            self._pending.popleft()
            self.stats.dropped += 1
        self._wakeup.set()

    def status(self) -> dict[str, Any]:
        """Counters for /api/v1/health."""
        return {"broker": self.broker, "topic_prefix": self._builder.prefix, **self.stats.body()}

    # -- publisher task ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            await self._flush_pending()
            try:
                async with self._client() as client:
                    self._on_connected()
                    attempt = 0
                    await self._publish_status(client, online=True)
                    await self._pump(client)
                    await self._publish_status(client, online=False)
                    return  # stopping, spool drained
            except aiomqtt.MqttError as exc:
                self._on_failure(exc)
            if self._stopping:
                return
            attempt += 1
            await self._idle(self._backoff.delay(attempt))
            if self._stopping:
                return

    async def _pump(self, client: aiomqtt.Client) -> None:
        # Notice a lost connection while idle too, so `connected` in /health is true to life
        # and the reconnect starts at once, not when the next message happens to come.
        watcher = asyncio.create_task(until_disconnected(client), name="plcbridge.mqtt.watch")
        watcher.add_done_callback(lambda _: self._wakeup.set())
        try:
            await self._pump_until_stopped(client, watcher)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await watcher

    async def _pump_until_stopped(self, client: aiomqtt.Client, watcher: asyncio.Task[None]) -> None:
        assert self._spool is not None
        while True:
            self._wakeup.clear()
            if watcher.done():
                watcher.result()  # raises the MqttError that ended the connection
                raise aiomqtt.MqttError("disconnected")
            await self._flush_pending()
            batch = await self._io(self._spool.oldest, _BATCH)
            if not batch:
                if self._stopping:
                    return
                await self._wakeup.wait()
                continue
            acked: list[int] = []
            try:
                # One at a time, in seq order: a message is never overtaken by a newer one,
                # even when the connection drops half-way through a batch.
                for message in batch:
                    await client.publish(message.topic, message.payload, qos=self.config.qos,
                                         timeout=self.config.timeout)
                    acked.append(message.seq)
            finally:
                if acked:
                    self.stats.published += len(acked)
                    await self._io(self._spool.delete, acked)
                    self.stats.queued = len(self._spool)

    async def _publish_status(self, client: aiomqtt.Client, *, online: bool) -> None:
        # State, not history: retained and never spooled (the broker's will covers a crash).
        await client.publish(self._builder.prefix + "/status", _status(self.config, online),
                             qos=self.config.qos, retain=True, timeout=self.config.timeout)

    def _client(self) -> aiomqtt.Client:
        config = self.config
        return new_client(config, self._password, self._tls, "plcbridge.mqtt.client",
                          aiomqtt.Will(self._builder.prefix + "/status", _status(config, False),
                                       qos=config.qos, retain=True))

    # -- bookkeeping ------------------------------------------------------------------------

    def _on_connected(self) -> None:
        stats = self.stats
        if stats.connects:
            stats.reconnects += 1
        stats.up()
        if self._down_since is not None:
            log.info("mqtt connected broker=%s after %.1f s down, spooled=%d", self.broker,
                     time.time() - self._down_since, stats.queued + len(self._pending))
        else:
            log.info("mqtt connected broker=%s", self.broker)
        self._down_since = None

    def _on_failure(self, exc: aiomqtt.MqttError) -> None:
        text = describe(exc, self.broker)
        repeated = self.stats.down(text)
        # Log a failure once: ERROR when it starts (or changes), DEBUG while it stays the same.
        level = logging.DEBUG if self._down_since is not None and repeated else logging.ERROR
        log.log(level, "mqtt %s; messages are spooled in %s", text, self.config.spool_dir)
        if self._down_since is None:
            self._down_since = time.time()

async def until_disconnected(client: aiomqtt.Client) -> None:
    # The sink subscribes to nothing, so the iterator only ever ends by raising MqttError
    # when the connection is lost (aiomqtt has no public "disconnected" future).
    async for _ in client.messages:
        pass


class Credentials(Protocol):
    """The broker keys ``[mqtt]`` and ``[sparkplug]`` share."""

    @property
    def host(self) -> str: ...
    @property
    def effective_port(self) -> int: ...
    @property
    def effective_client_id(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password_env(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def keepalive(self) -> int: ...
    @property
    def timeout(self) -> float: ...


def new_client(config: Credentials, password: str | None, tls: ssl.SSLContext | None,
               logger: str, will: aiomqtt.Will) -> aiomqtt.Client:
    """A clean-session client with a last will (MQTT 3.1.1, as Sparkplug B 3.0 requires)."""
    return aiomqtt.Client(
        config.host, config.effective_port, identifier=config.effective_client_id,
        username=config.username, password=password, keepalive=config.keepalive,
        timeout=config.timeout, tls_context=tls, clean_session=True, will=will,
        logger=logging.getLogger(logger))


def _status(config: MqttConfig, online: bool) -> bytes:
    return json.dumps({"online": online, "time": iso(time.time()),
                       "client_id": config.effective_client_id}).encode()


def describe(exc: aiomqtt.MqttError, broker: str) -> str:
    text = str(exc) or type(exc).__name__
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    # 4/5 (MQTT 3.1.1) and 134/135 (MQTT 5): the broker refused the credentials.
    if value in (4, 5, 134, 135):
        return f"broker {broker} refused the login ({text}): check username and password"
    return f"broker {broker}: {text}"


def _open_spool(config: MqttConfig) -> Spool:
    try:
        return Spool(config.spool_dir, config.spool_max_messages)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError([f"mqtt.spool_dir: cannot use {config.spool_dir} ({exc})"]) from None


def read_password(config: Credentials, section: str) -> str | None:
    if config.password_env is not None:
        value = os.environ.get(config.password_env)
        if value is None:
            raise ConfigError([f"{section}.password_env: environment variable {config.password_env} "
                               "is not set"])
        return value
    if config.password_file is not None:
        try:
            return read_text_file(f"{section}.password_file", config.password_file).rstrip("\r\n")
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
    return None


def tls_context(tls: MqttTlsConfig, section: str) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=None if tls.ca_file is None else str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{section}.tls.ca_file: cannot load {tls.ca_file} ({exc})"]) from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"{section}.tls.cert_file: cannot load {tls.cert_file} with "
                               f"{tls.key_file} ({exc})"]) from None
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

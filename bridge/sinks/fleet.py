"""Fleet models through the broker (docs/fleet.md): the bridge's side, and the broker helpers the
``plcbridge fleet`` commands use.

Topics (``F`` = ``[fleet] topic_prefix``, default ``plcbridge/fleet``; ``M`` = model name;
``B`` = bridge id), all QoS 1 and retained, so a bridge or merger that connects late (or after a
broker restart, with persistence) still sees the latest of each:

=======================  =======================================================================
``F/M/stats/B``          a site's PCA sufficient statistics (``plcbridge fleet publish-stats``):
                         counts, means and scatter matrices of rows and window means; no rows
``F/M/model``            the merged candidate model, raw ONNX bytes (``plcbridge fleet merge``)
``F/M/card``             JSON: sha256 of the model bytes, threshold, sites, counts
``F/M/result/B``         JSON: what bridge B did with the model of that sha256 (installed,
                         refused with the reason)
``F/status/B``           JSON ``online``; the broker publishes ``online: false`` as the last will
=======================  =======================================================================

A bridge installs a fleet model through the callback the runtime gives it, which is
``ModelUpdater.install``: the validation of a REST upload, so a malformed or mismatched model is
refused and the old model keeps scoring. The identity of a model is the sha256 of its bytes. The
last one handled per model (installed or refused) is remembered in
``<data_dir>/fleet/state.json``: a retained model seen again after a reconnect, a broker restart
or a bridge restart is never installed twice (nor rolled back over an operator's rollback).
A crash between the install and that record is caught too: the active model file then already
holds those bytes, which counts as installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge.config.fleet import FleetConfig
from bridge.core.aio import cancel_and_wait
from bridge.core.backoff import Backoff
from bridge.core.errors import ConfigError, ModelContractError
from bridge.core.scores import Score
from bridge.core.timefmt import iso
from bridge.ports import BridgeView, SinkBase
from bridge.sinks.mqtt import Client, MqttError, Will, describe, new_client, read_password, tls_context

__all__ = ["FleetSink", "Install", "MqttError", "collect_retained", "publish_retained", "sha256", "topic"]

log = logging.getLogger("plcbridge.fleet")

# What the runtime gives the sink to install a model: ModelUpdater.install(name, data, source).
Install = Callable[[str, bytes, str], Awaitable[object]]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def topic(prefix: str, *levels: str) -> str:
    """``prefix/level/...``, e.g. ``topic(F, M, "stats", B)`` or ``topic(F, "status", B)``."""
    return "/".join((prefix, *levels))


def _client(config: FleetConfig, password: str | None, online: bool | None = None) -> Client:
    tls = None if config.tls is None else tls_context(config.tls, "fleet")
    status = json.dumps({"online": False, "client_id": config.effective_client_id}).encode()
    # The bridge's will is its retained status; a one-shot command's will is not retained.
    return new_client(config, password, tls, "plcbridge.fleet.client",
                      Will(topic(config.topic_prefix, "status", config.effective_bridge_id), status,
                           qos=1, retain=online is not None))


async def publish_retained(config: FleetConfig, messages: Sequence[tuple[str, bytes]]) -> None:
    """Publish each ``(topic, payload)`` QoS 1 and retained; returns once the broker acknowledged
    all of them. Raises MqttError (the message names the broker) or ConfigError (secrets, TLS)."""
    password = read_password(config, "fleet")
    try:
        async with _client(config, password) as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1, retain=True, timeout=config.timeout)
    except MqttError as exc:
        raise MqttError(describe(exc, f"{config.host}:{config.effective_port}")) from None


async def collect_retained(config: FleetConfig, topic_filter: str, *, min_count: int, wait: float,
                           quiet: float = 1.0) -> dict[str, bytes]:
    """The retained messages on ``topic_filter``, by topic (empty payloads, which clear a retained
    message, are left out). Returns when ``min_count`` topics are in and nothing new came for
    ``quiet`` seconds, or after ``wait`` seconds with whatever came."""
    password = read_password(config, "fleet")
    found: dict[str, bytes] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        async with _client(config, password) as client:
            await client.subscribe(topic_filter, qos=1)
            messages = aiter(client.messages)
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                limit = min(left, quiet) if len(found) >= min_count else left
                try:
                    message = await asyncio.wait_for(anext(messages), limit)
                except TimeoutError:
                    if len(found) >= min_count:
                        break
                    continue
                payload = message.payload
                if isinstance(payload, bytes) and payload:
                    found[str(message.topic)] = payload
    except MqttError as exc:
        raise MqttError(describe(exc, f"{config.host}:{config.effective_port}")) from None
    return found


class FleetSink(SinkBase):
    """Implements ``bridge.ports.Sink``: subscribes to the fleet model of each of its models and
    installs a new one once. ``install`` is the runtime's ``ModelUpdater.install``; ``models``
    the configured model names; ``data_dir`` the ``[storage] data_dir`` (None: the handled
    hashes live in memory only, as the updater keeps installed models in memory only then)."""

    name = "fleet"

    def __init__(self, config: FleetConfig, install: Install, models: Sequence[str],
                 data_dir: Path | None, *, backoff: Backoff | None = None) -> None:
        unknown = [m for m in config.models if m not in models]
        if unknown:
            raise ConfigError([f"fleet.models: {', '.join(map(repr, unknown))} not in [[models]]"])
        self.config = config
        self.models = tuple(config.models or models)
        self.bridge_id = config.effective_bridge_id
        self._install = install
        self._password = read_password(config, "fleet")  # ConfigError early, like [mqtt]
        if config.tls is not None:
            tls_context(config.tls, "fleet")
        self._state_file = None if data_dir is None else data_dir / "fleet" / "state.json"
        self._state: dict[str, dict[str, Any]] = _read_state(self._state_file)
        self._backoff = backoff or Backoff(config.reconnect_min, config.reconnect_max)
        self._view: BridgeView | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.counts = {"installed": 0, "refused": 0, "repeated": 0}

    async def start(self, view: BridgeView | None = None) -> None:
        self._view = view
        self._task = asyncio.create_task(self._run(), name="plcbridge.fleet")

    def on_score(self, score: Score) -> None:
        return None  # a fleet member receives models; its statistics come from recordings

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def status(self) -> dict[str, Any]:
        return {"broker": f"{self.config.host}:{self.config.effective_port}", "bridge_id": self.bridge_id,
                "connected": self.connected, **self.counts,
                "models": {m: {k: self._state[m].get(k) for k in ("sha256", "status")}
                           for m in self.models if m in self._state}}

    async def _run(self) -> None:
        attempt = 0
        prefix = self.config.topic_prefix
        while True:
            try:
                async with _client(self.config, self._password, online=True) as client:
                    self.connected, attempt = True, 0
                    await client.publish(topic(prefix, "status", self.bridge_id),
                                         json.dumps({"online": True, "time": iso(time.time())}).encode(),
                                         qos=1, retain=True, timeout=self.config.timeout)
                    for model in self.models:
                        await client.subscribe(topic(prefix, model, "model"), qos=1)
                    log.info("fleet connected broker=%s:%d models=%s", self.config.host,
                             self.config.effective_port, ",".join(self.models))
                    async for message in client.messages:
                        payload = message.payload
                        model = str(message.topic).split("/")[-2]
                        if isinstance(payload, bytes) and payload and model in self.models:
                            result = await self._handle(model, payload)
                            await client.publish(topic(prefix, model, "result", self.bridge_id),
                                                 json.dumps(result).encode(), qos=1, retain=True,
                                                 timeout=self.config.timeout)
            except MqttError as exc:
                log.warning("fleet %s", describe(exc, f"{self.config.host}:{self.config.effective_port}"))
            self.connected = False
            attempt += 1
            await asyncio.sleep(self._backoff.delay(attempt))

    async def _handle(self, model: str, data: bytes) -> dict[str, Any]:
        """Install ``data`` as ``model`` unless this exact model was handled before; the result
        to publish either way (the same one again for a model seen again, so a result lost to a
        broker outage is published after the reconnect)."""
        digest = sha256(data)
        known = self._state.get(model)
        if known is not None and known.get("sha256") == digest:
            self.counts["repeated"] += 1
            return known
        result: dict[str, Any] = {"bridge": self.bridge_id, "model": model, "sha256": digest,
                                  "time": iso(time.time())}
        if self._active_sha256(model) == digest:
            result.update(status="installed", version=self._version(model), note="already active")
        else:
            try:
                await self._install(model, data, f"fleet {digest[:12]}")
            except (ModelContractError, KeyError) as exc:
                reason = str(exc) if isinstance(exc, ModelContractError) else f"no model {exc}"
                log.error("fleet model refused model=%s sha256=%s error=%s; the current model "
                          "keeps scoring", model, digest[:12], reason)
                result.update(status="refused", reason=reason, version=self._version(model))
                self.counts["refused"] += 1
            else:
                log.warning("fleet model installed model=%s sha256=%s", model, digest[:12])
                result.update(status="installed", version=self._version(model))
                self.counts["installed"] += 1
        self._state[model] = result
        await asyncio.to_thread(_write_state, self._state_file, dict(self._state))
        return result

    def _active_sha256(self, model: str) -> str | None:
        status = None if self._view is None else self._view.models().get(model)
        if status is None:
            return None
        with contextlib.suppress(OSError):
            return sha256(status.path.read_bytes())
        return None

    def _version(self, model: str) -> str | None:
        status = None if self._view is None else self._view.models().get(model)
        return None if status is None else status.version


def _read_state(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None or not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        # A damaged record costs at most one repeated install of the retained model, which the
        # active-file check above then recognises: not a reason to refuse to start.
        log.error("fleet state %s unreadable (%s); starting without it", path, exc)
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(path: Path | None, state: Mapping[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, raw = tempfile.mkstemp(prefix=".state.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(state, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(raw, path)  # atomic: a kill -9 leaves the old record or the new one

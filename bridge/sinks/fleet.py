"""Fleet models through the broker (docs/fleet.md): the bridge's side (the broker helpers the
``plcbridge fleet`` commands use too are in ``bridge.sinks.fleet_broker``).

Topics (``F`` = ``[fleet] topic_prefix``, default ``plcbridge/fleet``; ``M`` = model name;
``B`` = bridge id), all QoS 1 and retained but the request, so a bridge or merger that
connects late (or after a broker restart, with persistence) still sees the latest of each:

=======================  =======================================================================
``F/M/stats/B``          a site's PCA sufficient statistics (``plcbridge fleet publish-stats``
                         or a bridge with ``live_stats``): counts, means and scatter matrices
                         of rows and window means; no rows
``F/M/model``            the merged candidate model, raw ONNX bytes (``plcbridge fleet merge``)
``F/M/request-stats``    any message: bridges with ``live_stats`` publish their statistics now
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

With ``[fleet] live_stats`` the bridge is also a site: it accumulates the statistics of its own
valid windows that the active model scored normal (``bridge.sinks.fleet_stats``), keeps them in
``<data_dir>/fleet/stats-<model>.json`` and publishes them on ``F/M/stats/B`` when it connects,
every ``stats_every`` seconds and on a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from bridge.config.fleet import FleetConfig, RolloutSpec, selection_bucket
from bridge.config.models import ShadowRuleConfig
from bridge.core.aio import cancel_and_wait
from bridge.core.backoff import Backoff
from bridge.core.errors import ConfigError, ModelContractError
from bridge.core.scores import Score
from bridge.core.timefmt import iso
from bridge.ports import BridgeView, SinkBase
from bridge.sinks.fleet_broker import MqttError, fleet_client, sha256, topic
from bridge.sinks.fleet_stats import LiveStatsBook
from bridge.sinks.link import LinkStats
from bridge.sinks.mqtt import Client, describe, read_password, tls_context

__all__ = ["RESULTS", "FleetSink", "FleetStats", "Install", "ShadowOf", "Stage", "WatchWindows"]

log = logging.getLogger("plcbridge.fleet")

# What the runtime gives the sink to install a model: ModelUpdater.install(name, data, source).
Install = Callable[[str, bytes, str], Awaitable[object]]
# ModelUpdater.stage(name, data, source, rule): rule None is the model's [models.shadow].
Stage = Callable[[str, bytes, str, ShadowRuleConfig | None], Awaitable[object]]
# The ``rollout`` of the model's current or last shadow (shadow_id, version, source, state,
# reason, comparison), or None.
ShadowOf = Callable[[str], Mapping[str, Any] | None]

# What F/M/result/B says, in the order a rollout can go through them.
RESULTS = ("skipped", "refused", "installed", "staged", "promoted", "rejected", "rolled back")
WATCH_EVERY = 0.5  # seconds between looks at a staged shadow / for a rollback
STATS_SAVE_EVERY = 30.0  # seconds between saves of the live statistics: at most that lost to a kill -9
# What the runtime gives the sink to see every scored window (ModelUpdater.add_window_observer).
WindowObserver = Callable[[str, np.ndarray, Score], None]
WatchWindows = Callable[[WindowObserver], None]


@dataclass(slots=True)
class FleetStats(LinkStats):
    """The fleet sink's connection counters (``FleetSink.status``, /api/v1/health ``fleet``).
    No spool: what a bridge publishes is retained and derived from its records (results in
    ``state.json``, statistics), so after an outage it is published again, not replayed."""

    published: int = 0  # messages the broker acknowledged: status, results, statistics
    stats_published: int = 0  # of which statistics documents


class FleetSink(SinkBase):
    """Implements ``bridge.ports.Sink``: subscribes to the fleet card and model of each of its
    models and acts once on a new model as the card's rollout says (docs/fleet.md): skip it
    (not selected), install it, or stage it in shadow and report the shadow's verdict.
    ``install`` and ``stage`` are the runtime's ``ModelUpdater.install`` / ``stage``;
    ``shadow`` gives the rollout figures of a model's current or last shadow
    (``Shadow.result``'s ``rollout``), ``events`` the runtime's recent events (a rollback is
    one); ``rules`` each model's ``[models.shadow]``; ``models`` the configured model names;
    ``data_dir`` the ``[storage] data_dir`` (None: the handled hashes live in memory only, as
    the updater keeps installed models in memory only then)."""

    name = "fleet"

    def __init__(self, config: FleetConfig, install: Install, models: Sequence[str],
                 data_dir: Path | None, *, stage: Stage | None = None,
                 shadow: ShadowOf | None = None,
                 events: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
                 rules: Mapping[str, ShadowRuleConfig] | None = None,
                 windows: WatchWindows | None = None,
                 features: Mapping[str, tuple[Sequence[str], float | None]] | None = None,
                 backoff: Backoff | None = None) -> None:
        unknown = [m for m in config.models if m not in models]
        if unknown:
            raise ConfigError([f"fleet.models: {', '.join(map(repr, unknown))} not in [[models]]"])
        self.config = config
        self.models = tuple(config.models or models)
        self.bridge_id = config.effective_bridge_id
        self._install = install
        self._stage = stage
        self._shadow = shadow or (lambda name: None)
        self._events = events or (lambda: ())
        self._rules = dict(rules or {})
        self._password = read_password(config, "fleet")  # ConfigError early, like [mqtt]
        if config.tls is not None:
            tls_context(config.tls, "fleet")
        self._state_file = None if data_dir is None else data_dir / "fleet" / "state.json"
        self._state: dict[str, dict[str, Any]] = _read_state(self._state_file)
        self._backoff = backoff or Backoff(config.reconnect_min, config.reconnect_max)
        self._view: BridgeView | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Client | None = None
        # The latest retained card and model per model name, as received: a card that comes
        # after its model (a new rollout of the same bytes) is acted on with the model held.
        self._cards: dict[str, bytes] = {}
        self._payloads: dict[str, bytes] = {}
        self._lock = asyncio.Lock()  # one decision at a time per sink: the record is shared
        self.stats = FleetStats()
        self.counts = dict.fromkeys(RESULTS, 0) | {"repeated": 0}
        # Live statistics (``live_stats``): per model, kept beside the state record.
        self._watch_windows = windows if config.live_stats else None
        self._live = LiveStatsBook(self.models if config.live_stats else (), features or {},
                                   None if data_dir is None else data_dir / "fleet")

    async def start(self, view: BridgeView | None = None) -> None:
        self._view = view
        self._tasks = [asyncio.create_task(self._run(), name="plcbridge.fleet"),
                       asyncio.create_task(self._watch(), name="plcbridge.fleet.watch")]
        if self._watch_windows is not None:
            self._watch_windows(self._on_window)
            self._tasks.append(asyncio.create_task(self._stats_loop(), name="plcbridge.fleet.stats"))

    def on_score(self, score: Score) -> None:
        return None  # the statistics need the window's values: they come through _on_window

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        self._client, self.stats.connected = None, False
        await self._live.save()

    def status(self) -> dict[str, Any]:
        body = self.stats.body()
        return {"broker": f"{self.config.host}:{self.config.effective_port}",
                "topic_prefix": self.config.topic_prefix, "bridge_id": self.bridge_id, **body,
                "results": dict(self.counts),
                "models": {m: {k: self._state[m].get(k) for k in ("sha256", "status")}
                           for m in self.models if m in self._state},
                "live_stats": self._live.figures()}

    @property
    def connected(self) -> bool:
        return self.stats.connected

    async def _send(self, client: Client, where: str, payload: bytes) -> None:
        """Publish retained, QoS 1; counted once the broker acknowledged it."""
        await client.publish(where, payload, qos=1, retain=True, timeout=self.config.timeout)
        self.stats.published += 1

    # -- live statistics -------------------------------------------------------------------

    def _on_window(self, model: str, values: np.ndarray, score: Score) -> None:
        if model not in self._live.models or self._view is None:
            return  # before the view's snapshot: it is built for every model, every window
        status = self._view.models().get(model)
        if status is not None:
            self._live.add(model, values, score, status.period)

    async def _stats_loop(self) -> None:
        loop = asyncio.get_running_loop()
        published = loop.time()
        while True:
            await asyncio.sleep(min(self.config.stats_every, STATS_SAVE_EVERY))
            await self._live.save()
            client = self._client
            if client is not None and loop.time() - published >= self.config.stats_every:
                with contextlib.suppress(MqttError):  # _run notices the lost connection
                    await self._publish_stats(client, self.models)
                    published = loop.time()

    async def _publish_stats(self, client: Client, models: Sequence[str]) -> None:
        for model in models:
            payload = self._live.payload(model, self.bridge_id)
            if payload is None:
                continue
            await self._send(client, topic(self.config.topic_prefix, model, "stats", self.bridge_id),
                             payload)
            self.stats.stats_published += 1
            log.info("fleet live statistics published model=%s", model)

    async def _run(self) -> None:
        attempt = 0
        prefix = self.config.topic_prefix
        while True:
            try:
                async with fleet_client(self.config, self._password, online=True) as client:
                    self.stats.up()
                    attempt = 0
                    await self._send(client, topic(prefix, "status", self.bridge_id),
                                     json.dumps({"online": True, "time": iso(time.time())}).encode())
                    for model in self.models:
                        # The card first: its retained copy then arrives before the model's.
                        await client.subscribe(topic(prefix, model, "card"), qos=1)
                        await client.subscribe(topic(prefix, model, "model"), qos=1)
                        if self._watch_windows is not None:
                            await client.subscribe(topic(prefix, model, "request-stats"), qos=1)
                    self._client = client
                    log.info("fleet connected broker=%s:%d models=%s", self.config.host,
                             self.config.effective_port, ",".join(self.models))
                    if self._watch_windows is not None:
                        # What an earlier run counted, or the retained copy may be older.
                        await self._publish_stats(client, self.models)
                    async for message in client.messages:
                        payload = message.payload
                        *_, model, kind = str(message.topic).split("/")
                        if kind == "request-stats" and model in self.models:
                            await self._publish_stats(client, [model])
                            continue
                        if not (isinstance(payload, bytes) and payload and model in self.models):
                            continue
                        (self._cards if kind == "card" else self._payloads)[model] = payload
                        result = await self._consider(model, card_only=kind == "card")
                        if result is not None:
                            await self._publish(client, result)
            except MqttError as exc:
                self.stats.down(describe(exc, f"{self.config.host}:{self.config.effective_port}"))
                log.warning("fleet %s", self.stats.last_error)
            self._client = None
            self.stats.connected = False
            attempt += 1
            await asyncio.sleep(self._backoff.delay(attempt))

    async def _publish(self, client: Client, result: Mapping[str, Any]) -> None:
        where = topic(self.config.topic_prefix, str(result["model"]), "result", self.bridge_id)
        await self._send(client, where, json.dumps(result).encode())

    async def _consider(self, model: str, *, card_only: bool = False) -> dict[str, Any] | None:
        """The result to publish for the model held for ``model``, if any. A card alone acts
        only when it is the card of the model held (a new rollout of the same bytes)."""
        data = self._payloads.get(model)
        if data is None:
            return None
        digest = sha256(data)
        spec = self._card_spec(model, digest)
        if card_only and spec is None:
            return None  # the card of a model not received yet: the model's arrival acts
        async with self._lock:
            return await self._handle(model, data, digest, spec)

    def _card_spec(self, model: str, digest: str) -> RolloutSpec | str | None:
        """The rollout the card states for the model of ``digest``: a spec, the reason it is
        malformed, or None (no card for these bytes: install on every bridge, as a card
        without a rollout says)."""
        raw = self._cards.get(model)
        if raw is None:
            return None
        try:
            card = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            log.error("fleet card unreadable model=%s", model)
            return None
        if not isinstance(card, dict) or card.get("sha256") != digest:
            return None
        try:
            return RolloutSpec.model_validate(card.get("rollout") or {})
        except ValidationError as exc:
            return f"malformed rollout in the card: {exc.errors()[0]['msg']}"

    async def _handle(self, model: str, data: bytes, digest: str,
                      spec: RolloutSpec | str | None) -> dict[str, Any]:
        """Act on ``data`` as ``model`` unless this exact model was handled before; the result
        to publish either way (the same one again for a model seen again, so a result lost to a
        broker outage is published after the reconnect). A bridge that skipped a model acts on
        it when a new card selects it (a canary, then everyone: the same bytes)."""
        known = self._state.get(model)
        stated = spec.model_dump() if isinstance(spec, RolloutSpec) else None
        if known is not None and known.get("sha256") == digest and not (
                known.get("status") == "skipped" and known.get("rollout") != stated):
            self.counts["repeated"] += 1
            return known
        result: dict[str, Any] = {"bridge": self.bridge_id, "model": model, "sha256": digest,
                                  "rollout": stated, "time": iso(time.time()), "at": time.time()}
        source = f"fleet {digest[:12]}"
        if isinstance(spec, str):
            self._refused(result, model, digest, spec)
        elif spec is not None and not spec.selects(self.bridge_id, digest):
            result.update(status="skipped", version=self._version(model),
                          reason=f"not selected ({_selection(spec, self.bridge_id, digest)})")
            self.counts["skipped"] += 1
        elif spec is not None and spec.shadow and (self._staged(model, source) is not None
                                                   or self._active_sha256(model) != digest):
            await self._stage_shadow(result, model, data, spec, source)
        elif self._active_sha256(model) == digest:
            result.update(status="installed", version=self._version(model), note="already active")
        else:
            try:
                await self._install(model, data, source)
            except (ModelContractError, KeyError) as exc:
                self._refused(result, model, digest, _reason(exc))
            else:
                log.warning("fleet model installed model=%s sha256=%s", model, digest[:12])
                result.update(status="installed", version=self._version(model))
                self.counts["installed"] += 1
        await self._record(model, result)
        return result

    async def _stage_shadow(self, result: dict[str, Any], model: str, data: bytes,
                            spec: RolloutSpec, source: str) -> None:
        shadow = self._staged(model, source)
        if shadow is None:
            # (Else a kill -9 came between the staging and the record: the updater resumed
            # that shadow, which is this rollout; staging again would restart its period.)
            if self._stage is None:
                self._refused(result, model, result["sha256"], "this bridge cannot stage models")
                return
            try:
                await self._stage(model, data, source, spec.shadow_rule(self._rules[model])
                                  if model in self._rules else None)
            except (ModelContractError, KeyError, ValidationError) as exc:
                self._refused(result, model, result["sha256"], _reason(exc))
                return
            shadow = self._shadow(model)
        assert shadow is not None
        log.warning("fleet model staged in shadow model=%s sha256=%s id=%s", model,
                    result["sha256"][:12], shadow["shadow_id"])
        result.update(status="staged", version=self._version(model), shadow_id=shadow["shadow_id"],
                      candidate_version=shadow["version"])
        self.counts["staged"] += 1

    def _staged(self, model: str, source: str) -> Mapping[str, Any] | None:
        """The updater's shadow of this rollout (same source, whatever its state), if any."""
        shadow = self._shadow(model)
        return shadow if shadow is not None and shadow.get("source") == source else None

    def _refused(self, result: dict[str, Any], model: str, digest: str, reason: str) -> None:
        log.error("fleet model refused model=%s sha256=%s error=%s; the current model keeps "
                  "scoring", model, digest[:12], reason)
        result.update(status="refused", reason=reason, version=self._version(model))
        self.counts["refused"] += 1

    async def _record(self, model: str, result: dict[str, Any]) -> None:
        self._state[model] = result
        await asyncio.to_thread(_write_state, self._state_file, dict(self._state))

    async def _watch(self) -> None:
        """Follow what happens to a rollout after the bridge's first answer: the shadow's
        verdict, an operator's rollback. Each change is recorded first, then published (a
        publish lost to an outage goes out again with the next retained model)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            for model in self.models:
                async with self._lock:
                    known = self._state.get(model)
                    update = None if known is None else self._progress(model, known)
                    if update is None:
                        continue
                    await self._record(model, update)
                client = self._client
                if client is not None:
                    with contextlib.suppress(MqttError):
                        await self._publish(client, update)

    def _progress(self, model: str, known: Mapping[str, Any]) -> dict[str, Any] | None:
        now = {"time": iso(time.time()), "at": time.time()}
        status = known.get("status")
        if status == "staged":
            shadow = self._shadow(model)
            if shadow is None or shadow.get("shadow_id") != known.get("shadow_id") \
                    or shadow.get("state") not in ("promoted", "rejected"):
                return None
            self.counts[shadow["state"]] += 1
            log.warning("fleet shadow %s model=%s sha256=%s reason=%s", shadow["state"], model,
                        str(known.get("sha256"))[:12], shadow.get("reason"))
            return {**known, **now, "status": shadow["state"], "reason": shadow.get("reason"),
                    "version": self._version(model), "comparison": shadow.get("comparison")}
        if status in ("installed", "promoted"):
            for event in reversed(self._events()):
                rollout = (event.get("detail") or {}).get("rollout") or {}
                if event.get("kind") == "model-rolled-back" and event.get("model") == model \
                        and float(event.get("time", 0)) >= float(known.get("at", 0)) \
                        and rollout.get("active_version") == known.get("version"):
                    self.counts["rolled back"] += 1
                    return {**known, **now, "status": "rolled back", "version": self._version(model),
                            "reason": f"rolled back by the operator to version {rollout.get('version')}"}
        return None

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


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no model {exc}"
    if isinstance(exc, ValidationError):
        return f"rule out of range: {exc.errors()[0]['msg']}"
    return str(exc)


def _selection(spec: RolloutSpec, bridge_id: str, digest: str) -> str:
    parts = [f"bridges {','.join(spec.bridges)}"] if spec.bridges else []
    if spec.fraction is not None:
        parts.append(f"fraction {spec.fraction:g}, this bridge's bucket "
                     f"{selection_bucket(bridge_id, digest):.4f}")
    return "; ".join(parts)


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

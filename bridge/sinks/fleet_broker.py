"""The fleet's broker helpers: topic names, the fleet client (its will is the bridge's retained
status), and the one-shot publish and collect the ``plcbridge fleet`` commands use. The bridge's
side is ``bridge.sinks.fleet``; topics are listed there and in docs/fleet.md."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence

from bridge.config.fleet import FleetConfig
from bridge.sinks.mqtt import Client, MqttError, Will, describe, new_client, read_password, tls_context

__all__ = ["MqttError", "collect_retained", "fleet_client", "publish_retained", "sha256", "topic"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def topic(prefix: str, *levels: str) -> str:
    """``prefix/level/...``, e.g. ``topic(F, M, "stats", B)`` or ``topic(F, "status", B)``."""
    return "/".join((prefix, *levels))


def fleet_client(config: FleetConfig, password: str | None, online: bool | None = None) -> Client:
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
        async with fleet_client(config, password) as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1, retain=True, timeout=config.timeout)
    except MqttError as exc:
        raise MqttError(describe(exc, f"{config.host}:{config.effective_port}")) from None


async def collect_retained(config: FleetConfig, topic_filter: str, *, min_count: int, wait: float,
                           quiet: float = 1.0, request: tuple[str, bytes] | None = None) -> dict[str, bytes]:
    """The retained messages on ``topic_filter``, by topic (empty payloads, which clear a retained
    message, are left out), the latest of each. Returns when ``min_count`` topics are in and
    nothing new came for ``quiet`` seconds, or after ``wait`` seconds with whatever came.
    ``request`` (topic, payload) is published, not retained, once subscribed: what answers it
    (live statistics) arrives within the quiet time and replaces the retained copy."""
    password = read_password(config, "fleet")
    found: dict[str, bytes] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        async with fleet_client(config, password) as client:
            await client.subscribe(topic_filter, qos=1)
            if request is not None:
                await client.publish(*request, qos=1, timeout=config.timeout)
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

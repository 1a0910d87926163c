"""Fault injection between the bridge and real pymodbus servers: every fault shows as bad
quality (never a stale value as good), the other device is unaffected, and the faulty one
recovers once the fault clears. Also the watchdog for an adapter that hangs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from adapters import create_adapter
from bridge.config import parse_config
from bridge.core.tags import Part, Quality, Reading, expand
from bridge.ports import Adapter
from bridge.runtime.bridge import Bridge
from tests.fault_proxy import fault_proxy
from tests.modbus_servers import Unit, tcp_server
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

POLL = 0.05
TIMEOUT = 0.3
BACKOFF_CAP = 1.0
# Recovery bound after a fault clears: the longest backoff delay (+20 % jitter), then one poll
# that may still be waiting out a timeout on each attempt.
RECOVERY_BOUND = 1.2 * BACKOFF_CAP + POLL + 2 * TIMEOUT * 2


def _config(faulty_port: int, healthy_port: int) -> Any:
    def device(name: str, port: int) -> dict[str, Any]:
        return {"name": name, "host": "127.0.0.1", "port": port, "poll_interval": POLL,
                "timeout": TIMEOUT, "retries": 1, "reconnect_min": 0.1, "reconnect_max": BACKOFF_CAP,
                "tags": [{"name": f"{name}.v", "address": 0, "type": "uint16"}]}
    return parse_config({"api": {"enabled": False},
                         "devices": [device("faulty", faulty_port), device("healthy", healthy_port)]})


def _latest(bridge: Bridge, tag: str) -> Reading:
    reading = bridge.store.latest(tag)
    assert reading is not None
    return reading


@pytest.mark.serial  # the healthy device's poll count over the fault
@pytest.mark.parametrize("mode", ["drop", "reset", "blackhole", "delay"])
async def test_fault_shows_bad_then_recovers(mode: str) -> None:
    units = {1: Unit(holding={0: 42})}
    async with tcp_server(units) as faulty_server, tcp_server(units) as healthy_server, \
            fault_proxy(faulty_server.port) as proxy:
        bridge = Bridge(_config(proxy.port, healthy_server.port))
        await bridge.start()
        try:
            await until(lambda: _latest_good(bridge, "faulty.v"), 5, "first good reading")
            healthy_before = bridge.adapters["healthy"].status.polls
            proxy.set(mode, delay=2 * TIMEOUT * 2)  # delay: longer than timeout × attempts
            went_bad = await until(lambda: not _latest_good(bridge, "faulty.v"), 5, f"{mode} → bad")
            faulty = _latest(bridge, "faulty.v")
            assert faulty.quality is Quality.BAD and faulty.value is None and faulty.reason
            # Never a stale value as good while the fault lasts.
            stop = time.monotonic() + 1.0
            while time.monotonic() < stop:
                assert not _latest_good(bridge, "faulty.v"), "stale value served as good"
                await asyncio.sleep(0.02)
            # The healthy device kept its pace (about 1 s / 50 ms polls since the fault began).
            healthy_polls = bridge.adapters["healthy"].status.polls - healthy_before
            assert healthy_polls >= 0.6 * (went_bad + 1.0) / POLL, healthy_polls
            assert bridge.adapters["healthy"].status.error_count == 0
            proxy.set("pass")
            recovered = await until(lambda: _latest_good(bridge, "faulty.v"), 5, "recovery")
            assert recovered <= RECOVERY_BOUND, recovered
            assert _latest(bridge, "faulty.v").value == 42
            status = bridge.adapters["faulty"].status
            assert status.error_count >= 1 and status.connected
        finally:
            await bridge.stop()
    # Reported for the closing note; the bound that matters is the 5 s deadline above.
    print(f"{mode}: bad after {went_bad:.2f} s, recovered {recovered:.2f} s after clearing")


def _latest_good(bridge: Bridge, tag: str) -> bool:
    reading = bridge.store.latest(tag)
    return reading is not None and reading.quality is Quality.GOOD


class _HangsOnce:
    """A real ModbusAdapter whose first read never returns, as a library bug would."""

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner
        self.name = inner.name
        self.status = inner.status
        self.requests_per_poll = inner.requests_per_poll
        self.hung = False

    async def connect(self) -> None:
        await self._inner.connect()

    async def read(self) -> list[Reading]:
        return expand(await self.poll())

    async def poll(self) -> list[Part]:
        if not self.hung:
            self.hung = True
            await asyncio.Event().wait()
        return await self._inner.poll()

    async def subscribe(self, on_readings: Any) -> bool:
        return await self._inner.subscribe(on_readings)

    async def close(self) -> None:
        await self._inner.close()


async def test_watchdog_restarts_a_stuck_adapter() -> None:
    async with tcp_server({1: Unit(holding={0: 7})}) as server:
        config = parse_config({"api": {"enabled": False}, "devices": [
            {"name": "d", "host": "127.0.0.1", "port": server.port, "poll_interval": 0.05,
             "timeout": 0.1, "retries": 0, "tags": [{"name": "v", "address": 0, "type": "uint16"}]}]})
        bridge = Bridge(config, adapter_factory=lambda d: _HangsOnce(create_adapter(d)))
        bridge._poll_budget["d"] = 0.5  # keep the test short; the default is >= 5 polls
        await bridge.start()
        try:
            # The error is counted before the restart (close, connect) and its readings are
            # stored after it: wait for both, not just the counter.
            await until(lambda: bridge.adapters["d"].status.errors.get("watchdog", 0) == 1
                        and bridge.store.latest("v") is not None, 5, "the watchdog")
            assert _latest(bridge, "v").reason.startswith("watchdog: poll did not finish")
            await until(lambda: _latest_good(bridge, "v"), 5, "polling to resume")
            assert _latest(bridge, "v").value == 7
        finally:
            await bridge.stop()


def test_watchdog_budget_covers_every_request_timing_out() -> None:
    config = parse_config({"api": {"enabled": False}, "devices": [
        {"name": "d", "host": "127.0.0.1", "port": 1, "poll_interval": 0.1, "timeout": 2,
         "retries": 2, "max_gap": 0, "tags": [
             {"name": "a", "address": 0, "type": "uint16"},
             {"name": "b", "address": 10, "type": "uint16"}]}]})
    bridge = Bridge(config)
    # Two requests × three attempts × 2 s, plus the margin.
    assert bridge._poll_budget["d"] == pytest.approx(2 * 3 * 2 + 2)



"""Issue 13.5: health that answers "what is wrong with device X": overruns counted (one log
line per episode, no scheduler warning per skip), a stale flag and stale values, the last
exception code, consecutive errors and round-trip time, in /api/v1/health and /metrics."""

from __future__ import annotations

import logging

import pytest

from bridge.config import parse_config
from bridge.core.tags import Quality
from bridge.runtime.bridge import Bridge
from tests.modbus_servers import Unit, silent_tcp_server, tcp_server
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)


def _bridge(port: int, **device: object) -> Bridge:
    return Bridge(parse_config({
        "devices": [{"name": "dev", "host": "127.0.0.1", "port": port,
                     "tags": [{"name": "dev.v", "address": 0, "type": "uint16"}], **device}],
        "metrics": {"enabled": False}, "api": {"host": "127.0.0.1", "port": 0}}))


async def test_hung_device_overruns_are_counted_and_logged_once_per_episode(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with silent_tcp_server() as port:
        # A hung device at a 0.25 s poll: each poll waits 2 x 1 s (timeout, one retry).
        bridge = _bridge(port, poll_interval=0.25, timeout=1.0, retries=1, breaker_after=0,
                         stale_after=0.5)
        await bridge.start()
        try:
            status = bridge.adapters["dev"].status
            await until(lambda: status.overruns >= 6, 10, "overruns to be counted")
            assert status.stale
            latest = bridge.store.latest("dev.v")
            assert latest is None or latest.quality is Quality.BAD
        finally:
            await bridge.stop(timeout=6)
    skipped = [r for r in caplog.records if "skipped" in r.getMessage() and r.name.startswith("apscheduler")]
    assert skipped == []  # today: ~3.5 scheduler warnings per second
    overrun_lines = [r for r in caplog.records if r.getMessage().startswith("poll overrun device=")]
    assert len(overrun_lines) == 1, [r.getMessage() for r in overrun_lines]


async def test_stale_after_turns_the_last_good_value_bad() -> None:
    async with tcp_server({1: Unit(holding={0: 5})}) as server:
        bridge = _bridge(server.port, poll_interval=0.1, timeout=0.2, retries=0, stale_after=0.3)
        await bridge.start()
        try:
            await until(lambda: (r := bridge.store.latest("dev.v")) is not None
                        and r.quality is Quality.GOOD, 5, "a good value")
            assert not bridge.adapters["dev"].status.stale
        finally:
            await bridge.stop(timeout=3)
    # The device vanished for good and polls keep failing... but a hung poll never writes a
    # reading: the stale check turns the last good value bad on its own.
    bridge.adapters["dev"].status.last_success = 0.0
    bridge._update_stale("dev")  # the check the scheduler runs at every due time
    latest = bridge.store.latest("dev.v")
    assert latest is not None and latest.quality is Quality.BAD
    assert latest.reason == "stale: no fresh reading for 0.3 s"
    assert bridge.adapters["dev"].status.stale


async def test_device_health_in_metrics_and_rest() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from bridge.api.schemas import DeviceHealth
    from bridge.sinks.metrics import PrometheusMetrics

    async with tcp_server({1: Unit(holding={0: 5})}) as server:
        bridge = _bridge(server.port, tags=[{"name": "dev.v", "address": 0, "type": "uint16"},
                                            {"name": "dev.gone", "address": 40, "type": "uint16"}])
        try:
            await bridge.poll_device("dev")
            await bridge.poll_device("dev")
            status = bridge.adapters["dev"].status
            assert status.last_exception_code == 2 and status.consecutive_errors == 2
            assert status.last_rtt is not None and status.last_rtt < 1
            health = DeviceHealth.of("dev", status)
            assert health.last_exception_code == 2 and health.consecutive_errors == 2
            assert health.rtt_ms is not None and health.overruns == 0
            text = PrometheusMetrics(bridge.view).exposition().decode()
            samples = {s.name: s.value for f in text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
                       for s in f.samples}
            assert samples["plcbridge_device_consecutive_errors"] == 2
            assert samples["plcbridge_device_last_exception_code"] == 2
            assert samples["plcbridge_device_overruns_total"] == 0
            assert samples["plcbridge_device_stale"] == 0
            assert samples["plcbridge_process_resident_memory_bytes"] > 10e6
            assert samples["plcbridge_process_cpu_seconds_total"] > 0
        finally:
            for adapter in bridge.adapters.values():
                await adapter.close()


async def test_pymodbus_frame_dumps_stay_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """pymodbus appends '\\n>>>>> send: ...' frames to its errors (a reply for another unit)."""
    from tests.test_bad_replies import _adapter, raw_peer

    caplog.set_level(logging.INFO)
    async with raw_peer() as (peer, port):
        adapter = _adapter(port)
        try:
            await adapter.read()
            peer.behaviour = "wrong_unit"
            await adapter.read()
        finally:
            await adapter.close()
    pymodbus = [r for r in caplog.records if r.name.startswith("pymodbus")]
    assert pymodbus, "pymodbus logged the skipped frame"
    assert all("\n" not in r.getMessage() for r in pymodbus), [r.getMessage() for r in pymodbus]
    assert any(">>>>> send" in r.getMessage() for r in pymodbus)

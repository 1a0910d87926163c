"""The contracts of bridge.ports, held by the running bridge against the real simulator: a sink
sees Scores and a read-only view (never the Bridge), a Score carries the counters sinks need,
and the bridge stops in one order (scheduler, sinks with write-back's fail-safe, adapters)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import pytest

from adapters import create_adapter
from adapters.sim.modbus import SimulatorHandle
from bridge.config import ModbusDeviceConfig, OpcuaDeviceConfig
from bridge.core.scores import Score
from bridge.ports import Adapter, BridgeView, Sink, SinkBase
from bridge.runtime.bridge import Bridge
from tests.test_writeback_e2e import _config
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)


class Recorder(SinkBase):
    """A sink that notes what it is given and when it is stopped."""

    name = "recorder"

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.view: BridgeView | None = None
        self.scores: list[Score] = []
        self.polls: list[str] = []

    async def start(self, view: BridgeView) -> None:
        self.view = view

    def on_score(self, score: Score) -> None:
        self.scores.append(score)

    def on_poll(self, device: str, seconds: float) -> None:
        self.polls.append(device)

    def status(self) -> Mapping[str, Any] | None:
        return {"scores": len(self.scores)}

    async def stop(self) -> None:
        self.log.append("sink stopped")


class Closing:
    """A real adapter that notes when it is closed, and what the PLC held at that moment."""

    def __init__(self, inner: Adapter, log: list[str], sim: SimulatorHandle) -> None:
        self._inner, self._log, self._sim = inner, log, sim
        self.name, self.status = inner.name, inner.status

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def close(self) -> None:
        self._log.append(f"adapter {self.name} closed, window_valid={self._sim.holding(104)[0]}")
        await self._inner.close()


def test_the_sinks_and_adapters_satisfy_their_protocols(sim: SimulatorHandle) -> None:
    bridge = Bridge(_config(sim.port, sim.port, "dry-run", {}), speed=10)
    assert all(isinstance(a, Adapter) for a in bridge.adapters.values())
    assert all(isinstance(s, Sink) for s in bridge.sinks)
    assert bridge.sinks[0].name == "writeback"  # first in the list


async def test_a_sink_sees_scores_and_a_read_only_view(sim: SimulatorHandle) -> None:
    log: list[str] = []
    bridge = Bridge(_config(sim.port, sim.port, "dry-run", {}), speed=10)
    recorder = Recorder(log)
    bridge.sinks.append(recorder)
    await bridge.start()
    try:
        await until(lambda: sum(s.window_valid for s in recorder.scores) >= 3, 20, "three scored windows")
    finally:
        await bridge.stop()
    view = recorder.view
    assert view is not None and view is not bridge
    # The view offers the read side only: no runners, adapters, store or jobs to reach into.
    for name in ("runners", "adapters", "store", "sinks", "score_model", "poll_device"):
        assert not hasattr(view, name), name
    assert list(view.devices()) == ["plant", "plc"] and view.devices()["plant"].polls > 0
    model = view.models()["pump"]
    runner = bridge.runners["pump"]
    assert (model.version, model.threshold, model.inputs) == (
        runner.detector.version, runner.threshold, tuple(runner.tags))
    assert model.scored == runner.scored and model.writeback_mode == "dry-run"
    assert model.writeback is not None and model.writeback.dry_run > 0
    assert view.latest_score("pump") == bridge.scores.latest("pump")
    assert set(recorder.polls) == {"plant", "plc"}
    # Each Score carries the model's counters after its cycle and, if scored, the ONNX time.
    scored = [s for s in recorder.scores if s.window_valid]
    assert [s.scored for s in scored] == list(range(1, len(scored) + 1))
    assert all(s.inference_seconds is not None and 0 < s.inference_seconds < 1 for s in scored)
    assert all(s.inference_seconds is None for s in recorder.scores if not s.window_valid)
    assert scored[-1].anomalies == sum(s.anomaly for s in scored)


async def test_stop_order_is_scheduler_then_sinks_then_adapters(sim: SimulatorHandle) -> None:
    log: list[str] = []

    def factory(device: ModbusDeviceConfig | OpcuaDeviceConfig) -> Adapter:
        return Closing(create_adapter(device), log, sim)

    bridge = Bridge(_config(sim.port, sim.port, "on", {}), adapter_factory=factory, speed=10)
    bridge.sinks.append(Recorder(log))
    await bridge.start()
    try:
        await until(lambda: sim.holding(104) == [1], 20, "a valid window written")
    finally:
        await bridge.stop()
    # Write-back left window_valid = 0 before any adapter closed; the other sinks stopped
    # before the adapters too.
    assert log == ["sink stopped", "adapter plant closed, window_valid=0",
                   "adapter plc closed, window_valid=0"]


async def test_a_sink_that_cannot_start_stops_the_bridge_with_fail_safe_values(sim: SimulatorHandle) -> None:
    config = _config(sim.port, sim.port, "on", {})
    with socket.socket() as taken:  # a port someone took after the pre-flight check
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config.model_copy(update={"modbus_server": config.modbus_server.model_copy(
            update={"enabled": True, "host": "127.0.0.1", "port": port})})
        bridge = Bridge(config, speed=10)
        assert sim.holding(102) == [0]  # not the anomaly fail-safe (1) yet
        with pytest.raises(OSError):
            await bridge.start()
    # Stopped, not half-started: no scheduler, adapters closed, and the PLC got its fail-safe.
    assert bridge._scheduler is None
    assert sim.holding(102) == [1] and sim.holding(104) == [0]

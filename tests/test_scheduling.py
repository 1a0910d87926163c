"""How the runtime schedules: one job per poll interval, models scored right after their input
devices' polls (no job of their own), and a hung input device cannot hold a model's scoring
past its period. Real pymodbus servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.config import parse_config
from bridge.core.scores import Score
from bridge.core.tags import Quality
from bridge.ports import BridgeView, SinkBase
from bridge.runtime.bridge import Bridge
from tests.modbus_servers import Unit, silent_tcp_server, tcp_server
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)
SPEED = 10.0  # intervals and the model's 1 s period run ten times faster
FEATURES = ("pressure", "flow", "current", "temperature", "vibration")


class Scores(SinkBase):
    name = "scores"

    def __init__(self) -> None:
        self.seen: list[tuple[float, Score]] = []

    async def start(self, view: BridgeView) -> None:
        pass

    async def stop(self) -> None:
        pass

    def on_score(self, score: Score) -> None:
        self.seen.append((time.monotonic(), score))


def _image() -> dict[int, int]:
    words: list[int] = []
    for value in (5.0, 20.0, 8.0, 40.0, 0.5):
        words += struct.unpack(">2H", struct.pack(">f", value))
    return dict(enumerate(words))


def _config(port_a: int, port_b: int, *, b_interval: float = 1.0, timeout: float = 0.5) -> Any:
    tags = [{"name": f, "address": 2 * i, "type": "float32"} for i, f in enumerate(FEATURES)]
    return parse_config({
        "api": {"enabled": False},
        "devices": [
            {"name": "a", "host": "127.0.0.1", "port": port_a, "unit_id": 1, "poll_interval": 1.0,
             "timeout": 0.5, "retries": 0, "tags": tags[:3]},
            {"name": "b", "host": "127.0.0.1", "port": port_b, "unit_id": 1, "poll_interval": b_interval,
             "timeout": timeout, "retries": 0, "tags": tags[3:]},
            {"name": "other", "host": "127.0.0.1", "port": port_a, "unit_id": 1,
             "poll_interval": 0.5, "tags": [{"name": "x", "address": 0, "type": "uint16"}]},
        ],
        "models": [{"name": "pump", "inputs": {f: f for f in FEATURES}}],
    })


@contextlib.asynccontextmanager
async def _running(config: Any) -> AsyncIterator[tuple[list[str], Scores]]:
    """The bridge started with a score-recording sink; yields its scheduler's job ids."""
    bridge = Bridge(config, speed=SPEED)
    sink = Scores()
    bridge.sinks.append(sink)
    await bridge.start()
    try:
        assert bridge._scheduler is not None
        yield sorted(job.id for job in bridge._scheduler.get_jobs()), sink
    finally:
        await bridge.stop()


def _gaps(sink: Scores) -> list[float]:
    return [b - a for a, b in itertools.pairwise(t for t, _ in sink.seen)]


async def test_one_job_per_interval_and_the_model_scores_after_its_polls() -> None:
    async with (tcp_server({1: Unit(holding=_image())}) as server,
                _running(_config(server.port, server.port)) as (jobs, sink)):
        # Devices a and b share the 1 s interval: one job; the model (period 1 s, inputs from a
        # and b) has none of its own.
        assert jobs == ["poll:0.5s", "poll:1s"]
        await until(lambda: any(s.window_valid for _, s in sink.seen), 10, "a valid window")
    valid = [s for _, s in sink.seen if s.window_valid]
    assert valid[0].score is not None and valid[0].scored == 1
    # Every row came from a finished poll: the window never held a missing or stale input.
    assert all("no reading" not in s.reason and "stale" not in s.reason for _, s in sink.seen)
    gaps = _gaps(sink)
    assert gaps and max(gaps) < 0.6, gaps  # one score per 0.1 s period; slack for a loaded box


async def test_a_hung_input_device_delays_its_model_by_at_most_a_period() -> None:
    async with (tcp_server({1: Unit(holding=_image())}) as server, silent_tcp_server() as silent,
                _running(_config(server.port, silent, timeout=2.0)) as (_, sink)):
        await until(lambda: len(sink.seen) >= 20, 10, "20 scoring cycles (the window holds 16)")
    # Device b never answers (each poll waits its 2 s timeout, 20 periods at this speed): the
    # model is still scored about once a 0.1 s period, its windows invalid with b's tags named.
    assert max(_gaps(sink)) < 0.6, _gaps(sink)
    assert all(not s.window_valid for _, s in sink.seen)
    last = sink.seen[-1][1]
    assert "temperature" in last.reason or "vibration" in last.reason, last


async def test_a_model_with_another_period_keeps_its_own_job() -> None:
    # b now polls faster than the model's period: the model samples on its own job.
    async with (tcp_server({1: Unit(holding=_image())}) as server,
                _running(_config(server.port, server.port, b_interval=0.5)) as (jobs, sink)):
        assert jobs == ["poll:0.5s", "poll:1s", "score:pump"]
        await until(lambda: any(s.window_valid for _, s in sink.seen), 10, "a valid window")


def _line_config(line_port: int, other_port: int) -> Any:
    """Three units behind one server (one line) and a device on a server of its own; two
    requests per device (max_gap 0), so interleaved polls would show."""
    def device(name: str, port: int, unit: int) -> dict[str, Any]:
        return {"name": name, "host": "127.0.0.1", "port": port, "unit_id": unit, "poll_interval": 1.0,
                "timeout": 0.5, "retries": 0, "max_gap": 0,
                "tags": [{"name": f"{name}_lo", "address": 0, "type": "uint16"},
                         {"name": f"{name}_hi", "address": 100, "type": "uint16"}]}
    return parse_config({"api": {"enabled": False},
                         "devices": [device("u1", line_port, 1), device("u2", line_port, 2),
                                     device("u3", line_port, 3), device("alone", other_port, 1)]})


def _spans(bridge: Bridge) -> dict[str, list[tuple[float, float]]]:
    """Record (start, end) of every adapter poll, by device."""
    spans: dict[str, list[tuple[float, float]]] = {name: [] for name in bridge.adapters}
    for name, adapter in bridge.adapters.items():
        def timed(poll: Any = adapter.poll, name: str = name) -> Any:
            async def run() -> Any:
                start = time.monotonic()
                try:
                    return await poll()
                finally:
                    spans[name].append((start, time.monotonic()))
            return run
        adapter.poll = timed()  # type: ignore[method-assign]
    return spans


async def test_the_devices_of_a_line_are_polled_in_turn_and_lines_in_parallel() -> None:
    image = Unit(holding={0: 7, 100: 8})
    async with tcp_server({1: image, 2: image, 3: image}) as line, tcp_server({1: image}) as other:
        bridge = Bridge(_line_config(line.port, other.port), speed=SPEED)
        spans = _spans(bridge)
        await bridge.start()
        try:
            await until(lambda: min(map(len, spans.values())) >= 5, 10, "5 polls of every device")
        finally:
            await bridge.stop()
    for cycle in range(5):
        u1, u2, u3, alone = (spans[name][cycle] for name in ("u1", "u2", "u3", "alone"))
        # One line: a device's requests all go before the next device's (no interleaving),
        # in config order; the other line's device runs beside them, not after them.
        assert u1[1] <= u2[0] and u2[1] <= u3[0], (u1, u2, u3)
        assert alone[0] < u1[1], (alone, u1)
    for name in ("u1", "u2", "u3", "alone"):
        latest = bridge.store.latest(f"{name}_hi")
        assert latest is not None and latest.value == 8 and latest.quality is Quality.GOOD


async def test_a_failing_poll_does_not_starve_the_rest_of_its_line(caplog: pytest.LogCaptureFixture) -> None:
    image = Unit(holding={0: 7, 100: 8})
    async with tcp_server({1: image, 2: image, 3: image}) as line, tcp_server({1: image}) as other:
        bridge = Bridge(_line_config(line.port, other.port), speed=SPEED)

        async def broken() -> Any:
            raise RuntimeError("a bug in the adapter")
        bridge.adapters["u1"].poll = broken  # type: ignore[method-assign]
        await bridge.start()
        try:
            await until(lambda: bridge.adapters["u3"].status.polls >= 3, 10, "3 polls of u3")
        finally:
            await bridge.stop()
    assert bridge.adapters["u2"].status.polls >= 3
    assert "poll failed device=u1" in caplog.text and "a bug in the adapter" in caplog.text


async def test_stop_ends_a_line_walk_between_devices() -> None:
    image = Unit(holding={0: 7, 100: 8})
    async with tcp_server({1: image, 2: image, 3: image}) as line, tcp_server({1: image}) as other:
        bridge = Bridge(_line_config(line.port, other.port), speed=SPEED)
        spans = _spans(bridge)
        first = bridge.adapters["u1"].poll
        entered = asyncio.Event()

        async def slow() -> Any:
            entered.set()
            await asyncio.sleep(0.3)
            return await first()
        bridge.adapters["u1"].poll = slow  # type: ignore[method-assign]
        await bridge.start()
        await asyncio.wait_for(entered.wait(), 10)
        await bridge.stop()
    # u1's poll in flight finished (stop waits for running jobs); u2 and u3 were not started.
    assert spans["u2"] == spans["u3"] == []
    latest = bridge.store.latest("u1_hi")
    assert latest is not None and latest.quality is Quality.GOOD

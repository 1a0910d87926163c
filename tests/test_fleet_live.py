"""Fleet statistics from live data (issue 16): three running bridges with ``[fleet] live_stats``
accumulate the PCA statistics of their own valid windows that the active model scored normal;
``plcbridge fleet merge --request-stats`` (a process) asks for them through a real mosquitto
and merges them; the candidate equals PCA fitted centrally on the very same windows, and no
window value crossed the broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.core.scores import Score
from bridge.ml.fleet import STATS_KEYS
from bridge.ml.heads import pca
from bridge.ml.heads.graph import assemble, fit_front
from bridge.scoring.detector import Detector
from bridge.sinks.fleet import FleetSink
from bridge.sinks.fleet_stats import read_live_stats
from tests.mqtt_broker import MOSQUITTO, Broker
from tests.test_fleet import PREFIX, Tap, _numbers, _run_cli, broker
from tests.waiting import until

__all__ = ["broker"]  # the fixture, shared with tests/test_fleet.py

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")]

SPEED = 10.0
WINDOWS = 40  # counted windows per bridge before the merge


class Seen:
    """Every window a bridge's active model scored, as the runtime hands them to observers:
    the test's own record, to fit centrally on exactly what the bridge counted."""

    def __init__(self) -> None:
        self.windows: list[tuple[np.ndarray, Score]] = []

    def __call__(self, model: str, values: np.ndarray, score: Score) -> None:
        self.windows.append((values.copy(), score))

    def normal(self) -> list[np.ndarray]:
        return [v for v, s in self.windows if s.window_valid and s.score is not None and not s.anomaly]


def _bridge(tmp_path: Path, i: int, sim_port: int, broker_port: int) -> Any:
    from bridge.cli.demo import demo_config
    from bridge.config.fleet import FleetConfig
    from bridge.runtime.bridge import Bridge

    config = demo_config(sim_port, api_port=0)
    config = config.model_copy(update={
        "storage": config.storage.model_copy(update={"data_dir": tmp_path / f"b{i}"}),
        "fleet": FleetConfig(host="127.0.0.1", port=broker_port, bridge_id=f"b{i}", live_stats=True,
                             reconnect_min=0.1, reconnect_max=0.5)})
    return Bridge(config, speed=SPEED)


def _fleet_sink(bridge: Any) -> FleetSink:
    return next(s for s in bridge.sinks if isinstance(s, FleetSink))


async def test_live_statistics_merge_to_the_central_fit_of_the_same_windows(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    from adapters.sim.modbus import start_simulator

    sims = [await start_simulator("127.0.0.1", 0, seed=21 + i, step=0.01, speed=SPEED) for i in range(3)]
    bridges = [_bridge(tmp_path, i, sims[i].port, broker.port) for i in range(3)]
    seen = [Seen() for _ in bridges]
    for bridge, record in zip(bridges, seen, strict=True):
        bridge.updater.add_window_observer(record)  # before the fleet sink's: same windows, same order
    tap = Tap(broker.port)
    try:
        await tap.start()
        await asyncio.gather(*(b.start() for b in bridges))
        # Site 0's pressure sensor spikes for a while: the windows it spoils must stay out.
        await until(lambda: len(seen[0].normal()) >= 5, 20, "site 0 to score normal windows")
        await sims[0].inject("spike")
        await until(lambda: sum(s.anomaly for _, s in seen[0].windows) >= 5, 20, "spike windows")
        await sims[0].inject("none")

        def counted() -> bool:
            return all(_fleet_sink(b).status()["live_stats"].get("pump", {}).get("windows", 0) >= WINDOWS
                       for b in bridges)
        await until(counted, 30, f"{WINDOWS} counted windows on every bridge")
        out = tmp_path / "live.onnx"
        printed = await _run_cli("fleet", "merge", "--model", "pump", "--broker", f"127.0.0.1:{broker.port}",
                                 "--min-sites", "3", "--wait", "10", "--request-stats", "--no-publish",
                                 "--out", str(out))
        assert "3 sites (b0, b1, b2)" in printed, printed
    finally:
        await tap.stop()
        for bridge in bridges:
            await bridge.stop()
        for sim in sims:
            await sim.stop()

    # What was merged: each bridge's statistics as answered to the request (the latest on the
    # broker); their counts say how many of the bridge's windows they hold, in order.
    payloads = {i: json.loads(tap.latest(f"{PREFIX}/pump/stats/b{i}") or b"{}") for i in range(3)}
    chosen: list[np.ndarray] = []
    for i, body in payloads.items():
        n = body["window_means"]["count"]
        normal = seen[i].normal()
        assert n >= WINDOWS and len(normal) >= n and body["rows"]["count"] == n, (i, n, len(normal))
        chosen += normal[:n]
        sink = _fleet_sink(bridges[i]).status()["live_stats"]["pump"]
        invalid = sum(not s.window_valid or s.score is None for _, s in seen[i].windows)
        anomalous = sum(s.window_valid and s.score is not None and s.anomaly for _, s in seen[i].windows)
        # Every window the bridge scored went one way: counted, invalid or flagged.
        assert (sink["windows"], sink["invalid"], sink["anomalous"]) == (len(normal), invalid, anomalous)
    assert _fleet_sink(bridges[0]).status()["live_stats"]["pump"]["anomalous"] >= 5

    # Central: PCA fitted on the same windows (each one's newest row, and the windows).
    windows = np.stack(chosen).astype(np.float64)
    rows = windows[:, -1, :]
    fed = Detector(out)
    front_c, a = fit_front(rows, windows)
    central = tmp_path / "central.onnx"
    central.write_bytes(assemble(front_c, pca.head(a, 0), fed.contract, "central").SerializeToString())
    threshold_c, _, _ = pca.analytic_threshold(a.T @ a / len(a), 0.01, 2.0)
    scores_f = fed.score_batch(windows.astype(np.float32))
    scores_c = Detector(central).score_batch(windows.astype(np.float32))
    score_diff = float(np.max(np.abs(scores_f - scores_c)))
    threshold_diff = abs(fed.threshold - threshold_c)
    with capsys.disabled():
        counts = [p["window_means"]["count"] for p in payloads.values()]
        print(f"\nlive fleet vs central: {len(windows)} windows ({counts} per bridge), max |score "
              f"diff| {score_diff:.3g} (scores up to {scores_c.max():.3g}), "
              f"threshold {fed.threshold:.9g} vs {threshold_c:.9g} (diff {threshold_diff:.3g})")
    np.testing.assert_allclose(scores_f, scores_c, rtol=1e-4, atol=1e-4)
    assert threshold_diff <= 1e-6 * threshold_c

    # What crossed the broker: statuses, the request, three statistics documents; no value of
    # any window (every sampled value, as float64) is among the statistics' numbers.
    topics = {t for t, _ in tap.messages}
    assert topics == {f"{PREFIX}/pump/request-stats", *(f"{PREFIX}/status/b{i}" for i in range(3)),
                      *(f"{PREFIX}/pump/stats/b{i}" for i in range(3))}, topics
    raw = {float(v) for record in seen for values, _ in record.windows
           for v in values.astype(np.float64).ravel()}
    for topic, payload in tap.messages:
        if "/stats/" in topic:
            body = json.loads(payload)
            assert set(body) <= STATS_KEYS and body["source"]["file"].startswith("live b")
            numbers = list(_numbers(body))
            assert len(numbers) <= 2 * (1 + 5 + 25) + 10 and not raw & set(numbers)

    # Kept in the data directory across a restart: what the bridge had counted when it stopped.
    for i in range(3):
        kept = read_live_stats(tmp_path / f"b{i}" / "fleet", "pump")
        assert kept is not None and kept.window_means.count == len(seen[i].normal())
        restarted = _bridge(tmp_path, i, 1, broker.port)
        assert _fleet_sink(restarted).status()["live_stats"]["pump"]["windows"] == len(seen[i].normal())

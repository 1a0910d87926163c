"""Federated models through the broker (issue 16 item 3), against a real mosquitto with the
sites, the merger and the bridges as separate ``python -m bridge.cli`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
import pytest_asyncio

from bridge.cli import main
from bridge.ml.dataset import load_csv
from bridge.ml.fleet import STATS_KEYS
from bridge.ml.heads import pca
from bridge.ml.heads.graph import assemble, fit_front
from bridge.ml.replay import replay
from bridge.scoring.detector import Detector
from tests.mqtt_broker import MOSQUITTO, Broker
from tests.test_train_evaluate import T0, write_csv
from tests.waiting import until

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")]

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "plcbridge/fleet"
# The inputs of the demo's pump model, so the fleet model fits the bridges' [[models]] pump.
INPUTS = ("pressure", "flow", "current", "temperature", "vibration")
WINDOW = 5


def site_csv(path: Path, rows: int, seed: int, offset: float) -> Path:
    """One site's normal operation; sites differ in level so the merge's mean shift matters."""
    rng = np.random.default_rng(seed)
    flow = 100 + offset + np.cumsum(rng.normal(0, 0.05, rows)) + rng.normal(0, 0.3, rows)
    cols = {"pressure": 0.05 * flow + rng.normal(0, 0.05, rows), "flow": flow,
            "current": 0.1 * flow + rng.normal(0, 0.02, rows),
            "temperature": 40 + 0.02 * flow + rng.normal(0, 0.1, rows),
            "vibration": 2 + rng.normal(0, 0.05, rows)}
    return write_csv(path, [T0 + 10_000 * seed + i for i in range(rows)],
                     {k: list(v) for k, v in cols.items()})


def _sites(tmp_path: Path) -> list[Path]:
    return [site_csv(tmp_path / f"site{i}.csv", 150 + 40 * i, seed=i, offset=2.0 * i) for i in range(3)]


async def _cli(*args: str, log: Path | None = None) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = log.open("ab") if log is not None else asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.cli", *args,
                                                stdout=out, stderr=out if log else asyncio.subprocess.PIPE,
                                                env=env)


async def _run_cli(*args: str) -> str:
    proc = await _cli(*args)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (args, stdout.decode(), stderr.decode())
    return stdout.decode()


class Tap:
    """Every message the broker routes (``#``), raw bytes: what crossed the broker."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await until(self._ready.is_set, 10, "the tap to subscribe")

    async def _run(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", self.port, identifier="fleet-tap") as client:
                await client.subscribe("#", qos=1)
                self._ready.set()
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    self.messages.append((str(message.topic), message.payload))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def latest(self, topic: str) -> bytes | None:
        return next((p for t, p in reversed(self.messages) if t == topic), None)


async def restart_broker(tap: Tap, broker: Broker) -> Tap:
    """Stop the broker (persistence on) and bring it back; the tap that listens again."""
    await tap.stop()
    await broker.stop()
    await broker.start()
    tap = Tap(broker.port)
    await tap.start()
    return tap


@pytest_asyncio.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker")
    await b.start()
    yield b
    await b.stop()


async def _publish_sites(port: int, sites: list[Path]) -> None:
    """Three sites at once, each its own process, as three bridges would."""
    await asyncio.gather(*(_run_cli("fleet", "publish-stats", str(csv), "--model", "pump",
                                    "--bridge-id", f"site{i}", "--broker", f"127.0.0.1:{port}",
                                    "--window", str(WINDOW)) for i, csv in enumerate(sites)))


async def _merge(port: int, out: Path, *extra: str) -> str:
    return await _run_cli("fleet", "merge", "--model", "pump", "--broker", f"127.0.0.1:{port}",
                          "--min-sites", "3", "--wait", "10", "--out", str(out), *extra)


def _numbers(obj: Any) -> Iterator[float]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield float(obj)


async def test_fleet_model_equals_central_training_and_no_raw_values_cross(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    tap = Tap(broker.port)
    await tap.start()
    sites = _sites(tmp_path)
    await _publish_sites(broker.port, sites)
    printed = await _merge(broker.port, tmp_path / "candidate.onnx")
    await until(lambda: tap.latest(f"{PREFIX}/pump/model") is not None, 10, "the fleet model")
    await tap.stop()
    model = tap.latest(f"{PREFIX}/pump/model")
    assert model is not None and model == (tmp_path / "candidate.onnx").read_bytes()

    # The same statistics merged by hand (`train --from-stats`) give the same bytes.
    stats = []
    for i, csv in enumerate(sites):
        stats.append(tmp_path / f"s{i}.json")
        assert main(["train", str(csv), "--kind", "pca", "--window", str(WINDOW),
                     "--export-stats", str(stats[-1])]) == 0
    local = tmp_path / "local.onnx"
    assert main(["train", "--kind", "pca", "--from-stats", *map(str, stats), "--name", "pump",
                 "--out", str(local)]) == 0
    assert local.read_bytes() == model

    # Centralized: PCA fitted on the pooled rows and windows of the three sites.
    fed = Detector(tmp_path / "candidate.onnx")
    tables = [load_csv(p) for p in sites]
    reps = [replay(t, INPUTS, length=WINDOW, period=1.0) for t in tables]
    rows = np.concatenate([t.select(INPUTS) for t in tables])
    windows = np.concatenate([r.windows[r.valid] for r in reps]).astype(np.float64)
    front_c, a = fit_front(rows, windows)
    central = tmp_path / "central.onnx"
    central.write_bytes(assemble(front_c, pca.head(a, 0), fed.contract, "central").SerializeToString())
    scores_f = fed.score_batch(windows.astype(np.float32))
    scores_c = Detector(central).score_batch(windows.astype(np.float32))
    cov_c = a.T @ a / len(a)
    threshold_c, _, _ = pca.analytic_threshold(cov_c, 0.01, 2.0)
    merged = [json.loads(path.read_text()) for path in stats]
    rows_m = pca.Moments.from_json(merged[0]["rows"], 5)
    wins_m = pca.Moments.from_json(merged[0]["window_means"], 5)
    for site in merged[1:]:
        rows_m = rows_m.merge(pca.Moments.from_json(site["rows"], 5))
        wins_m = wins_m.merge(pca.Moments.from_json(site["window_means"], 5))
    cov_diff = float(np.max(np.abs(pca.front_from_moments(rows_m, wins_m)[1] - cov_c)))
    score_diff = float(np.max(np.abs(scores_f - scores_c)))
    threshold_diff = abs(fed.threshold - threshold_c)
    with capsys.disabled():
        print(f"\nfleet vs central: {len(windows)} windows, max |score diff| {score_diff:.3g} "
              f"(scores up to {scores_c.max():.3g}), threshold {fed.threshold:.9g} vs {threshold_c:.9g} "
              f"(diff {threshold_diff:.3g}); max |feature covariance diff| (float64) {cov_diff:.3g}")
    np.testing.assert_allclose(scores_f, scores_c, rtol=1e-4, atol=1e-4)
    assert threshold_diff <= 1e-6 * threshold_c
    card = json.loads(tap.latest(f"{PREFIX}/pump/card") or b"{}")
    assert card["sha256"] == hashlib.sha256(model).hexdigest()
    assert card["sites"] == ["site0", "site1", "site2"]
    assert card["threshold"] == pytest.approx(fed.threshold) and card["sha256"] in printed

    # What crossed the broker: three statistics documents, the card and the model; nothing else.
    topics = sorted({t for t, _ in tap.messages})
    assert topics == [f"{PREFIX}/pump/card", f"{PREFIX}/pump/model",
                      *(f"{PREFIX}/pump/stats/site{i}" for i in range(3))], topics
    raw = {float(np.float64(v)) for t in tables for v in t.select(INPUTS).ravel()}
    n = len(INPUTS)
    for topic, payload in tap.messages:
        if "/stats/" not in topic:
            continue
        body = json.loads(payload)
        assert set(body) <= STATS_KEYS
        assert set(body["rows"]) == set(body["window_means"]) == {"count", "mean", "scatter"}
        numbers = list(_numbers(body))
        # Counts, means, scatter and a few scalars: a fixed size, whatever the number of rows.
        assert len(numbers) <= 2 * (1 + n + n * n) + 10
        assert not raw & set(numbers)  # not one recorded value is among them
    # The model holds the merged front end and loadings, no more: far smaller than the rows.
    assert len(model) < 8 * rows.size


def _bridge_config(tmp_path: Path, index: int, sim_port: int, broker_port: int) -> Path:
    from bridge.cli.demo import DEMO_TOML
    from tests.mqtt_broker import free_port

    folder = tmp_path / f"bridge{index}"
    folder.mkdir(exist_ok=True)
    text = (f'[api]\nport = {free_port()}\n\n[storage]\ndata_dir = "data"\n\n'
            f'[fleet]\nhost = "127.0.0.1"\nport = {broker_port}\nbridge_id = "b{index}"\n'
            'reconnect_min = 0.1\nreconnect_max = 0.5\n\n' + DEMO_TOML.format(port=sim_port))
    path = folder / "config.toml"
    path.write_text(text)
    return path


class Fleet:
    """Three bridge processes; every incarnation's log appended to one file per bridge."""

    def __init__(self, tmp_path: Path, sim_port: int, broker_port: int, speed: float = 1.0) -> None:
        self.configs = [_bridge_config(tmp_path, i, sim_port, broker_port) for i in range(3)]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * 3
        self.speed = speed  # `run --speed`: the simulator's plant must run at the same speed

    def log(self, i: int) -> Path:
        return self.configs[i].parent / "bridge.log"

    async def start(self, i: int) -> None:
        self.procs[i] = await _cli("run", str(self.configs[i]), "--log-level", "info",
                                   "--speed", str(self.speed), log=self.log(i))

    async def kill9(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None and proc.returncode is None, self.log(i).read_text()
        proc.kill()
        await proc.wait()

    async def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    def active_sha(self, i: int) -> str | None:
        path = self.configs[i].parent / "data" / "models" / "pump.onnx"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    def installs(self, i: int) -> int:
        return self.log(i).read_text().count("model replaced model=pump")


async def _online(tap: Tap, bridges: range) -> None:
    def all_online() -> bool:
        for i in bridges:
            status = tap.latest(f"{PREFIX}/status/b{i}")
            if status is None or not json.loads(status)["online"]:
                return False
        return True
    await until(all_online, 25, "the bridges to join the fleet")


def _result(tap: Tap, i: int) -> dict[str, Any] | None:
    body = tap.latest(f"{PREFIX}/pump/result/b{i}")
    return None if body is None else dict(json.loads(body))


async def test_three_bridges_install_once_through_kill9_and_broker_restart(
        tmp_path: Path, broker: Broker) -> None:
    from adapters.sim.modbus import start_simulator

    sim = await start_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=1)
    fleet = Fleet(tmp_path, sim.port, broker.port)
    tap = Tap(broker.port)
    try:
        await tap.start()
        await asyncio.gather(*(fleet.start(i) for i in range(3)))
        await _publish_sites(broker.port, _sites(tmp_path))
        await _online(tap, range(3))
        # Bridge 1 is down while the model is published: it must catch up from the retained one.
        await fleet.kill9(1)
        await _merge(broker.port, tmp_path / "candidate.onnx")
        sha = hashlib.sha256((tmp_path / "candidate.onnx").read_bytes()).hexdigest()
        # The rollout is under way: stop the broker (persistence on), bring it back.
        tap = await restart_broker(tap, broker)
        await fleet.start(1)

        def done() -> bool:
            return all((r := _result(tap, i)) is not None and r["sha256"] == sha for i in range(3))
        await until(done, 25, "every bridge to report the fleet model")
        for i in range(3):
            result = _result(tap, i)
            assert result is not None and result["status"] == "installed", result
            assert fleet.active_sha(i) == sha
        # kill -9 and restart every bridge: the retained model comes again, nothing is installed twice.
        for i in range(3):
            await fleet.kill9(i)
        await asyncio.gather(*(fleet.start(i) for i in range(3)))
        await _online(tap, range(3))
        await until(lambda: all(fleet.log(i).read_text().count("fleet connected") >= 2 for i in range(3)),
                    20, "the restarted bridges to subscribe")
        await asyncio.sleep(1.0)  # time for a (wrong) second install to show
        for i in range(3):
            assert fleet.installs(i) == 1, fleet.log(i).read_text()
            assert fleet.active_sha(i) == sha
    finally:
        await tap.stop()
        await fleet.stop()
        await sim.stop()


async def _publish(port: int, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="fleet-test-publisher") as client:
        await client.publish(topic, payload, qos=1, retain=True)


async def test_malformed_or_mismatched_fleet_model_is_refused_and_the_old_model_keeps_scoring(
        tmp_path: Path, broker: Broker) -> None:
    from adapters.sim.modbus import start_simulator
    from bridge.cli.demo import demo_config
    from bridge.config.fleet import FleetConfig
    from bridge.runtime.bridge import Bridge

    sim = await start_simulator("127.0.0.1", 0, seed=7, step=0.01, speed=10)
    config = demo_config(sim.port, api_port=0)
    config = config.model_copy(update={
        "storage": config.storage.model_copy(update={"data_dir": tmp_path / "data"}),
        "fleet": FleetConfig(host="127.0.0.1", port=broker.port, bridge_id="b0", reconnect_min=0.1,
                             reconnect_max=0.5)})
    bridge = Bridge(config, speed=10)
    tap = Tap(broker.port)
    # A well-formed PCA model whose contract does not fit [[models]] pump (3 inputs, not 5).
    small = site_csv(tmp_path / "small.csv", 200, 1, 0.0)
    assert main(["train", str(small), "--kind", "pca", "--inputs", "flow,pressure,current",
                 "--export-stats", str(tmp_path / "small.json")]) == 0
    assert main(["train", "--kind", "pca", "--from-stats", str(tmp_path / "small.json"), "--name", "pump",
                 "--out", str(tmp_path / "small.onnx")]) == 0
    try:
        await tap.start()
        await bridge.start()
        before = bridge.runners["pump"].detector

        async def scoring(after: int) -> bool:
            latest = bridge.scores.latest("pump")
            return latest is not None and latest.window_valid and bridge.runners["pump"].scored > after

        await until(lambda: scoring(0), 20, "valid scores")
        for bad, why in ((b"\x00not an onnx model", "not a loadable ONNX model"),
                         ((tmp_path / "small.onnx").read_bytes(), "the model contract expects")):
            sha = hashlib.sha256(bad).hexdigest()
            await _publish(broker.port, f"{PREFIX}/pump/model", bad)
            await until(lambda: (r := _result(tap, 0)) is not None and r["sha256"] == sha, 10,  # noqa: B023
                        "the bridge's verdict")
            result = _result(tap, 0)
            assert result is not None and result["status"] == "refused" and result["reason"], result
            assert why in result["reason"], result
            assert bridge.runners["pump"].detector is before
            scored = bridge.runners["pump"].scored
            await until(lambda: scoring(scored), 10, "the old model to keep scoring")  # noqa: B023
        assert not (tmp_path / "data" / "models" / "pump.onnx").exists()
        status = next(s for s in bridge.sinks if s.name == "fleet").status()
        assert status is not None and status["results"]["refused"] == 2 and status["results"]["installed"] == 0
    finally:
        await tap.stop()
        await bridge.stop()
        await sim.stop()


async def test_merge_refuses_mismatched_or_too_few_sites_and_publishes_nothing(
        tmp_path: Path, broker: Broker) -> None:
    tap = Tap(broker.port)
    await tap.start()
    sites = _sites(tmp_path)
    base = ["--model", "pump", "--broker", f"127.0.0.1:{broker.port}"]
    # One site only, three required: exit 1 after --wait.
    await _run_cli("fleet", "publish-stats", str(sites[0]), "--bridge-id", "site0", *base)
    proc = await _cli("fleet", "merge", *base, "--min-sites", "3", "--wait", "1",
                      "--out", str(tmp_path / "m.onnx"))
    stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and b"1 sites" in stdout
    # A second site with another window: refused, naming the site.
    await _run_cli("fleet", "publish-stats", str(sites[1]), "--bridge-id", "site1", "--window", "6", *base)
    proc = await _cli("fleet", "merge", *base, "--min-sites", "2", "--out", str(tmp_path / "m.onnx"))
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"site site1" in stderr, stderr
    # Statistics carrying anything more than statistics (here: rows) are refused too.
    body = json.loads(tap.latest(f"{PREFIX}/pump/stats/site0") or b"{}")
    body["values"] = [[1.0, 2.0, 3.0, 4.0, 5.0]]
    await _publish(broker.port, f"{PREFIX}/pump/stats/site1", json.dumps(body).encode())
    proc = await _cli("fleet", "merge", *base, "--min-sites", "2", "--out", str(tmp_path / "m.onnx"))
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"unexpected keys values" in stderr, stderr
    await tap.stop()
    assert not (tmp_path / "m.onnx").exists()
    assert not any(t.endswith("/model") for t, _ in tap.messages)

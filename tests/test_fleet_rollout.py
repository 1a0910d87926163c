"""Staged fleet rollouts (issue 16 item 4): a canary by name and a fraction, shadow mode with
the comparison published per bridge, against a real mosquitto, the simulator and three
``python -m bridge.cli run`` processes; a bridge killed -9 and the broker restarted mid-shadow."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.request
from pathlib import Path

import pytest

from bridge.config.fleet import selection_bucket
from tests.mqtt_broker import MOSQUITTO, Broker
from tests.test_fleet import Fleet, Tap, _merge, _online, _result, _run_cli, broker, restart_broker
from tests.waiting import until

__all__ = ["broker"]  # the fixture, shared with tests/test_fleet.py

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")]


# A shadow scores the active model's own windows: the bridges start from a PCA model of this
# window (not the shipped 16-sample one), so a restarted bridge compares again within seconds.
WINDOW = 5
SPEED = 10.0


def _plant_sites(tmp_path: Path) -> list[Path]:
    """Three sites' normal operation from the simulator's own plant model (other seeds), sampled
    once a second as the bridges sample it."""
    from adapters.sim.plant import SIGNALS, PumpPlant
    from tests.test_train_evaluate import T0, write_csv

    paths = []
    for i in range(3):
        rows = PumpPlant(seed=10 + i).run(240, 0.01)[::100]
        paths.append(write_csv(tmp_path / f"site{i}.csv", [T0 + j for j in range(len(rows))],
                               {name: list(rows[:, k]) for k, name in enumerate(SIGNALS)}))
    return paths


def _active_model(tmp_path: Path, fleet: Fleet, site: Path) -> None:
    """Every bridge's starting model: one site's PCA with a wide margin (it calls the
    simulator's plant normal, so the shadow's false-alarm rate has windows to be measured on)."""
    from bridge.cli import main

    stats, model = tmp_path / "active.json", tmp_path / "active.onnx"
    assert main(["train", str(site), "--kind", "pca", "--window", str(WINDOW),
                 "--export-stats", str(stats)]) == 0
    assert main(["train", "--kind", "pca", "--from-stats", str(stats), "--name", "pump",
                 "--margin", "50", "--out", str(model)]) == 0
    for config in fleet.configs:
        text = config.read_text().replace('name = "pump"\n', f'name = "pump"\nfile = "{model}"\n')
        config.write_text(text)


async def _publish_sites(port: int, sites: list[Path]) -> None:
    await asyncio.gather(*(_run_cli("fleet", "publish-stats", str(csv), "--model", "pump",
                                    "--bridge-id", f"site{i}", "--broker", f"127.0.0.1:{port}",
                                    "--window", str(WINDOW)) for i, csv in enumerate(sites)))


def _status(tap: Tap, i: int, sha: str, *statuses: str) -> bool:
    result = _result(tap, i)
    return result is not None and result["sha256"] == sha and result["status"] in statuses


def _rollback(config: Path) -> None:
    port = re.search(r"\[api\]\nport = (\d+)", config.read_text())
    assert port is not None
    request = urllib.request.Request(f"http://127.0.0.1:{port.group(1)}/api/v1/models/pump/rollback",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200


async def test_shadow_canary_then_fraction_through_kill9_and_broker_restart(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    from adapters.sim.modbus import start_simulator

    # Plant and bridges 10x faster together: the shadow periods below are plant seconds.
    sim = await start_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=SPEED)
    fleet = Fleet(tmp_path, sim.port, broker.port, speed=SPEED)
    tap = Tap(broker.port)
    try:
        sites = _plant_sites(tmp_path)
        _active_model(tmp_path, fleet, sites[0])
        await tap.start()
        await asyncio.gather(*(fleet.start(i) for i in range(3)))
        await _publish_sites(broker.port, sites)
        await _online(tap, range(3))
        # A shadow canary to b1 only: 30 plant seconds (3 s) of observation, lenient on FAR
        # (the sites' model and the simulator's plant differ): it must be promoted with its
        # figures.
        await _merge(broker.port, tmp_path / "candidate.onnx", "--bridges", "b1", "--shadow",
                     "--period-s", "30", "--min-windows", "3", "--max-far", "1")
        sha = hashlib.sha256((tmp_path / "candidate.onnx").read_bytes()).hexdigest()
        await until(lambda: all(_status(tap, i, sha, "skipped") for i in (0, 2))
                    and _status(tap, 1, sha, "staged"), 15, "b1 to stage, b0 and b2 to skip")
        staged = _result(tap, 1)
        assert staged is not None and staged["shadow_id"] and staged["rollout"]["bridges"] == ["b1"]
        # Mid-shadow (staged, not decided: the stored shadow is still running): kill -9 b1,
        # stop and restart the broker, bring b1 back.
        await fleet.kill9(1)
        shadow_file = fleet.configs[1].parent / "data" / "models" / "shadow"
        assert any('"state": "running"' in p.read_text() for p in shadow_file.glob("*.json")), \
            list(shadow_file.iterdir())
        tap = await restart_broker(tap, broker)
        await fleet.start(1)
        await until(lambda: _status(tap, 1, sha, "promoted", "rejected"), 25, "the shadow's verdict")
        promoted = _result(tap, 1)
        assert promoted is not None and promoted["status"] == "promoted", promoted
        assert promoted["shadow_id"] == staged["shadow_id"]  # resumed, not staged again
        figures = promoted["comparison"]
        assert figures["windows"] >= 3 and figures["far"] is not None
        assert fleet.active_sha(1) == sha and fleet.installs(1) == 1
        assert fleet.log(1).read_text().count("plcbridge.models model staged in shadow") == 1
        for i in (0, 2):
            assert fleet.active_sha(i) is None and fleet.installs(i) == 0
            assert _status(tap, i, sha, "skipped")
        with capsys.disabled():
            print(f"\nshadow canary b1 promoted: {json.dumps(figures)}; reason {promoted['reason']!r}")

        # The same bytes to a fraction, in shadow with a rule no plant meets in 4 plant s: the
        # selected ones stage and are rejected with the reason, the old model keeps scoring;
        # b1 (promoted) does nothing again.
        fraction = 0.67
        chosen = {i for i in (0, 2) if selection_bucket(f"b{i}", sha) < fraction}
        await _merge(broker.port, tmp_path / "candidate.onnx", "--force", "--fraction", str(fraction),
                     "--shadow", "--period-s", "4", "--min-windows", "100000")

        def answered() -> bool:
            return all(_status(tap, i, sha, "rejected" if i in chosen else "skipped") for i in (0, 2))
        await until(answered, 20, "the fraction's verdicts")
        for i in chosen:
            rejected = _result(tap, i)
            assert rejected is not None and "windows compared" in rejected["reason"], rejected
            assert rejected["comparison"]["windows"] > 0
            assert fleet.active_sha(i) is None and fleet.installs(i) == 0
            assert (fleet.log(i).read_text().count("plcbridge.models model staged in shadow")) == 1
        assert _status(tap, 1, sha, "promoted") and fleet.installs(1) == 1
        # An operator rolls b1 back: the fleet hears it, and the retained model stays rolled back.
        await asyncio.to_thread(_rollback, fleet.configs[1])
        await until(lambda: _status(tap, 1, sha, "rolled back"), 10, "the rollback result")
        assert fleet.active_sha(1) is None
        with capsys.disabled():
            print(f"fraction {fraction}: staged {sorted(chosen)}; rejected: "
                  f"{[(_result(tap, i) or {}).get('reason') for i in sorted(chosen)]}")
    finally:
        await tap.stop()
        await fleet.stop()
        await sim.stop()




async def test_fleet_rollout_publishes_a_model_built_elsewhere_with_its_rollout(
        tmp_path: Path, broker: Broker) -> None:
    from bridge.cli import main

    model = tmp_path / "elsewhere.onnx"
    stats = tmp_path / "s.json"
    site = _plant_sites(tmp_path)[0]
    assert main(["train", str(site), "--kind", "pca", "--window", str(WINDOW),
                 "--export-stats", str(stats)]) == 0
    assert main(["train", "--kind", "pca", "--from-stats", str(stats), "--name", "pump",
                 "--out", str(model)]) == 0
    tap = Tap(broker.port)
    await tap.start()
    base = ["fleet", "rollout", "--model", "pump", "--file", str(model),
            "--broker", f"127.0.0.1:{broker.port}"]
    printed = await _run_cli(*base, "--bridges", "b0,b2", "--fraction", "0.5", "--shadow",
                             "--period-s", "60")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert sha in printed and "in shadow" in printed
    await until(lambda: tap.latest("plcbridge/fleet/pump/model") is not None, 10, "the model")
    await tap.stop()
    card = json.loads(tap.latest("plcbridge/fleet/pump/card") or b"{}")
    assert card["sha256"] == sha and tap.latest("plcbridge/fleet/pump/model") == model.read_bytes()
    assert card["rollout"] == {"bridges": ["b0", "b2"], "fraction": 0.5, "shadow": True,
                               "rule": {"period_s": 60.0}}
    # A rule without --shadow is refused before anything is published.
    assert main([*base, "--period-s", "60"]) == 2


async def test_a_malformed_rollout_card_is_refused_and_nothing_is_staged(
        tmp_path: Path, broker: Broker) -> None:
    from adapters.sim.modbus import start_simulator
    from bridge.cli.demo import demo_config
    from bridge.config.fleet import FleetConfig
    from bridge.runtime.bridge import Bridge
    from tests.test_fleet import _publish

    sim = await start_simulator("127.0.0.1", 0, seed=7, step=0.01, speed=10)
    config = demo_config(sim.port, api_port=0)
    config = config.model_copy(update={
        "storage": config.storage.model_copy(update={"data_dir": tmp_path / "data"}),
        "fleet": FleetConfig(host="127.0.0.1", port=broker.port, bridge_id="b0")})
    bridge = Bridge(config, speed=10)
    tap = Tap(broker.port)
    data = b"any bytes: the rollout is refused before the model is looked at"
    sha = hashlib.sha256(data).hexdigest()
    try:
        await tap.start()
        await bridge.start()
        before = bridge.runners["pump"].detector
        card = {"sha256": sha, "rollout": {"fraction": 2, "shadow": True}}
        await _publish(broker.port, "plcbridge/fleet/pump/card", json.dumps(card).encode())
        await _publish(broker.port, "plcbridge/fleet/pump/model", data)
        await until(lambda: _status(tap, 0, sha, "refused"), 10, "the refusal")
        result = _result(tap, 0)
        assert result is not None and "malformed rollout" in result["reason"], result
        assert "pump" not in bridge.updater.shadows and bridge.runners["pump"].detector is before
    finally:
        await tap.stop()
        await bridge.stop()
        await sim.stop()

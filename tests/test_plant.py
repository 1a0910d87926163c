"""The simulated pump station: plausible, correlated, drifting, deterministic, and faultable."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.sim.plant import FAULT_NAMES, FAULTS, SIGNALS, PumpPlant

RANGES = {
    "pressure": (3.0, 6.5),
    "flow": (18.0, 42.0),
    "current": (9.0, 16.0),
    "temperature": (38.0, 62.0),
    "vibration": (1.3, 3.0),
}


def test_fault_codes_match_the_register_contract() -> None:
    assert FAULTS == {"none": 0, "spike": 1, "stuck": 2, "drift": 3, "cavitation": 4}
    assert FAULT_NAMES[2] == "stuck"


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    a = PumpPlant(5).run(300, 1.0)
    b = PumpPlant(5).run(300, 1.0)
    c = PumpPlant(6).run(300, 1.0)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_signals_are_plausible_correlated_and_not_stationary() -> None:
    data = PumpPlant(0).run(3600, 1.0)
    for i, name in enumerate(SIGNALS):
        lo, hi = RANGES[name]
        assert lo < data[:, i].min() and data[:, i].max() < hi, name
    corr = np.corrcoef(data.T)
    # Speed drives pressure, flow, current and vibration together.
    assert corr[0, 2] > 0.6 and corr[1, 2] > 0.6 and corr[2, 4] > 0.6
    # The operating point moves: 10-minute means differ by far more than their noise.
    means = data[: 3600 // 600 * 600].reshape(6, 600, 5).mean(axis=1)
    assert np.ptp(means[:, 1]) > 1.0  # flow, m3/h


def test_step_returns_the_five_signals() -> None:
    values = PumpPlant(1).step(0.1)
    assert tuple(values) == SIGNALS
    assert all(isinstance(v, float) for v in values.values())


def test_stuck_sensor_repeats_its_last_value_exactly() -> None:
    plant = PumpPlant(2)
    last = plant.step(1.0)
    plant.inject("stuck", sensor="flow")
    assert plant.active_fault == "stuck" and plant.fault_code == 2
    rows = [plant.step(1.0) for _ in range(20)]
    assert {r["flow"] for r in rows} == {last["flow"]}
    assert len({r["pressure"] for r in rows}) == 20  # the others keep moving


def test_spikes_are_large_and_short() -> None:
    plant = PumpPlant(3)
    base = plant.run(60, 1.0)[:, 0]
    plant.inject("spike")
    spiked = plant.run(60, 1.0)[:, 0]
    ratio = np.abs(spiked / np.median(base) - 1.0)
    assert (ratio > 0.15).sum() >= 5  # several ±25 % spikes in a minute
    assert (ratio < 0.1).sum() > 30  # but mostly normal


def test_drift_grows_with_time_and_duration_clears_the_fault() -> None:
    plant = PumpPlant(4, drift_rate=0.10)
    twin = PumpPlant(4, drift_rate=0.10)
    plant.run(100, 1.0)
    twin.run(100, 1.0)
    plant.inject("drift", duration=120, sensor="pressure")
    faulty = plant.run(120, 1.0)[:, 0]
    normal = twin.run(120, 1.0)[:, 0]
    rel = faulty / normal - 1.0
    assert rel[:10].mean() < 0.02 and 0.15 < rel[-10:].mean() < 0.25  # +10 %/min for 2 min
    plant.step(1.0)
    assert plant.active_fault is None and plant.fault_code == 0


def test_cavitation_breaks_the_flow_current_coupling() -> None:
    plant = PumpPlant(5)
    twin = PumpPlant(5)
    plant.run(60, 1.0)
    twin.run(60, 1.0)
    plant.inject("cavitation")
    cav = plant.run(30, 1.0)[-10:].mean(axis=0)
    ok = twin.run(30, 1.0)[-10:].mean(axis=0)
    flow, current, vibration = SIGNALS.index("flow"), SIGNALS.index("current"), SIGNALS.index("vibration")
    assert cav[flow] < 0.85 * ok[flow]  # flow drops
    assert cav[vibration] > 1.4 * ok[vibration]  # vibration rises
    assert abs(cav[current] / ok[current] - 1.0) < 0.03  # current does not follow the flow
    plant.clear()
    assert plant.active_fault is None


def test_bad_fault_requests_are_refused() -> None:
    plant = PumpPlant()
    with pytest.raises(ValueError, match="unknown fault"):
        plant.inject("meltdown")
    with pytest.raises(ValueError, match="unknown sensor"):
        plant.inject("stuck", sensor="speed")
    with pytest.raises(ValueError, match="fault code 7"):
        plant.inject_code(7)
    plant.inject_code(4)
    assert plant.active_fault == "cavitation"
    plant.inject_code(0)
    assert plant.active_fault is None

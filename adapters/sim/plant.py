"""Pump-station physics for the simulator and for training data: pure numpy, no I/O.

A centrifugal pump runs at a speed that follows a slowly varying demand; a valve on the
discharge side slowly opens and closes.  From those two hidden states the plant derives five
correlated measurements:

- ``pressure`` (bar)    rises with speed², falls when the valve opens
- ``flow`` (m3/h)       rises with speed and with the valve opening
- ``current`` (A)       follows hydraulic power (pressure × flow)
- ``temperature`` (°C)  follows current with a first-order lag on top of a drifting ambient
- ``vibration`` (mm/s)  rises with speed²

Demand, valve and ambient drift slowly (minutes to hours), so normal data moves its operating
point instead of being stationary noise.  Every measurement carries Gaussian noise.

Faults (``inject``) corrupt what the sensors report, or (cavitation) what the process does:

==========  ====  =========================================================================
fault       code  effect (default sensor)
==========  ====  =========================================================================
spike       1     1-second spikes of ±25 % on one sensor (pressure), every ~4 s
stuck       2     one sensor (flow) repeats its last value exactly
drift       3     one sensor (pressure) drifts away by ``drift_rate`` (+8 %) per minute
cavitation  4     flow drops ~25 %, vibration rises ~70 % and gets noisy, pressure and
                  current stay put: the usual pressure/flow/current coupling breaks
==========  ====  =========================================================================

Deterministic: the same seed and the same sequence of calls give the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FAULTS", "FAULT_NAMES", "SIGNALS", "PumpPlant"]

#: Order of the signals everywhere (registers, model inputs, arrays).
SIGNALS: tuple[str, ...] = ("pressure", "flow", "current", "temperature", "vibration")

#: Fault name -> code written to / read from the fault-command register.
FAULTS: dict[str, int] = {"none": 0, "spike": 1, "stuck": 2, "drift": 3, "cavitation": 4}
#: Code -> fault name.
FAULT_NAMES: dict[int, str] = {code: name for name, code in FAULTS.items()}

# Measurement noise (standard deviation) per signal, in the signal's unit.
_NOISE = {"pressure": 0.02, "flow": 0.25, "current": 0.06, "temperature": 0.08, "vibration": 0.04}
# Sensor a sensor fault hits when the caller does not choose one.
_DEFAULT_SENSOR = {"spike": "pressure", "stuck": "flow", "drift": "pressure"}


class _OU:
    """Ornstein-Uhlenbeck process, exactly discretised so any dt gives the same statistics."""

    def __init__(self, tau: float, sigma: float) -> None:
        self.tau = tau
        self.sigma = sigma
        self.x = 0.0

    def step(self, dt: float, rng: np.random.Generator) -> float:
        a = math.exp(-dt / self.tau)
        self.x = a * self.x + self.sigma * math.sqrt(1.0 - a * a) * float(rng.standard_normal())
        return self.x


class PumpPlant:
    """Simulated pump station; ``step(dt)`` advances time and returns the five measurements."""

    def __init__(self, seed: int = 0, *, drift_rate: float = 0.08) -> None:
        self.seed = seed
        #: Relative drift per minute used by the ``drift`` fault.
        self.drift_rate = drift_rate
        self._rng = np.random.default_rng(seed)
        r = self._rng
        # Slow operating-point trajectory: periods and phases differ per seed, so a model
        # trained on one seed meets operating points it has not seen exactly.
        self._demand_period = float(r.uniform(1500.0, 2700.0))
        self._demand_phase = float(r.uniform(0.0, 2 * math.pi))
        self._valve_period = float(r.uniform(900.0, 1800.0))
        self._valve_phase = float(r.uniform(0.0, 2 * math.pi))
        self._ambient_phase = float(r.uniform(0.0, 2 * math.pi))
        self._demand_ou = _OU(tau=240.0, sigma=0.025)
        self._valve_ou = _OU(tau=180.0, sigma=0.02)
        self.time = 0.0
        self._speed = self._demand(0.0)
        self._temperature = self._temp_target(self._ideal_current(self._speed, 1.0), 0.0)
        self._cav_level = 0.0  # 0..1, how developed cavitation is (ramps, not a step)
        self._fault: str | None = None
        self._fault_sensor: str | None = None
        self._fault_start = 0.0
        self._fault_end: float | None = None
        self._stuck_value: float | None = None
        self._next_spike = 0.0
        self._spike_until = -1.0
        self._spike_sign = 1.0
        self._last: dict[str, float] = {}

    # ------------------------------------------------------------------ faults
    @property
    def active_fault(self) -> str | None:
        """Name of the active fault, or None."""
        return self._fault

    @property
    def fault_code(self) -> int:
        """Register code of the active fault (0 = none), see ``FAULTS``."""
        return FAULTS[self._fault] if self._fault else 0

    @property
    def fault_sensor(self) -> str | None:
        """Sensor the active sensor fault acts on (None for cavitation / no fault)."""
        return self._fault_sensor

    def inject(self, fault: str, duration: float | None = None, *, sensor: str | None = None) -> None:
        """Start ``fault`` now; it clears itself after ``duration`` seconds of plant time."""
        if fault not in FAULTS or fault == "none":
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)[1:]}")
        if sensor is not None and sensor not in SIGNALS:
            raise ValueError(f"unknown sensor {sensor!r}; expected one of {SIGNALS}")
        self._fault = fault
        self._fault_sensor = None if fault == "cavitation" else (sensor or _DEFAULT_SENSOR[fault])
        self._fault_start = self.time
        self._fault_end = None if duration is None else self.time + duration
        # A stuck sensor freezes at what it last reported.
        self._stuck_value = self._last.get(self._fault_sensor or "") if fault == "stuck" else None
        self._next_spike = self.time  # first spike right away
        self._spike_until = -1.0

    def inject_code(self, code: int) -> None:
        """Apply a fault-command register value: 0 clears, 1-4 injects (see ``FAULTS``)."""
        if code == 0:
            self.clear()
        elif code in FAULT_NAMES:
            self.inject(FAULT_NAMES[code])
        else:
            raise ValueError(f"fault code {code} is not one of {sorted(FAULT_NAMES)}")

    def clear(self) -> None:
        """End any active fault (cavitation then fades out over a few seconds)."""
        self._fault = None
        self._fault_sensor = None
        self._fault_end = None
        self._stuck_value = None

    # ----------------------------------------------------------------- physics
    def _demand(self, t: float) -> float:
        return 0.87 + 0.07 * math.sin(2 * math.pi * t / self._demand_period + self._demand_phase)

    def _valve(self, t: float) -> float:
        return 1.0 + 0.06 * math.sin(2 * math.pi * t / self._valve_period + self._valve_phase)

    @staticmethod
    def _ideal_current(speed: float, valve: float) -> float:
        pressure = 1.0 + 4.6 * speed**2 / valve
        flow = 40.0 * speed * valve - 4.0
        return 6.0 + 0.045 * pressure * flow

    def _temp_target(self, current: float, t: float) -> float:
        ambient = 20.0 + 2.0 * math.sin(2 * math.pi * t / 14400.0 + self._ambient_phase)
        return ambient + 2.6 * current

    def step(self, dt: float) -> dict[str, float]:
        """Advance the plant by ``dt`` seconds and return the five measurements."""
        if dt <= 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        r = self._rng
        self.time += dt
        t = self.time
        if self._fault_end is not None and t >= self._fault_end:
            self.clear()

        demand = min(max(self._demand(t) + self._demand_ou.step(dt, r), 0.6), 1.05)
        valve = min(max(self._valve(t) + self._valve_ou.step(dt, r), 0.8), 1.2)
        # Speed follows demand through the drive's ramp (first-order, 5 s).
        self._speed += (demand - self._speed) * (1.0 - math.exp(-dt / 5.0))
        s = self._speed
        cav_target = 1.0 if self._fault == "cavitation" else 0.0
        self._cav_level += (cav_target - self._cav_level) * (1.0 - math.exp(-dt / 2.0))
        cav = self._cav_level

        pressure = 1.0 + 4.6 * s**2 / valve
        flow = (40.0 * s * valve - 4.0) * (1.0 - 0.25 * cav)
        # Cavitation: the pump no longer converts power into flow, so current stays where the
        # pressure/flow it *should* deliver put it, instead of following the real flow.
        current = 6.0 + 0.045 * pressure * (40.0 * s * valve - 4.0)
        self._temperature += (self._temp_target(current, t) - self._temperature) * (
            1.0 - math.exp(-dt / 120.0)
        )
        vibration = (0.5 + 2.0 * s**2) * (1.0 + 0.7 * cav)
        true = {
            "pressure": pressure,
            "flow": flow,
            "current": current,
            "temperature": self._temperature,
            "vibration": vibration,
        }
        noise = r.standard_normal(len(SIGNALS))
        out: dict[str, float] = {}
        for i, name in enumerate(SIGNALS):
            sigma = _NOISE[name] * (1.0 + (4.0 * cav if name == "vibration" else 0.0))
            out[name] = true[name] + sigma * float(noise[i])
        self._apply_sensor_fault(out, t)
        self._last = out
        return dict(out)

    def _apply_sensor_fault(self, out: dict[str, float], t: float) -> None:
        sensor = self._fault_sensor
        if sensor is None:
            return
        if self._fault == "stuck":
            if self._stuck_value is None:  # injected before the first step
                self._stuck_value = out[sensor]
            out[sensor] = self._stuck_value
        elif self._fault == "drift":
            minutes = (t - self._fault_start) / 60.0
            out[sensor] *= 1.0 + self.drift_rate * minutes
        elif self._fault == "spike":
            if t >= self._next_spike:
                # Spikes last one second so a 1 Hz poller sees them whatever the step is.
                self._spike_until = t + 1.0
                self._spike_sign = 1.0 if self._rng.random() < 0.5 else -1.0
                self._next_spike = t + 1.0 + float(self._rng.exponential(3.0))
            if t < self._spike_until:
                out[sensor] *= 1.0 + 0.25 * self._spike_sign

    def run(self, seconds: float, dt: float) -> np.ndarray:
        """Step for ``seconds`` at ``dt``; return a float64 array [steps, 5] in ``SIGNALS`` order."""
        n = round(seconds / dt)
        data = np.empty((n, len(SIGNALS)), dtype=np.float64)
        for i in range(n):
            row = self.step(dt)
            data[i] = [row[name] for name in SIGNALS]
        return data

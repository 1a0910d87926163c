"""Alarm hysteresis: the anomaly flag from the score, with on/off levels and minimum durations.

Without it the flag is ``score >= threshold`` window by window, and a score hovering at the
threshold makes the flag (and every register, event and message downstream) chatter. With it
the alarm starts after ``min_on_windows`` consecutive valid windows at or above ``on`` x
threshold and ends after ``min_off_windows`` consecutive valid windows below ``off`` x
threshold. An invalid window breaks a run being counted and holds the alarm's state (its own
Score still says anomaly false and window_valid false: nothing can be vouched for then).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import AlarmConfig

__all__ = ["Hysteresis"]


@dataclass
class Hysteresis:
    config: AlarmConfig
    active: bool = False
    _run: int = 0  # consecutive windows counted toward the change of state

    def update(self, score: float, threshold: float) -> bool:
        """One valid window's score; returns whether the alarm is on after it."""
        if self.active:
            self._run = self._run + 1 if score < self.config.off * threshold else 0
            if self._run >= self.config.min_off_windows:
                self.active, self._run = False, 0
        else:
            self._run = self._run + 1 if score >= self.config.on * threshold else 0
            if self._run >= self.config.min_on_windows:
                self.active, self._run = True, 0
        return self.active

    def interrupt(self) -> None:
        """An invalid window: consecutive means consecutive."""
        self._run = 0

"""The README's first command: `plcbridge demo` detects the injected fault and says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_demo_detects_the_injected_fault() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo", "--port", "0", "--fault-after", "20",
         "--duration", "32"], capture_output=True, text=True, timeout=80, env=env)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "health      http://127.0.0.1:" in out
    assert "injected fault: cavitation" in out
    before, _, after = out.partition("injected fault")
    assert "ANOMALY" not in before, "false alarm before the fault"
    assert "ANOMALY DETECTED" in after, out

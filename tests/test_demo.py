"""The README's first command: `plcbridge demo` detects the injected fault and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_demo_detects_the_injected_fault(tmp_path: Path) -> None:
    """The demo runs at most ``--duration`` seconds; once it has printed the detection, the rest
    of that time would only repeat score lines, so the test stops it then with Ctrl-C (SIGINT),
    as a reader would, and the demo must still exit 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    errors = (tmp_path / "stderr.txt").open("w+")  # a file: a full stderr pipe cannot block it
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "demo", "--port", "0", "--fault-after", "20",
         "--duration", "32"], stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "ANOMALY DETECTED" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=80)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.seek(0)
        err = errors.read()
        errors.close()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out + err
    assert "health      http://127.0.0.1:" in out
    assert "injected fault: cavitation" in out
    before, _, after = out.partition("injected fault")
    assert "ANOMALY" not in before, "false alarm before the fault"
    assert "ANOMALY DETECTED" in after, out

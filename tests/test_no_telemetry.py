"""Nothing leaves the box unless configured: ONNX Runtime's own telemetry (1DS, posted to
mobile.events.data.microsoft.com from a background thread) is off in any process that loads a
model through the bridge. Observed from outside with strace: any DNS lookup (a connect to port
53 or to nscd) by the process or its threads. A plain ONNX Runtime process is run beside it as
the control that shows this ONNX Runtime does look up its collector on this box."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 14  # ONNX Runtime's first lookup came ~9 s after the session was created (measured)

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")]

BRIDGE = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from bridge.config import DEFAULT_MODEL
from bridge.scoring.detector import Detector
detector = Detector(DEFAULT_MODEL)
time.sleep({SECONDS})
"""

PLAIN = f"""
import time
import onnxruntime as ort
session = ort.InferenceSession({str(ROOT / 'models' / 'pump_pca.onnx')!r}, providers=["CPUExecutionProvider"])
time.sleep({SECONDS})
"""


def _traced(script: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}  # the defaults
    return subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=connect", sys.executable, "-c", script],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _lookups(trace: str) -> list[str]:
    return [line for line in trace.splitlines() if "htons(53)" in line or "nscd" in line]


def test_a_process_scoring_through_the_bridge_makes_no_dns_lookup() -> None:
    bridge, plain = _traced(BRIDGE), _traced(PLAIN)  # side by side: one wait for both
    bridge_trace = bridge.communicate(timeout=SECONDS + 30)[1]
    plain_trace = plain.communicate(timeout=SECONDS + 30)[1]
    assert bridge.returncode == 0, bridge_trace[-2000:]
    if "Operation not permitted" in plain_trace or plain.returncode != 0:
        pytest.skip(f"strace cannot trace here: {plain_trace[-500:]}")
    if not _lookups(plain_trace):
        pytest.skip("this ONNX Runtime made no lookup on its own either: nothing to show")
    assert _lookups(bridge_trace) == []

"""A Modbus-only bridge never imports the OPC UA stack (asyncua alone adds ~25 MB RSS)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import asyncio, sys
sys.path.insert(0, {root!r})
from bridge.cli.demo import demo_config
from bridge.runtime.bridge import Bridge
from bridge.api.serve import ApiServer

async def main():
    bridge = Bridge(demo_config(1, api_port=0))
    api = ApiServer(bridge, "127.0.0.1", 0)
    await bridge.start()
    await api.start()
    await bridge.poll_device("plant")
    await api.stop()
    await bridge.stop()

asyncio.run(main())
print(sorted(m for m in ("asyncua", "sklearn", "onnx", "cryptography") if m in sys.modules))
"""


def test_modbus_only_bridge_does_not_import_opcua_or_training_libraries() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr

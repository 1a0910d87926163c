"""`plcbridge demo`: the simulated pump station, the default model and the API on 127.0.0.1.

The demo config is an ordinary TOML document (see ``DEMO_TOML``) pointed at the simulator's
port, so the demo exercises exactly the code a real installation runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tomllib
from typing import TYPE_CHECKING

from bridge.api.serve import ApiServer
from bridge.config import Config, parse_config
from bridge.runtime.bridge import Bridge

if TYPE_CHECKING:  # the simulator (and pymodbus) load only when the demo runs
    from adapters.sim.modbus import SimulatorHandle

__all__ = ["DEMO_TOML", "demo_config", "run_demo"]

log = logging.getLogger("plcbridge.demo")

# Register map: adapters/simulator.py. Write-back goes to the simulator's holding 100-104.
DEMO_TOML = """
[writeback]
mode = "on"

[[devices]]
name = "plant"
host = "127.0.0.1"
port = {port}
poll_interval = 0.5
timeout = 0.5

[[devices.tags]]
name = "pressure"
table = "input"
address = 0
type = "float32"
unit = "bar"

[[devices.tags]]
name = "flow"
table = "input"
address = 2
type = "float32"
unit = "m3/h"

[[devices.tags]]
name = "current"
table = "input"
address = 4
type = "float32"
unit = "A"

[[devices.tags]]
name = "temperature"
table = "input"
address = 6
type = "float32"
unit = "degC"

[[devices.tags]]
name = "vibration"
table = "input"
address = 8
type = "float32"
unit = "mm/s"

[[devices.tags]]
name = "temperature_x10"
table = "input"
address = 20
type = "int16"
scale = 0.1
unit = "degC"

[[devices.tags]]
name = "motor_running"
table = "coil"
address = 0

[[models]]
name = "pump"
inputs = ["pressure", "flow", "current", "temperature", "vibration"]

[models.writeback]
device = "plant"
score = {{ address = 100, type = "float32" }}
anomaly = {{ address = 102 }}
heartbeat = {{ address = 103 }}
window_valid = {{ address = 104 }}
"""


def demo_config(sim_port: int, api_port: int = 8080) -> Config:
    data = tomllib.loads(DEMO_TOML.format(port=sim_port))
    data["api"] = {"host": "127.0.0.1", "port": api_port}
    return parse_config(data)


async def run_demo(api_port: int = 8080, fault: str = "cavitation", fault_after: float = 45.0,
                   duration: float | None = None) -> int:
    from adapters.sim.modbus import start_simulator  # pymodbus only when the demo runs

    sim = await start_simulator("127.0.0.1", 0)
    bridge = Bridge(demo_config(sim.port, api_port))
    api = ApiServer(bridge, "127.0.0.1", api_port)
    try:
        await bridge.start()
        try:
            await api.start()
        except OSError:
            log.warning("port %d is busy; serving the API on a free port instead", api_port)
            api = ApiServer(bridge, "127.0.0.1", 0)
            await api.start()
        print(f"plcbridge demo: simulated pump station on modbus://127.0.0.1:{sim.port}", flush=True)
        print(f"  dashboard   {api.url}/", flush=True)
        print(f"  health      {api.url}/api/v1/health", flush=True)
        print(f"  tags        {api.url}/api/v1/tags", flush=True)
        print(f"  score       {api.url}/api/v1/models/pump/score", flush=True)
        print(f"  API docs    {api.url}/docs", flush=True)
        print(f"A '{fault}' fault is injected after {fault_after:.0f} s; Ctrl-C stops.", flush=True)
        await _narrate(bridge, sim, fault, fault_after, duration)
    except asyncio.CancelledError:
        pass
    finally:
        await api.stop()
        await bridge.stop()
        await sim.stop()
    return 0


async def _narrate(bridge: Bridge, sim: SimulatorHandle, fault: str, fault_after: float,
                   duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    injected_at: float | None = None
    reported = False
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        elapsed = loop.time() - start
        if duration is not None and elapsed >= duration:
            break
        if injected_at is None and elapsed >= fault_after:
            await sim.inject(fault)
            injected_at = elapsed
            print(f"[{elapsed:5.1f} s] injected fault: {fault}", flush=True)
        score = bridge.scores.latest("pump")
        if score is not None and int(elapsed) % 5 == 0:
            state = "ANOMALY" if score.anomaly else ("ok" if score.window_valid else score.reason)
            value = "-" if score.score is None else f"{score.score:.3f}"
            print(f"[{elapsed:5.1f} s] pump score={value} threshold={score.threshold:.3f} {state}",
                  flush=True)
        if injected_at is not None and not reported and score is not None and score.anomaly:
            print(f"[{elapsed:5.1f} s] ANOMALY DETECTED {elapsed - injected_at:.1f} s after the "
                  f"fault; the PLC sees flag=1 in holding register 102", flush=True)
            reported = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    sys.stdout.flush()

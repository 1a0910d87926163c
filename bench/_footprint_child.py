"""The footprint section's processes, free of the benchmark's own imports (run as a script,
not ``-m bench...``: the ``bench`` package and its helpers would otherwise sit in the measured
RSS, ~6-14 MB of it).

* ``run CONFIG``: exactly ``plcbridge run CONFIG`` (``bridge.cli.main``), plus a SIGUSR1 probe
  that writes which watched modules are loaded to ``$BENCH_PROBE_FILE``.
* ``imports``: imports the libraries the bridge uses, the way it imports them, and idles: the
  RSS baseline.
* ``imports-model``: the same plus one ONNX Runtime session of the default model (nothing of
  the bridge itself).
* ``stages CONFIG SECONDS``: where the bridge's RSS comes from: the process above, then each
  step ``plcbridge run`` takes (import and load the config, import the runtime, build the
  Bridge, import the API, run bridge and API for SECONDS), RSS after each. Prints JSON.

``imports`` modes print READY and wait for SIGTERM/SIGINT.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# What ``imports`` loads: the bridge's runtime libraries, nothing of the bridge itself.
BASELINE_IMPORTS = ("numpy", "onnxruntime", "pymodbus.client", "fastapi", "uvicorn", "apscheduler",
                    "pydantic")
WATCHED_MODULES = ("asyncua", "onnx", "matplotlib", "httpx", "prometheus_client")
DEFAULT_MODEL = ROOT / "models" / "pump_pca.onnx"  # bridge.config.DEFAULT_MODEL, without importing it


def _install_probe() -> None:
    path = os.environ.get("BENCH_PROBE_FILE")
    if not path:
        return

    def probe(_signum: int, _frame: object) -> None:
        state = {"pid": os.getpid(), "modules": len(sys.modules),
                 **{name: name in sys.modules for name in WATCHED_MODULES}}
        Path(path + ".tmp").write_text(json.dumps(state))
        os.replace(path + ".tmp", path)  # atomic: the parent never reads half a file

    signal.signal(signal.SIGUSR1, probe)


def _session() -> Any:
    """One ONNX Runtime session of the default model, as the bridge opens it (one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(DEFAULT_MODEL), sess_options=options, providers=["CPUExecutionProvider"])


def _import_libraries() -> None:
    """BASELINE_IMPORTS as the bridge has them: ``bridge.api.embedded`` first (uvicorn's package
    without its command line, ~1.2 MB the bridge no longer loads), which also imports the
    ``bridge`` package, whose ORT_DISABLE_TELEMETRY default must precede onnxruntime's import
    as it does in the bridge (both tiny next to the libraries)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    importlib.import_module("bridge.api.embedded")
    for name in BASELINE_IMPORTS:
        importlib.import_module(name)


def _idle(with_model: bool) -> None:
    _import_libraries()
    session = _session() if with_model else None  # held until the process ends
    assert session is None or session.get_inputs()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    print("READY", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def _rss_mb() -> float:
    """VmRSS in MB of 10^6 bytes, as ``bench._common.rss_mb``."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def _stages(config_path: str, seconds: float) -> list[tuple[str, float]]:
    import asyncio

    steps: list[tuple[str, float]] = []
    _import_libraries()
    steps.append(("libraries imported", _rss_mb()))
    session = _session()
    steps.append(("+ one ONNX Runtime session of the default model", _rss_mb()))
    from bridge.config import load_config

    steps.append(("+ bridge.config imported (the config's pydantic models)", _rss_mb()))
    config = load_config(config_path)
    steps.append(("+ the config loaded", _rss_mb()))
    from bridge.runtime.bridge import Bridge

    steps.append(("+ the runtime imported", _rss_mb()))
    bridge = Bridge(config)
    steps.append(("+ the Bridge built (adapters, plans, store, model runner, sinks)", _rss_mb()))
    from bridge.api.serve import run_until_stopped

    steps.append(("+ the API imported", _rss_mb()))

    async def run() -> None:
        task = asyncio.create_task(run_until_stopped(bridge))
        await asyncio.sleep(seconds)
        steps.append((f"+ bridge and API running for {seconds:g} s", _rss_mb()))
        signal.raise_signal(signal.SIGINT)  # run_until_stopped's own way out
        await task

    asyncio.run(run())
    del session
    return steps


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "run":
        _install_probe()
        sys.path.insert(0, str(ROOT))  # as the editable install does: the checkout's bridge
        from bridge.cli import main as cli_main

        sys.exit(cli_main(["run", *args]))
    if mode in ("imports", "imports-model"):
        _idle(mode == "imports-model")
        return
    if mode == "stages":
        print(json.dumps(_stages(args[0], float(args[1]))))
        return
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()

"""The footprint section's processes, free of the benchmark's own imports (run as a script,
not ``-m bench...``: the ``bench`` package and its helpers would otherwise sit in the measured
RSS, ~6-14 MB of it).

* ``run CONFIG``: exactly ``plcbridge run CONFIG`` (``bridge.cli.main``), plus a SIGUSR1 probe
  that writes which watched modules are loaded to ``$BENCH_PROBE_FILE``.
* ``imports``: imports the libraries the bridge uses and idles: the RSS baseline.
* ``imports-model``: the same plus one ONNX Runtime session of the default model (nothing of
  the bridge itself).

``imports`` modes print READY and wait for SIGTERM/SIGINT.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from pathlib import Path

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


def _idle(with_model: bool) -> None:
    for name in BASELINE_IMPORTS:
        importlib.import_module(name)
    if with_model:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(DEFAULT_MODEL), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        assert session.get_inputs()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    print("READY", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


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
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()

"""plcbridge core: config, tag store, windows, inference, scheduling, API, CLI.

Nothing here imports a protocol library; adapters are loaded by name from the config.
"""

import os

__version__ = "0.1.0"

# Nothing leaves the box unless the operator configures it. ONNX Runtime's Linux builds carry
# Microsoft's 1DS telemetry: from the first InferenceSession on, a background thread looks up
# and posts to mobile.events.data.microsoft.com (measured with strace: DNS queries ~9 s after a
# session was created; 0.25 ms of CPU a second on an idle bridge). onnxruntime reads this
# variable when it is imported, so it is set here, before any module of the bridge imports it;
# ``disable_telemetry_events()`` did not stop it. An operator who wants the telemetry sets
# ORT_DISABLE_TELEMETRY=0 in the service's environment.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

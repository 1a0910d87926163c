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
print(sorted(m for m in ("asyncua", "sklearn", "onnx", "cryptography", "click", "uvicorn.main")
             if m in sys.modules))
import uvicorn  # the package is complete for anyone who asks for more than the server
print(uvicorn.__version__ != "", callable(uvicorn.run), "click" in sys.modules)
"""


def test_modbus_only_bridge_does_not_import_opcua_or_training_libraries() -> None:
    """Nor uvicorn's command line (click, ~1.2 MB with uvicorn.main): bridge.api.embedded."""
    result = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().splitlines()[-2:] == ["[]", "True True True"], result.stdout + result.stderr


_METRICS_PROBE = """
import asyncio, sys
sys.path.insert(0, {root!r})
import httpx
from bridge.api.app import create_app
from bridge.api.auth import TokenSet
from bridge.cli.demo import demo_config
from bridge.runtime.bridge import Bridge

async def main():
    bridge = Bridge(demo_config(1, api_port=0))  # [metrics] on by default
    app = create_app(bridge, TokenSet([]))
    await bridge.poll_device("plant")  # port 1: a failed poll, observed all the same
    before = "prometheus_client" in sys.modules
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as http:
        response = await http.get("/metrics")
    count = [line for line in response.text.splitlines()
             if line.startswith('plcbridge_device_poll_duration_seconds_count{{device="plant"}}')]
    print(before, response.status_code, "prometheus_client" in sys.modules, count)

asyncio.run(main())
"""


def test_prometheus_client_loads_with_the_first_scrape_not_before() -> None:
    result = subprocess.run([sys.executable, "-c", _METRICS_PROBE.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=60, check=True)
    last = result.stdout.strip().splitlines()[-1]
    assert last == "False 200 True ['plcbridge_device_poll_duration_seconds_count{device=\"plant\"} 1.0']", \
        result.stdout + result.stderr


_PYDANTIC_V1_PROBE = """
import asyncio, sys
sys.path.insert(0, {root!r})
import httpx
from bridge.api.app import create_app
from bridge.api.auth import TokenSet
from bridge.cli.demo import demo_config
from bridge.runtime.bridge import Bridge

async def main():
    bridge = Bridge(demo_config(1, api_port=0))
    app = create_app(bridge, TokenSet([]))
    await bridge.poll_device("plant")
    await bridge.score_model("pump")
    statuses = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as http:
        for path in ("/api/v1/live", "/api/v1/health", "/api/v1/tags", "/api/v1/models",
                     "/api/v1/models/pump", "/api/v1/models/pump/score", "/api/v1/models/pump/scores",
                     "/api/v1/events", "/api/v1/models/nope", "/openapi.json", "/docs", "/"):
            statuses.append((await http.get(path)).status_code)
    loaded = "pydantic.v1" in sys.modules
    import pydantic.v1  # still importable by anyone who wants it: the app left no mark
    print(loaded, statuses, pydantic.v1.BaseModel.__name__)

asyncio.run(main())
"""


def test_the_api_does_not_import_pydantic_v1() -> None:
    """FastAPI imports pydantic.v1 (~0.8 MB RSS) to check each response model unless the app
    is built with it marked absent; requests, the OpenAPI schema and the docs never need it."""
    result = subprocess.run([sys.executable, "-c", _PYDANTIC_V1_PROBE.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=60, check=True)
    last = result.stdout.strip().splitlines()[-1]
    assert last == "False [200, 200, 200, 200, 200, 200, 200, 200, 404, 200, 200, 200] BaseModel", \
        result.stdout + result.stderr

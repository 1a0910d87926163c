"""The dashboard at / : served next to the API without shadowing it, and checked in a real
browser (Debian's chromium driven by playwright-core) against a bridge polling the simulator.

Browser peers (installed by .ci/run): ``apt-get install chromium nodejs npm`` and
``npm ci --prefix tests/browser``. Set PLCBRIDGE_SCREENSHOT=1 to also write the screenshot to
docs/dashboard.png (or to a path: PLCBRIDGE_SCREENSHOT=/some/file.png).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.api.app import create_app
from bridge.api.auth import parse_tokens
from bridge.api.dashboard import mount_dashboard
from bridge.cli.demo import demo_config
from bridge.runtime.bridge import Bridge
from tests.waiting import until

pytestmark = pytest.mark.timeout(40)

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "dashboard.mjs"
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_BROWSER = (NODE is not None and Path(CHROMIUM).exists()
                and (BROWSER_DIR / "node_modules" / "playwright-core").is_dir())
needs_browser = pytest.mark.skipif(
    not HAVE_BROWSER, reason="needs node, /usr/bin/chromium and `npm ci --prefix tests/browser`")
TOKEN = "dashboard-read-token-0123456789"
SPEED = 10.0


def _app(bridge: Bridge, tokens: str = "") -> FastAPI:
    app = create_app(bridge, parse_tokens(tokens) if tokens else None)
    mount_dashboard(app)
    return app


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """uvicorn on a free loopback port in this loop; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(), name="test.dashboard-http")
    await until(lambda: server.started or task.done(), 10, "uvicorn to start")
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)


@pytest_asyncio.fixture
async def plant() -> AsyncIterator[tuple[SimulatorHandle, Bridge]]:
    sim = await start_simulator("127.0.0.1", 0, seed=5, step=0.01, speed=SPEED)
    bridge = Bridge(demo_config(sim.port, api_port=0), speed=SPEED)
    await bridge.start()
    try:
        yield sim, bridge
    finally:
        await bridge.stop()
        await sim.stop()


async def _browser(url: str, screenshot: Path, *extra: str) -> dict[str, Any]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, str(SCRIPT), "--url", url, "--screenshot", str(screenshot),
        "--profile", str(screenshot.parent / "chromium-profile"), "--chromium", CHROMIUM, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 32)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the browser script did not finish in 32 s") from None
    assert proc.returncode == 0, f"browser check failed:\n{err.decode()}\n{out.decode()}"
    seen: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return seen


def _publish_screenshot(screenshot: Path) -> None:
    target = os.environ.get("PLCBRIDGE_SCREENSHOT")
    if target:
        path = ROOT / "docs" / "dashboard.png" if target == "1" else Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, path)


async def test_dashboard_is_served_without_shadowing_the_api(
        plant: tuple[SimulatorHandle, Bridge]) -> None:
    _, bridge = plant
    transport = httpx.ASGITransport(app=_app(bridge))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        page = await http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script src="app.js"' in page.text and "cdn" not in page.text.lower()
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset, kind in (("/app.js", "javascript"), ("/style.css", "text/css")):
            response = await http.get(asset)
            assert response.status_code == 200 and kind in response.headers["content-type"]
        health = await http.get("/api/v1/health")
        assert health.status_code == 200 and "devices" in health.json()
        assert "content-security-policy" not in health.headers
        assert (await http.get("/docs")).status_code == 200
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "plcbridge"
        missing = await http.get("/api/v1/no-such-thing")
        assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
        assert (await http.get("/../../etc/passwd")).status_code == 404


@needs_browser
async def test_dashboard_in_chromium_shows_devices_tags_chart_and_events(
        plant: tuple[SimulatorHandle, Bridge], tmp_path: Path) -> None:
    sim, bridge = plant
    # Some normal operation first, then a fault, so the chart and the events table show both.
    await until(lambda: bridge.runners["pump"].scored >= 45, 20, "a stretch of scored windows")
    await sim.inject("cavitation")
    await until(lambda: bool(bridge.events), 15, "the anomaly event")
    screenshot = tmp_path / "dashboard.png"
    async with serve(_app(bridge)) as url:
        seen = await _browser(url, screenshot, "--expect-event")
    assert any(row.startswith("plant") and "connected" in row for row in seen["devices"]), seen
    assert seen["tags"] == len(bridge.tags) and seen["badTags"] == 0
    assert seen["points"] >= 5 and seen["inked"] > 1000
    assert any("anomaly-start" in row for row in seen["events"]), seen
    assert screenshot.stat().st_size > 10_000
    _publish_screenshot(screenshot)


@needs_browser
async def test_dashboard_asks_for_the_token_when_the_api_needs_one(
        plant: tuple[SimulatorHandle, Bridge], tmp_path: Path) -> None:
    _, bridge = plant
    async with serve(_app(bridge, f"read {TOKEN} dashboard")) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("api/v1/health")).status_code == 401
            assert (await http.get("")).status_code == 200  # the page itself is public
        seen = await _browser(url, tmp_path / "token.png", "--token", TOKEN)
    assert seen["tokenForm"] is True and seen["points"] >= 5

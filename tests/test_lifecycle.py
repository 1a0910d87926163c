"""`plcbridge run` as a real process: SIGTERM leaves fail-safe values and exits 0 in bounded
time; --check-only connects once; bad config exits 2; events survive a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.cli.demo import DEMO_TOML
from tests.waiting import until

ROOT = Path(__file__).resolve().parent.parent
# The plant and the bridge under SIGTERM run this much faster (`run --speed`, as the
# walkthroughs do): the first 16 s window fills in 2 s; timeouts and shutdown are not scaled.
SPEED = 8.0
pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _config(tmp_path: Path, sim_port: int, api_port: int) -> Path:
    text = DEMO_TOML.format(port=sim_port).replace(
        "anomaly = { address = 102 }", "anomaly = { address = 102, fail_safe = 1 }")
    text = f'[api]\nport = {api_port}\n\n[storage]\ndata_dir = "data"\n\n' + text
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


async def _bridge(config: Path, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "run", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)


async def _get(url: str) -> tuple[int, object]:
    def fetch() -> tuple[int, object]:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except OSError:
            return 0, None
    return await asyncio.to_thread(fetch)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    handle = await start_simulator("127.0.0.1", 0, seed=5, step=0.01, speed=SPEED)
    yield handle
    await handle.stop()


async def test_sigterm_writes_fail_safe_and_exits_0(tmp_path: Path, sim: SimulatorHandle) -> None:
    api = _free_port()
    config = _config(tmp_path, sim.port, api)
    proc = await _bridge(config, "--speed", str(SPEED))
    try:
        async def writing() -> bool:
            return sim.holding(103, 1)[0] > 0 and sim.holding(104, 1) == [1]

        # The heartbeat counts once the first (16 s of plant time) window is valid.
        await until(writing, 30, "heartbeat and window_valid from the bridge")
        status, body = await _get(f"http://127.0.0.1:{api}/api/v1/health")
        assert status == 200 and body["status"] == "ok"  # type: ignore[index]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert elapsed < 11
    assert sim.holding(104, 1) == [0], "window_valid must drop to 0 when the bridge stops"
    assert sim.holding(102, 1) == [1], "anomaly must hold its fail-safe value"
    assert b"bridge stopped" in stderr
    assert (tmp_path / "data" / "plcbridge.sqlite3").exists()
    audit = (tmp_path / "data" / "audit.log").read_text()
    assert "target=heartbeat at=holding 103" in audit and "result=ok" in audit


async def test_check_only(tmp_path: Path, sim: SimulatorHandle) -> None:
    config = _config(tmp_path, sim.port, _free_port())
    proc = await _bridge(config, "--check-only")
    out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, err.decode()
    assert b"device plant: ok, 7 tags read" in out

    dead = _config(tmp_path, _free_port(), _free_port())
    proc = await _bridge(dead, "--check-only")
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 1
    assert b"device plant:" in out and b"not connected" in out


async def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[api]\nport = "eighty"\n')
    proc = await _bridge(path)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 2
    assert b"api.port" in err and b"eighty" in err

    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[api]\ntokens_file = "missing.txt"\n')
    proc = await _bridge(tokens)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 2 and b"api.tokens_file: cannot read" in err

"""Child processes for footprint and scaling runs, and the parent-side handle that drives them.

Modes (``python -m bench._bridge_proc MODE ...``); the bridge itself and the RSS baselines run
from ``bench/_footprint_child.py``, a script that imports nothing of the benchmark:

* ``raw-poll CONFIG SECONDS``: a raw pymodbus client polling the config's planned requests
  on each device's interval: the CPU and jitter baseline. Prints JSON stats.
* ``jitter CONFIG SECONDS``: the bridge's runtime (scheduler, adapters, store) with poll
  completions recorded. Prints JSON stats.
* ``history TAGS SIZE``: RSS growth of a TagStore whose history is full.
* ``profile CONFIG SECONDS``: the bridge's runtime (no API) under cProfile for SECONDS after
  a warm-up: the top functions by own time, and the CPU it took. Prints JSON.
* ``raw-echo PORT INTERVAL``: the end-to-end baseline: a raw pymodbus client reading holding 0
  every INTERVAL s and writing each new value straight back as float32 to holding 100.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import PYTHON, ROOT, percentile, rss_mb, wait_until

FOOTPRINT_CHILD = Path(__file__).with_name("_footprint_child.py")


class BridgeProcess:
    """``plcbridge run CONFIG`` in its own process (``_footprint_child.py run``); ``url`` is the
    API once it listens."""

    def __init__(self, config_path: Path, workdir: Path) -> None:
        self._log = workdir / f"{config_path.stem}.log"
        self._probe = workdir / f"{config_path.stem}.probe.json"
        env = {**os.environ, "BENCH_PROBE_FILE": str(self._probe)}
        with open(self._log, "w") as log:
            self._process = subprocess.Popen([PYTHON, str(FOOTPRINT_CHILD), "run", str(config_path)],
                                             cwd=ROOT, stderr=log, stdout=subprocess.DEVNULL, env=env)
        self.pid = self._process.pid
        self.url = ""

    def wait_api(self, timeout: float = 30.0) -> str:
        def listening() -> bool:
            if self._process.poll() is not None:
                raise RuntimeError(f"bridge exited: {self._log.read_text()[-2000:]}")
            found = re.search(r"api listening url=(\S+)/api/v1/health", self._log.read_text())
            if found:
                self.url = found.group(1)
            return bool(found)
        wait_until(listening, timeout, "the bridge API")
        return self.url

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def probe(self) -> dict[str, Any]:
        """Ask the bridge process which watched modules it has loaded."""
        self._probe.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        wait_until(self._probe.exists, 10, "the module probe")
        result: dict[str, Any] = json.loads(self._probe.read_text())
        return result

    def rss(self) -> float:
        return rss_mb(self.pid)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def child_json(command: list[str], what: str, timeout: float) -> Any:
    """Run a child process to completion; its last stdout line is JSON."""
    done = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench child {what} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(mode: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run one of this module's stats-printing modes to completion (``child_json``)."""
    result: dict[str, Any] = child_json([PYTHON, "-m", "bench._bridge_proc", mode, *args], mode, timeout)
    return result


def start_idle(mode: str = "imports") -> subprocess.Popen[str]:
    """A baseline child (``imports`` or ``imports-model``) that prints READY and idles until
    terminated."""
    process = subprocess.Popen([PYTHON, str(FOOTPRINT_CHILD), mode], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "READY":
        process.kill()
        raise RuntimeError(f"bench child {mode} did not start")
    return process


# --------------------------------------------------------------------------- child side


def _jitter_stats(completions: dict[str, list[float]], interval: float) -> dict[str, float]:
    deviations = [abs((b - a) - interval) * 1000 for times in completions.values()
                  for a, b in itertools.pairwise(times)]
    return {"jitter_p50_ms": percentile(deviations, 50), "jitter_p99_ms": percentile(deviations, 99),
            "jitter_max_ms": max(deviations, default=float("nan")), "intervals": len(deviations)}


async def _bridge_jitter(config_path: str, seconds: float) -> dict[str, Any]:
    from bridge.config import load_config
    from bridge.runtime.bridge import Bridge

    config = load_config(config_path)
    bridge = Bridge(config)
    completions: dict[str, list[float]] = {d.name: [] for d in config.devices}
    durations: list[float] = []
    bad = 0
    original = bridge.poll_device
    loop = asyncio.get_running_loop()

    async def recorded(name: str) -> None:
        nonlocal bad
        started = loop.time()
        await original(name)
        ended = loop.time()
        completions[name].append(ended)
        durations.append((ended - started) * 1000)
        latest = bridge.store.latest(config.device(name).tags[0].name)
        bad += latest is None or latest.quality.value != "good"

    bridge.poll_device = recorded  # type: ignore[method-assign]
    await bridge.start()
    try:
        await asyncio.sleep(1.5)  # connections and first cycles are not steady state
        for times in completions.values():
            times.clear()
        durations.clear()
        bad = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await bridge.stop()
    interval = config.devices[0].poll_interval
    return {"cpu_s": cpu, "wall_s": wall, "polls": len(durations), "bad_polls": bad,
            "poll_p50_ms": percentile(durations, 50), "poll_p99_ms": percentile(durations, 99),
            "tags": len(config.tag_names()), **_jitter_stats(completions, interval)}


async def _profile_runtime(config_path: str, seconds: float) -> dict[str, Any]:
    import cProfile
    import io
    import pstats

    from bench._common import profile_rows
    from bridge.config import load_config
    from bridge.runtime.bridge import Bridge

    bridge = Bridge(load_config(config_path))
    await bridge.start()
    profiler = cProfile.Profile()
    try:
        await asyncio.sleep(2.0)  # connections and first cycles are not steady state
        cpu0, wall0 = time.process_time(), time.perf_counter()
        profiler.enable()
        await asyncio.sleep(seconds)
        profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await bridge.stop()
    # Own time of everything but the event loop's wait for I/O: what the bridge spent.
    rows = profile_rows(pstats.Stats(profiler, stream=io.StringIO()), idle="'poll' of 'select.epoll'")
    return {"cpu_s": cpu, "wall_s": wall, "profile": rows}


async def _raw_poll(config_path: str, seconds: float) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    from adapters.modbus.plan import plan_reads
    from bridge.config import ModbusDeviceConfig, load_config

    config = load_config(config_path)
    lines: dict[int, list[Any]] = {}
    for device in config.devices:
        if not isinstance(device, ModbusDeviceConfig):
            raise SystemExit(f"raw-poll polls Modbus devices only, not {device.name!r}")
        lines.setdefault(device.port, []).append(device)
    clients = {port: AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0)
               for port in lines}
    for client in clients.values():
        await client.connect()
    completions: dict[str, list[float]] = {d.name: [] for d in config.devices}
    durations: list[float] = []
    interval = config.devices[0].poll_interval
    loop = asyncio.get_running_loop()
    recording = False

    async def poll_line(port: int) -> None:
        client = clients[port]
        jobs = [(d.name, d.unit_id, plan_reads(d.tags, max_gap=d.max_gap)) for d in lines[port]]
        next_t = loop.time()
        while True:
            for name, unit, plan in jobs:
                started = loop.time()
                for request in plan:
                    response = await client.read_holding_registers(request.address, count=request.count,
                                                                   device_id=unit)
                    if response.isError():
                        raise RuntimeError(f"raw poll failed: {response}")
                if recording:
                    completions[name].append(loop.time())
                    durations.append((loop.time() - started) * 1000)
            next_t += interval
            await asyncio.sleep(max(0.0, next_t - loop.time()))

    tasks = [asyncio.create_task(poll_line(port)) for port in clients]
    await asyncio.sleep(1.5)
    recording = True
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients.values():
        client.close()
    return {"cpu_s": cpu, "wall_s": wall, "polls": len(durations), "bad_polls": 0,
            "poll_p50_ms": percentile(durations, 50), "poll_p99_ms": percentile(durations, 99),
            "tags": len(config.tag_names()), "rss_mb": rss_mb(os.getpid()),
            **_jitter_stats(completions, interval)}


def _history(tags: int, size: int) -> dict[str, Any]:
    import gc

    from bridge.core.tags import TagStore, good

    names = [f"t{i}" for i in range(tags)]
    gc.collect()
    before = rss_mb(os.getpid())
    store = TagStore(names, size)
    now = time.time()
    for step in range(size):
        store.put_many([good(n, 1.5 + step, received_time=now + step) for n in names])
    gc.collect()
    return {"tags": tags, "history_size": size, "rss_growth_mb": rss_mb(os.getpid()) - before}


async def _raw_echo(port: int, interval: float) -> None:
    import struct

    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0)
    await client.connect()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    last = None
    next_t = loop.time()
    while True:
        value = (await client.read_holding_registers(0, count=1, device_id=1)).registers[0]
        if value != last:
            last = value
            await client.write_registers(100, list(struct.unpack(">HH", struct.pack(">f", value))),
                                         device_id=1)
        next_t += interval
        await asyncio.sleep(max(0.0, next_t - loop.time()))


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "jitter":
        print(json.dumps(asyncio.run(_bridge_jitter(args[0], float(args[1])))))
    elif mode == "profile":
        print(json.dumps(asyncio.run(_profile_runtime(args[0], float(args[1])))))
    elif mode == "raw-poll":
        print(json.dumps(asyncio.run(_raw_poll(args[0], float(args[1])))))
    elif mode == "raw-echo":
        asyncio.run(_raw_echo(int(args[0]), float(args[1])))
    elif mode == "history":
        print(json.dumps(_history(int(args[0]), int(args[1]))))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()

from __future__ import annotations

import asyncio
import fcntl
import sys
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import IO, Any

import pytest
import pytest_asyncio

from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge.cli.demo import demo_config
from bridge.runtime.bridge import Bridge

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- running alone
#
# `make test` runs the suite in pytest-xdist workers (Makefile: -n 2). A test marked
# ``serial`` measures a rate or a latency against a wall-clock bound that a neighbour test
# loading the CPU could break: no other test runs while it does. Every test of a run holds one
# lock file for its whole setup-call-teardown, shared, and a serial one exclusively (kept from
# one serial test to the next); a second lock (the turnstile) queues new tests behind a serial
# one that waits, so it is not starved. Under xdist the serial tests come first, back to back,
# so the other worker waits once. Outside xdist (one process) nothing changes. The marker:
# pyproject.toml.


def _serial(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("serial") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # the same (stable) order on every worker
        items.sort(key=lambda item: not _serial(item))


_locks: list[IO[bytes]] = []
_exclusive: list[bool] = []  # this worker holds the lock exclusively since the last serial test


def _run_locks(config: pytest.Config) -> list[IO[bytes]]:
    """(turnstile, lock) of this xdist run, opened once per worker; [] outside xdist. They
    live in the run's base temporary directory, which the workers share (and pytest prunes)."""
    if not hasattr(config, "workerinput"):
        return []
    if not _locks:
        shared = config._tmp_path_factory.getbasetemp().parent  # type: ignore[attr-defined]
        _locks.extend([(shared / "serial.turnstile").open("ab"), (shared / "serial.lock").open("ab")])
    return _locks


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, object, object]:
    locks = _run_locks(item.config)
    if not locks:
        return (yield)
    turnstile, lock = locks
    serial = _serial(item)
    if _exclusive and not serial:
        fcntl.flock(lock, fcntl.LOCK_UN)
        _exclusive.clear()
    if not _exclusive:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
    try:
        return (yield)
    finally:
        if serial and _serial(nextitem):
            _exclusive.append(True)
        else:
            fcntl.flock(lock, fcntl.LOCK_UN)
            _exclusive.clear()


@pytest_asyncio.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running: leaked pollers are how gateways rot."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while True:
        leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        if not leaked or loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    for task in leaked:
        task.cancel()
    assert not leaked, f"test left tasks running: {sorted(t.get_name() for t in leaked)}"


@pytest_asyncio.fixture
async def adapters() -> AsyncIterator[list[Any]]:
    """Adapters a test made: closed after it, pass or fail (before the leaked-task check)."""
    made: list[Any] = []
    yield made
    for adapter in made:
        await adapter.close()


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    """The simulated pump station at 10x: one new sample (1 s of plant time) every 0.1 s."""
    handle = await start_simulator("127.0.0.1", 0, seed=7, step=0.1, speed=10)
    try:
        yield handle
    finally:
        await handle.stop()


@pytest_asyncio.fixture
async def bridge(sim: SimulatorHandle) -> AsyncIterator[Bridge]:
    """A bridge on the demo config polling ``sim``, not started (tests drive its jobs)."""
    instance = Bridge(demo_config(sim.port, api_port=0), speed=10)
    try:
        yield instance
    finally:
        await instance.stop()

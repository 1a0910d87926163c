from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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

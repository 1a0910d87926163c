"""Waiting for state in tests: poll a predicate with a deadline, never sleep-and-hope."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["until"]


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str,
                interval: float = 0.02) -> float:
    """Wait until ``predicate()`` (sync or async) is true; return the seconds it took.
    Fails the test naming ``what`` after ``timeout`` seconds."""
    start = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)

"""What the MQTT and Sparkplug sinks share: Scores queued in memory by ``on_score`` (never
blocking the loop), moved to the on-disk spool by the publisher task, and every SQLite call
on one worker thread of their own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from bridge.core.aio import cancel_and_wait
from bridge.ports import SinkBase
from bridge.sinks.spool import Spool

__all__ = ["SpooledSink"]

P = ParamSpec("P")
T = TypeVar("T")


class _SpoolCounters(Protocol):
    spooled: int
    dropped: int
    queued: int


StatsT = TypeVar("StatsT", bound=_SpoolCounters)


class SpooledSink(SinkBase, Generic[StatsT]):
    """Base of a sink that publishes from a spool. Subclasses set ``stats`` (with ``spooled``,
    ``dropped``, ``queued``), open ``_spool``, start ``_executor`` in ``start`` and fill
    ``_pending`` with ``(seq, key, body)`` items in ``on_score``."""

    stats: StatsT
    _log: logging.Logger

    def __init__(self, spool: Spool) -> None:
        self._spool: Spool | None = spool
        self._pending: deque[tuple[int, str, dict[str, Any]]] = deque()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None  # the publisher, started by start()

    async def stop(self, timeout: float = 3.0) -> None:
        """Send what is spooled while connected, for at most ``timeout`` seconds; what is left
        stays in the spool for the next start."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                await cancel_and_wait(self._task)
            elif not self._task.cancelled() and self._task.exception() is not None:
                self._log.error("%s publisher failed", self.name, exc_info=self._task.exception())
            self._task = None
        if self._executor is not None:
            if self._spool is not None:
                await self._flush_pending()
                await self._io(self._spool.close)
            self._executor.shutdown(wait=False)
            self._executor = None
        elif self._spool is not None:  # never started: nothing pending, nothing in flight
            self._spool.close()
        self._spool = None

    async def _idle(self, delay: float) -> None:
        """Wait out a reconnect delay, still moving new messages to disk as they come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not self._stopping and (remaining := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            self._wakeup.clear()
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        if not self._pending or self._spool is None:
            return
        items = list(self._pending)
        self._pending.clear()
        dropped = await self._io(self._spool.append, items)
        self.stats.spooled += len(items)
        if dropped:
            if not self.stats.dropped:  # once: the counter tells how many since
                self._log.warning("%s spool full (%d messages): dropping the oldest",
                                  self.name, self._spool.max_messages)
            self.stats.dropped += dropped
        self.stats.queued = len(self._spool)

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

"""A TCP fault proxy for tests: sits between the bridge and a real server on loopback.

Modes: ``pass`` (forward), ``delay`` (hold every chunk for ``delay`` s), ``drop`` (close new
and existing connections at once), ``reset`` (abort connections with RST), ``blackhole``
(accept and read, forward nothing, answer nothing: a half-open peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

__all__ = ["FaultProxy", "fault_proxy"]


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.delay = 0.0
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def set(self, mode: str, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay
        if mode in ("drop", "reset"):
            for writer in list(self._writers):
                self._kill(writer, rst=mode == "reset")

    @staticmethod
    def _kill(writer: asyncio.StreamWriter, rst: bool) -> None:
        sock = writer.get_extra_info("socket")
        if rst and sock is not None:
            # SO_LINGER 0: close() sends RST instead of FIN, like a crashed peer or firewall.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode in ("drop", "reset"):
            self._kill(writer, rst=self.mode == "reset")
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pipes = [asyncio.create_task(self._pipe(reader, up_writer), name="fault-proxy.up"),
                 asyncio.create_task(self._pipe(up_reader, writer), name="fault-proxy.down")]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(4096):
                if self.mode == "blackhole":
                    continue
                if self.mode == "delay":
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def fault_proxy(target_port: int) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()

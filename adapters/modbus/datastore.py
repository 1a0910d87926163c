"""The one place plcbridge touches pymodbus' server side, which changes between versions
(3.16 already warns that its datastore classes go in v4): the plant simulator runs pymodbus'
own TCP server (``start_tcp_server``); plcbridge's result server runs ``GuardedTcpServer``,
which frames MBAP itself and uses pymodbus only to decode and answer complete requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections import Counter
from dataclasses import dataclass

from pymodbus.exceptions import ModbusException
from pymodbus.framer.socket import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice
from pymodbus.simulator.simcore import SimCore

__all__ = ["ConnectionLimits", "GuardedTcpServer", "RefusalLog", "start_tcp_server", "stop_server"]


async def start_tcp_server(devices: SimDevice | list[SimDevice], host: str, port: int,
                           ) -> tuple[ModbusTcpServer, int]:
    """Serve ``devices`` on ``host:port`` in the background; returns the server and the bound
    port (``port=0`` picks a free one). Raises OSError when the port cannot be bound."""
    server = ModbusTcpServer(devices, address=(host, port))
    await server.serve_forever(background=True)
    sockets = getattr(server.transport, "sockets", None)
    if not sockets:
        # pymodbus logs a bind failure and returns without a listening socket: make it an error.
        await stop_server(server)
        raise OSError(f"Modbus server could not bind {host}:{port}")
    return server, int(sockets[0].getsockname()[1])


async def stop_server(server: ModbusTcpServer) -> None:
    """Stop listening and close every client connection."""
    await server.shutdown()  # type: ignore[no-untyped-call]


# -- the bridge's own result server: a guarded Modbus/TCP front -------------------------------
#
# pymodbus' server keeps every connection forever (no cap, no idle or frame timeout), buffers
# a header that announces ``length = 65535`` until the peer sends the rest, answers only the
# last of several pipelined requests, and logs each malformed frame with a traceback and a
# hex dump. The result server therefore does its own TCP and MBAP framing here and hands
# pymodbus only complete, decoded requests of the function codes it serves; pymodbus still
# decides addresses, counts and read-only refusals (``datastore_update`` on the SimCore).

_SERVED = frozenset({1, 2, 3, 4, 5, 6, 15, 16, 22, 23})  # reads; writes answer exception 2
_MAX_LENGTH = 254  # MBAP length field: unit id + a PDU of at most 253 bytes (260-byte ADU)
_ILLEGAL_FUNCTION, _ILLEGAL_VALUE, _DEVICE_FAILURE, _NO_TARGET = 1, 3, 4, 0x0B
_SUMMARY_EVERY = 60.0  # seconds between two refusal summaries in the log


@dataclass(frozen=True)
class ConnectionLimits:
    """How much a Modbus client may hold: connections, seconds between requests, seconds
    from a frame's first byte to its last."""

    max_connections: int
    idle_timeout: float
    frame_timeout: float


class RefusalLog:
    """Counts refusals by reason and logs them as one summary line at most every
    ``every`` seconds, so a flood of bad frames costs a counter, not a log line each."""

    def __init__(self, logger: logging.Logger, what: str, every: float = _SUMMARY_EVERY) -> None:
        self._log = logger
        self._what = what
        self._every = every
        self._counts: Counter[str] = Counter()
        self._last = -math.inf
        self.total: Counter[str] = Counter()

    def count(self, reason: str) -> None:
        self._counts[reason] += 1
        self.total[reason] += 1
        now = time.monotonic()
        if now - self._last >= self._every:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self._counts:
            summary = " ".join(f"{reason}={n}" for reason, n in sorted(self._counts.items()))
            self._log.warning("%s refused (%s; next summary in %.0f s at most)", self._what,
                              summary, self._every)
            self._counts.clear()
        self._last = time.monotonic() if now is None else now


@dataclass
class _Connection:
    writer: asyncio.StreamWriter
    last_request: float  # monotonic time of the last request's first byte (or of the accept)


class _Refused(Exception):
    """The peer broke the framing: close the connection (nothing after it can be trusted)."""


def _exception(function_code: int, code: int, unit: int, tid: int) -> bytes:
    return struct.pack(">HHHBBB", tid, 0, 3, unit, (function_code & 0x7F) | 0x80, code)


class GuardedTcpServer:
    """A Modbus/TCP server for one ``SimDevice`` with ``limits`` enforced per connection.

    Requests of one connection are answered one by one in the order they came (Modbus/TCP
    allows several outstanding transactions: pipelined requests each get their answer)."""

    def __init__(self, device: SimDevice, limits: ConnectionLimits, logger: logging.Logger) -> None:
        self._core = SimCore(device)
        self._unit = device.id
        self._decoder = DecodePDU(True)
        self._framer = FramerSocket(self._decoder)
        self._limits = limits
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # evicted ones too, until they end
        self._server: asyncio.Server | None = None
        self.refusals = RefusalLog(logger, "modbus server")

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port``; returns the bound port. Raises OSError."""
        # limit: the stream buffer never holds more than a few frames of one client.
        # backlog: under a flood of connects the kernel queues them (no descriptor of ours)
        # instead of dropping SYNs, so legitimate clients are not held up by retransmits.
        self._server = await asyncio.start_server(self._serve, host, port, limit=4096, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in self._connections.values():
            connection.writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if server is not None:
            await server.wait_closed()
        self.refusals.flush()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._server is None:
            writer.transport.abort()
            return
        if len(self._connections) >= self._limits.max_connections:
            # Full: drop the connection that has waited longest for its next request, not the
            # new one, so a few idle sockets cannot lock SCADA out for a whole idle_timeout.
            # It leaves the table now: its task ends a loop iteration later, and the next
            # accept must not pick the same victim again.
            oldest = min(self._connections, key=lambda t: self._connections[t].last_request)
            self.refusals.count("over_max_connections")
            self._connections.pop(oldest).writer.transport.abort()
        task.set_name("plcbridge[modbus_server].connection")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        connection = _Connection(writer, time.monotonic())
        self._connections[task] = connection
        try:
            while True:
                try:
                    async with asyncio.timeout(self._limits.idle_timeout):
                        first = await reader.readexactly(1)
                except TimeoutError:
                    self.refusals.count("idle_timeout")
                    return
                connection.last_request = time.monotonic()
                async with asyncio.timeout(self._limits.frame_timeout):
                    header = first + await reader.readexactly(6)
                    tid, protocol, length, unit = struct.unpack(">HHHB", header)
                    if protocol != 0 or not 2 <= length <= _MAX_LENGTH:
                        raise _Refused("bad_mbap_header")
                    pdu = await reader.readexactly(length - 1)
                    writer.write(await self._answer(tid, unit, pdu))
                    await writer.drain()  # a peer that does not read its answers times out
        except TimeoutError:
            self.refusals.count("frame_timeout")
        except _Refused as exc:
            self.refusals.count(str(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed (or was dropped), possibly in the middle of a frame
        finally:
            self._connections.pop(task, None)
            writer.transport.abort()

    async def _answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        function_code = pdu[0]
        if unit != self._unit:
            return _exception(function_code, _NO_TARGET, unit, tid)
        # None of the served function codes has sub-functions: the table entry is the class.
        request_class = (self._decoder.pdu_table.get(function_code, (None, None))[0]
                         if function_code in _SERVED else None)
        if request_class is None:
            self.refusals.count("illegal_function")
            return _exception(function_code, _ILLEGAL_FUNCTION, unit, tid)
        request = request_class()
        try:
            request.decode(pdu[1:])
        except (ModbusException, ValueError, IndexError, struct.error):
            self.refusals.count("malformed_request")
            return _exception(function_code, _ILLEGAL_VALUE, unit, tid)
        request.dev_id, request.transaction_id = unit, tid
        try:
            response = await request.datastore_update(self._core, unit)  # type: ignore[arg-type]
        except Exception:  # never a traceback per request; the summary counts them
            self.refusals.count("datastore_failure")
            return _exception(function_code, _DEVICE_FAILURE, unit, tid)
        response.transaction_id, response.dev_id = tid, unit
        return self._framer.buildFrame(response)

"""Modbus adapter: the only module that talks to pymodbus (pinned to 3.16.x in pyproject).

Design choices, and why:

* Devices on the same physical line (``ModbusDeviceConfig.line``: one TCP endpoint, one
  gateway, one serial port) share one pymodbus client, kept in a small per-event-loop pool
  with reference counts. Requests on a line are serialized by an ``asyncio.Lock`` (an RS-485
  bus carries one request at a time) and spaced by the device's ``inter_request_delay_ms``.
* pymodbus' own reconnect task and timeouts are disabled / pushed out of the way
  (``reconnect_delay=0``, ``retries=0``, a generous client timeout); every wait is bounded
  here by the requesting device's ``timeout``, retried ``retries`` times. A dead device
  therefore costs at most ``timeout * (retries + 1)`` per read, holds only its own line, and
  the next read simply tries to connect again.
* ``read`` never raises for device faults: each tag gets a Reading, bad with a reason.
  ``write`` and ``connect`` raise typed errors from ``bridge.core.errors``; the core decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from adapters.modbus.codec import (
    BIT,
    RAW,
    FieldDecoder,
    RequestDecoder,
    decode,
    encode_strict,
    words_to_registers,
)
from adapters.modbus.frames import Sent, check_reply, sent_frame
from adapters.modbus.plan import ReadRequest, describe, describe_holes, plan_reads, request_for
from adapters.modbus.replies import register_word_replies
from bridge.config import ModbusDeviceConfig, ModbusTagConfig, RegisterTarget
from bridge.core.backoff import Backoff
from bridge.core.errors import (
    ConfigError,
    DecodeError,
    DeviceExceptionError,
    DeviceTimeoutError,
    NotConnectedError,
)
from bridge.core.tags import Columns, Part, Reading, bad, expand, good, good_readings
from bridge.ports import DeviceStatus, OnReadings

_MAX_WRITE = 123  # registers per FC16 request (Modbus limit)
_COLUMNS_FROM = 8  # tags in a reply from which one Columns beats a Reading per tag
_EXACT = 2**53  # ints up to this magnitude are exact in the TagStore's float64 columns
_READ_METHODS = {"holding": "read_holding_registers", "input": "read_input_registers",
                 "coil": "read_coils", "discrete": "read_discrete_inputs"}

__all__ = ["EXCEPTION_NAMES", "ModbusAdapter", "open_lines", "serial_open_problem"]

log = logging.getLogger("plcbridge.modbus")
audit = logging.getLogger("plcbridge.audit")  # the write-back audit trail (read-back checks)


class _OneLine(logging.Filter):
    """pymodbus appends its last frames to an error message, one ``\n>>>>> send: ...`` line
    each: joined into the message's one line, so the bridge's one-line-per-record log format
    (and anything that parses it) holds. Installed on pymodbus' own logger, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\n" in message:
            record.msg, record.args = " | ".join(
                part.strip() for part in message.splitlines() if part.strip()), None
        return True


_PYMODBUS_LOG = logging.getLogger("pymodbus.logging")
if not any(isinstance(f, _OneLine) for f in _PYMODBUS_LOG.filters):
    _PYMODBUS_LOG.addFilter(_OneLine())

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

# pymodbus' own response timeout only backs ours up; ours (per device) always fires first.
_CLIENT_TIMEOUT = 120.0
_Client = AsyncModbusTcpClient | AsyncModbusSerialClient


class _Failure(Exception):
    """A request failed; ``kind`` keys DeviceStatus.errors, ``reason`` goes into Readings."""

    def __init__(self, kind: str, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.code = code


def _registers(values: bytes | list[bool]) -> list[int] | list[bool]:
    """A reply as the tag-by-tag decode takes it: register values (or the bits as they are)."""
    return words_to_registers(values) if isinstance(values, bytes) else values


def _refused(failure: _Failure) -> bool:
    """Exception 2 (illegal data address) or 3 (illegal data value): the device refuses what
    was asked, not the request as such; a smaller read may succeed."""
    return failure.kind == "exception" and failure.code in (2, 3)


def _silent(failure: _Failure) -> bool:
    """The unit did not answer (the line itself is up): a timeout, or a gateway saying so."""
    return failure.kind == "timeout" or (failure.kind == "exception" and failure.code in (10, 11))


def serial_open_problem(path: str) -> str | None:
    """Open ``path`` the way pyserial does (read/write, then an exclusive lock, as pymodbus
    asks for) and explain the OS error in terms of what to do; None if it opens."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return (f"{path} not found: the adapter is unplugged or was renamed; use its "
                    "stable /dev/serial/by-id/... path")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (f"permission denied on {path}: add the user running plcbridge to the "
                    "'dialout' group (then log in again)")
        if exc.errno == errno.EBUSY:
            return f"{path} is busy: another program holds it"
        return f"{path}: {exc.strerror or exc}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        return (f"{path} is busy: another program holds it (a terminal, ModemManager, "
                "another plcbridge)")
    finally:
        os.close(fd)
    return None


# --------------------------------------------------------------------------- line pool


@dataclass
class _Line:
    """One shared client and the lock that serializes its requests."""

    key: str
    settings: tuple[Any, ...]
    client: _Client = field(init=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    refs: int = 0
    last_request_end: float = 0.0  # monotonic; for inter_request_delay_ms
    # The request in flight and whether its connection dropped under it: pymodbus leaves the
    # response future pending on a lost connection, so we cancel the request ourselves rather
    # than wait out the timeout.
    inflight: asyncio.Task[Any] | None = None  # the task waiting for the reply
    lost: bool = False
    # Reconnect policy for the whole line: a dead device is not hammered with a connect per
    # poll; polls before ``retry_at`` fail at once with the last reason.
    backoff: Backoff = field(default_factory=Backoff)
    attempts: int = 0
    retry_at: float = 0.0
    last_failure: str = ""
    was_connected: bool = False
    rtu: bool = False  # RTU framing (serial or RTU-over-TCP): no transaction id
    # The request frame on the wire and what is wrong with the reply so far (see frames.py).
    sent: Sent | None = None
    reply_problem: str = ""
    rejected: str = ""  # a reply so broken that the request was cancelled and the line closed
    # Writes go before queued polls: a write-back waiting behind a poll of every unit on a
    # slow line would reach the PLC a whole cycle late. Reads yield while writers wait.
    writers: int = 0
    no_writers: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.no_writers.set()

    async def acquire(self, write: bool) -> None:
        """Take the line for one request (release with ``lock.release()``); a read lets
        waiting writes go first. A method, not a context manager: it runs per request."""
        while True:
            await self.lock.acquire()
            if write or not self.writers:
                return
            self.lock.release()
            await self.no_writers.wait()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        self.writers += 1
        self.no_writers.clear()
        try:
            yield
        finally:
            self.writers -= 1
            if not self.writers:
                self.no_writers.set()

    def on_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus' trace_packet callback: every frame out, every receive buffer in."""
        if sending:
            self.sent, self.reply_problem, self.rejected = sent_frame(data, self.rtu), "", ""
            return data
        if self.sent is None:
            return data
        problem = check_reply(data, self.sent, self.rtu)
        if problem is None:
            return data
        self.reply_problem = problem.reason
        if not problem.fatal:
            return data  # pymodbus skips or decodes it; the request names it if it fails
        # pymodbus would raise inside data_received (asyncio logs a traceback) or wait forever:
        # hand it nothing, fail the request with the reason and drop the connection, which
        # also drops the unparseable buffer.
        self.rejected = problem.reason
        inflight = self.inflight
        if inflight is not None and not inflight.done():
            self.lost = True
            inflight.cancel()
        self.inflight = None  # cancelled once: the close below must not cancel it again
        self.client.close()
        return b""

    def on_connection(self, connected: bool) -> None:
        """pymodbus' trace_connect callback."""
        inflight = self.inflight
        if connected or inflight is None or inflight.done():
            return
        try:
            running = asyncio.current_task()
        except RuntimeError:
            running = None
        # Called from inside the request itself (pymodbus closing on its own error): that
        # error is about to surface; a cancel left pending on the caller would outlive it.
        if inflight is not running:
            self.lost = True
            inflight.cancel()


# Keyed by event loop: a client is bound to the loop that created it, and tests run one
# loop per test. Weak, so a finished loop's leftovers cannot be handed out again.
_POOL: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Line]] = (
    weakref.WeakKeyDictionary())


def _line_settings(config: ModbusDeviceConfig) -> tuple[Any, ...]:
    if config.transport == "rtu":
        return (config.transport, config.baudrate, config.parity, config.stopbits, config.bytesize)
    return (config.transport,)


def _new_client(config: ModbusDeviceConfig, line: _Line) -> _Client:
    # reconnect_delay=0 turns pymodbus' background reconnect task off: reconnecting is our
    # job, done inline by the next request, so it can never outlive a read or hog a line.
    common: dict[str, Any] = {
        "name": config.line, "reconnect_delay": 0, "timeout": _CLIENT_TIMEOUT, "retries": 0,
        "trace_connect": line.on_connection, "trace_packet": line.on_packet,
    }
    if config.transport == "rtu":
        assert config.serial_port is not None
        serial = AsyncModbusSerialClient(
            config.serial_port, framer=FramerType.RTU, baudrate=config.baudrate,
            bytesize=config.bytesize, parity=config.parity, stopbits=config.stopbits, **common)
        register_word_replies(serial)
        return serial
    assert config.host is not None
    framer = FramerType.RTU if config.transport == "rtu-over-tcp" else FramerType.SOCKET
    client = AsyncModbusTcpClient(config.host, port=config.port, framer=framer, **common)
    register_word_replies(client)
    return client


def _acquire_line(config: ModbusDeviceConfig) -> _Line:
    lines = _POOL.setdefault(asyncio.get_running_loop(), {})
    line = lines.get(config.line)
    settings = _line_settings(config)
    if line is None:
        line = lines[config.line] = _Line(
            config.line, settings, backoff=Backoff(config.reconnect_min, config.reconnect_max),
            rtu=config.transport != "tcp")
        line.client = _new_client(config, line)
    elif line.settings != settings:
        raise ConfigError([f"devices: {config.name!r} shares line {config.line!r} but its serial "
                           f"settings {settings[1:]} differ from {line.settings[1:]}"])
    line.refs += 1
    return line


def _release_line(line: _Line) -> None:
    line.refs -= 1
    if line.refs > 0:
        return
    line.client.close()
    for lines in _POOL.values():
        if lines.get(line.key) is line:
            del lines[line.key]


def open_lines() -> list[str]:
    """Lines with a live client in this loop's pool (for tests and diagnostics)."""
    return sorted(_POOL.get(asyncio.get_running_loop(), {}))


# --------------------------------------------------------------------------- adapter


class ModbusAdapter:
    """One Modbus device (one unit id on one line)."""

    def __init__(self, config: ModbusDeviceConfig) -> None:
        self.config = config
        self.name = config.name
        self.status = DeviceStatus(config.name)
        self._line: _Line | None = None
        self._failing = False
        self._decoders: list[RequestDecoder] = []
        # Learned from exception 2/3 replies to merged reads (see _learn): unreadable address
        # ranges and request sizes per table, tags that sit in a hole, and when all of it is
        # forgotten and tried again (0: nothing learned).
        self._holes: dict[str, list[tuple[int, int]]] = {}
        self._limits: dict[str, int] = {}
        self._isolated: dict[str, str] = {}
        self._relearn_at = 0.0
        # Circuit breaker: polls in a row the unit did not answer; while open (probe_at set),
        # polls fail at once without touching the line and one request probes it now and then.
        self._silent = 0
        self._probes = 0
        self._probe_at = 0.0
        # A probe holds the line for at most one timeout: probe no more often than every 15
        # timeouts (12 after the -20 % jitter), so a live neighbour keeps > 90 % of the line;
        # the delay then doubles up to reconnect_max.
        self._probe_backoff = Backoff(min(config.reconnect_max, max(config.reconnect_min,
                                                                    15 * config.timeout)),
                                      config.reconnect_max)
        # Planned once (and again only when something was learned): the poll loop only walks
        # this list and its compiled decoders.
        self._replan()

    def _replan(self) -> None:
        config = self.config
        self.plan = plan_reads(
            config.tags, max_registers=config.max_registers, max_bits=config.max_bits,
            max_gap=config.max_gap, holes=self._holes, limits=self._limits)
        self.status.holes = describe_holes(self._holes)

    @property
    def requests_per_poll(self) -> int:
        return len(self._plan)

    async def subscribe(self, on_readings: OnReadings) -> bool:
        return False  # Modbus has no push: the runtime polls

    @property
    def plan(self) -> list[ReadRequest]:
        """The planned requests, in poll order. Assigning a new plan recompiles its decoders."""
        return self._plan

    @plan.setter
    def plan(self, requests: list[ReadRequest]) -> None:
        self._plan = requests
        self._decoders = [self._decoder(request) for request in requests]
        self.status.read_plan = describe(requests)

    def _decoder(self, request: ReadRequest) -> RequestDecoder:
        config = self.config
        return RequestDecoder(request.tags, request.count, is_bits=request.is_bits,
                              byte_order=config.byte_order, word_order=config.word_order)

    # ---- lifecycle

    async def connect(self) -> None:
        """Join the shared line and open it. Raises NotConnectedError if unreachable."""
        line = self._join()
        async with line.lock:
            failure = await self._ensure_connected(line)
        if failure is not None:
            self.status.connected = False
            raise NotConnectedError(self.name, failure.reason.removeprefix("not connected: "))
        self.status.connected = True

    async def close(self) -> None:
        """Leave the line; the client closes when its last device leaves. Idempotent."""
        line, self._line = self._line, None
        if line is not None:
            _release_line(line)
        self.status.connected = False

    def _join(self) -> _Line:
        if self._line is None:
            self._line = _acquire_line(self.config)
        return self._line

    async def _ensure_connected(self, line: _Line) -> _Failure | None:
        """Open the line if needed (lock held), at most once per backoff delay. Bounded by
        this device's timeout."""
        if line.client.connected:
            return None
        now = time.monotonic()
        if now < line.retry_at:
            return _Failure("not_connected", f"{line.last_failure}; next attempt in "
                                             f"{line.retry_at - now:.1f} s")
        failure = await self._connect(line)
        if failure is not None:
            line.attempts += 1
            line.retry_at = time.monotonic() + line.backoff.delay(line.attempts)
            line.last_failure = failure.reason
            return failure
        if line.was_connected and self.config.connection == "persistent":
            self.status.reconnects += 1  # per_cycle reconnects by design: not worth counting
        line.was_connected, line.attempts, line.retry_at = True, 0, 0.0
        if self.config.connect_delay:
            # Some gateways drop the first request sent right after accepting: the lock is
            # held on purpose, the line is not usable before this.
            await asyncio.sleep(self.config.connect_delay)
        return None

    async def _connect(self, line: _Line) -> _Failure | None:
        try:
            async with asyncio.timeout(self.config.timeout):
                ok = await line.client.connect()
        except TimeoutError:
            return _Failure("not_connected", f"not connected: connect to {line.key} timed out "
                                             f"after {self.config.timeout:g} s")
        except Exception as exc:  # pymodbus lets termios/serial errors escape connect()
            line.client.close()
            why = self._serial_problem() or str(exc)
            return _Failure("not_connected", f"not connected: cannot open {line.key} ({why})")
        if not ok:
            # pymodbus logs the OS error and returns False: ask the OS ourselves, so the
            # reason says what to do about it.
            problem = self._serial_problem()
            return _Failure("not_connected", f"not connected: cannot open {line.key}"
                                             + (f" ({problem})" if problem else ""))
        return None

    def _serial_problem(self) -> str | None:
        """Why the serial port cannot be opened, or None (not serial, or it opens now)."""
        path = self.config.serial_port
        if self.config.transport != "rtu" or path is None:
            return None
        return serial_open_problem(path)

    # ---- requests

    async def _execute(self, call: Callable[[_Client], Awaitable[Any]],
                       retries: int | None = None, write: bool = False) -> Any:
        """Run one request with this device's timeout and retries (or ``retries``); raise
        _Failure."""
        line = self._join()
        config = self.config
        bad_reply = ""
        for attempt in range((config.retries if retries is None else retries) + 1):
            await line.acquire(write)
            try:
                if not line.client.connected:
                    failure = await self._ensure_connected(line)
                    if failure is not None:
                        raise failure
                # A bus needs silence between frames; this is timing, not waiting for state.
                wait = line.last_request_end + config.inter_request_delay_ms / 1000 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                # The request runs in this task (no task per request): a lost connection
                # cancels this task while it waits, and the cancel is taken back below.
                task = asyncio.current_task()
                line.lost, line.inflight = False, task
                sent_at = time.monotonic()
                try:
                    async with asyncio.timeout(config.timeout):
                        response = await call(line.client)
                    self.status.last_rtt = time.monotonic() - sent_at
                except TimeoutError:
                    response = None
                except asyncio.CancelledError:
                    # uncancel() takes back our own cancel; anything left is our caller's.
                    if not line.lost or task is None or task.uncancel() > 0:
                        raise  # our caller is being cancelled: not a device fault
                    if line.rejected:
                        raise _Failure("bad_reply", f"bad reply: {line.rejected}") from None
                    raise _Failure("not_connected", "not connected: connection lost") from None
                except ConnectionException as exc:
                    raise _Failure("not_connected", f"not connected: {exc}") from None
                except ModbusException as exc:
                    raise _Failure("protocol", f"protocol error: {exc}") from None
                finally:
                    line.inflight = None
                    line.last_request_end = time.monotonic()
            finally:
                line.lock.release()
            if response is None:
                if not line.client.connected:
                    raise _Failure("not_connected", "not connected: connection lost")
                log.debug("timeout device=%s attempt=%d", self.name, attempt + 1)
                bad_reply = line.reply_problem
                continue
            sent = line.sent
            if sent is not None and response.function_code & 0x7F != sent.function:
                # pymodbus decodes whatever function code arrives: an FC3 reply to an FC4
                # read would otherwise pass as good data.
                raise _Failure("bad_reply", f"bad reply: function code {response.function_code} "
                                            f"in reply to function code {sent.function}")
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                self.status.last_exception_code = code
                name = EXCEPTION_NAMES.get(code, "unknown")
                raise _Failure("exception", f"exception code {code} ({name})", code)
            return response
        if bad_reply:
            # Something came back, just nothing that answers the request: say what it was.
            raise _Failure("bad_reply", f"bad reply: {bad_reply} (no valid reply within "
                                        f"{config.timeout:g} s)")
        raise _Failure("timeout", "timeout")

    async def _read_request(self, request: ReadRequest, retries: int | None = None,
                            write: bool = False) -> bytes | list[bool]:
        """The reply's register bytes (big-endian words, exactly ``count`` of them), or its
        bits (``count`` of them)."""
        unit, address, count = self.config.unit_id, request.address, request.count
        method = _READ_METHODS[request.table]

        def call(client: _Client) -> Awaitable[Any]:
            return getattr(client, method)(address, count=count, device_id=unit)  # type: ignore[no-any-return]

        response = await self._execute(call, retries, write)
        # Bit responses are padded to whole bytes; register replies must match exactly: a
        # longer reply is as wrong as a short one (wrong request answered, broken gateway).
        if request.is_bits:
            bits: list[bool] = response.bits  # the response's own list: no copy
            if not count <= len(bits) <= -(-count // 8) * 8:
                raise _Failure("decode", f"decode error: reply carries {len(bits)} bits, asked for {count}")
            return bits if len(bits) == count else bits[:count]
        words: bytes = response.words  # HoldingWords/InputWords: every client is built by _new_client
        if len(words) != 2 * count:
            carries = f"{len(words) // 2} registers" if len(words) % 2 == 0 else f"{len(words)} data bytes"
            raise _Failure("decode", f"decode error: reply carries {carries}, asked for {count}")
        return words

    async def read(self) -> list[Reading]:
        """One Reading per tag, in plan order. Never raises for device faults."""
        return expand(await self.poll())

    async def poll(self) -> list[Part]:
        """``read()`` as the runtime takes it: good numbers of a reply as Columns."""
        try:
            if self._probe_at:
                parked = await self._probe()
                if parked is not None:
                    return parked
            return await self._poll()
        finally:
            if self.config.connection == "per_cycle" and self._line is not None:
                await self._disconnect(self._line)

    async def _disconnect(self, line: _Line) -> None:
        async with line.lock:
            line.client.close()

    async def _probe(self) -> list[Part] | None:
        """Breaker open: None when the unit answered a probe (poll it normally), else the bad
        Readings of a poll that did not hold the line."""
        now = time.monotonic()
        if now >= self._probe_at:
            try:
                await self._read_request(self._plan[0], retries=0)
            except _Failure as failure:
                if _silent(failure):
                    self._probes += 1
                    self._probe_at = time.monotonic() + self._probe_backoff.delay(self._probes)
                else:
                    self._close_breaker()
                    return None
            else:
                self._close_breaker()
                return None
        wait = max(0.0, self._probe_at - time.monotonic())
        reason = f"unit not answering (next probe in {wait:.1f} s)"
        self.status.record_error("unit_not_answering", reason)
        return [bad(tag.name, reason) for tag in self.config.tags]

    def _close_breaker(self) -> None:
        self._probe_at, self._probes, self._silent = 0.0, 0, 0
        self.status.unit_state = "ok"
        log.info("unit answering again device=%s line=%s", self.name, self.config.line)

    def _count_silence(self, failures: list[_Failure]) -> None:
        after = self.config.breaker_after
        if not after:
            return
        self._silent = self._silent + 1 if any(_silent(f) for f in failures) else 0
        if self._silent >= after and not self._probe_at:
            self._probes = 1
            self._probe_at = time.monotonic() + self._probe_backoff.delay(1)
            self.status.unit_state = "backoff"
            log.warning("unit not answering device=%s line=%s polls=%d: probing on a backoff, "
                        "the line stays free for the other units", self.name, self.config.line,
                        self._silent)

    async def _poll(self) -> list[Part]:
        started = time.monotonic()
        if self._relearn_at and started >= self._relearn_at:
            self._forget_holes()
        readings: list[Part] = []
        failures: list[_Failure] = []
        timed_out = learned = False
        for request, decoder in zip(self._plan, self._decoders, strict=True):
            if timed_out:
                # The device did not answer within timeout*(retries+1): do not spend that
                # again on every remaining request of this poll.
                failure = _Failure("timeout", "timeout (not sent: the device did not answer "
                                              "an earlier request)")
                readings.extend(bad(tag.name, failure.reason) for tag, _ in request.tags)
                continue
            isolated = self._isolated.get(request.tags[0][0].name)
            if isolated is not None and len(request.tags) == 1:
                retry = max(0.0, self._relearn_at - started)
                readings.append(bad(request.tags[0][0].name,
                                    f"{isolated} (learned; tried again in {retry:.0f} s)"))
                continue
            try:
                values = await self._read_request(request)
            except _Failure as failure:
                if _refused(failure) and len(request.tags) > 1:
                    learned = True
                    readings.extend(await self._learn(request, failure, failures))
                    continue
                failures.append(failure)
                timed_out = failure.kind in ("timeout", "not_connected")
                readings.extend(bad(tag.name, failure.reason) for tag, _ in request.tags)
                continue
            readings.extend(self._decode_request(decoder, values, time.time()))
        if learned:
            self._relearned()
        self._record(failures, time.monotonic() - started)
        self._count_silence(failures)
        return readings

    async def _learn(self, request: ReadRequest, refusal: _Failure,
                     failures: list[_Failure]) -> list[Reading]:
        """A merged read was refused (exception 2/3): bisect it until the refused tags or the
        refused gaps are found, reading everything else. Returns a Reading per tag."""
        self.status.count("exception")
        self.status.last_exception_code = refusal.code
        readings: list[Reading] = []

        async def split(failed: ReadRequest, why: _Failure) -> None:
            table = failed.table
            if len(failed.tags) == 1:
                tag = failed.tags[0][0]
                self._holes.setdefault(table, []).append((failed.address, failed.end))
                self._isolated[tag.name] = why.reason
                failures.append(why)
                readings.append(bad(tag.name, why.reason))
                return
            half = len(failed.tags) // 2
            parts = [request_for(table, [t for t, _ in failed.tags[:half]]),
                     request_for(table, [t for t, _ in failed.tags[half:]])]
            answered: list[ReadRequest] = []
            for part in parts:
                try:
                    values = await self._read_request(part)
                except _Failure as failure:
                    if not _refused(failure):
                        raise
                    await split(part, failure)
                    continue
                answered.append(part)
                readings.extend(expand(self._decode_request(self._decoder(part), values, time.time())))
            if len(answered) == 2:
                # Both halves read, the whole did not: the gap between them is unreadable,
                # or (no gap) the device refuses requests this long.
                first, second = sorted(answered, key=lambda r: r.address)
                if first.end < second.address:
                    self._holes.setdefault(table, []).append((first.end, second.address))
                else:
                    self._limits[table] = min(self._limits.get(table, failed.count),
                                              max(first.count, second.count))

        try:
            await split(request, refusal)
        except _Failure as failure:  # the device stopped answering mid-way: the rest is bad
            failures.append(failure)
            done = {r.tag for r in readings}
            readings.extend(bad(t.name, failure.reason) for t, _ in request.tags if t.name not in done)
        return readings

    def _relearned(self) -> None:
        if not self._relearn_at:
            self._relearn_at = time.monotonic() + self.config.hole_retry
        self._replan()
        log.info("read plan learned device=%s holes=%s requests=%d", self.name,
                 ",".join(self.status.holes) or "-", len(self._plan))

    def _forget_holes(self) -> None:
        """The slow retry: forget what was learned; the next refusal bisects again."""
        self._holes.clear()
        self._limits.clear()
        self._isolated.clear()
        self._relearn_at = 0.0
        self._replan()

    def _decode_request(self, decoder: RequestDecoder, values: bytes | list[bool],
                        received: float) -> list[Part]:
        """All tags of one reply: the compiled fast path of ``_decode``, same values. Good
        numbers of a reply with enough tags go out as one Columns (see bridge.core.tags)."""
        if not isinstance(values, bytes):  # a bit reply: one bool per tag
            bits = [bool(values[offset]) for _, offset in decoder.tags]
            return self._good(decoder, bits, received)
        raws = decoder.raw(values)
        special = decoder.special
        fixups: list[tuple[int, FieldDecoder]] = []
        if decoder.finite_at and not all(map(math.isfinite, [raws[i] for i in decoder.finite_at])):  # type: ignore[arg-type]
            fixups = [(i, f) for i, f in zip(decoder.finite_at, decoder.finite, strict=True)
                      if not math.isfinite(raws[i])]  # type: ignore[arg-type]
        if not special and not fixups:  # every tag a plain number or a finite float
            return self._good(decoder, raws, received)
        final = list(raws)
        for i, f in zip(decoder.special_at, special, strict=True):
            kind = f.kind
            if kind == RAW:
                value = final[i]
                assert value is not None
                if f.scaled:
                    final[i] = value = value * f.scale + f.add
                if (f.check_finite and not math.isfinite(value)) or (
                        f.valid_min is not None and value < f.valid_min) or (
                        f.valid_max is not None and value > f.valid_max):
                    fixups.append((i, f))
            elif kind == BIT:
                final[i] = bool((final[i] >> f.bit) & 1)  # type: ignore[operator]
            else:
                fixups.append((i, f))
        if not fixups:
            return self._good(decoder, final, received)
        readings: list[Part] = list(good_readings(decoder.names, final, received))
        for i, f in fixups:
            readings[i] = (self._value_problem(f, final[i], received) if f.kind == RAW  # type: ignore[arg-type]
                           else self._decode_field(f, values, received))
        return readings

    @staticmethod
    def _good(decoder: RequestDecoder, values: Sequence[float | int | bool | None],
              received: float) -> list[Part]:
        """Good values of every tag of a reply: one Columns, or Readings where that is cheaper
        (a few tags: measured, a Columns costs ~8 us against ~1 us a Reading) or exact (a
        64-bit integer beyond float64's 2**53)."""
        if len(values) >= _COLUMNS_FROM and not any(
                abs(values[i]) > _EXACT for i in decoder.wide_at):  # type: ignore[arg-type]
            return [Columns(decoder.names, values, decoder.kinds, received)]  # type: ignore[arg-type]
        return list(good_readings(decoder.names, values, received))

    def _decode_field(self, f: FieldDecoder, values: bytes | list[bool], received: float) -> Reading:
        return self._decode(f.tag, _registers(values)[f.offset:f.offset + f.registers], received)

    def _value_problem(self, f: FieldDecoder, value: float, received: float) -> Reading:
        """A decoded value that is not finite or outside the valid range (as ``_decode``)."""
        if isinstance(value, float) and not math.isfinite(value):
            problem = "not finite"
        elif f.valid_min is not None and value < f.valid_min:
            problem = f"out of range: {value} < valid_min {f.valid_min}"
        else:
            problem = f"out of range: {value} > valid_max {f.valid_max}"
        self.status.count("value")
        return bad(f.name, problem, received_time=received, value=value)

    def _decode(self, tag: ModbusTagConfig, values: list[int] | list[bool], received: float) -> Reading:
        config = self.config
        try:
            value = decode([int(v) for v in values], tag, tag.byte_order or config.byte_order,
                           tag.word_order or config.word_order)
        except DecodeError as exc:
            return bad(tag.name, f"decode error: {exc}", received_time=received)
        problem = ""
        if isinstance(value, float) and not math.isfinite(value):
            problem = "not finite"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if tag.valid_min is not None and value < tag.valid_min:
                problem = f"out of range: {value} < valid_min {tag.valid_min}"
            elif tag.valid_max is not None and value > tag.valid_max:
                problem = f"out of range: {value} > valid_max {tag.valid_max}"
        if problem:
            # The device answered; the value is unusable. Counted, not a device failure.
            self.status.count("value")
            return bad(tag.name, problem, received_time=received, value=value)
        return good(tag.name, value, received_time=received)

    def _record(self, failures: list[_Failure], latency: float) -> None:
        """Update status and log a failure once: ERROR on start, DEBUG while down, INFO on recovery."""
        status = self.status
        if not failures:
            status.record_success(latency)
            if self._failing:
                self._failing = False
                log.info("device recovered device=%s line=%s", self.name, self.config.line)
            return
        first = failures[0]
        status.record_error(first.kind, first.reason)
        for extra in failures[1:]:
            # record_error also counts a poll; further failures of the same poll only count.
            status.errors[extra.kind] = status.errors.get(extra.kind, 0) + 1
        if any(f.kind in ("not_connected", "timeout") for f in failures):
            status.connected = False
        if not self._failing:
            self._failing = True
            log.error("device failing device=%s line=%s kind=%s reason=%r",
                      self.name, self.config.line, first.kind, first.reason)
        else:
            log.debug("device still failing device=%s kind=%s reason=%r",
                      self.name, first.kind, first.reason)

    async def write(self, target: RegisterTarget, value: float) -> None:
        """Write ``value`` to one holding-register ``target``; see write_many."""
        await self.write_many([(target, value)])

    async def write_many(self, items: Sequence[tuple[RegisterTarget, float]]) -> None:
        """Write several holding-register targets, merging adjacent ones into one FC16 request.

        A PLC reading score and flag must never see one updated and the other not, so targets
        that sit next to each other go out in a single request. Only the registers of the given
        targets are written; gaps between targets are never filled. Raises ValueError
        (EncodeError) for an unencodable value before anything is sent, NotConnectedError,
        DeviceTimeoutError or DeviceExceptionError for device failures. Whether a write is
        allowed is decided by the caller (bridge.sinks.writeback), not here.
        """
        blocks = self._write_blocks(items)
        line = self._join()
        with line.writing():
            for address, registers in blocks:
                await self._write_block(address, registers)
                if self.config.write_verify:
                    await self._verify(address, registers)

    async def _write_block(self, address: int, registers: list[int]) -> None:
        unit = self.config.unit_id
        if self.config.write_function == "fc06":
            # One register per request, in address order (the device refuses FC16).
            requests = [(address + i, [value]) for i, value in enumerate(registers)]
        else:
            requests = [(address, registers)]
        for start, values in requests:
            def request(client: Any, a: int = start, r: list[int] = values) -> Awaitable[Any]:
                if self.config.write_function == "fc06":
                    return client.write_register(a, r[0], device_id=unit)  # type: ignore[no-any-return]
                return client.write_registers(a, r, device_id=unit)  # type: ignore[no-any-return]

            try:
                await self._execute(request, write=True)
            except _Failure as failure:
                raise self._write_error(failure, start) from None

    async def _verify(self, address: int, registers: list[int]) -> None:
        """Read the block back; a difference (another master, a PLC program clamping the
        value, a gateway dropping the write) is counted and audited, not raised: the write
        itself was accepted."""
        try:
            back = await self._read_request(ReadRequest("holding", address, len(registers), ()),
                                            write=True)
        except _Failure as failure:
            raise self._write_error(failure, address) from None
        read = [int(v) for v in _registers(back)]
        if read != registers:
            self.status.write_mismatches += 1
            self.status.count("write_mismatch")
            audit.warning("read-back mismatch device=%s at=holding %d wrote=%s read=%s",
                          self.name, address, registers, read)

    def _write_error(self, failure: _Failure, address: int) -> Exception:
        if failure.kind == "timeout":
            return DeviceTimeoutError(self.name, f"write holding {address}")
        if failure.kind == "exception":
            return DeviceExceptionError(self.name, failure.code, failure.reason)
        return NotConnectedError(self.name, failure.reason)

    def _write_blocks(self, items: Sequence[tuple[RegisterTarget, float]]) -> list[tuple[int, list[int]]]:
        encoded: list[tuple[int, list[int]]] = []
        for target, value in items:
            registers = encode_strict(target.type, value, target.byte_order or self.config.byte_order,
                                      target.word_order or self.config.word_order)
            assert len(registers) == target.registers  # the codec and config agree on widths
            encoded.append((target.address, registers))
        encoded.sort(key=lambda item: item[0])
        blocks: list[tuple[int, list[int]]] = []
        for address, registers in encoded:
            if blocks:
                start, merged = blocks[-1]
                if start + len(merged) > address:
                    raise ValueError(f"write targets overlap at holding {address}")
                if start + len(merged) == address and len(merged) + len(registers) <= _MAX_WRITE:
                    merged.extend(registers)
                    continue
            blocks.append((address, list(registers)))
        return blocks

"""Issue 13.4: a dead unit must not drag its line. Two units behind one RTU-over-TCP gateway
(one shared line, requests serialized), one powered off: the live unit keeps >= 90 % of its
poll rate once the dead unit's circuit breaker opens, the dead one reports "unit not
answering" and comes back on its own. Also connection = "per_cycle" and connect_delay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from adapters.modbus.client import ModbusAdapter
from bridge.config import ModbusDeviceConfig
from bridge.core.tags import Quality
from tests.modbus_servers import Unit, tcp_server
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.1  # both units: 10 polls/s
TIMEOUT = 0.2  # a dead unit holds the line timeout * (retries + 1) = 0.4 s per poll
LIVE = Unit(holding={0: 7})


def _unit(port: int, unit: int, **extra: object) -> ModbusAdapter:
    settings: dict[str, object] = {"reconnect_max": 30.0, **extra}
    return ModbusAdapter(ModbusDeviceConfig(
        name=f"u{unit}", transport="rtu-over-tcp", host="127.0.0.1", port=port, unit_id=unit,
        timeout=TIMEOUT, retries=1, tags=[{"name": f"u{unit}.v", "address": 0, "type": "uint16"}],
        **settings))


async def _poller(adapter: ModbusAdapter, good: list[float], stop: asyncio.Event) -> None:
    """Like the scheduler (max_instances=1, coalesce): due every INTERVAL, a late poll is not
    made up for."""
    due = time.monotonic()
    while not stop.is_set():
        readings = await adapter.read()
        if all(r.quality is Quality.GOOD for r in readings):
            good.append(time.monotonic())
        due = max(due + INTERVAL, time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))


@contextlib.asynccontextmanager
async def rs485_gateway(off: set[int]) -> AsyncIterator[int]:
    """An RTU-over-TCP gateway to an RS-485 line with units 1 and 2; the unit ids in ``off``
    are powered off: their requests get no answer at all. Yields the gateway's port."""
    units = {1: LIVE, 2: Unit(holding={0: 9})}
    handlers: set[asyncio.Task[object]] = set()
    writers: set[asyncio.StreamWriter] = set()
    async with tcp_server(units, rtu_framer=True) as server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if (me := asyncio.current_task()) is not None:
                handlers.add(me)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", server.port)
            writers.update((writer, up_writer))

            async def down() -> None:
                with contextlib.suppress(OSError):
                    while data := await up_reader.read(4096):
                        writer.write(data)

            task = asyncio.create_task(down())
            with contextlib.suppress(OSError):
                while data := await reader.read(4096):
                    if data[0] not in off:  # one RTU request per write from this client
                        up_writer.write(data)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()

        gateway = await asyncio.start_server(accept, "127.0.0.1", 0)
        try:
            yield int(gateway.sockets[0].getsockname()[1])
        finally:
            gateway.close()
            for open_writer in writers:  # connections still open end with the gateway
                open_writer.close()
            await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)


async def _live_rate(breaker_after: int, window: float = 2.0) -> tuple[float, ModbusAdapter]:
    """Polls/s of the live unit over ``window`` s, measured once the dead unit's breaker is
    open (or, without a breaker, after the same warm-up)."""
    async with rs485_gateway(off={2}) as port:
        live, dead = _unit(port, 1), _unit(port, 2, breaker_after=breaker_after)
        stop = asyncio.Event()
        good: list[float] = []
        tasks = [asyncio.create_task(_poller(live, good, stop)),
                 asyncio.create_task(_poller(dead, [], stop))]
        try:
            if breaker_after:
                await until(lambda: dead.status.unit_state == "backoff", 10, "the breaker to open")
            else:
                await asyncio.sleep(3 * 0.4)  # the same warm-up as the breaker's three polls
            start = time.monotonic()
            await asyncio.sleep(window)  # the measurement window itself
            rate = sum(1 for t in good if t >= start) / window
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for adapter in (live, dead):
                await adapter.close()
        return rate, dead


@pytest.mark.serial  # polls/s of the live unit over a fixed window
async def test_dead_unit_does_not_drag_its_line() -> None:
    before, _ = await _live_rate(breaker_after=0)
    after, dead = await _live_rate(breaker_after=3)
    print(f"live unit with a dead neighbour: {before:.1f} polls/s without the breaker, "
          f"{after:.1f} polls/s with it (target {1 / INTERVAL:.0f})")
    assert before < 0.7 / INTERVAL  # the problem is real on this line
    assert after >= 0.9 / INTERVAL
    reading = (await dead.read())[0]
    assert reading.quality is Quality.BAD and reading.reason.startswith("unit not answering")
    assert dead.status.errors.get("unit_not_answering", 0) >= 1


async def test_unit_comes_back_on_its_own() -> None:
    off = {2}
    async with rs485_gateway(off) as port:
        unit = _unit(port, 2, breaker_after=2, reconnect_min=0.05, reconnect_max=0.3)
        for _ in range(2):
            await unit.read()
        assert unit.status.unit_state == "backoff"
        started = time.monotonic()
        (reading,) = await unit.read()
        assert time.monotonic() - started < TIMEOUT / 2  # not sent: the line stays free
        assert reading.reason.startswith("unit not answering")
        off.clear()  # powered on again
        try:
            async def back() -> bool:
                (r,) = await unit.read()
                return r.quality is Quality.GOOD and r.value == 9

            await until(back, 10, "the unit to come back")
            assert unit.status.unit_state == "ok"
        finally:
            await unit.close()


@contextlib.asynccontextmanager
async def one_master_gateway(target: int) -> AsyncIterator[dict[str, float]]:
    """A gateway that serves one master at a time: a second connection is closed at once.
    Records when the last connection was accepted and when its first request came."""
    seen: dict[str, float] = {"accepted": 0.0, "first_request": 0.0, "refused": 0, "busy": 0}
    busy = asyncio.Lock()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                if first and not seen["first_request"]:
                    seen["first_request"] = time.monotonic()
                writer.write(data)
                await writer.drain()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if busy.locked():
            seen["refused"] += 1
            writer.close()
            return
        async with busy:
            seen["busy"] = 1
            seen["accepted"], seen["first_request"] = time.monotonic(), 0.0
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            tasks = [asyncio.create_task(pipe(reader, up_writer, True)),
                     asyncio.create_task(pipe(up_reader, writer, False))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            seen["busy"] = 0

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    seen["port"] = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()


@pytest.mark.parametrize("connection", ["persistent", "per_cycle"])
async def test_per_cycle_connection_shares_a_one_master_gateway(connection: str) -> None:
    async with tcp_server({1: LIVE}) as server, one_master_gateway(server.port) as gateway:
        # Two masters: different host spellings are different lines (separate connections),
        # like a second SCADA polling the same gateway.
        masters = [ModbusAdapter(ModbusDeviceConfig(
            name=f"m{i}", host=host, port=int(gateway["port"]), timeout=0.3, retries=0,
            connection=connection, reconnect_min=0.01, reconnect_max=0.02,
            tags=[{"name": f"m{i}.v", "address": 0, "type": "uint16"}]))
            for i, host in enumerate(("127.0.0.1", "localhost"))]
        try:
            results = []
            for _ in range(4):
                for master in masters:
                    (reading,) = await master.read()
                    results.append(reading.quality is Quality.GOOD)
                    if connection == "per_cycle":  # the gateway sees the close
                        await until(lambda: not gateway["busy"], 2, "the gateway to be free")
        finally:
            for master in masters:
                await master.close()
    if connection == "per_cycle":
        assert all(results), results
    else:
        assert not all(results)  # the problem: the second master is shut out


async def test_connect_delay_pauses_before_the_first_request() -> None:
    async with tcp_server({1: LIVE}) as server, one_master_gateway(server.port) as gateway:
        adapter = ModbusAdapter(ModbusDeviceConfig(
            name="slow-gw", host="127.0.0.1", port=int(gateway["port"]), timeout=1.0,
            connect_delay=0.3, tags=[{"name": "v", "address": 0, "type": "uint16"}]))
        try:
            (reading,) = await adapter.read()
            assert reading.quality is Quality.GOOD
            assert gateway["first_request"] - gateway["accepted"] >= 0.3 * 0.95
        finally:
            await adapter.close()

"""Instructions per Modbus request, counted by callgrind: the poll section's CPU measure that
does not depend on what else the box is doing.

Wall-clock throughput on a 2-core box that also runs the server processes moves by ±0.1 from
run to run; the number of instructions a client executes per request does not. The parent
(``bench.poll``) starts this script under ``valgrind --tool=callgrind --instr-atstart=no``;
the script connects, warms up, prints READY and waits for a line on stdin; the parent turns
counting on, sends the line, the script polls a fixed number of cycles, prints DONE and waits
again; the parent turns counting off. Only the requests between the two lines are counted
(user-space instructions of this process; the servers run in their own, uncounted processes).

Variants: ``raw`` (one pymodbus client per server, the same planned requests, no decoding) and
``bridge`` (``ModbusAdapter.poll()`` into a ``TagStore``, one task per line walking its
devices, as the runtime does).

Usage: ``python -m bench._instructions raw|bridge SERVERS_JSON REGISTERS`` where SERVERS_JSON is
``[[port, [unit, ...]], ...]``; prints READY, DONE, then the number of requests sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from adapters.modbus.client import ModbusAdapter
from bench.poll import by_server, devices_on, raw_clients
from bridge.core.tags import TagStore

REQUESTS = 2000  # counted per variant: enough that connection set-up and warm-up do not show


async def _run(variant: str, servers: list[tuple[int, list[int]]], registers: int) -> int:
    adapters = [ModbusAdapter(device) for device in devices_on(servers, registers)]
    for adapter in adapters:
        await adapter.connect()
    store = TagStore([tag.name for adapter in adapters for tag in adapter.config.tags])
    lines = by_server(adapters)
    clients = await raw_clients(lines)

    def raw_line(port: int) -> Callable[[], Awaitable[None]]:
        client = clients[port]
        jobs = [(a.config.unit_id, r.address, r.count) for a in lines[port] for r in a.plan]

        async def cycle() -> None:
            for unit, address, count in jobs:
                response = await client.read_holding_registers(address, count=count, device_id=unit)
                if response.isError():
                    raise RuntimeError(f"raw read failed: {response}")
        return cycle

    def bridge_line(port: int) -> Callable[[], Awaitable[None]]:
        members = lines[port]

        async def cycle() -> None:
            for adapter in members:
                store.put_many(await adapter.poll())
        return cycle

    make = raw_line if variant == "raw" else bridge_line
    cycles = [make(port) for port in lines]
    per_cycle = sum(len(a.plan) for a in adapters)
    rounds = max(1, REQUESTS // per_cycle)

    async def poll(times: int) -> None:
        async def worker(cycle: Callable[[], Awaitable[None]]) -> None:
            for _ in range(times):
                await cycle()
        await asyncio.gather(*(worker(cycle) for cycle in cycles))  # one task per line, as in the runtime

    await poll(3)  # warm up: first allocations, caches
    print("READY", flush=True)
    sys.stdin.readline()
    await poll(rounds)
    print("DONE", flush=True)
    sys.stdin.readline()
    failed = [a.status.last_error for a in adapters if a.status.errors]
    if failed:
        raise RuntimeError(f"bridge polls failed: {failed}")
    for client in clients.values():
        client.close()
    for adapter in adapters:
        await adapter.close()
    return rounds * per_cycle


def main() -> None:
    variant, spec, registers = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    if variant not in ("raw", "bridge"):
        raise SystemExit(f"unknown variant {variant!r}")
    servers = [(int(port), [int(u) for u in units]) for port, units in spec]
    print(asyncio.run(_run(variant, servers, registers)), flush=True)


if __name__ == "__main__":
    main()

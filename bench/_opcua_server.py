"""An asyncua server in its own process for the OPC UA benchmark.

``python -m bench._opcua_server --nodes N [--churn]`` serves N Double variables
``ns=<NS>;s=Bulk.<i>`` (the tests' ``OpcuaTestServer``: one home for server code) on a free
loopback port and prints ``PORT <port> NS <ns>``. With ``--churn`` it rewrites every variable
with a new value back to back, so subscriptions always have changes to report: the rate of
notifications is then bounded by the server and the publishing interval, the same for every
client measured against it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
from typing import Any

from asyncua import ua


async def _churn(server: Any, count: int) -> None:
    assert server.server is not None
    write = server.server.write_attribute_value
    ids = [server.nodes[f"bulk{i}"].nodeid for i in range(count)]
    value = 0.0
    while True:
        value += 1.0
        for node_id in ids:
            await write(node_id, ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
        await asyncio.sleep(0)  # let the server publish


async def _serve(nodes: int, churn: bool) -> None:
    # The tests' server, imported by name: one home for the server code, type-checked with the tests.
    servers = importlib.import_module("tests.opcua_servers")
    server = await servers.OpcuaTestServer(extra=nodes).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    writer = asyncio.create_task(_churn(server, nodes)) if churn else None
    print(f"PORT {server.port} NS {server.ns}", flush=True)
    try:
        await stop.wait()
    finally:
        if writer is not None:
            writer.cancel()
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--churn", action="store_true", help="rewrite every node continuously")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve(args.nodes, args.churn))


if __name__ == "__main__":
    main()

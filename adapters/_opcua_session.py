"""Closing an asyncua client so that none of its tasks outlive it, even on a hung server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asyncua import Client, Server, ua

from bridge.config import OpcuaDeviceConfig

__all__ = ["monitored_item_requests", "teardown"]

log = logging.getLogger("plcbridge.opcua")


async def stop_server(server: Server) -> None:
    """Stop an asyncua server at once. Server.stop() waits for its once-a-second clock task
    to wake up (up to 1 s per stop): cancel that task first."""
    clock = getattr(server.iserver, "time_task", None)
    if isinstance(clock, asyncio.Task):
        clock.cancel()
        await asyncio.wait([clock], timeout=1.0)
        server.iserver.time_task = None
    await server.stop()


async def teardown(client: Client, timeout: float) -> None:
    """Close a client and make sure none of its tasks outlive it, even on a hung server.
    ``timeout`` bounds the polite CloseSession; 0 skips it (the peer is gone or hung)."""
    client.connection_lost_callback = None
    if timeout <= 0:
        with contextlib.suppress(Exception):
            client.uaclient.request_disconnect()  # the supervisor and loops stop, no reconnects
    else:
        try:
            async with asyncio.timeout(timeout):
                await client.disconnect()
        except (Exception, TimeoutError):
            log.debug("disconnect did not complete cleanly", exc_info=True)
    tasks: list[Any] = [
        getattr(client, "_supervisor_task", None), getattr(client, "_stale_watchdog_task", None),
        getattr(client, "_renew_channel_task", None),
        getattr(client.uaclient.session, "_publish_task", None),
    ]
    for sub in getattr(client, "_subscriptions", []):
        tasks.extend(getattr(sub, "_dispatch_tasks", ()))
    pending = [t for t in tasks if isinstance(t, asyncio.Task) and not t.done()
               and t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    with contextlib.suppress(Exception):
        client.uaclient.disconnect_socket()


def monitored_item_requests(config: OpcuaDeviceConfig, node_ids: list[ua.NodeId],
                            sampling_ms: float) -> list[ua.MonitoredItemCreateRequest]:
    """One Value monitored item per tag; client handle = tag index + 1 (routes changes)."""
    requests = []
    for handle, node_id in enumerate(node_ids, start=1):
        parameters = ua.MonitoringParameters()
        parameters.ClientHandle = handle
        parameters.SamplingInterval = sampling_ms
        parameters.QueueSize = config.queue_size
        parameters.DiscardOldest = True
        if config.deadband_type != "none":
            flt = ua.DataChangeFilter()
            flt.Trigger = ua.DataChangeTrigger.StatusValue
            flt.DeadbandType = 1 if config.deadband_type == "absolute" else 2
            flt.DeadbandValue = config.deadband_value
            parameters.Filter = flt
        item = ua.ReadValueId()
        item.NodeId = node_id
        item.AttributeId = ua.AttributeIds.Value
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = parameters
        requests.append(request)
    return requests

"""Closing an asyncua client so that none of its tasks outlive it, even on a hung server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from asyncua import Client, Server, ua

from bridge.config import OpcuaDeviceConfig

__all__ = ["OperationLimits", "monitored_item_requests", "read_operation_limits",
           "resolve_browse_paths", "teardown"]

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


def monitored_item_requests(config: OpcuaDeviceConfig, items: list[tuple[int, ua.NodeId | None]],
                            sampling_ms: float) -> list[ua.MonitoredItemCreateRequest]:
    """One Value monitored item per (tag index, NodeId); client handle = tag index + 1
    (routes changes)."""
    requests = []
    for index, node_id in items:
        assert node_id is not None, "only resolved tags are monitored"
        handle = index + 1
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


@dataclass(frozen=True)
class OperationLimits:
    """The server's OperationLimits that shape our requests; 0 means none stated."""

    nodes_per_read: int = 0
    monitored_items_per_call: int = 0
    nodes_per_translate: int = 0


_LIMIT_IDS = [ua.NodeId(ua.Int32(i)) for i in (
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
)]


async def read_operation_limits(client: Client) -> OperationLimits:
    """One Read of the limits; a server without them (optional nodes) gets no limits."""
    params = ua.ReadParameters()
    for node_id in _LIMIT_IDS:
        item = ua.ReadValueId()
        item.NodeId = node_id
        item.AttributeId = ua.AttributeIds.Value
        params.NodesToRead.append(item)
    try:
        values = await client.uaclient.read(params)
    except ua.UaStatusCodeError:
        return OperationLimits()

    def limit(data: ua.DataValue) -> int:
        value = data.Value.Value if data.Value is not None else None
        good = data.StatusCode is None or data.StatusCode.is_good()
        return int(value) if good and isinstance(value, int) and value > 0 else 0

    return OperationLimits(*(limit(v) for v in values[:3]))


def chunks(count: int, size: int) -> list[range]:
    """Index ranges of at most ``size`` (0: one range of everything)."""
    step = size if size > 0 else max(count, 1)
    return [range(start, min(start + step, count)) for start in range(0, count, step)]


async def resolve_browse_paths(client: Client, relative: dict[int, ua.RelativePath],
                               limit: int) -> dict[int, ua.NodeId | str]:
    """TranslateBrowsePathsToNodeIds from the Objects folder for tag index -> relative path:
    tag index -> its NodeId, or the reason it did not resolve (a StatusCode name, "no node
    matches", or "ambiguous" when the path names more than one node). A failure of the whole
    service is a reason for every tag, not an error: the device's NodeId tags must keep
    working."""
    wanted = list(relative)
    resolved: dict[int, ua.NodeId | str] = {}
    for part in chunks(len(wanted), limit):
        paths = []
        for position in part:
            path = ua.BrowsePath()
            path.StartingNode = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder))
            path.RelativePath = relative[wanted[position]]
            paths.append(path)
        try:
            results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        except ua.UaStatusCodeError as exc:  # e.g. BadServiceUnsupported, BadTooManyOperations
            name = ua.StatusCode(exc.code).name
            resolved.update({wanted[p]: f"TranslateBrowsePathsToNodeIds failed ({name})"
                             for p in part})
            continue
        for position, result in zip(part, results, strict=True):
            index = wanted[position]
            # "/" follows every hierarchical reference: one node reached twice (Organizes
            # and HasNotifier, say) is one match.
            targets = list({t.TargetId.to_string(): t for t in result.Targets}.values())
            if not result.StatusCode.is_good():
                resolved[index] = result.StatusCode.name
            elif not targets:
                resolved[index] = "no node matches"
            elif len(targets) != 1:
                resolved[index] = f"ambiguous ({len(targets)} nodes match)"
            else:
                target = targets[0]
                node = target.TargetId  # an ExpandedNodeId (asyncua may decode a NodeId)
                remote = getattr(node, "ServerIndex", 0) or getattr(node, "NamespaceUri", None)
                if target.RemainingPathIndex != 0xFFFFFFFF or remote:
                    resolved[index] = "path leads to another server (not supported)"
                else:
                    resolved[index] = ua.NodeId(node.Identifier, node.NamespaceIndex, node.NodeIdType)
    return resolved

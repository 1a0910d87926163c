"""OPC UA tags by browse path, the server's operation limits, and certificate user identity,
against real asyncua servers on loopback ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.ua_client import UaClient
from asyncua.client.ua_session import UaSession

from adapters.opcua.client import OpcuaAdapter, OpcuaConnectError
from bridge.config import OpcuaDeviceConfig
from bridge.core.tags import Quality, Reading
from tests.opcua_servers import CLIENT_URI, OpcuaTestServer, free_port, make_cert
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)


def device(server: OpcuaTestServer, tags: list[dict[str, Any]], **options: Any) -> OpcuaDeviceConfig:
    data = {"name": "plc1", "protocol": "opcua", "endpoint": server.url, "mode": "poll",
            "timeout": 2.0, "keepalive_interval": 0.2, "reconnect_min": 0.05, "reconnect_max": 0.2,
            "tags": tags, **options}
    return OpcuaDeviceConfig.model_validate(data)


def path_tags(ns: int) -> list[dict[str, Any]]:
    return [{"name": "pressure", "browse_path": f"/{ns}:Pump1/{ns}:pressure"},
            {"name": "flow", "browse_path": f"/{ns}:Pump1/{ns}:flow"},
            {"name": "ghost", "browse_path": f"/{ns}:Pump1/{ns}:nothing_here"},
            {"name": "server_state", "browse_path": "/0:Server/0:ServerStatus/0:State"}]


async def test_browse_paths_poll_and_subscribe_with_one_unresolved(
        adapters: list[OpcuaAdapter]) -> None:
    srv = await OpcuaTestServer().start()
    try:
        poller = OpcuaAdapter(device(srv, path_tags(srv.ns)))
        adapters.append(poller)
        readings = {r.tag: r for r in await poller.read()}
        assert (readings["pressure"].quality, readings["pressure"].value) == (Quality.GOOD, 4.25)
        assert (readings["flow"].quality, readings["flow"].value) == (Quality.GOOD, 12.0)
        assert readings["server_state"].quality is Quality.GOOD  # ns 0, three levels deep
        ghost = readings["ghost"]
        assert (ghost.quality, ghost.reason) == (Quality.BAD, "browse path not resolved: BadNoMatch")

        subscriber = OpcuaAdapter(device(srv, path_tags(srv.ns), mode="subscribe",
                                         publishing_interval=0.05, poll_interval=30))
        adapters.append(subscriber)
        seen: list[Reading] = []
        assert await subscriber.subscribe(seen.extend)
        await until(lambda: {r.tag for r in seen} >= {"pressure", "flow", "ghost"}, 5,
                    "first values")
        await srv.set("pressure", 6.5)
        await until(lambda: any(r.tag == "pressure" and r.value == 6.5 for r in seen), 5,
                    "the change, through the resolved NodeId")
        assert {r.reason for r in seen if r.tag == "ghost"} == {"browse path not resolved: BadNoMatch"}
    finally:
        await srv.stop()


async def test_browse_paths_are_resolved_again_when_the_server_renumbers(
        adapters: list[OpcuaAdapter]) -> None:
    port = free_port()
    first = await OpcuaTestServer(port=port).start()
    adapter = OpcuaAdapter(device(first, path_tags(first.ns)[:2]))
    adapters.append(adapter)
    try:
        assert [r.value for r in await adapter.read()] == [4.25, 12.0]
        assert adapter._node_ids[0] == ua.NodeId("Pump1.Pressure", first.ns)
    finally:
        await first.stop()
    assert all(r.quality is Quality.BAD for r in await adapter.read())  # the outage shows

    second = await OpcuaTestServer(port=port, prefix="v2.").start()
    try:
        await second.set("pressure", 9.0)

        async def fresh_value() -> bool:
            return [r.value for r in await adapter.read()] == [9.0, 12.0]

        await until(fresh_value, 5, "values through the new NodeIds")
        assert adapter._node_ids[0] == ua.NodeId("v2.Pump1.Pressure", second.ns)
    finally:
        await second.stop()


async def test_requests_are_split_by_the_servers_operation_limits(
        adapters: list[OpcuaAdapter], monkeypatch: pytest.MonkeyPatch) -> None:
    srv = await OpcuaTestServer(extra=7).start()
    assert srv.server is not None
    prefix = "Server_ServerCapabilities_OperationLimits_"
    limits = {"MaxNodesPerRead": 3, "MaxMonitoredItemsPerCall": 2,
              "MaxNodesPerTranslateBrowsePathsToNodeIds": 4}
    for name, limit in limits.items():
        node = srv.server.get_node(ua.NodeId(getattr(ua.ObjectIds, prefix + name)))
        await node.write_value(ua.Variant(limit, ua.VariantType.UInt32))
    calls: dict[str, list[int]] = {"read": [], "translate": [], "monitor": []}

    def counting(owner: type, name: str, size: Any) -> None:
        original = getattr(owner, name)

        async def wrapper(self: Any, arg: Any, *rest: Any) -> Any:
            calls[{"read": "read", "translate_browsepaths_to_nodeids": "translate",
                   "create_monitored_items": "monitor"}[name]].append(size(arg))
            return await original(self, arg, *rest)

        monkeypatch.setattr(owner, name, wrapper)

    # The requests as they go on the wire: the adapter cannot bypass these layers.
    counting(UaClient, "read", lambda params: len(params.NodesToRead))
    counting(UaClient, "translate_browsepaths_to_nodeids", len)
    counting(UaSession, "create_monitored_items", lambda params: len(params.ItemsToCreate))
    try:
        tags = [{"name": f"b{i}", "browse_path": f"/{srv.ns}:Pump1/{srv.ns}:bulk{i}"}
                for i in range(7)]
        poller = OpcuaAdapter(device(srv, tags))
        adapters.append(poller)
        await poller.connect()
        assert calls["translate"] == [4, 3]
        calls["read"].clear()
        assert [r.value for r in await poller.read()] == [float(i) for i in range(7)]
        assert calls["read"] == [3, 3, 1]
        larger = OpcuaAdapter(device(srv, tags, max_nodes_per_read=5))  # the server's 3 wins
        adapters.append(larger)
        await larger.connect()
        calls["read"].clear()
        await larger.read()
        assert calls["read"] == [3, 3, 1]

        subscriber = OpcuaAdapter(device(srv, tags, mode="subscribe", publishing_interval=0.05,
                                         poll_interval=30))
        adapters.append(subscriber)
        seen: list[Reading] = []
        await subscriber.subscribe(seen.extend)
        await until(lambda: len({r.tag for r in seen if r.quality is Quality.GOOD}) == 7, 5,
                    "every item's first value")
        assert calls["monitor"] == [2, 2, 2, 1]
    finally:
        await srv.stop()


async def test_certificate_user_identity_accepted_refused_and_missing(
        tmp_path: Path, adapters: list[OpcuaAdapter], caplog: pytest.LogCaptureFixture) -> None:
    server_cert = await make_cert(tmp_path, "server", "urn:freeopcua:python:server", server=True)
    client_cert, client_key = await make_cert(tmp_path, "client", CLIENT_URI, server=False)
    user_cert, user_key = await make_cert(tmp_path, "user", "urn:plcbridge:user:alice", server=False)
    other_cert, other_key = await make_cert(tmp_path, "other", "urn:plcbridge:user:mallory",
                                            server=False)
    srv = await OpcuaTestServer(security=server_cert, user_certificates=[user_cert]).start()
    secure = {"security_policy": "Basic256Sha256", "certificate": client_cert,
              "private_key": client_key, "server_certificate": server_cert[0],
              "application_uri": CLIENT_URI}
    try:
        alice = OpcuaAdapter(device(srv, path_tags(srv.ns)[:1], user_certificate=user_cert,
                                    user_private_key=user_key, **secure))
        adapters.append(alice)
        await alice.connect()
        [reading] = await alice.read()
        assert (reading.quality, reading.value) == (Quality.GOOD, 4.25)

        mallory = OpcuaAdapter(device(srv, path_tags(srv.ns)[:1], name="line9",
                                      user_certificate=other_cert, user_private_key=other_key,
                                      **secure))
        adapters.append(mallory)
        with pytest.raises(OpcuaConnectError) as info:
            await mallory.connect()
        assert info.value.kind == "authentication"
        assert str(info.value).startswith("line9: not connected")
        assert "BadUserAccessDenied" in str(info.value) and "user_certificate" in str(info.value)

        anonymous = OpcuaAdapter(device(srv, path_tags(srv.ns)[:1], name="anon", **secure))
        adapters.append(anonymous)
        with pytest.raises(OpcuaConnectError, match="refuses anonymous"):
            await anonymous.connect()

        missing = OpcuaAdapter(device(srv, path_tags(srv.ns)[:1], name="lost",
                                      user_certificate=tmp_path / "nope.der",
                                      user_private_key=user_key, **secure))
        adapters.append(missing)
        with pytest.raises(OpcuaConnectError, match=r"lost: .*cannot load user_certificate .*nope\.der"):
            await missing.connect()
    finally:
        await srv.stop()
    assert "PRIVATE KEY" not in caplog.text


async def test_a_node_that_appears_later_is_found_without_a_new_session(
        adapters: list[OpcuaAdapter]) -> None:
    """A PLC runtime may load its variables after its OPC UA server is up: unresolved paths
    are tried again every reconnect_max seconds, in both modes, on the live session."""
    srv = await OpcuaTestServer().start()
    try:
        ns = srv.ns
        tags = [{"name": "pressure", "browse_path": f"/{ns}:Pump1/{ns}:pressure"},
                {"name": "late", "browse_path": f"/{ns}:Pump1/{ns}:late"}]
        poller = OpcuaAdapter(device(srv, tags))
        subscriber = OpcuaAdapter(device(srv, tags, mode="subscribe", publishing_interval=0.05,
                                         poll_interval=0.05))
        adapters += [poller, subscriber]
        seen: list[Reading] = []
        await subscriber.subscribe(seen.extend)
        late = {r.tag: r for r in await poller.read()}["late"]
        assert (late.quality, late.reason) == (Quality.BAD, "browse path not resolved: BadNoMatch")
        await until(lambda: any(r.tag == "late" for r in seen), 5, "the subscriber's first values")

        assert srv.server is not None
        pump = await srv.server.nodes.objects.get_child([f"{ns}:Pump1"])
        await pump.add_variable(ua.NodeId("Pump1.Late", ns), f"{ns}:late", 7.0)

        async def poller_found_it() -> bool:
            return {r.tag: r.value for r in await poller.read()}["late"] == 7.0

        await until(poller_found_it, 5, "the late node through the poller")
        await until(lambda: any(r.tag == "late" and r.value == 7.0 for r in seen), 5,
                    "the late node through the subscription")
        assert (poller.sessions, subscriber.sessions) == (1, 1)
    finally:
        await srv.stop()


async def test_one_node_reached_by_two_references_is_not_ambiguous(
        adapters: list[OpcuaAdapter]) -> None:
    """'/' follows every hierarchical reference: Objects Organizes Pump1 and (an alarm area)
    Objects HasNotifier Pump1 lead to the same node, which is one match."""
    srv = await OpcuaTestServer().start()
    try:
        assert srv.server is not None
        pump = await srv.server.nodes.objects.get_child([f"{srv.ns}:Pump1"])
        await srv.server.nodes.objects.add_reference(pump.nodeid, ua.ObjectIds.HasNotifier)
        adapter = OpcuaAdapter(device(srv, path_tags(srv.ns)[:1]))
        adapters.append(adapter)
        [reading] = await adapter.read()
        assert (reading.quality, reading.value) == (Quality.GOOD, 4.25), reading
    finally:
        await srv.stop()


async def test_a_server_without_translate_keeps_its_node_id_tags(
        adapters: list[OpcuaAdapter], monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncua.common.utils import ServiceError
    from asyncua.server.internal_session import InternalSession

    async def unsupported(self: InternalSession, params: Any) -> Any:
        raise ServiceError(ua.StatusCodes.BadServiceUnsupported)

    monkeypatch.setattr(InternalSession, "translate_browsepaths_to_nodeids", unsupported)
    srv = await OpcuaTestServer().start()
    try:
        adapter = OpcuaAdapter(device(srv, [
            {"name": "by_id", "node_id": srv.node_id("pressure")},
            {"name": "by_path", "browse_path": f"/{srv.ns}:Pump1/{srv.ns}:flow"}]))
        adapters.append(adapter)
        by_id, by_path = await adapter.read()
        assert (by_id.quality, by_id.value) == (Quality.GOOD, 4.25)
        assert by_path.quality is Quality.BAD
        assert by_path.reason == ("browse path not resolved: TranslateBrowsePathsToNodeIds failed "
                                  "(BadServiceUnsupported)")
        assert adapter.status.connected
    finally:
        await srv.stop()

"""``plcbridge probe opcua``: what a server offers, and where its values are, before configuring.

Lists the endpoints (security policy, mode, user token types, certificate thumbprint), then
opens a session the way the bridge would (the device's security and identity, through
``OpcuaAdapter.session``) and browses hierarchical references from a node, depth-limited.
Every variable is shown with its NodeId in both forms (``ns=`` and the restart-proof ``nsu=``),
its browse path from the Objects folder in both forms, DataType, value and status; the TOML of
a tag follows. Only Browse and Read requests are sent: a probe never writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import cast

from asyncua import Client, ua

from adapters.opcua.client import OpcuaAdapter
from adapters.opcua.convert import quality_of
from adapters.opcua.trust import UntrustedCertificate, first_certificate
from bridge.config import OpcuaDeviceConfig
from bridge.core.errors import NotConnectedError

__all__ = ["BrowsedNode", "ProbeError", "probe_opcua"]

_OBJECTS = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder), ua.Int16(0))
# A NodeClass mask (asyncua types the argument as one NodeClass; the service takes a bit mask).
_OBJECTS_AND_VARIABLES = cast(ua.NodeClass, ua.NodeClass.Object | ua.NodeClass.Variable)
# Characters the relative path syntax reserves inside a name; '&' escapes them.
_RESERVED = "&/.<>:#!"


class ProbeError(Exception):
    """The server could not be reached or refused the session; the message says why."""


@dataclass(frozen=True)
class BrowsedNode:
    key: tuple[int, ...]  # browse position at each level: sorting by it gives tree order
    name: str
    node_class: str
    ns_form: str
    nsu_form: str
    path: str | None  # from the Objects folder, index form; None when not browsed from there
    uri_path: str | None
    data_type: str = ""
    value: str = ""
    status: str = ""


def _short_policy(uri: str) -> str:
    return uri.rpartition("#")[2] or uri


def _thumbprint(chain: bytes) -> str:
    try:
        der = first_certificate(chain)
    except UntrustedCertificate:
        return "none"
    return ":".join(f"{b:02X}" for b in hashlib.sha1(der, usedforsecurity=False).digest())


async def endpoint_lines(url: str, timeout: float) -> list[str]:
    """One line per endpoint: policy/mode, user token types, server certificate thumbprint."""
    try:
        endpoints = await Client(url, timeout=timeout).connect_and_get_server_endpoints()
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise ProbeError(f"{url}: cannot get endpoints ({exc or type(exc).__name__})") from None
    lines = [f"endpoints of {url}:"]
    for e in endpoints:
        tokens = ", ".join(sorted({t.TokenType.name for t in e.UserIdentityTokens or []})) or "none"
        lines.append(f"  {_short_policy(e.SecurityPolicyUri):<24} {e.SecurityMode.name.rstrip('_'):<15} "
                     f"user tokens: {tokens}")
    if endpoints:
        lines.append(f"  server certificate SHA-1 thumbprint "
                     f"{_thumbprint(endpoints[0].ServerCertificate or b'')}")
    return lines


def node_forms(node_id: ua.NodeId, namespaces: list[str]) -> tuple[str, str]:
    """(``ns=`` form, ``nsu=`` form) of a NodeId; namespace 0 has only the short form."""
    text = node_id.to_string()
    index = node_id.NamespaceIndex
    if index == 0 or index >= len(namespaces):
        return text, text
    return text, f"nsu={namespaces[index]};" + text.partition(";")[2]


def parse_node(text: str, namespaces: list[str]) -> ua.NodeId:
    """``ns=``/``nsu=`` NodeId text -> NodeId of this session. Raises ValueError."""
    try:
        node = ua.NodeId.from_string(text)
    except Exception:
        raise ValueError(f"{text!r} is not a NodeId (e.g. 'ns=2;s=Pump1' or "
                         "'nsu=urn:plant;s=Pump1')") from None
    uri = getattr(node, "NamespaceUri", None)
    if uri:
        if uri not in namespaces:
            raise ValueError(f"{text!r}: namespace {uri} is not in the server's namespace array")
        return ua.NodeId(node.Identifier, ua.Int16(namespaces.index(uri)), node.NodeIdType)
    return node


def _escape(name: str) -> str:
    return "".join(f"&{c}" if c in _RESERVED else c for c in name)


async def browse(client: Client, start: ua.NodeId, depth: int, limit: int,
                 namespaces: list[str]) -> list[BrowsedNode]:
    """Objects and variables below ``start`` in browse order, at most ``depth`` levels and
    ``limit`` nodes; variables with DataType, value and status (one Read per level)."""
    from_objects = start == _OBJECTS
    found: list[BrowsedNode] = []
    level_nodes: list[tuple[ua.NodeId, str, str, tuple[int, ...]]] = [(start, "", "", ())]
    seen = {start.to_string()}
    for _level in range(depth):
        children: list[tuple[ua.NodeId, str, str, ua.ReferenceDescription, tuple[int, ...]]] = []
        for node_id, path, uri_path, key in level_nodes:
            refs = await client.get_node(node_id).get_references(
                refs=ua.ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward,
                nodeclassmask=_OBJECTS_AND_VARIABLES)
            for position, ref in enumerate(refs):
                child = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                if child.to_string() in seen or len(found) + len(children) >= limit:
                    continue
                seen.add(child.to_string())
                qname = ref.BrowseName
                ns_uri = namespaces[qname.NamespaceIndex] if qname.NamespaceIndex < len(namespaces) else ""
                element = _escape(qname.Name)
                children.append((child, f"{path}/{qname.NamespaceIndex}:{element}",
                                 f"{uri_path}/{{{ns_uri}}}{element}" if qname.NamespaceIndex
                                 else f"{uri_path}/0:{element}", ref, (*key, position)))
        variables = [c for c in children if c[3].NodeClass == ua.NodeClass.Variable]
        nodes = [client.get_node(c[0]) for c in variables]
        values = await client.read_attributes(nodes, ua.AttributeIds.Value) if nodes else []
        types = await client.read_attributes(nodes, ua.AttributeIds.DataType) if nodes else []
        details = {c[0].to_string(): (v, t) for c, v, t in zip(variables, values, types, strict=True)}
        for child, path, uri_path, ref, key in children:
            ns_form, nsu_form = node_forms(child, namespaces)
            data_type = value = status = ""
            if child.to_string() in details:
                data, kind = details[child.to_string()]
                type_id = kind.Value.Value if kind.Value is not None else None
                data_type = (ua.ObjectIdNames.get(int(type_id.Identifier), type_id.to_string())
                             if isinstance(type_id, ua.NodeId) and type_id.NamespaceIndex == 0
                             else str(type_id))
                value = repr(data.Value.Value) if data.Value is not None else "None"
                quality, reason = quality_of(data.StatusCode)
                status = reason or quality.value
            found.append(BrowsedNode(key, ref.BrowseName.Name, ref.NodeClass.name, ns_form,
                                     nsu_form, path if from_objects else None,
                                     uri_path if from_objects else None, data_type, value[:60],
                                     status))
        level_nodes = [(c[0], c[1], c[2], c[4]) for c in children
                       if c[3].NodeClass == ua.NodeClass.Object]
        if not level_nodes or len(found) >= limit:
            break
    return sorted(found, key=lambda n: n.key)


def tag_toml(name: str, node: BrowsedNode) -> str:
    lines = ["[[devices.tags]]", f'name = "{name}"', f'node_id = "{node.nsu_form}"']
    if node.ns_form != node.nsu_form:
        lines.append(f'# node_id = "{node.ns_form}"  (the index may change when the server restarts)')
    if node.path is not None:
        lines.append(f'# browse_path = "{node.uri_path}"  (instead of node_id)')
    return "\n".join(lines)


async def probe_opcua(device: OpcuaDeviceConfig, start: str, depth: int, limit: int,
                      name: str) -> list[str]:
    """The report ``plcbridge probe opcua`` prints. Raises ProbeError (server unreachable
    or session refused) and ValueError (``start`` is not a NodeId of this server)."""
    lines = await endpoint_lines(device.endpoint, device.timeout)
    adapter = OpcuaAdapter(device.model_copy(update={"tags": []}))
    try:
        try:
            client = await adapter.session()
        except NotConnectedError as exc:
            raise ProbeError(str(exc)) from None
        namespaces = list(await client.get_namespace_array())
        node = parse_node(start, namespaces)
        found = await browse(client, node, depth, limit, namespaces)
    finally:
        await adapter.close()
    lines += ["", "namespaces: " + ", ".join(f"{i}={uri}" for i, uri in enumerate(namespaces)), "",
              f"below {start} ({depth} level(s), {len(found)} node(s)):"]
    for n in found:
        indent = "  " * len(n.key)
        if n.node_class == "Variable":
            lines.append(f"{indent}{n.name}: {n.data_type} = {n.value} ({n.status})")
        else:
            lines.append(f"{indent}{n.name} ({n.node_class})")
        lines.append(f"{indent}    {n.ns_form}" + (f"  |  {n.nsu_form}" if n.nsu_form != n.ns_form else ""))
        if n.path is not None:
            lines.append(f"{indent}    path {n.path}  |  {n.uri_path}")
    variable = next((n for n in found if n.node_class == "Variable" and n.ns_form.startswith("ns=")),
                    None)
    if variable is not None:
        lines += ["", f"TOML for {variable.name} (another one: --node <its NodeId> --depth 1 from "
                      "its parent):", "", tag_toml(name, variable)]
    return lines

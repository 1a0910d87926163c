"""The simulated pump station over OPC UA too: ``plcbridge simulate --opcua``.

Not a second simulator: this starts the Modbus simulator (``adapters.sim.modbus``: the same
``PumpPlant``, seed and stepping) and mirrors each new sample into an asyncua server, so the
demo can run over either protocol and both protocols serve the same numbers (float32, as on
the Modbus side).

Nodes (namespace ``urn:plcbridge:simulator``, index 2, the first one registered):

    ns=2;s=Pump.Pressure     Double, bar        ns=2;s=Pump.Temperature  Double, degC
    ns=2;s=Pump.Flow         Double, m3/h       ns=2;s=Pump.Vibration    Double, mm/s
    ns=2;s=Pump.Current      Double, A          ns=2;s=Pump.Running      Boolean
    ns=2;s=Pump.FaultCode    Int32, writable: 1 spike, 2 stuck, 3 drift, 4 cavitation,
                             0 clears; reads back the active fault; other values are
                             refused with BadOutOfRange (same codes as holding register 200)
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.server.address_space import NodeData

from adapters.opcua.server import free_tcp_port
from adapters.opcua.session import stop_server
from adapters.sim.modbus import PLANT_STEP, SimulatorHandle, registers_to_float32, start_simulator
from adapters.sim.plant import FAULT_NAMES, SIGNALS
from bridge.config import Config, parse_config
from bridge.core.aio import cancel_and_wait

__all__ = [
    "NS_URI",
    "OPCUA_DEMO_TOML",
    "OpcuaSimulatorHandle",
    "opcua_demo_config",
    "run_opcua_simulator_forever",
    "start_opcua_simulator",
]

NS_URI = "urn:plcbridge:simulator"
_NAMES = {signal: f"Pump.{signal.capitalize()}" for signal in SIGNALS}
_FAULT_NODE = "Pump.FaultCode"

# The demo's pump model (bridge.cli.demo) fed over OPC UA instead of Modbus. Results stay on the
# REST API (and [opcua_server] when enabled): this snippet declares no write-back.
OPCUA_DEMO_TOML = """
[[devices]]
name = "plant"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/plcbridge-sim"
mode = "subscribe"
publishing_interval = 0.1
poll_interval = 0.5

[[devices.tags]]
name = "pressure"
node_id = "ns=2;s=Pump.Pressure"
unit = "bar"

[[devices.tags]]
name = "flow"
node_id = "ns=2;s=Pump.Flow"
unit = "m3/h"

[[devices.tags]]
name = "current"
node_id = "ns=2;s=Pump.Current"
unit = "A"

[[devices.tags]]
name = "temperature"
node_id = "ns=2;s=Pump.Temperature"
unit = "degC"

[[devices.tags]]
name = "vibration"
node_id = "ns=2;s=Pump.Vibration"
unit = "mm/s"

[[models]]
name = "pump"
inputs = ["pressure", "flow", "current", "temperature", "vibration"]
"""


def opcua_demo_config(opcua_port: int, api_port: int = 8080) -> Config:
    data = tomllib.loads(OPCUA_DEMO_TOML.format(port=opcua_port))
    data["api"] = {"host": "127.0.0.1", "port": api_port}
    return parse_config(data)


@dataclass
class OpcuaSimulatorHandle:
    """A running simulator: ``modbus`` (the plant, Modbus address) and the OPC UA ``url``."""

    modbus: SimulatorHandle
    host: str
    port: int
    _server: Server = field(repr=False)
    _ns: int = field(repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/plcbridge-sim"

    def node_id(self, name: str) -> str:
        return f"ns={self._ns};s={name}"

    async def stop(self) -> None:
        """Stop mirroring and serving, then the Modbus simulator. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
            await stop_server(self._server)
        await self.modbus.stop()

    async def __aenter__(self) -> OpcuaSimulatorHandle:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- mirroring --------------------------------------------------------------------------

    def _node(self, name: str) -> ua.NodeId:
        return ua.NodeId(ua.String(name), ua.Int16(self._ns))

    async def publish(self) -> None:
        """Copy the Modbus simulator's current sample into the OPC UA nodes."""
        now = datetime.now(UTC)
        regs = self.modbus.inputs(0, 2 * len(SIGNALS))
        values: list[tuple[str, Any, ua.VariantType]] = [
            (_NAMES[signal], registers_to_float32(regs[2 * i: 2 * i + 2]), ua.VariantType.Double)
            for i, signal in enumerate(SIGNALS)]
        values.append((_FAULT_NODE, self.modbus.plant.fault_code, ua.VariantType.Int32))
        for name, value, kind in values:
            await self._server.write_attribute_value(self._node(name), ua.DataValue(
                ua.Variant(value, kind), SourceTimestamp=now, ServerTimestamp=now))  # type: ignore[arg-type]

    async def _mirror(self) -> None:
        seen = self.modbus.samples
        while True:
            while self.modbus.samples == seen:  # the Modbus side steps the plant
                await asyncio.sleep(0.005)
            seen = self.modbus.samples
            await self.publish()

    def _fault_written(self, node: NodeData, attr: ua.AttributeIds, value: ua.DataValue) -> None:
        """asyncua calls this for every write of FaultCode, a client's or our own publish."""
        code = value.Value.Value if value.Value is not None else None
        if not isinstance(code, int) or code not in FAULT_NAMES:
            raise ServiceError(ua.StatusCodes.BadOutOfRange)
        if code != self.modbus.plant.fault_code:  # a client's command, not our read-back
            self.modbus.plant.inject_code(code)
        node.attributes[attr].value = value


async def _build(server: Server, ns: int, handle_box: list[OpcuaSimulatorHandle]) -> None:
    pump = await server.nodes.objects.add_object(ua.NodeId(ua.String("Pump"), ua.Int16(ns)),
                                                 ua.QualifiedName("Pump", ua.UInt16(ns)))
    variables: list[tuple[str, ua.VariantType, Any]] = [
        *((name, ua.VariantType.Double, 0.0) for name in _NAMES.values()),
        ("Pump.Running", ua.VariantType.Boolean, True),  # like coil 0: the motor always runs
        (_FAULT_NODE, ua.VariantType.Int32, 0)]
    for name, kind, initial in variables:
        node = await pump.add_variable(ua.NodeId(ua.String(name), ua.Int16(ns)),
                                       ua.QualifiedName(name, ua.UInt16(ns)),
                                       ua.Variant(initial, kind), varianttype=kind)
        if name == _FAULT_NODE:
            await node.set_writable()
            server.set_attribute_value_setter(
                node.nodeid, lambda n, a, v: handle_box[0]._fault_written(n, a, v))


async def start_opcua_simulator(host: str = "127.0.0.1", port: int = 4840, *, modbus_port: int = 0,
                                seed: int = 0, step: float = 0.1,
                                speed: float = 1.0) -> OpcuaSimulatorHandle:
    """Start the plant (Modbus on ``modbus_port``, 0 = free) and serve it over OPC UA on
    ``port`` (0 = a free one, read ``handle.port``); returns once both answer and the nodes
    hold the first sample."""
    modbus = await start_simulator(host, modbus_port, seed=seed, step=step, speed=speed)
    port = port or free_tcp_port(host)
    try:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{host}:{port}/plcbridge-sim")
        server.set_server_name("plcbridge simulated pump station")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.allow_remote_admin(False)
        ns = await server.register_namespace(NS_URI)
        handle_box: list[OpcuaSimulatorHandle] = []
        await _build(server, ns, handle_box)
        handle = OpcuaSimulatorHandle(modbus, host, port, server, ns)
        handle_box.append(handle)
        await handle.publish()
        await server.start()
    except BaseException:
        await modbus.stop()
        raise
    handle._task = asyncio.create_task(handle._mirror(),
                                       name=f"plcbridge[simulator-opcua:{port}].mirror")
    return handle


async def run_opcua_simulator_forever(host: str = "127.0.0.1", port: int = 5020,
                                      opcua_port: int = 4840, seed: int = 0,
                                      fault_schedule: list[tuple[float, str]] | None = None,
                                      *, step: float | None = None, speed: float = 1.0) -> None:
    """Entry point for ``plcbridge simulate --opcua``: serve until cancelled (Ctrl-C). ``step``
    as for ``run_simulator_forever`` (default: ``PLANT_STEP`` of plant time at any speed)."""
    if step is None:
        step = PLANT_STEP / max(speed, 1.0)  # no jumps of plant time between samples (see there)
    sim = await start_opcua_simulator(host, opcua_port, modbus_port=port, seed=seed, step=step,
                                      speed=speed)
    print(f"plcbridge simulator listening on {sim.url} (OPC UA, ns=2;s=Pump.*) and "
          f"{host}:{sim.modbus.port} (Modbus unit 1), pump plant seed={seed} "
          f"step={step * speed:g}s of plant time every {step:g}s",
          flush=True)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at, fault in sorted(fault_schedule or []):
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            await sim.modbus.inject(fault)
            print(f"t={at:g}s fault={fault}", flush=True)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await sim.stop()
        print("plcbridge simulator stopped", file=sys.stderr, flush=True)

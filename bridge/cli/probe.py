"""`plcbridge probe modbus | opcua`: find how a device serves its values before configuring it.

Probes only read. ``probe modbus`` reads a register range once and prints every decoding at
every offset; with ``--expect`` it ranks the decodings that match and prints the tag's TOML.
``probe opcua`` lists the server's endpoints and browses its address space.

Connection settings come from the command line, or from a device of a config file
(``--config FILE --device NAME``: serial lines, security, credentials as the bridge uses them).
Exit statuses as every command: 0 ok, 1 the device did not answer, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bridge.cli.common import EXIT_FAILED, EXIT_OK, fail, load_config_or_exit, setup_logging
from bridge.config import ModbusDeviceConfig, OpcuaDeviceConfig
from bridge.config.modbus import TABLES, parse_register

__all__ = ["add_probe"]


def _device(args: argparse.Namespace, protocol: type[Any]) -> Any:
    """The device to probe: ``--device`` of ``--config``, else one built from the options.
    Raises SystemExit(2) with the message for bad input."""
    if args.config is None:
        if args.device is not None:
            raise SystemExit(fail("needs --config FILE", "--device"))
        return None
    config = load_config_or_exit(args.config)
    names = [d.name for d in config.devices if isinstance(d, protocol)]
    if args.device is None and len(names) == 1:
        args.device = names[0]
    if args.device not in names:
        raise SystemExit(fail(f"--device {args.device!r} is not one of the {protocol.__name__[:-12].lower()} "
                              f"devices ({', '.join(names) or 'none'})", args.config))
    return config.device(args.device)


def _modbus(args: argparse.Namespace) -> int:
    from adapters.modbus.probe import (
        ProbeError,
        decode_all,
        format_strings,
        format_table,
        rank,
        read_range,
        tag_toml,
    )

    table, address = args.table, args.address
    if args.register is not None:
        try:
            table, address = parse_register(args.register)
        except ValueError as exc:
            return fail(str(exc), "--register")
    if address is None:
        return fail("give --address (zero-based) or --register (vendor notation)", "probe modbus")
    if not 0 <= address <= 65535 or address + args.count > 65536:
        return fail(f"{address}..{address + args.count - 1} is outside 0..65535", "--address")
    device = _device(args, ModbusDeviceConfig)
    if device is None:
        if args.target is None:
            return fail("give HOST[:PORT] or --config FILE [--device NAME]", "probe modbus")
        host, _, port = args.target.rpartition(":") if ":" in args.target else (args.target, "", "502")
        try:
            device = ModbusDeviceConfig(name="probe", host=host, port=int(port), unit_id=args.unit,
                                        transport=args.transport, timeout=args.timeout)
        except ValueError as exc:
            return fail(str(exc).splitlines()[-1] if "\n" in str(exc) else str(exc), args.target)
    try:
        registers = asyncio.run(read_range(device, table, address, args.count))
    except ProbeError as exc:
        print(f"device {device.name}: {table} {address}..{address + args.count - 1}: {exc}")
        return EXIT_FAILED
    print(f"{table} {address}..{address + args.count - 1} of {device.name} "
          f"(unit {device.unit_id}): read only, nothing written\n")
    print("\n".join(format_table(registers, table, address)))
    if table in ("coil", "discrete"):
        return EXIT_OK
    print("\n".join(["", *format_strings(registers)]))
    if args.expect is None:
        return EXIT_OK
    matches = rank(decode_all(registers), args.expect, args.tolerance)
    if not matches:
        print(f"\nno decoding is within {100 * args.tolerance:g} % of {args.expect:g}: "
              "widen --tolerance, or read another range")
        return EXIT_OK
    print(f"\n{len(matches)} decoding(s) within {100 * args.tolerance:g} % of {args.expect:g}, "
          "best first:")
    for number, m in enumerate(matches[:args.top], 1):
        d = m.decoding
        scale = f" x {m.scale:g}" if m.scale != 1 else ""
        print(f"  {number:>2}. address {address + d.offset} {d.data_type} {d.order}{scale} "
              f"= {m.value:.7g} (off by {100 * m.error:.2g} %)")
    pick = min(args.pick, len(matches))
    print(f"\nTOML for match {pick} (another one: --pick N):\n")
    print(tag_toml(args.name, table, address, matches[pick - 1]))
    return EXIT_OK


def _opcua(args: argparse.Namespace) -> int:
    from bridge.core.extras import require_extra

    require_extra("asyncua", "probe opcua")
    setup_logging("error")  # asyncua warns about plaintext policies: the endpoint list says so
    from adapters.opcua.probe import ProbeError, probe_opcua

    device = _device(args, OpcuaDeviceConfig)
    if device is None:
        if args.target is None:
            return fail("give an endpoint opc.tcp://HOST:PORT or --config FILE [--device NAME]",
                        "probe opcua")
        try:
            device = OpcuaDeviceConfig(name="probe", protocol="opcua", endpoint=args.target,
                                       timeout=args.timeout)
        except ValueError as exc:
            return fail(str(exc).splitlines()[-1] if "\n" in str(exc) else str(exc), args.target)
    try:
        lines = asyncio.run(probe_opcua(device, args.node, args.depth, args.max_nodes, args.name))
    except ValueError as exc:  # a --node that is not a NodeId
        return fail(str(exc), "--node")
    except ProbeError as exc:
        print(f"device {device.name}: {exc}")
        return EXIT_FAILED
    print("\n".join(lines))
    return EXIT_OK


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
    return value


def add_probe(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``probe modbus`` and ``probe opcua``; each sets ``func(args) -> int``."""
    probe = sub.add_parser("probe", help="read a device once and show how its values are encoded "
                                         "(never writes)")
    kinds = probe.add_subparsers(dest="protocol", required=True)

    def common(p: argparse.ArgumentParser, target: str) -> None:
        p.add_argument("target", nargs="?", metavar=target)
        p.add_argument("--config", help="take the connection from a device of this config")
        p.add_argument("--device", help="the device of --config (default: the only one)")
        p.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
        p.add_argument("--name", default="my_tag", help="tag name in the printed TOML")

    m = kinds.add_parser("modbus", help="decode a register range every way; rank by --expect")
    common(m, "HOST[:PORT]")
    m.add_argument("--transport", choices=("tcp", "rtu-over-tcp"), default="tcp")
    m.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    m.add_argument("--table", choices=TABLES, default="holding")
    m.add_argument("--address", type=int, help="first zero-based protocol address")
    m.add_argument("--register", help="first register in vendor notation (40101, 4x00101); "
                                      "instead of --table/--address")
    m.add_argument("--count", type=_positive, default=10, help="registers to read (default 10)")
    m.add_argument("--expect", type=float, help="the value the device shows now: rank decodings")
    m.add_argument("--tolerance", type=float, default=0.01,
                   help="relative tolerance of --expect (default 0.01 = 1 %%)")
    m.add_argument("--top", type=_positive, default=10, help="matches listed (default 10)")
    m.add_argument("--pick", type=_positive, default=1, help="print the TOML of match N (default 1)")
    m.set_defaults(func=_modbus)

    o = kinds.add_parser("opcua", help="list endpoints, browse from a node, print tag TOML")
    common(o, "opc.tcp://HOST:PORT")
    o.add_argument("--node", default="i=85", help="where to browse from (default i=85, Objects); "
                                                  "ns= or nsu= form")
    o.add_argument("--depth", type=_positive, default=3, help="levels below --node (default 3)")
    o.add_argument("--max-nodes", type=_positive, default=500, help="stop after N nodes (default 500)")
    o.set_defaults(func=_opcua)

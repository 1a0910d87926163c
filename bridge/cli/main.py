"""plcbridge: poll PLCs (Modbus, OPC UA), score windows with local ONNX anomaly models, write
results back; and the on-site model workflow (record, train, evaluate, quantize)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_STATUS_HELP,
    KeyValueFormatter,
    fail,
    fail_config,
    load_config_or_exit,
    setup_logging,
)
from bridge.cli.fleet import add_fleet
from bridge.cli.models import add_commands
from bridge.cli.probe import add_probe
from bridge.config import DEFAULT_MODEL, Config, ModbusDeviceConfig, ModbusTagConfig, OpcuaDeviceConfig
from bridge.config.modbus import addressing_warnings, vendor_register
from bridge.core.datatypes import TYPES
from bridge.core.errors import ConfigError, ModelContractError
from bridge.core.extras import MissingExtraError, require_extra

__all__ = ["build_parser", "main"]


def _print_opcua_device(device: OpcuaDeviceConfig) -> None:
    """`check` for an OPC UA device: endpoint, security, and the nodes it reads."""
    user = f", user {device.username}" if device.username else ", anonymous"
    timing = (f"every {device.poll_interval:g} s" if device.mode == "poll" else
              f"publishing {device.publishing_interval:g} s, queue {device.queue_size}, "
              f"deadband {device.deadband_type}")
    print(f"\ndevice {device.name}: opcua {device.mode} {device.endpoint} "
          f"({device.security_policy}/{device.effective_security_mode}{user}), {timing}, "
          f"timeout {device.timeout:g} s")
    for tag in device.tags:
        unit = f" [{tag.unit}]" if tag.unit else ""
        print(f"  tag {tag.name:<24} {tag.address}{unit}")
    reads = "1 Read per cycle" if device.mode == "poll" else "subscription"
    print(f"  {len(device.tags)} node(s), {reads}")


def _modbus_tag_line(device: ModbusDeviceConfig, tag: ModbusTagConfig) -> str:
    """Where a tag is read and how it is decoded, without ambiguity: the table, the zero-based
    protocol address and its vendor number, the effective byte/word order and the scaling."""
    from adapters.modbus.codec import VENDOR_ORDERS  # pure: no protocol library

    place = f"{tag.table:<8} {tag.address:>5} ({vendor_register(tag.table, tag.address)})"
    unit = f" [{tag.unit}]" if tag.unit else ""
    info = TYPES[tag.data_type]
    if not info.byte_order:
        return f"{place}  {tag.data_type}{unit}"
    orders = (tag.byte_order or device.byte_order, tag.word_order or device.word_order)
    if info.word_order:
        name = next(k for k, v in VENDOR_ORDERS.items() if v == orders)
        order = f"{name} (byte {orders[0]}, word {orders[1]})"
    else:
        order = f"byte {orders[0]}"
    scaling = f", scale {tag.scale:g}, offset {tag.offset:g}" if info.numeric else ""
    return f"{place}  {tag.data_type}{tag.length or ''} {order}{scaling}{unit}"


def _check(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    from adapters.modbus.plan import describe, plan_reads  # pure: no protocol library
    from bridge.scoring.adapt import baseline
    from bridge.scoring.detector import Detector
    from bridge.scoring.runner import resolve_inputs
    from bridge.sinks.writeback import place

    print(f"{args.config}: valid")
    total = 0
    for device in config.devices:
        if isinstance(device, OpcuaDeviceConfig):
            _print_opcua_device(device)
            continue
        where = device.serial_port if device.transport == "rtu" else f"{device.host}:{device.port}"
        print(f"\ndevice {device.name}: modbus {device.transport} {where} unit {device.unit_id}, "
              f"every {device.poll_interval:g} s, timeout {device.timeout:g} s, retries {device.retries}")
        if device.address_offset:
            print(f"  address_offset {device.address_offset}: tag addresses shifted to protocol "
                  "addresses below")
        for tag in device.tags:
            print(f"  tag {tag.name:<24} {_modbus_tag_line(device, tag)}")
        for warning in addressing_warnings(device, f"devices[{config.devices.index(device)}]"):
            print(f"warning: {warning}", file=sys.stderr)
        try:
            requests = plan_reads(device.tags, max_registers=device.max_registers,
                                  max_bits=device.max_bits, max_gap=device.max_gap)
        except ValueError as exc:
            return fail(f"devices.{device.name}: {exc}", args.config)
        total += len(requests)
        print(f"  {len(requests)} request(s) per cycle:")
        for line in describe(requests):
            print(f"    {line}")
    status = EXIT_OK
    for index, model in enumerate(config.models):
        path = Path(model.file) if model.file is not None else DEFAULT_MODEL
        try:
            detector = Detector(path)
            tags = resolve_inputs(model, detector.contract.inputs, detector)
        except ModelContractError as exc:
            status = fail(f"models[{index}] ({model.name}): {exc}", args.config)
            continue
        c = detector.contract
        print(f"\nmodel {model.name}: {path.name} ({c.kind}, version {c.version}), window "
              f"{c.window_length} x {c.period:g} s, threshold "
              f"{model.threshold if model.threshold is not None else c.threshold:g}")
        for feature, tag_name in zip(c.inputs, tags, strict=True):
            print(f"  input {feature:<16} <- {tag_name}")
        if model.adapt.enabled:
            a = model.adapt
            try:
                baseline(c, f"models[{index}]")
                print(f"  online adaptation: rate {a.rate:g}, step <= {a.max_step_sd:g} sd, shift <= "
                      f"{a.max_shift_sd:g} sd, hold-off {a.hold_off_windows} windows")
            except ConfigError as exc:
                status = fail(f"models[{index}] ({model.name}): {exc}", args.config)
        if not model.alarm.plain:
            h = model.alarm
            print(f"  alarm hysteresis: on {h.on:g} x threshold for {h.min_on_windows} window(s), off "
                  f"below {h.off:g} x threshold for {h.min_off_windows} window(s)")
        if model.writeback is not None:
            targets = ", ".join(f"{k} -> {place(t)}" for k, t in model.writeback.targets().items())
            print(f"  write-back ({config.writeback.mode}) to {model.writeback.device}: {targets}")
    print(f"\n{len(config.devices)} device(s), {len(config.tag_names())} tag(s), "
          f"{total} request(s) per cycle, {len(config.models)} model(s)")
    if args.live and status == EXIT_OK:
        status = _preflight_or_fail(args.config, config)
        if status == EXIT_OK:
            print("live: data directory, TLS and token files, server ports: ok")
    return status


def _preflight_or_fail(path: str, config: Config) -> int:
    """``check --live`` and every ``run``: what the config needs from this machine (files,
    ports, hosts), every problem printed as a config error, before anything starts."""
    from bridge.cli.preflight import preflight

    errors = preflight(config)
    return fail_config(path, ConfigError(errors)) if errors else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if not args.speed > 0:
        return fail(f"--speed {args.speed}: must be > 0")
    config = load_config_or_exit(args.config)
    # Before logging to the data directory and before the Bridge: nothing half-starts.
    if _preflight_or_fail(args.config, config) != EXIT_OK:
        return EXIT_INPUT
    setup_logging(args.log_level or config.bridge.log_level)
    _setup_audit(config)
    for index, device in enumerate(config.devices):
        if isinstance(device, ModbusDeviceConfig):
            for warning in addressing_warnings(device, f"devices[{index}]"):
                logging.getLogger("plcbridge").warning("%s: %s", args.config, warning)
    from bridge.api.serve import run_until_stopped
    from bridge.runtime.bridge import Bridge

    try:
        bridge = Bridge(config, speed=args.speed)
    except ConfigError as exc:
        return fail_config(args.config, exc)
    except (ModelContractError, ValueError, OSError) as exc:
        return fail(str(exc), args.config)
    # Files the configuration names (tokens, TLS, MQTT password, ...) are read on start: a
    # problem with them is still bad input, not a failure to retry.
    try:
        if args.check_only:
            return asyncio.run(_connect_once(bridge))
        asyncio.run(run_until_stopped(bridge))
    except ConfigError as exc:
        return fail_config(args.config, exc)
    return EXIT_OK


def _setup_audit(config: Config) -> None:
    """Every write-back goes to a bounded audit file beside the database; without a data
    directory only refusals and failures reach the main log."""
    audit = logging.getLogger("plcbridge.audit")
    if config.storage.data_dir is None:
        audit.setLevel(logging.WARNING)
        return
    from logging.handlers import RotatingFileHandler

    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(config.storage.data_dir / "audit.log", maxBytes=1_000_000,
                                  backupCount=5, encoding="utf-8")
    handler.setFormatter(KeyValueFormatter())
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    audit.propagate = False


async def _connect_once(bridge: Any) -> int:
    """``run --check-only``: one connect and one read per device; 0 if all answered, else 1."""
    failed = 0
    for name, adapter in bridge.adapters.items():
        readings = []
        try:
            await adapter.connect()
            readings = await adapter.read()
        except Exception as exc:  # report every device, whatever went wrong with one
            print(f"device {name}: FAILED ({exc})")
            failed += 1
            continue
        finally:
            await adapter.close()
        status = adapter.status
        if status.holes:  # Modbus: the plan learned around refused registers
            print(f"device {name}: learned unreadable {', '.join(status.holes)}; reads now: "
                  f"{'; '.join(status.read_plan)}")
        bad = [r for r in readings if r.quality.value != "good"]
        if bad:
            failed += 1
            print(f"device {name}: {len(readings) - len(bad)}/{len(readings)} tags good; "
                  f"first problem: {bad[0].tag}: {bad[0].reason}")
        else:
            print(f"device {name}: ok, {len(readings)} tags read")
    return EXIT_FAILED if failed else EXIT_OK


def _registers(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    from adapters.modbus.register_map import registers_command

    return registers_command(config)


def _simulate(args: argparse.Namespace) -> int:
    from adapters.sim.plant import FAULTS  # pure: the plant model, no protocol library

    schedule = []
    for item in args.fault_at or []:
        seconds, _, fault = item.partition(":")
        try:
            schedule.append((float(seconds), fault))
        except ValueError:
            return fail(f"{item!r} is not SECONDS:FAULT", "--fault-at")
        if fault not in FAULTS:
            return fail(f"{item!r}: fault {fault!r} is not one of {', '.join(FAULTS)}", "--fault-at")
    if args.replay and not Path(args.replay).is_file():
        return fail("file not found", f"--replay {args.replay}")
    if args.opcua and args.replay:
        return fail("serves the simulated plant; it cannot be combined with --replay", "--opcua")
    if args.opcua:
        require_extra("asyncua", "simulate --opcua")
    setup_logging(args.log_level or "info")
    if args.opcua:
        from adapters.sim.opcua import run_opcua_simulator_forever

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_opcua_simulator_forever(args.host, args.port, args.opcua_port,
                                                    args.seed, schedule or None, speed=args.speed))
        return EXIT_OK
    from adapters.sim.modbus import run_simulator_forever

    with contextlib.suppress(KeyboardInterrupt):
        # --speed: rows per second of a replay, or plant seconds per second of the plant (to
        # record hours of plant in minutes; record --speed must then say the same).
        asyncio.run(run_simulator_forever(args.host, args.port, args.seed, schedule or None,
                                          Path(args.replay) if args.replay else None, args.speed,
                                          speed=1.0 if args.replay else args.speed))
    return EXIT_OK


def _certs(args: argparse.Namespace) -> int:
    require_extra("asyncua", "certs")
    from adapters.opcua.certs import describe_certificate, generate_certificate

    if args.show is not None:
        try:
            print("\n".join(describe_certificate(Path(args.show))))
        except (OSError, ValueError) as exc:
            return fail(f"not a readable certificate ({exc})", args.show)
        return EXIT_OK
    try:
        cert, key = generate_certificate(Path(args.out), args.application_uri, hostname=args.hostname,
                                         name=args.name, server=args.server, days=args.days,
                                         force=args.force, ips=args.ip or ())
    except FileExistsError as exc:  # "PATH exists (use --force ...)": the file comes first
        return fail(str(exc))
    except ValueError as exc:
        return fail(str(exc), "certs")
    print("\n".join(describe_certificate(cert)))
    print(f"private key {key}\napplication URI {args.application_uri}")
    key_name = "certificate / private_key" + ("" if args.server else " / application_uri")
    print(f"set {key_name} accordingly; the peer must trust {cert}")
    if not args.server:
        print("the server's own certificate must be trusted too: put it in the trusted_servers "
              "folder, or set trust_on_first_use = true (saved there on first connect); for a "
              "certificate user identity (user_certificate / user_private_key) run this again "
              "with --name <user> --application-uri urn:<site>:user:<user>")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    setup_logging(args.log_level or "warning")
    from bridge.cli.demo import run_demo

    try:
        return asyncio.run(run_demo(args.port, args.fault, args.fault_after, args.duration))
    except KeyboardInterrupt:
        return EXIT_OK


def _positive_int(text: str) -> int:
    # ArgumentTypeError, not ValueError: argparse then prints this message, not the type's name.
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plcbridge", description=__doc__, epilog=EXIT_STATUS_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"plcbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="poll devices, score models, serve the API")
    run.add_argument("config")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--check-only", action="store_true",
                     help="validate, connect to each device once, read once, exit (0 = all good)")
    # Polls, samples and observes shadows this much faster, against `simulate --speed` at the
    # same speed: a walkthrough's hours of plant in seconds (tests), as `record --speed`.
    run.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate a config and print what it will do")
    check.add_argument("config")
    check.add_argument("--live", action="store_true",
                       help="also check this machine: data directory writable, TLS and token files "
                            "usable, hosts resolve, server ports free (as run does before it starts)")
    check.set_defaults(func=_check)

    registers = sub.add_parser("registers", help="print the Modbus register map served to SCADA")
    registers.add_argument("config")
    registers.set_defaults(func=_registers)

    sim = sub.add_parser("simulate", help="serve a simulated pump station over Modbus TCP")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=5020)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--fault-at", action="append", metavar="SECONDS:FAULT",
                     help="inject a fault (spike, stuck, drift, cavitation) after SECONDS; repeatable")
    sim.add_argument("--replay", metavar="FILE.csv", help="play a recorded SKAB-format CSV instead")
    sim.add_argument("--speed", type=float, default=1.0,
                     help="replay speed factor; without --replay, plant time runs this much faster")
    sim.add_argument("--opcua", action="store_true",
                     help="also serve the plant over OPC UA (ns=2;s=Pump.*, FaultCode writable)")
    sim.add_argument("--opcua-port", type=int, default=4840, help="OPC UA port (with --opcua)")
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sim.set_defaults(func=_simulate)

    certs = sub.add_parser("certs", help="generate a self-signed OPC UA application certificate")
    certs.add_argument("--out", default="pki", metavar="DIR", help="folder for the files (default pki)")
    certs.add_argument("--application-uri", default="urn:plcbridge:client",
                       help="must equal the device's application_uri (default urn:plcbridge:client)")
    certs.add_argument("--hostname", default=None, help="DNS name in the certificate (default: this host)")
    certs.add_argument("--name", default="plcbridge", help="file name prefix (default plcbridge)")
    certs.add_argument("--server", action="store_true", help="a server certificate for [opcua_server]")
    certs.add_argument("--days", type=_positive_int, default=730, help="validity in days (default 730)")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.add_argument("--ip", action="append", metavar="ADDRESS",
                       help="an IP address for the certificate (repeatable), for peers that "
                            "check the address they see")
    certs.add_argument("--show", metavar="CERT", help="print thumbprint, names and validity of "
                                                      "an existing certificate; write nothing")
    certs.set_defaults(func=_certs)

    demo = sub.add_parser("demo", help="simulated plant + default model + API on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="API port (a free one if busy)")
    demo.add_argument("--fault", default="cavitation", choices=["spike", "stuck", "drift", "cavitation"])
    demo.add_argument("--fault-after", type=float, default=45.0, metavar="SECONDS")
    demo.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="stop after SECONDS (default: run until Ctrl-C)")
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=_demo)

    add_commands(sub)
    add_probe(sub)
    add_fleet(sub)
    for command in sub.choices.values():  # `plcbridge COMMAND --help` states them too
        command.epilog = EXIT_STATUS_HELP
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (see EXIT_STATUS_HELP) instead of exiting."""
    try:
        args = build_parser().parse_args(argv)
        status: int = args.func(args)
    except SystemExit as exc:  # argparse (--help, bad arguments) and load_config_or_exit
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT if exc.code else EXIT_OK
    except MissingExtraError as exc:
        return fail(str(exc))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Hostile configuration input (issue 14, items 1, 2, 3 and 8).

1. every bad file gets exit 2 and one ``FILE: WHAT`` line from ``plcbridge check``: never a
   traceback, never a hang;
2. what ``check`` calls valid but this machine cannot give (data directory, TLS and token files,
   ports, hosts) is refused by ``check --live`` and by ``run`` before anything starts;
3. values that cannot be right are refused, and TOML types are kept;
8. a fail-safe value the config accepts is one that actually lands in the PLC.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.sim.modbus import start_simulator
from bridge.cli import main
from bridge.cli.demo import DEMO_TOML
from bridge.config import parse_config
from bridge.core.errors import ConfigError
from bridge.runtime.bridge import Bridge
from tests.waiting import until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``plcbridge ARGS`` in a fresh interpreter: a traceback or a hang cannot hide there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)


def assert_input_error(result: subprocess.CompletedProcess[str], where: str, what: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(f"{where}: ") for line in lines), lines
    assert what in result.stderr, result.stderr


# -- 1. files -------------------------------------------------------------------------------

BAD_FILES: dict[str, tuple[bytes, str]] = {
    "latin1": ("[bridge]\n# Müller\n".encode("latin-1"), "not UTF-8: byte 0xfc at line 2"),
    "utf16": ("[bridge]\nhistory_size = 5\n".encode("utf-16"), "is UTF-16"),
    "utf16_no_bom": ("[bridge]\n".encode("utf-16-le"), "not a text file: NUL byte"),
    "binary": (bytes(range(256)) * 8, "not UTF-8"),
    "bom": (b"\xef\xbb\xbf[bridge]\n", "byte order mark (BOM)"),
    "deep_arrays": (b"a = " + b"[" * 1000 + b"]" * 1000 + b"\n", "nested deeper than"),
    "deep_tables": (b"a = " + b"{b = " * 600 + b"1" + b"}" * 600 + b"\n", "nested deeper than"),
    "deep_dotted": (b"a" + b".b" * 3000 + b" = 1\n", "nested deeper than"),
    "deep_headers": (b"[" + b".".join([b"t"] * 2000) + b"]\n", "nested deeper than"),
    "huge_integer": (b"[bridge]\nhistory_size = " + b"9" * 5000 + b"\n", "more than 4300 digits"),
    "too_large": (b"# " + b"x" * (2 << 20) + b"\n", "larger than"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_is_one_line_exit_2(name: str, tmp_path: Path) -> None:
    data, what = BAD_FILES[name]
    path = tmp_path / f"{name}.toml"
    path.write_bytes(data)
    assert_input_error(run_cli("check", str(path)), str(path), what)


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "directory"])
def test_special_files_are_refused_without_reading(special: str, tmp_path: Path) -> None:
    path = Path(special)
    if special == "fifo":
        _fifo(tmp_path, "config.toml")
        path = tmp_path / "config.toml"
    elif special == "directory":
        path = tmp_path
    what = "a directory" if special == "directory" else "not a regular file"
    assert_input_error(run_cli("check", str(path), timeout=15), str(path), what)


def test_run_refuses_a_fifo_too(tmp_path: Path) -> None:
    _fifo(tmp_path, "config.toml")
    assert_input_error(run_cli("run", str(tmp_path / "config.toml"), timeout=15),
                       str(tmp_path / "config.toml"), "not a regular file")


# -- 2. what the run needs from this machine -----------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("[api]\nport = 0\n" + text if "[api]" not in text else text)
    return path


def _file(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text("junk")


def _fifo(folder: Path, name: str) -> None:
    os.mkfifo(folder / name)  # nobody writes: reading it would block forever


TLS = '[api]\nport = 0\ntls_cert = "c.pem"\ntls_key = "k.pem"\n'
# name: (files to create in the config's folder, config text, expected message)
LIVE_CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "data_dir_is_a_file": (lambda d: _file(d, "f"), '[storage]\ndata_dir = "f"\n',
                           "storage.data_dir: "),
    "data_dir_unwritable": (lambda d: _file(d, "f"), '[storage]\ndata_dir = "f/sub"\n',
                            "is not a writable directory"),
    "tls_missing": (lambda d: None, TLS, "api.tls_cert: "),
    "tls_not_pem": (lambda d: _file(d, "c.pem", "k.pem"), TLS,
                    "not a PEM certificate"),
    "tokens_fifo": (lambda d: _fifo(d, "t"), '[api]\nport = 0\ntokens_file = "t"\n', "api.tokens_file: "),
    "tokens_missing": (lambda d: None, '[api]\nport = 0\ntokens_file = "nope"\n', "api.tokens_file: "),
    "unresolvable_server_host": (lambda d: None, '[opcua_server]\nenabled = true\nport = 0\n'
                                 'host = "no-such-host.invalid"\n', "opcua_server.host: "),
}


@pytest.mark.parametrize("name", list(LIVE_CASES))
@pytest.mark.parametrize("command", [["check", "--live"], ["run"], ["run", "--check-only"]])
def test_live_problems_are_config_errors(name: str, command: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    if name == "unresolvable_server_host" and command[0] == "run":
        pytest.importorskip("asyncua")
    make, text, what = LIVE_CASES[name]
    make(tmp_path)
    path = _write(tmp_path, text)
    assert main(["check", str(path)]) == 0, "plain check does not touch the machine"
    capsys.readouterr()
    assert main([*command, str(path)]) == 2
    err = capsys.readouterr().err
    assert what in err and err.startswith(f"{path}: "), err


@pytest.mark.parametrize("command", [["check", "--live"], ["run"]])
def test_busy_port_is_refused_before_start(command: list[str], busy_port: int, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, f"[api]\nport = {busy_port}\n")
    assert main([*command, str(path)]) == 2
    assert f"api.port: cannot listen on 127.0.0.1:{busy_port}" in capsys.readouterr().err


def test_run_with_data_dir_a_file_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    path = _write(tmp_path, '[storage]\ndata_dir = "f"\n')
    assert_input_error(run_cli("run", str(path)), str(path), "storage.data_dir: ")


def test_live_check_passes_and_leaves_nothing_behind(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '[storage]\ndata_dir = "new/data"\n[modbus_server]\nenabled = true\n'
                  'port = 0\n[opcua_server]\nport = 0\n')
    assert main(["check", "--live", str(path)]) == 0
    assert "live: " in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_live_check_loads_a_real_tls_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = pytest.importorskip("adapters.opcua.certs", reason="certificates come from asyncua's extra")
    cert, key = certs.generate_certificate(tmp_path, "urn:test", hostname="localhost", name="api",
                                           server=True, days=2, force=True)
    pem = tmp_path / "api.pem"
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = Path(cert).read_bytes()
    loaded = x509.load_pem_x509_certificate(data) if data.startswith(b"-----") \
        else x509.load_der_x509_certificate(data)
    pem.write_bytes(loaded.public_bytes(Encoding.PEM))
    path = _write(tmp_path, f'[api]\nport = 0\ntls_cert = "{pem}"\ntls_key = "{key}"\n')
    assert main(["check", "--live", str(path)]) == 0, capsys.readouterr().err


# -- 3. impossible values, strict TOML types -----------------------------------------------------

BASE = """
[[devices]]
name = "a"
host = "127.0.0.1"
[[devices.tags]]
name = "p"
address = 0
type = "float32"
[[models]]
name = "m"
inputs = ["p"]
[models.writeback]
device = "a"
anomaly = { address = 100 }
"""


def _edited(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = tomllib.loads(BASE)
    edit(data)
    return data


def _tag(data: dict[str, Any]) -> dict[str, Any]:
    tag: dict[str, Any] = data["devices"][0]["tags"][0]
    return tag


def _target(data: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = data["models"][0]["writeback"]["anomaly"]
    return target


REFUSED: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "threshold_nan": (lambda d: d["models"][0].update(threshold=math.nan), "models[0].threshold"),
    "threshold_inf": (lambda d: d["models"][0].update(threshold=math.inf), "models[0].threshold"),
    "threshold_minus_inf": (lambda d: d["models"][0].update(threshold=-math.inf), "models[0].threshold"),
    "scale_nan": (lambda d: _tag(d).update(scale=math.nan), "devices[0].tags[0].scale"),
    "offset_inf": (lambda d: _tag(d).update(offset=math.inf), "devices[0].tags[0].offset"),
    "valid_min_nan": (lambda d: _tag(d).update(valid_min=math.nan), "devices[0].tags[0].valid_min"),
    "fail_safe_nan": (lambda d: _target(d).update(type="float32", fail_safe=math.nan), "fail_safe"),
    "fail_safe_70000_uint16": (lambda d: _target(d).update(fail_safe=70000), "outside uint16 range"),
    "fail_safe_negative_uint32": (lambda d: _target(d).update(type="uint32", fail_safe=-1), "outside uint32"),
    "fail_safe_40000_int16": (lambda d: _target(d).update(type="int16", fail_safe=40000), "outside int16"),
    "fail_safe_fraction": (lambda d: _target(d).update(fail_safe=1.5), "not an integer"),
    "fail_safe_past_float32": (lambda d: _target(d).update(type="float32", fail_safe=1e39),
                               "does not fit float32"),
    "min_above_max": (lambda d: _target(d).update(min=5, max=1), "min: 5.0 is greater than max 1.0"),
    "float64_past_65535": (lambda d: _target(d).update(address=65535, type="float64"), "runs past 65535"),
    "uint32_past_65535": (lambda d: _target(d).update(address=65535, type="uint32"), "runs past 65535"),
    "tag_float64_past_65535": (lambda d: _tag(d).update(address=65533, type="float64"), "runs past"),
    "string_past_65535": (lambda d: _tag(d).update(address=65500, type="string", length=100), "runs past"),
    "port_true": (lambda d: d["devices"][0].update(port=True), "devices[0].port"),
    "address_string": (lambda d: _tag(d).update(address="1.0"), "devices[0].tags[0].address"),
    "address_float": (lambda d: _tag(d).update(address=1.0), "devices[0].tags[0].address"),
    "stopbits_true": (lambda d: d["devices"][0].update(stopbits=True), "devices[0].stopbits"),
    "enabled_one": (lambda d: d.update(api={"enabled": 1}), "api.enabled"),
    "api_port_string": (lambda d: d.update(api={"port": "8080"}), "api.port"),
    "tokens_file_nul": (lambda d: d.update(api={"tokens_file": "t\0x"}), "api.tokens_file"),
    "data_dir_nul": (lambda d: d.update(storage={"data_dir": "d\0x"}), "storage.data_dir"),
    "servers_share_a_port": (lambda d: d.update(api={"port": 4841}, opcua_server={"enabled": True}),
                             "opcua_server.port: 4841 is also api.port"),
    "wildcard_shares_a_port": (lambda d: d.update(api={"enabled": False}, opcua_server={
        "enabled": True, "port": 5020, "host": "0.0.0.0"}, modbus_server={
        "enabled": True, "models": {"m": 0}, "devices": {"a": 0}}), "opcua_server.port: 5020"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_impossible_value_is_refused(name: str) -> None:
    edit, what = REFUSED[name]
    with pytest.raises(ConfigError) as info:
        parse_config(_edited(edit))
    assert any(what in line for line in info.value.errors), info.value.errors


ACCEPTED: dict[str, Callable[[dict[str, Any]], object]] = {
    "fail_safe_uint16_max": lambda d: _target(d).update(fail_safe=65535),
    "fail_safe_integer_as_float": lambda d: _target(d).update(fail_safe=1.0),
    "fail_safe_int16_min": lambda d: _target(d).update(type="int16", fail_safe=-32768),
    "float64_last_start": lambda d: _target(d).update(address=65532, type="float64"),
    "integer_where_float": lambda d: d["models"][0].update(threshold=3),
    "servers_on_port_0": lambda d: d.update(api={"port": 0}, opcua_server={"enabled": True, "port": 0}),
    "servers_on_other_hosts": lambda d: d.update(api={"port": 4841, "host": "127.0.0.1"},
                                                 opcua_server={"enabled": True, "host": "127.0.0.2"}),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_boundary_value_is_accepted(name: str) -> None:
    parse_config(_edited(ACCEPTED[name]))


# -- 8. the fail-safe value lands ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_fail_safe_values_at_type_limits_land_in_the_plc() -> None:
    """The source device is down from the start: every cycle writes the fail-safe values, and
    stop leaves them (heartbeat included) in the PLC. Values at the limits of their types,
    the ones a range check gets wrong first."""
    plc = await start_simulator("127.0.0.1", 0, seed=3, step=0.01, speed=10.0)
    try:
        data = tomllib.loads(DEMO_TOML.format(port=_free_port()))  # nobody listens there
        data["api"] = {"enabled": False}
        data["devices"].append({"name": "plc", "host": "127.0.0.1", "port": plc.port, "tags": []})
        data["models"][0]["writeback"] = {
            "device": "plc",
            "score": {"address": 100, "type": "float32", "fail_safe": -1.5},
            "anomaly": {"address": 102, "type": "uint16", "fail_safe": 65535},
            "heartbeat": {"address": 103, "type": "int16", "fail_safe": -32768},
            "window_valid": {"address": 104}}
        bridge = Bridge(parse_config(data), speed=10.0)
        await bridge.start()
        try:
            await until(lambda: plc.holding(102) == [65535], 20, "anomaly fail-safe 65535 written")
            score = struct.unpack(">f", struct.pack(">HH", *plc.holding(100, 2)))[0]
            assert score == -1.5 and plc.holding(104) == [0]
            assert bridge.writebacks["pump"].stats.refused == 0
        finally:
            await bridge.stop()
        assert plc.holding(103) == [0x8000], "heartbeat fail-safe -32768 at stop"
        assert plc.holding(102) == [65535] and plc.holding(104) == [0]
        assert bridge.writebacks["pump"].stats.refused == 0
    finally:
        await plc.stop()

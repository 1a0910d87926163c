"""`plcbridge probe`: a device's encoding found by reading it once, not by guessing.

Issue 13 item 2: a float served in CDAB and read as ABCD decodes as 2.1e-37 with good quality;
``probe modbus --expect`` must rank CDAB first and print the tag that reads it right."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from adapters.modbus.codec import decode, encode_strict
from adapters.modbus.probe import decode_all, rank
from bridge.cli.main import main
from bridge.config import ModbusTagConfig
from tests.modbus_servers import Unit, dead_port, tcp_server


async def _probe(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, ["probe", *argv])
    out, err = capsys.readouterr()
    return status, out, err


async def test_cdab_float_is_found_and_its_toml_reads_it(capsys: pytest.CaptureFixture[str]) -> None:
    wire = encode_strict("float32", 229.01, "big", "little")  # CDAB
    holding = {100 + i: v for i, v in enumerate(wire + [0] * 8)}
    async with tcp_server({1: Unit(holding=holding)}) as server:
        status, out, _ = await _probe(capsys, "modbus", f"127.0.0.1:{server.port}", "--table",
                                      "holding", "--address", "100", "--count", "10",
                                      "--expect", "229.01", "--name", "voltage")
        after = await server.holding(1, 100, 10)
    assert status == 0, out
    assert after == [holding[100 + i] for i in range(10)]  # read only
    assert f"0x{wire[0]:04X}" in out and f"{wire[1]:>7}" in out  # hex and decimal
    assert "2.105064e-37" in out  # the ABCD misreading is shown, not hidden
    first = next(line for line in out.splitlines() if line.strip().startswith("1."))
    assert "address 100 float32 CDAB = 229.01" in first
    toml = out[out.index("[[devices.tags]]"):]
    tag = ModbusTagConfig(**tomllib.loads(toml.replace("[[devices.tags]]", "")))
    assert (tag.table, tag.address, tag.byte_order, tag.word_order) == ("holding", 100, "big", "little")
    assert decode(wire, tag, "big", "little") == pytest.approx(229.01, rel=1e-6)


async def test_vendor_register_scaled_integer_and_no_match(capsys: pytest.CaptureFixture[str]) -> None:
    async with tcp_server({1: Unit(input={9: 22901, 10: 0})}) as server:
        status, out, _ = await _probe(capsys, "modbus", f"127.0.0.1:{server.port}",
                                      "--register", "30010", "--count", "2", "--expect", "229.01")
        assert status == 0
        assert "input 9..10" in out and "30010" in out
        assert "address 9 int16 ABCD x 0.01 = 229.01" in out
        assert "scale = 0.01" in out
        status, out, _ = await _probe(capsys, "modbus", f"127.0.0.1:{server.port}", "--table",
                                      "input", "--address", "9", "--count", "2", "--expect", "-5")
        assert status == 0 and "no decoding is within" in out


async def test_device_errors_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    async with tcp_server({1: Unit(holding={0: 1})}) as server:
        status, out, _ = await _probe(capsys, "modbus", f"127.0.0.1:{server.port}",
                                      "--address", "50", "--count", "2")
        assert status == 1 and "exception code 2" in out
    status, out, _ = await _probe(capsys, "modbus", f"127.0.0.1:{dead_port()}", "--address", "0",
                                  "--timeout", "0.5")
    assert status == 1 and "device probe" in out
    status, _, err = await _probe(capsys, "modbus", "127.0.0.1", "--register", "%MW100")
    assert status == 2 and err.startswith("--register: ")


def test_ranking_prefers_exact_unscaled_narrow() -> None:
    registers = [*encode_strict("float32", 229.01, "little", "little"), 22901]
    matches = rank(decode_all(registers), 229.01, 0.01)
    assert (matches[0].decoding.data_type, matches[0].decoding.order) == ("float32", "DCBA")
    assert any(m.decoding.data_type == "int16" and m.scale == 0.01 for m in matches)


async def test_opcua_endpoints_browse_and_toml(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.opcua_servers import NS_URI, OpcuaTestServer

    srv = await OpcuaTestServer().start()
    try:
        status, out, err = await _probe(capsys, "opcua", srv.url, "--depth", "2", "--name", "p")
        assert status == 0, err
        assert "None" in out and "user tokens: Anonymous" in out
        pressure = out[out.index("pressure: Double = 4.25 (good)"):]
        assert f"ns={srv.ns};s=Pump1.Pressure  |  nsu={NS_URI};s=Pump1.Pressure" in pressure
        assert f"path /{srv.ns}:Pump1/{srv.ns}:pressure  |  /{{{NS_URI}}}Pump1/{{{NS_URI}}}pressure" \
            in pressure
        toml = out[out.index("[[devices.tags]]"):]
        assert f'node_id = "nsu={NS_URI};' in toml
        status, out, _ = await _probe(capsys, "opcua", srv.url, "--node", f"nsu={NS_URI};s=Pump1",
                                      "--depth", "1")
        assert status == 0 and "flow: Int32 = 12 (good)" in out and "path " not in out
        status, _, err = await _probe(capsys, "opcua", srv.url, "--node", "nsu=urn:nope;s=X")
        assert status == 2 and err.startswith("--node: ")
    finally:
        await srv.stop()
    status, out, _ = await _probe(capsys, "opcua", srv.url, "--timeout", "0.5")
    assert status == 1 and "cannot get endpoints" in out

"""OPC UA first contact (issue 13 item 7): NodeIds as UaExpert copies them (``nsu=``) and
namespace URIs in browse paths, resolved per session; Bad* connect errors that say what to do;
``plcbridge certs`` showing the thumbprint and carrying IP addresses. Real asyncua servers on
loopback ports."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto.validator import ServiceError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.opcua.certs import thumbprint
from adapters.opcua.client import OpcuaAdapter, OpcuaConnectError
from bridge.cli.main import main
from bridge.config import OpcuaDeviceConfig, parse_config
from bridge.core.errors import ConfigError
from bridge.core.tags import Quality
from tests.opcua_servers import CLIENT_URI, NS_URI, OpcuaTestServer, make_cert

pytestmark = pytest.mark.timeout(30)


def device(server: OpcuaTestServer, tags: list[dict[str, Any]], **options: Any) -> OpcuaDeviceConfig:
    data = {"name": "plc1", "protocol": "opcua", "endpoint": server.url, "mode": "poll",
            "timeout": 2.0, "reconnect_min": 0.05, "reconnect_max": 0.2, "tags": tags, **options}
    return OpcuaDeviceConfig.model_validate(data)


def test_check_accepts_nsu_node_ids_and_uris_in_paths(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[devices]]\nname = "line3"\nprotocol = "opcua"\n'
                    'endpoint = "opc.tcp://127.0.0.1:4840"\n'
                    '[[devices.tags]]\nname = "p"\nnode_id = "nsu=urn:plant:line3;s=Pump.Pressure"\n'
                    '[[devices.tags]]\nname = "f"\nbrowse_path = "/{http://plant.example/UA/}Pump/'
                    '{http://plant.example/UA/}Flow"\n')
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    assert "nsu=urn:plant:line3;s=Pump.Pressure" in capsys.readouterr().out
    # A write target is written, never guessed: there the index form stays required.
    with pytest.raises(ConfigError, match="not a NodeId"):
        parse_config({"devices": [{"name": "d", "protocol": "opcua", "endpoint": "opc.tcp://h:1"}],
                      "models": [{"name": "m", "inputs": ["x"], "writeback": {
                          "device": "d", "score": {"node_id": "nsu=urn:a;s=S"}}}]})


async def test_nsu_and_uri_paths_resolve_per_session(adapters: list[OpcuaAdapter]) -> None:
    srv = await OpcuaTestServer().start()
    try:
        adapter = OpcuaAdapter(device(srv, [
            {"name": "pressure", "node_id": f"nsu={NS_URI};s=Pump1.Pressure"},
            {"name": "flow", "browse_path": f"/{{{NS_URI}}}Pump1/{{{NS_URI}}}flow"},
            {"name": "elsewhere", "node_id": "nsu=urn:not:here;s=Pump1.Pressure"},
            {"name": "lost", "browse_path": "/{urn:not:here}Pump1"}]))
        adapters.append(adapter)
        readings = {r.tag: r for r in await adapter.read()}
        assert (readings["pressure"].quality, readings["pressure"].value) == (Quality.GOOD, 4.25)
        assert (readings["flow"].quality, readings["flow"].value) == (Quality.GOOD, 12.0)
        for name in ("elsewhere", "lost"):
            assert readings[name].quality is Quality.BAD
            assert "urn:not:here is not in the server's namespace array" in readings[name].reason
    finally:
        await srv.stop()


async def test_untrusted_client_certificate_is_explained(tmp_path: Path,
                                                         adapters: list[OpcuaAdapter]) -> None:
    server_cert, server_key = await make_cert(tmp_path / "server", "server", "urn:test:server", True)
    cert, key = await make_cert(tmp_path / "pki", "client", CLIENT_URI, False)
    srv = OpcuaTestServer(security=(server_cert, server_key))
    await srv.start()

    async def refuse(certificate: x509.Certificate, app: ua.ApplicationDescription) -> None:
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    assert srv.server is not None
    srv.server.set_certificate_validator(refuse)  # type: ignore[arg-type]
    try:
        adapter = OpcuaAdapter(device(srv, [{"name": "p", "node_id": srv.node_id("pressure")}],
                                      security_policy="Basic256Sha256", certificate=cert,
                                      private_key=key, server_certificate=server_cert,
                                      application_uri=CLIENT_URI))
        adapters.append(adapter)
        with pytest.raises(OpcuaConnectError) as info:
            await adapter.connect()
        detail = str(info.value)
        assert "the server has not trusted our certificate: copy" in detail
        der = x509.load_der_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
        sha1 = hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
        assert str(cert) in detail and thumbprint(cert).replace(":", "") == sha1
        assert thumbprint(cert) in detail
    finally:
        await srv.stop()


def test_certs_prints_thumbprint_and_adds_ip_addresses(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--ip", "10.0.3.7", "--ip", "::1"]) == 0
    out = capsys.readouterr().out
    cert = tmp_path / "plcbridge_cert.der"
    assert f"SHA-1 thumbprint {thumbprint(cert)}" in out and "IP:10.0.3.7" in out
    names = x509.load_der_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"10.0.3.7", "::1"}
    assert main(["certs", "--show", str(cert)]) == 0
    assert thumbprint(cert) in capsys.readouterr().out
    assert main(["certs", "--out", str(tmp_path / "x"), "--ip", "nope"]) == 2

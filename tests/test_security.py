"""API security: bearer scopes, token sources, loopback default, TLS, body limit, CORS."""

from __future__ import annotations

import logging
import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bridge.api.app import create_app
from bridge.api.auth import load_tokens
from bridge.api.security import BodySizeLimit
from bridge.api.serve import ApiServer
from bridge.config import parse_config
from bridge.core.errors import ConfigError
from bridge.runtime.bridge import Bridge

READ = "read-token-0123456789"
ADMIN = "admin-token-0123456789"


def _bridge(**api: object) -> Bridge:
    config = parse_config({
        "api": {"port": 0, **api},
        "devices": [{"name": "d", "host": "127.0.0.1", "port": 1,
                     "tags": [{"name": "p", "address": 0, "type": "int16"}]}],
    })
    return Bridge(config)


@pytest_asyncio.fixture
async def secured(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# scada poller\nread {READ} scada\nadmin {ADMIN} ops\n")
    bridge = _bridge(tokens_file=str(tokens))
    app = create_app(bridge, load_tokens(tokens, None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        yield c
    await bridge.stop()


async def test_tokens_required_and_scopes_checked(secured: httpx.AsyncClient,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    missing = await secured.get("/api/v1/tags")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = await secured.get("/api/v1/tags", headers={"Authorization": f"Bearer {READ}x"})
    assert wrong.status_code == 401
    basic = await secured.get("/api/v1/tags", headers={"Authorization": f"Basic {READ}"})
    assert basic.status_code == 401
    for token in (READ, ADMIN):
        ok = await secured.get("/api/v1/tags", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()[0]["name"] == "p"
    # Liveness stays open for container health checks, and says nothing else.
    assert (await secured.get("/api/v1/live")).json() == {"status": "alive"}
    # No secret in any body or log line.
    for response in (missing, wrong, basic):
        assert READ not in response.text
    assert all(READ not in r.getMessage() and ADMIN not in r.getMessage() for r in caplog.records)


async def test_no_tokens_on_loopback_is_open() -> None:
    bridge = _bridge()
    app = create_app(bridge)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        assert (await c.get("/api/v1/tags")).status_code == 200
        assert "access-control-allow-origin" not in (
            await c.get("/api/v1/tags", headers={"Origin": "http://evil.example"})).headers


async def test_cors_only_for_configured_origins() -> None:
    bridge = _bridge(cors_origins=["http://scada.local"])
    app = create_app(bridge)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        ok = await c.get("/api/v1/tags", headers={"Origin": "http://scada.local"})
        assert ok.headers["access-control-allow-origin"] == "http://scada.local"
        other = await c.get("/api/v1/tags", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_body_size_limit() -> None:
    bridge = _bridge(max_body_bytes=2048)
    app = create_app(bridge)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        big = await c.put("/api/v1/tags/p", content=b"x" * 5000)
        assert big.status_code == 413 and "2048" in big.json()["detail"]
        small = await c.put("/api/v1/tags/p", content=b"x" * 10)
        assert small.status_code == 405  # read-only API; the limit let it through



async def test_body_size_limit_while_streaming() -> None:
    """A chunked body without Content-Length is cut off as soon as it passes the limit."""
    seen: list[int] = []

    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    app = BodySizeLimit(echo, limit=2048)

    async def stream(chunks: int) -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield b"y" * 1000

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        assert (await c.put("/", content=stream(2))).text == "2000"
        assert (await c.put("/", content=stream(10))).status_code == 413
    assert seen == [2000]


def test_non_loopback_without_tokens_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"api.host: '0.0.0.0' is not loopback"):
        parse_config({"api": {"host": "0.0.0.0"}})
    assert parse_config({"api": {"host": "0.0.0.0", "allow_anonymous_remote": True}})
    assert parse_config({"api": {"host": "0.0.0.0", "tokens_env": "X"}})


@pytest.mark.parametrize(("text", "message"), [
    ("write abcdefghijklmnopq", "scope 'write' is not one of read, admin"),
    ("read short", "shorter than 16"),
    ("read", "expected 'SCOPE TOKEN [NAME]'"),
    ("# only a comment\n", "no tokens configured"),
])
def test_bad_token_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_tokens(path, None)
    assert "abcdefghijklmnopq" not in str(info.value)


def test_tokens_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLCB_T", f"read {READ}, admin {ADMIN} ops")
    tokens = load_tokens(None, "PLCB_T")
    assert tokens.scope_of(READ) == ("read", "api.tokens_env (PLCB_T)#1")
    assert tokens.scope_of(ADMIN) == ("admin", "ops")
    assert tokens.scope_of("nope-nope-nope-nope") is None
    monkeypatch.delenv("PLCB_T")
    with pytest.raises(ConfigError, match="PLCB_T is not set"):
        load_tokens(None, "PLCB_T")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    bridge = _bridge(tls_cert=str(cert), tls_key=str(key))
    api = ApiServer(bridge, "127.0.0.1", 0)
    await api.start()
    try:
        assert api.url.startswith("https://")
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cert))) as client:
            assert (await client.get(f"{api.url}/api/v1/live")).status_code == 200
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{api.port}/api/v1/live")
    finally:
        await api.stop()
        await bridge.stop()


async def test_date_header_stays_current_with_no_server_timer() -> None:
    """uvicorn refreshes its Date header from a timer; the bridge's server has none (an idle
    bridge does not wake up), so the protocol refreshes it when a request arrives, also on a
    kept-alive connection."""
    import asyncio
    import time
    from email.utils import parsedate_to_datetime

    bridge = _bridge()
    api = ApiServer(bridge, "127.0.0.1", 0)
    await api.start()
    try:
        async with httpx.AsyncClient() as client:  # one kept-alive connection
            dates = []
            for _ in range(2):
                response = await client.get(f"{api.url}/api/v1/live")
                dates.append(parsedate_to_datetime(response.headers["date"]).timestamp())
                assert abs(dates[-1] - time.time()) <= 1.5
                await asyncio.sleep(1.1)
        assert dates[1] > dates[0]
    finally:
        await api.stop()
        await bridge.stop()

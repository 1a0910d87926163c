"""A real mosquitto broker on a free loopback port, and a QoS 1 subscriber that records
what it receives. The broker can be stopped and restarted on the same port (an outage)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from tests.waiting import until

__all__ = ["MOSQUITTO", "Broker", "Subscriber", "TlsFiles", "free_port", "make_password_file",
           "make_tls_files"]

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Broker:
    """mosquitto with persistence in ``directory``: a persistent subscriber session (and the
    QoS 1 messages queued for it) survives a restart, as on a production broker."""

    def __init__(self, directory: Path, *, password_file: Path | None = None,
                 tls: TlsFiles | None = None) -> None:
        assert MOSQUITTO is not None
        self.directory = directory
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1",
                 "persistence true", f"persistence_location {directory}/",
                 "log_dest stderr", "log_type error"]
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        if getpass.getuser() == "root":
            lines.append("user root")  # else it drops to user mosquitto, which cannot write here
        if password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert MOSQUITTO is not None
        self._process = await asyncio.create_subprocess_exec(
            MOSQUITTO, "-c", str(self.conf), stdout=subprocess.DEVNULL,
            stderr=(self.directory / "mosquitto.log").open("ab"))

        async def listening() -> bool:
            assert self._process is not None
            if self._process.returncode is not None:
                raise AssertionError("mosquitto exited: " + (self.directory / "mosquitto.log").read_text())
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return True
            return False

        await until(listening, 10, f"mosquitto on port {self.port}")

    async def stop(self) -> None:
        if self._process is None:
            return
        if self._process.returncode is None:
            self._process.terminate()  # SIGTERM: mosquitto saves its sessions and exits
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 it signed (openssl CLI)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=plcbridge test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")


def make_password_file(directory: Path, user: str, password: str) -> Path:
    path = directory / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), user, password], check=True,
                   capture_output=True)
    path.chmod(0o600)
    return path


class Subscriber:
    """A persistent-session (clean_session=False) QoS 1 subscriber to ``topic``."""

    def __init__(self, port: int, topic: str, identifier: str = "plcbridge-test-subscriber",
                 **client_args: Any) -> None:
        self.port = port
        self.topic = topic
        self.identifier = identifier
        self.client_args = client_args
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._ready.clear()
        self._task = asyncio.create_task(self._run(), name="test.mqtt-subscriber")
        await until(lambda: self._ready.is_set() or (self._task is not None and self._task.done()),
                    10, "the subscriber to connect")
        if self._task.done():
            self._task.result()

    async def _run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.identifier,
                                  clean_session=False, **self.client_args) as client:
            await client.subscribe(self.topic, qos=1)
            self._ready.set()
            with contextlib.suppress(aiomqtt.MqttError):  # the broker went away
                async for message in client.messages:
                    payload = message.payload
                    assert isinstance(payload, bytes)
                    self.messages.append((str(message.topic), json.loads(payload)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
            self._task = None

    def seqs(self, kind: str | None = None) -> list[int]:
        return [body["seq"] for topic, body in self.messages
                if "seq" in body and (kind is None or f"/{kind}/" in topic)]

"""Issue 13.8: a serial port that cannot be opened says why (not found, permission, busy),
and an unplugged then replugged adapter (socat ptys) comes back on its own."""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path

import pytest

from adapters.modbus.client import ModbusAdapter, serial_open_problem
from bridge.config import ModbusDeviceConfig
from bridge.core.errors import NotConnectedError
from bridge.core.tags import Quality
from tests.modbus_servers import Unit, serial_server, socat_pair
from tests.test_rtu import needs_socat
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)
UNITS = {1: Unit(holding={0: 42})}


def _adapter(path: str) -> ModbusAdapter:
    return ModbusAdapter(ModbusDeviceConfig(
        name="rtu", transport="rtu", serial_port=path, parity="N", timeout=0.5, retries=0,
        reconnect_min=0.05, reconnect_max=0.2, tags=[{"name": "v", "address": 0, "type": "uint16"}]))


async def test_missing_port_says_unplugged_or_renamed(tmp_path: Path) -> None:
    adapter = _adapter(str(tmp_path / "ttyUSB0"))
    try:
        with pytest.raises(NotConnectedError, match=r"unplugged or was renamed.*/dev/serial/by-id"):
            await adapter.connect()
    finally:
        await adapter.close()


def test_permission_denied_says_dialout() -> None:
    # A port only its owner may open: what a tty looks like to a user outside 'dialout'.
    # Root opens anything, so as root the check runs as user nobody.
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        port = Path(folder) / "ttyS9"
        port.touch()
        port.chmod(stat.S_IRUSR | stat.S_IWUSR)
        if os.geteuid() != 0:
            port.chmod(stat.S_IRUSR)
            problem = serial_open_problem(str(port))
        else:
            problem = _as_nobody(str(port))
    assert problem is not None and "permission denied" in problem and "'dialout' group" in problem


def _as_nobody(path: str) -> str:
    """serial_open_problem(path) in a forked child that dropped root for user nobody."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: no pytest machinery beyond this point
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, str(serial_open_problem(path)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        text = result.read()
    os.waitpid(child, 0)
    return text


@needs_socat
async def test_busy_port_then_unplug_and_replug(tmp_path: Path) -> None:
    with socat_pair(tmp_path) as (server_end, client_end):
        async with serial_server(UNITS, server_end, probe_path=client_end):
            # Another program holds the port (pyserial's exclusive lock).
            holder = os.open(client_end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            adapter = _adapter(client_end)
            try:
                with pytest.raises(NotConnectedError, match="is busy: another program holds it"):
                    await adapter.connect()
            finally:
                os.close(holder)
            try:
                await until(lambda: _good(adapter), 5, "the port to open once it is free")
            except BaseException:
                await adapter.close()
                raise
    # Unplugged: socat is gone, and with it the device node.
    try:
        (reading,) = await adapter.read()
        assert reading.quality is Quality.BAD
        await until(lambda: _reason_has(adapter, "unplugged or was renamed"), 5,
                    "the reason to say the adapter is unplugged")
        # Replugged under the same name: polling resumes by itself.
        with socat_pair(tmp_path) as (server_end, client_end):
            async with serial_server(UNITS, server_end, probe_path=client_end):
                await until(lambda: _good(adapter), 10, "polling to resume after replug")
    finally:
        await adapter.close()


async def _good(adapter: ModbusAdapter) -> bool:
    (reading,) = await adapter.read()
    return reading.quality is Quality.GOOD and reading.value == 42


async def _reason_has(adapter: ModbusAdapter, text: str) -> bool:
    (reading,) = await adapter.read()
    return text in reading.reason

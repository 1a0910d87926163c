"""Issue 13.1: one reserved register must not blank a block. A merged read that spans a hole
in the vendor's map is answered with exception 2; the adapter bisects it, keeps the rest good,
remembers the hole, re-plans around it and tries it again on a slow schedule."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from adapters.modbus.client import ModbusAdapter
from bridge.config import ModbusDeviceConfig
from bridge.core.tags import Quality
from tests.modbus_servers import Unit, tcp_server
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parent.parent

# Holding 0-9 served except 5; tags at 0-4, 6, 7: the default max_gap merges them into 0..7.
HOLED = Unit(holding={a: 100 + a for a in range(10) if a != 5})
TAGS = [{"name": f"r{a}", "address": a, "type": "uint16"} for a in (0, 1, 2, 3, 4, 6, 7)]


def _adapter(port: int, **extra: object) -> ModbusAdapter:
    return ModbusAdapter(ModbusDeviceConfig(name="holed", host="127.0.0.1", port=port,
                                            timeout=1.0, retries=0, tags=TAGS, **extra))


async def test_a_hole_in_a_merged_read_is_learned_and_the_rest_stays_good() -> None:
    async with tcp_server({1: HOLED}) as server:
        adapter = _adapter(server.port)
        assert adapter.status.read_plan == ["holding 0..7 (8 registers): r0, r1, r2, r3, r4, r6, r7"]
        try:
            started = time.perf_counter()
            first = await adapter.read()
            learn_ms = (time.perf_counter() - started) * 1000
            assert {r.tag: r.value for r in first if r.quality is Quality.GOOD} == {
                f"r{a}": 100 + a for a in (0, 1, 2, 3, 4, 6, 7)}, first
            assert adapter.status.holes == ["holding 5..5"]
            # The learned plan never spans the hole: one poll, two requests, all good.
            assert adapter.status.read_plan == ["holding 0..4 (5 registers): r0, r1, r2, r3, r4",
                                                "holding 6..7 (2 registers): r6, r7"]
            assert adapter.requests_per_poll == 2
            for _ in range(3):
                assert all(r.quality is Quality.GOOD for r in await adapter.read())
            assert adapter.status.errors == {"exception": 1}
            assert adapter.status.last_exception_code == 2
            print(f"learned the plan around the hole in {learn_ms:.1f} ms (one poll)")
        finally:
            await adapter.close()


async def test_a_tag_inside_a_hole_is_isolated_and_retried_slowly() -> None:
    tags = [*TAGS, {"name": "r5", "address": 5, "type": "uint16"}]
    adapter: ModbusAdapter | None = None
    async with tcp_server({1: HOLED}) as server:
        port = server.port
        adapter = ModbusAdapter(ModbusDeviceConfig(
            name="holed", host="127.0.0.1", port=port, timeout=1.0, retries=0,
            hole_retry=0.5, reconnect_min=0.05, reconnect_max=0.1, tags=tags))
        try:
            readings = {r.tag: r for r in await adapter.read()}
            assert readings["r5"].quality is Quality.BAD
            assert readings["r5"].reason.startswith("exception code 2 (illegal data address)")
            assert all(r.quality is Quality.GOOD for name, r in readings.items() if name != "r5")
            assert adapter.status.holes == ["holding 5..5"]
            assert len(adapter.plan) == 3  # 0..4, 5 alone, 6..7
            # Until the retry the refused tag is not sent (still bad, saying so).
            again = {r.tag: r for r in await adapter.read()}
            assert "learned" in again["r5"].reason
        except BaseException:
            await adapter.close()
            raise
    # The register appears (a new PLC program, same address): the slow retry finds it.
    assert adapter is not None
    async with tcp_server({1: Unit(holding={a: 100 + a for a in range(10)})}, port=port):
        try:
            async def healed() -> bool:
                assert adapter is not None
                got = {r.tag: r for r in await adapter.read()}
                return got["r5"].quality is Quality.GOOD and got["r5"].value == 105

            await until(healed, 5, "the hole to be retried and found readable")
            assert adapter.status.holes == []
            assert len(adapter.plan) == 1  # merged again
        finally:
            await adapter.close()


async def test_run_check_only_prints_the_learned_plan(tmp_path: Path) -> None:
    async with tcp_server({1: HOLED}) as server:
        config = tmp_path / "holed.toml"
        tags = "\n".join(f'[[devices.tags]]\nname = "r{a}"\naddress = {a}\ntype = "uint16"' for a in
                         (0, 1, 2, 3, 4, 6, 7))
        config.write_text(f'[api]\nenabled = false\n\n[[devices]]\nname = "holed"\nhost = "127.0.0.1"\n'
                          f'port = {server.port}\ntimeout = 1.0\nretries = 0\n{tags}\n')
        # The CLI in its own process; this loop keeps serving the device meanwhile.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run", str(config), "--check-only",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert ("device holed: learned unreadable holding 5..5; reads now: holding 0..4 (5 registers): "
            "r0, r1, r2, r3, r4; holding 6..7 (2 registers): r6, r7") in text
    assert "device holed: ok, 7 tags read" in text

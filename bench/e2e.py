"""End-to-end latency: a register change in a device → score in REST → write-back in the device.

The device is a pymodbus server in this process whose action hook timestamps, on the device's
side, the first poll that served each new value and the write-back that carried it back. The
bridge runs as ``plcbridge run`` with write-back on and a one-sample "marker" model (score =
the marker tag's newest value, built here with ``onnx``), so every change has an unambiguous
score; the REST score is polled every 5 ms. Changes come at a random phase of the poll cycle.

Per change: total = change → register written; poll wait = change → first poll that read it
(the poll interval's own wait, uniform in [0, interval)); tick wait = that poll → the model's
next scheduled sample; net = sample → register written (and → seen in REST): the bridge's own
latency once the value is in. Baseline: a raw pymodbus client in its own process reading the
register on the same interval and writing each new value straight back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._bridge_proc import BridgeProcess
from bench._common import PYTHON, ROOT, Context, Result, Section, percentile
from bench._servers import to_toml
from bridge.core.contract import ModelContract

NAME = "e2e"
TITLE = "End-to-end latency"
MARKER, WRITEBACK = 0, 100


@dataclass
class _Device:
    marker: int = 0
    first_read: dict[int, float] = field(default_factory=dict)
    written: dict[int, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def action(self, fc: int, start: int, address: int, count: int, registers: list[int],
                     set_values: list[int] | list[bool] | None) -> None:
        now = time.time()
        if fc == 3 and address <= MARKER < address + count:
            registers[MARKER - start] = self.marker
            self.first_read.setdefault(self.marker, now)
        elif fc == 16 and address == WRITEBACK and set_values:
            hi, lo = (int(v) for v in set_values[:2])
            value = round(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])
            if value not in self.written:
                self.written[value] = now
                self.changed.set()


def _marker_model(path: Path, period: float) -> Path:
    import onnx
    from onnx import TensorProto, helper

    contract = ModelContract(
        name="marker", kind="identity", inputs=("marker",), window_length=1, period=period,
        normalization="none", score="the newest value of the marker tag", threshold=1e9, training={},
        recipe="bench.e2e", version="1")
    node = helper.make_node("ReduceMax", ["window"], ["score"], axes=[1, 2], keepdims=0)
    graph = helper.make_graph(
        [node], "marker", [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", 1, 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, contract.to_metadata())
    onnx.save(model, path)
    return path


async def _start_device() -> tuple[_Device, Any, int]:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    device = _Device()
    regs, bits = DataType.REGISTERS, DataType.BITS
    sim = SimDevice(id=1, simdata=(
        [SimData(0, values=[False] * 16, datatype=bits)], [SimData(0, values=[False] * 16, datatype=bits)],
        [SimData(0, count=10, values=0, datatype=regs),
         SimData(WRITEBACK, count=10, values=0, datatype=regs)],
        [SimData(0, count=10, values=0, datatype=regs)]), action=device.action)
    server = ModbusTcpServer([sim], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    return device, server, port


def _config(ctx: Context, port: int, interval: float) -> Path:
    model = _marker_model(ctx.workdir / f"marker_{interval:g}.onnx", interval)
    config = {
        "bridge": {"log_level": "info"}, "api": {"port": 0},
        "writeback": {"mode": "on", "min_interval": 0.0},
        "devices": [{"name": "dev", "host": "127.0.0.1", "port": port, "poll_interval": interval,
                     "timeout": 1.0, "tags": [{"name": "marker", "table": "holding", "address": MARKER,
                                               "type": "uint16"}]}],
        "models": [{"name": "e2e", "file": str(model), "inputs": ["marker"],
                    "writeback": {"device": "dev", "score": {"address": WRITEBACK, "type": "float32"}}}],
    }
    path = ctx.workdir / f"e2e_{interval:g}.toml"
    path.write_text(to_toml(config))
    return path


async def _changes(device: _Device, count: int, interval: float, rest_url: str | None,
                   first: int) -> tuple[list[dict[str, float]], int]:
    """Make ``count`` changes one after another; per change the timings (seconds)."""
    import httpx

    rows: list[dict[str, float]] = []
    missed = 0
    async with httpx.AsyncClient(timeout=5) as client:
        for marker in range(first, first + count):
            await asyncio.sleep(random.uniform(0, interval))  # a random phase of the poll cycle
            device.changed.clear()
            changed = time.time()
            device.marker = marker
            deadline = changed + 4 * interval + 2.0
            row: dict[str, float] = {}
            while time.time() < deadline and ("rest" not in row if rest_url else False):
                score = (await client.get(rest_url + "/api/v1/models/e2e/score")).json() if rest_url else {}
                if score.get("score") == marker:
                    row["rest"] = time.time() - changed
                    sample = datetime.fromisoformat(score["time"].replace("Z", "+00:00")).timestamp()
                    row["sample"] = sample - changed
                    break
                await asyncio.sleep(0.005)
            while marker not in device.written and time.time() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(device.changed.wait(), max(0.01, deadline - time.time()))
                device.changed.clear()
            seen = "rest" in row or rest_url is None
            if not seen or marker not in device.written or marker not in device.first_read:
                missed += 1
                continue
            row["total"] = device.written[marker] - changed
            row["poll_wait"] = device.first_read[marker] - changed
            rows.append(row)
    return rows, missed


async def _measure(ctx: Context, interval: float, count: int, raw_count: int) -> dict[str, Any]:
    device, server, port = await _start_device()
    try:
        bridge = BridgeProcess(_config(ctx, port, interval), ctx.workdir)
        try:
            url = await asyncio.to_thread(bridge.wait_api)
            await asyncio.sleep(3 * interval + 0.5)  # first poll and score
            rows, missed = await _changes(device, count, interval, url, 1)
        finally:
            await asyncio.to_thread(bridge.stop)
        raw = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "bench._bridge_proc", "raw-echo", str(port), str(interval), cwd=ROOT,
            stdout=subprocess.PIPE)
        try:
            assert raw.stdout is not None
            await asyncio.wait_for(raw.stdout.readline(), 30)
            raw_rows, raw_missed = await _changes(device, raw_count, interval, None, 30_000)
        finally:
            raw.terminate()
            await raw.wait()
    finally:
        await server.shutdown()
    return {"rows": rows, "missed": missed, "raw_rows": raw_rows, "raw_missed": raw_missed}


def _stat(rows: list[dict[str, float]], key: str, q: float) -> float:
    return percentile([r[key] * 1000 for r in rows if key in r], q)


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    plans = ctx.pick([(0.1, 40, 20)], [(0.1, 1000, 200), (1.0, 30, 10)])
    for interval, count, raw_count in plans:
        m = asyncio.run(_measure(ctx, interval, count, raw_count))
        rows, raw_rows = m["rows"], m["raw_rows"]
        for row in rows:
            row["tick_wait"] = row["sample"] - row["poll_wait"]
            row["net"] = row["total"] - row["sample"]
            row["net_rest"] = row["rest"] - row["sample"]
        for row in raw_rows:
            row["net"] = row["total"] - row["poll_wait"]
        params = {"poll_interval_s": interval, "model_period_s": interval, "changes": len(rows),
                  "missed": m["missed"], "baseline_changes": len(raw_rows),
                  "baseline_missed": m["raw_missed"]}
        label = f"{interval * 1000:g} ms poll"
        for q in (50, 99, 100):
            tag = "max" if q == 100 else f"p{q}"
            section.results.append(Result(
                f"change → register, {label}, {tag}", round(_stat(rows, "total", q), 1), "ms",
                round(_stat(raw_rows, "total", q), 1), "raw client: read, write back", higher_is_better=False,
                params=params))
            section.results.append(Result(
                f"net (minus poll and tick waits), {label}, {tag}", round(_stat(rows, "net", q), 1), "ms",
                round(_stat(raw_rows, "net", q), 1), "raw client: read → write", higher_is_better=False,
                params=params))
        section.results.append(Result(
            f"sample → REST, {label}, p50", round(_stat(rows, "net_rest", 50), 1), "ms", None,
            "(REST polled every 5 ms)", higher_is_better=False, params=params))
        waits = {key: (_stat(rows, key, 50), _stat(rows, key, 100)) for key in ("poll_wait", "tick_wait")}
        section.notes.append(
            f"{label}: poll wait p50 {waits['poll_wait'][0]:.1f} ms (max {waits['poll_wait'][1]:.1f}),"
            f" model tick wait p50 {waits['tick_wait'][0]:.1f} ms (max {waits['tick_wait'][1]:.1f});"
            f" change → REST p50 {_stat(rows, 'rest', 50):.1f} ms, p99 {_stat(rows, 'rest', 99):.1f} ms."
            " The raw baseline has no model tick: its net is read → write.")
    if ctx.quick:
        section.notes.append("Quick mode: 100 ms interval only, 40 changes. The full run does 1,000 "
                             "changes at 100 ms and 30 at 1 s (1,000 at 1 s alone would take ~25 min; "
                             "the waits scale with the interval, the net latency does not).")
    else:
        section.notes.append("1 s interval: 30 changes (1,000 would take ~25 min alone); the waits "
                             "scale with the interval, the net latency does not.")
    return section

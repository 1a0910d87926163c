"""plcbridge's own Modbus TCP server: a Sink that serves scores and device health to SCADA.

The map (addresses, types, word order) is defined once, as data, in ``adapters.modbus.register_map``;
this module only keeps a register image up to date and serves it. The image is a plain list
of words relative to ``base_address``: ``on_score`` rewrites one model block (a few struct
packs, no I/O, so it never delays scoring), a small task refreshes the header and the device
blocks every ``refresh_interval``, and pymodbus' ``action`` hook copies the image into each
read response. Clients cannot write: every block is read-only, so pymodbus answers writes
(FC 5, 6, 15, 16, 22, 23) with exception 2 (illegal data address) before they touch anything.

The TCP side is ``adapters.modbus.datastore.GuardedTcpServer``, not pymodbus' server: it caps
connections, closes idle ones and ones that leave a frame half sent, answers pipelined
requests in order, serves only the function codes above (anything else, FC 17 and 43
included, is exception 1) and summarises refusals in the log instead of a traceback each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.modbus.codec import encode_saturating
from adapters.modbus.datastore import ConnectionLimits, GuardedTcpServer
from adapters.modbus.register_map import (
    DEVICE_FIELDS,
    HEADER_FIELDS,
    LAYOUT_VERSION,
    MODEL_FIELDS,
    FieldDef,
    device_start,
    header_start,
    model_fingerprint,
    model_start,
    served_blocks,
)
from bridge.config.servers import MAP_WORDS, ModbusServerConfig
from bridge.core.aio import cancel_and_wait
from bridge.core.scores import Score
from bridge.ports import BridgeView, SinkBase

__all__ = ["ModbusServerSink"]

log = logging.getLogger("plcbridge.modbus_server")

_READ_REGISTERS = (3, 4)
_HEADER = {f.key: f for f in HEADER_FIELDS}
_DEVICE = {f.key: f for f in DEVICE_FIELDS}
_MODEL = {f.key: f for f in MODEL_FIELDS}


def _device(config: ModbusServerConfig, action: object) -> SimDevice:
    def registers() -> list[SimData]:
        return [SimData(start, count=words, values=0, datatype=DataType.REGISTERS, readonly=True)
                for start, words in served_blocks(config)]

    # pymodbus needs a non-empty bit block per table; park one read-only block at the top of
    # the address space, so coil/discrete reads anywhere useful answer exception 2.
    def bits() -> list[SimData]:
        return [SimData(65520, values=[False] * 16, datatype=DataType.BITS, readonly=True)]

    return SimDevice(id=config.unit_id, simdata=(bits(), bits(), registers(), registers()),
                     action=action)  # type: ignore[arg-type]


class ModbusServerSink(SinkBase):
    """Serves the register map of ``adapters.modbus.register_map`` for the models and devices that have
    a slot in ``config``. ``port`` is the bound port once started (``port = 0`` works)."""

    name = "modbus_server"

    def __init__(self, config: ModbusServerConfig) -> None:
        self.config = config
        self.port: int | None = None
        self._image = [0] * MAP_WORDS
        self._heartbeat: dict[str, int] = dict.fromkeys(config.models, 0)
        self._alive = 0
        self._view: BridgeView | None = None
        self._server: GuardedTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._put(header_start(config), _HEADER["layout_version"], LAYOUT_VERSION)
        self._put(header_start(config), _HEADER["models"], len(config.models))
        self._put(header_start(config), _HEADER["devices"], len(config.devices))
        for slot in config.models.values():
            # Not scored yet must not read as a score of 0.0 (which looks healthy).
            self._put(model_start(config, slot), _MODEL["score"], math.nan)

    # -- the image ------------------------------------------------------------------------

    def _put(self, block_start: int, field: FieldDef, value: float) -> None:
        at = block_start - self.config.base_address + field.offset
        words = encode_saturating(field.kind, value, word_order=self.config.word_order)
        self._image[at : at + len(words)] = words

    def registers(self, address: int, count: int = 1) -> list[int]:
        """The words a client reads at ``address`` (zero-based), for tests and diagnostics."""
        at = address - self.config.base_address
        return list(self._image[at : at + count])

    # -- Sink -----------------------------------------------------------------------------

    def on_score(self, score: Score) -> None:
        slot = self.config.models.get(score.model)
        if slot is None:
            return
        start = model_start(self.config, slot)
        self._heartbeat[score.model] = (self._heartbeat[score.model] + 1) & 0xFFFF
        self._put(start, _MODEL["score"], math.nan if score.score is None else score.score)
        self._put(start, _MODEL["threshold"], score.threshold)
        self._put(start, _MODEL["anomaly"], int(score.anomaly))
        self._put(start, _MODEL["window_valid"], int(score.window_valid))
        self._put(start, _MODEL["heartbeat"], self._heartbeat[score.model])
        self._put(start, _MODEL["score_time"], int(score.time))
        self._put(start, _MODEL["windows_scored"], score.scored)
        self._put(start, _MODEL["anomalies"], score.anomalies)

    async def start(self, view: BridgeView) -> None:
        self._view = view
        models = view.models()
        for model, slot in self.config.models.items():
            status = models.get(model)
            if status is None:
                continue
            start = model_start(self.config, slot)
            self._put(start, _MODEL["model_version"], model_fingerprint(status.path))
            if view.latest_score(model) is None:  # the threshold is known before the first score
                self._put(start, _MODEL["threshold"], status.threshold)
            self._put(start, _MODEL["windows_scored"], status.scored)
            self._put(start, _MODEL["anomalies"], status.anomalies)
        self.refresh()

        async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                         values: list[int] | list[bool] | None) -> ExcCodes | None:
            return self._action(fc, start, address, count, regs, values)

        limits = ConnectionLimits(self.config.max_connections, self.config.idle_timeout,
                                  self.config.frame_timeout)
        server = GuardedTcpServer(_device(self.config, action), limits, log)
        self.port = await server.start(self.config.host, self.config.port)
        self._server = server
        self._task = asyncio.create_task(self._refresh_loop(), name="plcbridge[modbus_server].refresh")
        log.info("modbus server listening host=%s port=%d unit=%d models=%d devices=%d",
                 self.config.host, self.port, self.config.unit_id, len(self.config.models),
                 len(self.config.devices))

    async def stop(self) -> None:
        """Stop refreshing and serving; close client connections. Idempotent."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    @property
    def connections(self) -> int:
        """Client connections open now (tests and diagnostics)."""
        return 0 if self._server is None else self._server.connections

    # -- header and devices ---------------------------------------------------------------

    def refresh(self, now: float | None = None) -> None:
        """Rewrite the header and device blocks from the bridge's state."""
        view = self._view
        if view is None:
            return
        now = time.time() if now is None else now
        self._alive = (self._alive + 1) & 0xFFFF
        header = header_start(self.config)
        self._put(header, _HEADER["alive"], self._alive)
        self._put(header, _HEADER["uptime"], now - view.started_at)
        devices = view.devices()
        for name, slot in self.config.devices.items():
            status = devices.get(name)
            if status is None:
                continue
            start = device_start(self.config, slot)
            self._put(start, _DEVICE["connected"], int(status.connected))
            self._put(start, _DEVICE["errors"], status.error_count)
            self._put(start, _DEVICE["polls"], status.polls)
            latency = 0 if status.last_latency is None else max(1, round(status.last_latency * 1000))
            self._put(start, _DEVICE["poll_latency_ms"], latency)
            age = 0xFFFF if status.last_success is None else now - status.last_success
            self._put(start, _DEVICE["last_success_age_s"], age)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval)
            try:
                self.refresh()
            except Exception:  # a bug here must not take the server down; log it each time
                log.exception("modbus server refresh failed")

    # Called by pymodbus for every request that passed its address and read-only checks.
    def _action(self, func_code: int, start_address: int, address: int, count: int,
                registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if set_values:
            return ExcCodes.ILLEGAL_ADDRESS  # unreachable while every block is read-only
        if func_code in _READ_REGISTERS:
            at = address - self.config.base_address
            offset = address - start_address
            registers[offset : offset + count] = self._image[at : at + count]
        return None

"""Checking raw reply frames against the request they answer. Pure functions, no pymodbus.

pymodbus checks little of a reply: a frame with the wrong unit or transaction id is skipped
silently (the caller sees a timeout), a reply with another function code is decoded as that
function's reply (an FC3 answer to an FC4 read gives registers that look fine), and a byte
count that promises more data than the frame holds raises inside ``data_received`` (asyncio
logs a "Fatal error" traceback and drops the connection). The adapter feeds every frame it
sends and receives through these checks (pymodbus' ``trace_packet`` hook) so each of those
becomes a named reason instead.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Problem", "Sent", "check_reply", "crc16", "sent_frame"]

_READS = frozenset({1, 2, 3, 4})  # replies that carry a byte count after the function code


@dataclass(frozen=True, slots=True)
class Sent:
    """What a request frame asked: unit, function code, transaction id (None on RTU)."""

    unit: int
    function: int
    tid: int | None


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with a reply. ``fatal``: pymodbus would choke on the frame (raise or wait
    forever), so the adapter drops the connection to resynchronise instead of feeding it on."""

    reason: str
    fatal: bool = False


def sent_frame(data: bytes, rtu: bool) -> Sent | None:
    if rtu:
        return Sent(data[0], data[1], None) if len(data) >= 2 else None
    if len(data) < 8:
        return None
    return Sent(data[6], data[7], int.from_bytes(data[0:2], "big"))


def crc16(data: bytes) -> int:
    """Modbus RTU CRC (sent low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _pdu_problem(pdu: bytes, sent: Sent) -> Problem | None:
    """Function code and byte count of one complete reply PDU (function code first)."""
    function = pdu[0]
    if function in _READS and len(pdu) >= 2 and pdu[1] != len(pdu) - 2:
        return Problem(f"byte count {pdu[1]} but {len(pdu) - 2} data bytes follow", fatal=True)
    if function & 0x7F != sent.function:
        return Problem(f"function code {function} in reply to function code {sent.function}")
    return None


def check_reply(data: bytes, sent: Sent, rtu: bool) -> Problem | None:
    """The first problem of the reply at the start of ``data`` (the receive buffer), or None
    when it is fine or not complete yet."""
    if rtu:
        return _check_rtu(data, sent)
    if len(data) < 8:
        return None
    if pid := int.from_bytes(data[2:4], "big"):
        return Problem(f"protocol id {pid} is not Modbus (0)", fatal=True)
    size = int.from_bytes(data[4:6], "big") + 6
    if len(data) < size:
        # Incomplete (more may come) or a header that promises more than will ever come: the
        # reason is kept and only shown if the reply never completes.
        return Problem(f"incomplete reply: header announces {size} bytes, {len(data)} received")
    unit, tid = data[6], int.from_bytes(data[0:2], "big")
    if unit != sent.unit:
        return Problem(f"reply from unit {unit} to a request for unit {sent.unit}")
    if sent.tid is not None and tid != sent.tid:
        return Problem(f"reply to transaction {tid}, expected {sent.tid}")
    return _pdu_problem(data[7:size], sent)


def _check_rtu(data: bytes, sent: Sent) -> Problem | None:
    if len(data) < 2:
        return None
    if data[0] != sent.unit:
        return Problem(f"reply from unit {data[0]} to a request for unit {sent.unit}")
    function = data[1]
    if function & 0x80:
        size = 5
    elif function in _READS and len(data) >= 3:
        size = 3 + data[2] + 2
    else:
        return None  # writes and unknown codes: leave framing to pymodbus
    if len(data) < size:
        return Problem(f"incomplete reply: {len(data)} of {size} bytes received")
    frame = data[:size]
    if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
        return Problem("CRC error")
    return _pdu_problem(frame[1:-2], sent)

"""Register read replies that keep their bytes (pymodbus's ``client.register`` extension point).

pymodbus decodes a register reply into a list of ints, one ``struct.unpack`` per register
(~55 us per 100 registers on the benchmark box), and formats the whole reply with ``str()``
for a debug log line even when debug logging is off (~10 us). The poll path only needs the
bytes: ``RequestDecoder.raw`` unpacks every tag of the reply in one go from them. These
classes keep the reply's data bytes as ``words`` and build ``registers`` only when something
asks for it, so code that expects pymodbus's own response still works unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from adapters.modbus.codec import words_to_registers

__all__ = ["HoldingWords", "InputWords", "register_word_replies"]


class _Words:
    """Mixin for the two register-read replies: ``words`` = the data bytes (big-endian words)."""

    words: bytes = b""
    function_code: int
    _registers: list[int] | None = None

    @property
    def registers(self) -> list[int]:
        if self._registers is None:
            self._registers = words_to_registers(self.words)
        return self._registers

    @registers.setter
    def registers(self, value: Sequence[int]) -> None:  # pymodbus's __init__ and encode path
        self._registers = list(value)
        self.words = b""

    def decode(self, data: bytes) -> None:
        """Same checks as pymodbus's own decode (byte count within the frame)."""
        count = int(data[0])
        if count >= len(data):
            raise ModbusIOException(f"byte_count {count} > length of packet {len(data)}",
                                    function_code=self.function_code)
        self.words = bytes(data[1:1 + count])
        self._registers = None

    def __str__(self) -> str:
        # Short on purpose: pymodbus builds this for every reply (see the module doc).
        return f"{type(self).__name__}(fc={self.function_code}, bytes={len(self.words)})"


class HoldingWords(_Words, ReadHoldingRegistersResponse):  # type: ignore[misc]
    """Function code 3 reply."""


class InputWords(_Words, ReadInputRegistersResponse):  # type: ignore[misc]
    """Function code 4 reply."""


def register_word_replies(client: Any) -> None:
    """Decode this client's register-read replies with the classes above."""
    client.register(HoldingWords)
    client.register(InputWords)

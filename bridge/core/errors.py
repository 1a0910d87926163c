"""Typed errors. Adapters raise these; the core decides what to do with them."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DecodeError",
    "DeviceExceptionError",
    "DeviceTimeoutError",
    "ModelContractError",
    "NotConnectedError",
    "PlcBridgeError",
    "WriteRefusedError",
]


class PlcBridgeError(Exception):
    """Base of every error plcbridge raises on purpose."""


class ConfigError(PlcBridgeError):
    """Invalid configuration. ``errors`` holds one line per problem, each naming a key path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


class NotConnectedError(PlcBridgeError):
    """The device could not be reached (refused, closed, unreachable)."""

    def __init__(self, device: str, detail: str = "") -> None:
        self.device = device
        self.detail = detail
        super().__init__(f"{device}: not connected" + (f" ({detail})" if detail else ""))


class DeviceTimeoutError(PlcBridgeError):
    """The device did not answer in time."""

    def __init__(self, device: str, detail: str = "") -> None:
        self.device = device
        self.detail = detail
        super().__init__(f"{device}: timeout" + (f" ({detail})" if detail else ""))


class DeviceExceptionError(PlcBridgeError):
    """The device answered with a protocol exception (e.g. Modbus exception code 2)."""

    def __init__(self, device: str, code: int, detail: str = "") -> None:
        self.device = device
        self.code = code
        self.detail = detail
        super().__init__(f"{device}: exception code {code}" + (f" ({detail})" if detail else ""))


class DecodeError(PlcBridgeError):
    """Registers or bytes could not be turned into a value of the configured type."""


class ModelContractError(PlcBridgeError):
    """A model file is unreadable or its contract does not match the configuration."""


class WriteRefusedError(PlcBridgeError):
    """A write was refused by the safety rules (address not declared, bad type or range, ...)."""

"""Protocol adapters behind one small interface (see bridge.ports).

The registry is explicit and imports lazily, so a Modbus-only configuration never imports
asyncua (about 25 MB of RSS), and an unknown ``protocol`` fails with the list of known ones.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from bridge.core.extras import require_extra
from bridge.ports import Adapter, DeviceStatus

__all__ = ["ADAPTERS", "Adapter", "DeviceStatus", "create_adapter"]

# TOML ``protocol`` value -> "module:Class"
ADAPTERS: dict[str, str] = {
    "modbus": "adapters.modbus.client:ModbusAdapter",
    "opcua": "adapters.opcua.client:OpcuaAdapter",
}
# Protocols whose library is an optional extra (pymodbus is a core dependency).
LIBRARIES: dict[str, str] = {"opcua": "asyncua"}


def create_adapter(device_config: Any) -> Adapter:
    """Build the adapter for ``device_config`` (any config object with a ``protocol``)."""
    protocol = getattr(device_config, "protocol", None)
    target = ADAPTERS.get(str(protocol))
    if target is None:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"protocol: {protocol!r} is not one of {known}")
    library = LIBRARIES.get(str(protocol))
    if library is not None:  # MissingExtraError names the pip extra, not a bare ImportError
        require_extra(library, f"protocol {protocol}")
    module_name, _, class_name = target.partition(":")
    adapter_class = getattr(importlib.import_module(module_name), class_name)
    return cast(Adapter, adapter_class(device_config))

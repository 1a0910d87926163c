"""What every config model shares: the strict base class, the form of names, and paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["NAME_PATTERN", "ConfigPath", "Name", "NotBool", "StrictModel"]

# Device and model names, and the [modbus_server] slot keys that refer to them: one alphabet,
# so a name accepted in one place is accepted in the other.
NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)]


def _no_nul(value: Path) -> Path:
    # Every OS call raises ValueError("embedded null byte") on such a path: at start, after
    # `check` said valid. Refused here, where the message can name the key.
    if "\0" in str(value):
        raise ValueError("a path cannot contain a NUL character")
    return value


# A file or folder the config names. TOML has no path type: the string is converted, so this
# field is exempt from the models' strict mode (which would demand a Path instance).
ConfigPath = Annotated[Path, Field(strict=False), AfterValidator(_no_nul)]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"a number is expected, not {str(value).lower()}")
    return value


# For a choice of numbers (``Literal[1, 2]``): strict mode cannot apply to a Literal, and
# Python's True == 1 would let ``stopbits = true`` through as 1.
NotBool = BeforeValidator(_not_bool)


class StrictModel(BaseModel):
    """Base of every config model: an unknown key is an error (a typo must not silently
    fall back to a default), and a loaded config is immutable (shared by every task).

    TOML types are kept: ``strict`` refuses ``port = true`` (not port 1) and ``address = "1"``
    (not register 1); an integer is still accepted where a float is expected. ``nan`` and
    ``inf`` are refused for every float key: no threshold, scale, range or fail-safe value
    can mean them, and every comparison with nan is false, so range checks would pass it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

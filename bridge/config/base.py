"""What every config model shares: the strict base class and the form of names."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NAME_PATTERN", "Name", "StrictModel"]

# Device and model names, and the [modbus_server] slot keys that refer to them: one alphabet,
# so a name accepted in one place is accepted in the other.
NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)]


class StrictModel(BaseModel):
    """Base of every config model: an unknown key is an error (a typo must not silently
    fall back to a default), and a loaded config is immutable (shared by every task)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

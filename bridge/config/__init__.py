"""The configuration: one TOML file, validated by pydantic models split by section.

Import the public names from here (``from bridge.config import Config, load_config``); the
modules below are the sections (``schema``: devices, models, API, storage; ``servers``,
``opcua_server``, ``mqtt``: the sinks) plus the shared checks and the reference generator.
"""

from bridge.config.schema import *  # noqa: F403  (the facade: schema's __all__)
from bridge.config.schema import __all__ as _schema_all

__all__ = list(_schema_all)

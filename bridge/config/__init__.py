"""The configuration: one TOML file, validated by pydantic models split by section.

Import the public names from here (``from bridge.config import Config, load_config``). The
modules are the sections, each small enough to read at once:

``base``          the strict base model and the form of names, shared by every section
``modbus``        Modbus devices and tags
``opcua``         OPC UA devices and tags, NodeIds, security policies
``models``        anomaly models and their write-back targets
``sections``      ``[bridge]``, ``[api]``, ``[storage]``, the ``[writeback]`` policy
``servers``       ``[modbus_server]`` (with its fixed slot layout) and ``[metrics]``
``opcua_server``  ``[opcua_server]``
``mqtt``          ``[mqtt]``
``loader``        the ``Config`` root, loading, cross-section checks, error messages
``checks``        validation helpers several sections share
``reference``     generates docs/config-reference.md
"""

# The facade: every module's public names, so ``from bridge.config import X`` never needs to
# know which section defines X. Built from the modules' own __all__ so the two cannot drift.
from bridge.config import base, loader, modbus, models, mqtt, opcua, opcua_server, sections, servers
from bridge.config.base import *  # noqa: F403
from bridge.config.loader import *  # noqa: F403
from bridge.config.modbus import *  # noqa: F403
from bridge.config.models import *  # noqa: F403
from bridge.config.mqtt import *  # noqa: F403
from bridge.config.opcua import *  # noqa: F403
from bridge.config.opcua_server import *  # noqa: F403
from bridge.config.sections import *  # noqa: F403
from bridge.config.servers import *  # noqa: F403
from bridge.core.datatypes import register_count

__all__ = ["register_count"]
__all__ += base.__all__
__all__ += loader.__all__
__all__ += modbus.__all__
__all__ += models.__all__
__all__ += mqtt.__all__
__all__ += opcua.__all__
__all__ += opcua_server.__all__
__all__ += sections.__all__
__all__ += servers.__all__

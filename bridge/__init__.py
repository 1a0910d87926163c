"""plcbridge core: config, tag store, windows, inference, scheduling, API, CLI.

Nothing here imports a protocol library; adapters are loaded by name from the config.
"""

__version__ = "0.1.0"

"""The ``plcbridge`` command line: run, check, demo, simulate, certs and the model commands."""

from bridge.cli.main import main

__all__ = ["main"]

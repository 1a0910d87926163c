"""What every ``plcbridge`` command shares: exit statuses, how input errors are printed, loading
the configuration, logging. Command modules import this one and never each other.

Every input error is one line on stderr, ``WHERE: WHAT``, where WHERE is the file, the key path
in the configuration, or the command-line option at fault, so that an operator (or a script
grepping the journal) always finds the culprit at the start of the line.
"""

from __future__ import annotations

import logging
import os
import sys

from bridge.config import Config, load_config
from bridge.core.errors import ConfigError

__all__ = ["EXIT_FAILED", "EXIT_INPUT", "EXIT_OK", "EXIT_STATUS_HELP", "KeyValueFormatter", "fail",
           "fail_config", "load_config_or_exit", "setup_logging"]

EXIT_OK = 0
# The command ran and failed: a device did not answer, quantize refused the model, a crash.
# systemd restarts the bridge after these (Restart=on-failure).
EXIT_FAILED = 1
# Bad input or setup: configuration, arguments, files, a missing optional extra. Retrying cannot
# help, so packaging/plcbridge.service has RestartPreventExitStatus=2; argparse uses 2 as well.
EXIT_INPUT = 2

EXIT_STATUS_HELP = """exit status:
  0  success (also after Ctrl-C or SIGTERM: a normal stop)
  1  the command ran and failed: a device did not answer (run --check-only), quantize
     refused the model, the bridge stopped on an unexpected error
  2  bad input: configuration, arguments, files, or a missing optional extra
     (pip install 'plcbridge[EXTRA]'); the message starts with the file, key or option"""


def fail(message: str, where: str | os.PathLike[str] | None = None) -> int:
    """Print one input error, ``where: message`` (``message`` alone when it already starts with
    its location), and return EXIT_INPUT for the command to return."""
    print(message if where is None else f"{where}: {message}", file=sys.stderr)
    return EXIT_INPUT


def fail_config(path: str | os.PathLike[str], exc: ConfigError) -> int:
    """Every line of a ConfigError, each prefixed with the config file (once: load errors such as
    ``cannot read`` already name it)."""
    prefix = f"{os.fspath(path)}: "
    for line in exc.errors:
        fail(line if line.startswith(prefix) else prefix + line)
    return EXIT_INPUT


def load_config_or_exit(path: str) -> Config:
    """The validated configuration, or every error printed and SystemExit(EXIT_INPUT)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise SystemExit(fail_config(path, exc)) from None


class KeyValueFormatter(logging.Formatter):
    """``TIME level=... logger=... message``: one line per record, easy to grep in the journal."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
                f"logger={record.name} {record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str) -> None:
    """Root logger to stderr at ``level``; chatty libraries at WARNING or above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymodbus", "apscheduler", "uvicorn.error", "asyncua"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

"""Optional dependencies: import one, or fail with the ``pip install`` line that brings it.

The extras are declared in pyproject.toml (``[project.optional-dependencies]``). A plain
``ImportError`` deep inside a command tells an operator which module is missing but not which
extra to install; ``require_extra`` says both, and the CLI turns it into exit status 2
(a setup problem the operator fixes, not a failure worth retrying).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from bridge.core.errors import PlcBridgeError

__all__ = ["EXTRAS", "MissingExtraError", "require_extra"]

# Top-level import name -> (distribution on PyPI, extra that installs it).
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "recipes"),
    "sklearn": ("scikit-learn", "recipes"),
    "skl2onnx": ("skl2onnx", "recipes"),
    "scipy": ("scipy", "recipes"),
    "asyncua": ("asyncua", "opcua"),
    "aiomqtt": ("aiomqtt", "mqtt"),
    "google": ("protobuf", "sparkplug"),  # google.protobuf
    "matplotlib": ("matplotlib", "bench"),
}


class MissingExtraError(PlcBridgeError, ImportError):
    """An optional dependency is not installed. Also an ImportError, so code that already
    catches ImportError around an optional feature keeps working."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        self.module = module
        self.extra = extra
        distribution = EXTRAS[module][0] if module in EXTRAS else module
        super().__init__(f"{purpose} needs {distribution}, which is not installed: "
                         f"pip install 'plcbridge[{extra}]'", name=module)


def require_extra(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib.pyplot"``) and return it; raise MissingExtraError
    naming the extra when its package is not installed. ``purpose`` says what needs it
    (``"--plot"``, ``"protocol opcua"``) and starts the message."""
    top = module.partition(".")[0]
    if top not in EXTRAS:
        raise ValueError(f"{top!r} is not an optional dependency (known: {', '.join(sorted(EXTRAS))})")
    try:
        # The package first: a submodule already in sys.modules would be returned from there
        # even when the package itself can no longer be imported.
        importlib.import_module(top)
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Also when the package is there but one of its own dependencies is not: the same
        # install fixes both. The original error stays attached as the cause.
        raise MissingExtraError(top, EXTRAS[top][1], purpose) from exc

"""uvicorn's server without its command line.

``import uvicorn`` runs the package's ``__init__``, which imports ``uvicorn.main``: the command
line (click) and the reload and multi-process supervisors (multiprocessing). The bridge only
embeds ``uvicorn.Server`` in its own loop; the command line was ~1.2 MB of its RSS (measured
with everything else of ``plcbridge run`` loaded, median of 3 processes).

``embedded_uvicorn()`` puts the ``uvicorn`` package in place without running ``__init__`` when
nothing imported it yet: submodules import as usual, ``Config`` and ``Server`` are there (the
names uvicorn's own modules take from the package), and the first other name asked of the
package (``uvicorn.run``, ``uvicorn.__version__``, ...) runs ``__init__`` then, so any other
user of the package in the process sees all of it.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

__all__ = ["Config", "H11Protocol", "Server", "embedded_uvicorn"]


def embedded_uvicorn() -> ModuleType:
    """The ``uvicorn`` package with ``Config`` and ``Server`` (the rest loads on first use)."""
    present = sys.modules.get("uvicorn")
    if present is not None:
        return present
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        import uvicorn  # not a package we know: the ordinary import (and its ImportError)

        return uvicorn
    package = importlib.util.module_from_spec(spec)
    sys.modules["uvicorn"] = package
    try:
        from uvicorn.config import Config
        from uvicorn.server import Server
    except BaseException:
        del sys.modules["uvicorn"]
        raise
    package.__dict__.update(Config=Config, Server=Server)
    loader, ran = spec.loader, False

    def __getattr__(name: str) -> Any:  # the module-level hook of PEP 562
        nonlocal ran
        if not ran:
            ran = True  # once: while __init__ runs, a missing name is missing, as in any import
            loader.exec_module(package)
            if name in package.__dict__:
                return package.__dict__[name]
        raise AttributeError(f"module 'uvicorn' has no attribute {name!r}")

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    return package


embedded_uvicorn()  # at import, so that the imports below (and serve.py's) find it in place

from uvicorn.config import Config  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402
from uvicorn.server import Server  # noqa: E402

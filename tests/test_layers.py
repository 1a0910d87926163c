"""The layer table of docs/architecture.md, enforced.

Every import in bridge/, adapters/ and models/ counts: module level, inside functions, and under
``TYPE_CHECKING`` (a cycle hidden there is still a cycle in the design). A module may import
only the layers its row allows, the graph of modules has no cycle, and the core product
(``bridge/``) never imports a protocol library.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bridge", "adapters", "models")

# Row: a layer (a package prefix). Value: the layers it may import besides itself. The top-level
# ``bridge`` module (the version) may be imported by everyone.
LAYERS: dict[str, frozenset[str]] = {
    "bridge.core": frozenset(),
    "bridge.config": frozenset({"bridge.core"}),
    "bridge.ports": frozenset({"bridge.core", "bridge.config"}),
    "adapters": frozenset({"bridge.core", "bridge.config", "bridge.ports"}),
    "adapters.modbus": frozenset({"bridge.core", "bridge.config", "bridge.ports"}),
    "adapters.opcua": frozenset({"bridge.core", "bridge.config", "bridge.ports"}),
    "adapters.sim": frozenset({"bridge.core", "bridge.config", "bridge.ports", "adapters.modbus",
                               "adapters.opcua"}),
    "bridge.scoring": frozenset({"bridge.core", "bridge.config", "bridge.ports"}),
    "bridge.sinks": frozenset({"bridge.core", "bridge.config", "bridge.ports"}),
    "bridge.runtime": frozenset({"bridge.core", "bridge.config", "bridge.ports", "bridge.scoring",
                                 "bridge.sinks", "adapters", "adapters.modbus", "adapters.opcua"}),
    "bridge.api": frozenset({"bridge.core", "bridge.config", "bridge.ports", "bridge.scoring",
                             "bridge.sinks", "bridge.runtime"}),
    "bridge.ml": frozenset({"bridge.core", "bridge.config", "bridge.ports", "bridge.scoring",
                            "bridge.runtime"}),
    "bridge.cli": frozenset({"bridge.core", "bridge.config", "bridge.ports", "bridge.scoring",
                             "bridge.sinks", "bridge.runtime", "bridge.api", "bridge.ml", "adapters",
                             "adapters.modbus", "adapters.opcua", "adapters.sim"}),
    # Recipes build the shipped models: they use the core, the training code and the simulated
    # plant (pure numpy); nothing in bridge/ imports them.
    "models": frozenset({"bridge.core", "bridge.ml", "bridge.scoring", "adapters.sim.plant"}),
}
SHARED = "bridge"  # bridge/__init__.py: __version__ only
PROTOCOL_LIBRARIES = ("pymodbus", "asyncua", "serial", "aiomqtt")
# Two deliberate exceptions, both imported only when configured: the MQTT sink speaks to a
# broker itself (a broker is not a device, so it has no adapter), and the config checks an OPC
# UA browse path with asyncua's own parser, so config and client never disagree on one.
PROTOCOL_EXCEPTIONS = {("bridge.sinks.mqtt", "aiomqtt"), ("bridge.config", "asyncua")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, known: Iterable[str]) -> set[str]:
    """Every module of ours and every top-level library ``path`` imports, wherever the import is."""
    known = set(known)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (the layer check reads absolute ones)"
            found.add(node.module)
            # ``from bridge.config import schema`` imports the submodule too.
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return found


def layer_of(module: str) -> str | None:
    """The longest LAYERS prefix of ``module`` (None: the shared top-level module)."""
    if module == SHARED:
        return None
    best = None
    for layer in LAYERS:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to the table in tests/test_layers.py")
    return best


def allowed(importer: str, imported: str) -> bool:
    source, target = layer_of(importer), layer_of(imported)
    if target is None or source == target:
        return True
    assert source is not None, "bridge/__init__.py must import nothing of ours"
    rules = LAYERS[source]
    return target in rules or any(imported == r or imported.startswith(r + ".") for r in rules)


def graph() -> dict[str, set[str]]:
    mods = modules()
    ours = {m for m in mods}

    def resolve(name: str) -> str | None:
        # ``bridge.config.Config`` is not a module: walk up to the module that holds it.
        while name and name not in ours:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = {resolve(i) for i in imports_of(path, ours) if i.split(".")[0] in PACKAGES}
        edges[name] = {t for t in targets if t is not None and t != name}
    return edges


def violations(edges: Mapping[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if not allowed(a, b))


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_import_follows_the_layer_table() -> None:
    assert violations(graph()) == []


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_bridge_never_imports_a_protocol_library() -> None:
    mods = modules()
    bad = []
    for name, path in mods.items():
        if not name.startswith("bridge"):
            continue
        for imported in imports_of(path, mods):
            top = imported.split(".")[0]
            excepted = any(name.startswith(prefix) and top == lib for prefix, lib in PROTOCOL_EXCEPTIONS)
            if top in PROTOCOL_LIBRARIES and not excepted:
                bad.append(f"{name} imports {imported}")
    assert bad == []


@pytest.mark.parametrize(("edges", "expected"), [
    ({"bridge.core.tags": {"bridge.runtime.bridge"}}, ["bridge.core.tags -> bridge.runtime.bridge"]),
    ({"bridge.sinks.mqtt": {"bridge.runtime.bridge"}}, ["bridge.sinks.mqtt -> bridge.runtime.bridge"]),
    ({"adapters.modbus.server": {"bridge.scoring.runner"}},
     ["adapters.modbus.server -> bridge.scoring.runner"]),
    ({"models.recipes.pump_pca": {"adapters.sim.modbus"}},
     ["models.recipes.pump_pca -> adapters.sim.modbus"]),
    ({"bridge.api.app": {"bridge.runtime.bridge", "bridge.core.tags", "bridge"}}, []),
])
def test_the_checker_flags_what_the_table_forbids(edges: dict[str, set[str]], expected: list[str]) -> None:
    assert violations(edges) == expected


def test_the_checker_finds_cycles_hidden_anywhere(tmp_path: Path) -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from bridge.runtime.bridge import Bridge\n"
                     "def f():\n    import bridge.ml.train\n")
    assert imports_of(probe, []) >= {"typing", "bridge.runtime.bridge", "bridge.ml.train"}

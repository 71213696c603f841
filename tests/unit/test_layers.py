"""The package's layers: no module imports a layer above its own (an import-graph check)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "worker"

# Lowest first. A module may import its own layer and those below; within the lower
# layers (below the composition root) a package may not import a sibling package of
# its layer unless the pair is listed in SIBLINGS: the saga knows the ports, not the stores.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "errors", "failpoints", "runtime", "refusals"}),  # the ground: no project imports
    frozenset({"events", "config"}),  # the contracts and the settings
    frozenset({"ports"}),  # protocols and the records they carry
    frozenset({"telemetry", "retrying", "deadletter", "sample", "broker", "broker_rights"}),  # cross-cutting helpers
    frozenset({"stores", "saga", "publish"}),  # adapters and the saga, side by side
    frozenset({"consume", "snapshot", "preflight"}),  # built on the saga or on the stores
    frozenset({"compose"}),  # the composition root
    frozenset(
        {"app", "library", "sync", "health", "ops", "devstack", "devjob", "cli", "__main__", "watch"}
    ),  # entry points
)
TOP = len(LAYERS) - 1
SIBLINGS = frozenset({("preflight", "snapshot")})  # preflight checks the tables a snapshot copies


def _layer(part: str) -> int:
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank
    msg = f"worker.{part} is in no layer: add it to LAYERS in {__file__}"
    raise AssertionError(msg)


def _part(module: str) -> str:
    """worker.stores.neo4j -> stores; worker -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Every worker.* module this file imports, at any depth (lazy and TYPE_CHECKING imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "worker" or name.startswith("worker.")}


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        own = _part(".".join(relative.parts)) if len(relative.parts) > 1 else "__init__"
        for imported in sorted(_imports(path)):
            other = _part(imported)
            if other == own:
                continue
            mine, theirs = _layer(own), _layer(other)
            if theirs > mine:
                problems.append(f"{relative}: imports {imported} (layer {theirs} above its own {mine})")
            elif theirs == mine < TOP and (own, other) not in SIBLINGS:
                problems.append(f"{relative}: imports {imported}, a sibling of its layer {mine}")
    return problems


def test_no_module_imports_a_layer_above_its_own() -> None:
    """Ports and records below everything; stores and saga apart; the composition root and entry points on top."""
    assert _violations() == []


def test_the_check_sees_a_violation() -> None:
    """The checker itself: an upward import is reported (so an empty list means something)."""
    assert _layer("ports") < _layer("stores") < _layer("compose")
    assert _part("worker.stores.neo4j") == "stores"
    assert "worker.ports" in _imports(PACKAGE / "saga" / "plan.py")

"""A sample corpus: the graphs of real Python source files, built with the ``ast`` module.

This is what the producer (an AST-to-graph tool) publishes, one event per file: each
AST node becomes a node typed by its class (``FunctionDef``, ``Name``...), and each
parent→child link an edge typed by the field that holds the child (``BODY``, ``ARGS``).
"""

from __future__ import annotations

import ast
import math
import sysconfig
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from worker.events import INT64, AstGraphUpserted, Edge, EventType, GraphData, Node, Scalar

PRODUCER = "gpm-sample/1"
_LOCATION = ("lineno", "col_offset", "end_lineno", "end_col_offset")
_NAMES = ("name", "id", "attr", "arg", "module")


def _storable(value: str | float) -> Scalar:
    r"""A constant as a property: strings cut to 200 characters; what JSON and int64 cannot hold as text.

    A lone surrogate (``"\udc80"``, in some codec code) is not UTF-8: it stays escaped.
    """
    if isinstance(value, str):
        return value[:200].encode("utf-8", "backslashreplace").decode()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
        return str(value)  # e.g. the 2**64 masks in the standard library's hashing code
    return value


def graph_from_source(text: str, filename: str = "<source>") -> GraphData:
    """The AST graph of one Python source text; node ids are pre-order positions."""
    tree = ast.parse(text, filename=filename)
    nodes: list[Node] = []
    edges: list[Edge] = []
    ids: dict[int, str] = {}

    def visit(node: ast.AST) -> str:
        node_id = f"n{len(nodes)}"
        ids[id(node)] = node_id
        props: dict[str, Scalar | None] = {attr: getattr(node, attr, None) for attr in _LOCATION}
        for attr in _NAMES:
            value = getattr(node, attr, None)
            if isinstance(value, str):
                props[attr] = value
        if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
            props["value"] = _storable(node.value)
        nodes.append(
            Node(id=node_id, type=type(node).__name__, properties={k: v for k, v in props.items() if v is not None})
        )
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for index, child in enumerate(children):
                if isinstance(child, ast.AST):
                    child_id = visit(child)
                    edges.append(Edge(source=node_id, target=child_id, type=field.upper(), properties={"index": index}))
        return node_id

    visit(tree)
    return GraphData(nodes=nodes, edges=edges, metadata={"filename": filename, "language": "python"})


def python_files(root: Path | None = None) -> Iterator[Path]:
    """The .py files under ``root`` (the standard library), tests left out, in a stable order."""
    base = root or Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).parts
        if "test" not in parts and "tests" not in parts and "site-packages" not in parts:
            yield path


def event_for_file(path: Path, root: Path, version: int = 1) -> AstGraphUpserted:
    """The upsert event a producer would send for one file."""
    source_id = path.relative_to(root).as_posix()
    graph = graph_from_source(path.read_text(encoding="utf-8", errors="replace"), source_id)
    return AstGraphUpserted(
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"gpm-sample:{source_id}:{version}"),
        event_type=EventType.AST_GRAPH_UPSERTED,
        source_id=source_id,
        source_version=version,
        occurred_at=datetime.now(UTC),
        producer=PRODUCER,
        graph=graph,
    )

"""How a batch is laid out as Cypher statements over Bolt, per server: two shapes.

What a write costs depends on the server. Neo4j pays per statement, not per row: a batch
of AST nodes splits into dozens of (label, property names) groups, each a statement, and
edges matched by ``elementId`` are slower there than by key (figures in
docs/benchmark.md). ArcadeDB is the other way round: it has no dynamic labels (``$(...)``
silently creates unlabelled nodes) and matches edges by element id 3x faster.

- ``GROUPED``: a statement per (label, property names) group, the label in the query
  text after a strict check, edges matched by element id. For ArcadeDB and Neo4j < 5.26.
- ``DYNAMIC``: Neo4j 5.26 and later. All nodes in one ``UNWIND`` with the type as a
  dynamic label (a parameter: nothing of the data enters query text), then one statement
  per relationship type (a handful per batch), edges matched by ``key`` through the
  unique constraint.

Relationship types are not dynamic too because Neo4j 5.26.0 gets them wrong: in
``CREATE (a)-[e:$(r.type)]->(b)`` every row takes the first row's type, and so do later
runs of the same statement (seen here with CREATE, MERGE, a CALL subquery and a WITH;
the generated hostile-input test found it). Dynamic node labels are right, row by row.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, LiteralString

from worker.stores.cypher import NODE_FIELDS, BatchRows, cypher_name

# "Neo4j/5.26.0", "Neo4j/2025.01.0"; ArcadeDB says "Neo4j/5.26.0 compatible (ArcadeDB ...)"
# and must not match: it accepts the dynamic syntax and writes unlabelled nodes.
_NEO4J_AGENT = re.compile(r"Neo4j/(\d+)\.(\d+)(?:\.\d+)?")
_DYNAMIC_SINCE = (5, 26)


class WriteShape(StrEnum):
    """Which statements a batch becomes (see the module docstring)."""

    GROUPED = "grouped"
    DYNAMIC = "dynamic"


def shape_for(agent: str) -> WriteShape:
    """The shape for a server that describes itself as ``agent`` (the Bolt server agent)."""
    match = _NEO4J_AGENT.fullmatch(agent.strip())
    if match and (int(match[1]), int(match[2])) >= _DYNAMIC_SINCE:
        return WriteShape.DYNAMIC
    return WriteShape.GROUPED


DYNAMIC_NODES: LiteralString = "UNWIND $rows AS r CREATE (n:AstNode:$(r.type)) SET n = r"


def edges_of_type(rel_type: str) -> LiteralString:
    """Relationships of one type (checked, in the text) between nodes found by key."""
    return (
        "UNWIND $rows AS r MATCH (a:AstNode {key: r.s}) MATCH (b:AstNode {key: r.t}) "
        "CREATE (a)-[e:" + cypher_name(rel_type) + "]->(b) SET e = r.props"
    )


def dynamic_rows(rows: BatchRows) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The batch's nodes as one list of maps (for DYNAMIC_NODES), its edges as maps per type."""
    nodes: list[dict[str, Any]] = []
    for (_, names), group in rows.nodes.items():
        fields = (*NODE_FIELDS, *names)
        nodes.extend(dict(zip(fields, row, strict=True)) for row in group)
    edges: dict[str, list[dict[str, Any]]] = {}
    for (rel_type, names), group in rows.edges.items():
        edges.setdefault(rel_type, []).extend(
            {"s": start, "t": end, "props": dict(zip(names, props, strict=True))} for start, end, *props in group
        )
    return nodes, edges

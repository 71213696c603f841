"""How a batch is laid out as Cypher statements over Bolt, per server: two shapes.

What a write costs depends on the server. Neo4j pays per statement, not per row: a batch
of AST nodes splits into dozens of (label, property names) groups, each a statement, and
edges matched by ``elementId`` are slower there than by key (figures in
docs/benchmark.md). ArcadeDB is the other way round: it has no dynamic labels (``$(...)``
silently creates unlabelled nodes) and matches edges by element id 3x faster.

- ``GROUPED``: a statement per (label, property names) group, the label in the query
  text after a strict check, edges matched by element id. For ArcadeDB and Neo4j < 5.26.
- ``DYNAMIC``: Neo4j 5.26 and later. All nodes in one ``UNWIND`` with the type as a
  dynamic label (a parameter: nothing of the data enters query text), then all edges in
  one more, matched by ``key`` through the unique constraint, with a ``FOREACH`` branch
  per relationship type of the batch (checked names in the text; a batch has about 34).

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


def edges_statement(rel_types: list[str]) -> LiteralString:
    """All edges of a batch in one statement: a branch per type (checked, in the text), nodes found by key.

    Measured raw on Neo4j 5.26.0, 50 files in batches of 2,000 rows, 34 types a batch at
    the median: 15,474 and 18,098 rows/s against 14,311 for a statement per type.
    """
    branches = "".join(
        " FOREACH (_ IN CASE WHEN r.type = '" + name + "' THEN [1] ELSE [] END | CREATE (a)-[e:" + name + "]->(b)"
        " SET e = r.props)"
        for name in (cypher_name(rel_type) for rel_type in sorted(rel_types))
    )
    return "UNWIND $rows AS r MATCH (a:AstNode {key: r.s}) MATCH (b:AstNode {key: r.t})" + branches


def dynamic_rows(rows: BatchRows) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The batch's nodes and edges as one list of maps each, and the edges' types (for edges_statement)."""
    nodes: list[dict[str, Any]] = []
    for (_, names), group in rows.nodes.items():
        fields = (*NODE_FIELDS, *names)
        nodes.extend(dict(zip(fields, row, strict=True)) for row in group)
    edges: list[dict[str, Any]] = []
    for (rel_type, names), group in rows.edges.items():
        edges.extend(
            {"s": start, "t": end, "type": rel_type, "props": dict(zip(names, props, strict=True))}
            for start, end, *props in group
        )
    return nodes, edges, sorted({rel_type for rel_type, _ in rows.edges})

"""How a batch is laid out as Cypher statements over Bolt, per server: two shapes.

What a write costs depends on the server (figures in docs/benchmark.md):

- ``GROUPED``: a statement per (label, property names) group, the label in the query
  text after a strict check, then a statement per (type, property names) edge group,
  the ends found by the element ids the node statements returned. For ArcadeDB (which
  accepts ``$(...)`` and silently writes unlabelled nodes) and Neo4j < 5.26.
- ``DYNAMIC``: Neo4j 5.26 and later. All nodes in one ``UNWIND`` with the type as a
  dynamic label (a parameter: nothing of the data enters query text), returning their
  element ids; then the edges, by element id, in a statement per 16 edge kinds.

Two things measured on Neo4j 5.26.0 shape the edges (raw, 50 files, 5,000 rows a batch):

- **Planning.** A statement whose text changes from batch to batch is planned again
  each time, and a statement with dozens of branches costs 0.2-0.3 s to plan: one text
  per batch's set of types (the code before) spent most of its edge time planning.
  So texts depend only on the kinds this store has seen, in the order it first saw
  them (``EdgeKinds``), never on which of them a batch holds: after the first batches
  every text is in the server's plan cache. Cold and warm, 26-28k and 28-30k rows/s,
  against 15-18k for one text per batch and 19-28k for a statement per kind.
- **Matching.** Edge ends found by element id cost a third of a lookup by key through
  the unique index, once the ids come back as two lists in one record (a record per
  node cost the Python driver more than the lookups saved).

Relationship types are not dynamic too because Neo4j 5.26.0 gets them wrong: in
``CREATE (a)-[e:$(r.type)]->(b)`` every row takes the first row's type, and so do later
runs of the same statement (seen here with CREATE, MERGE, a CALL subquery, a WITH,
``$all([...])`` and the interpreted runtime; the generated hostile-input test found it).
Dynamic node labels are right, row by row.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, LiteralString

from worker.events import StoreNames
from worker.stores.cypher import NODE_FIELDS, BatchRows, cypher_name

# "Neo4j/5.26.0", "Neo4j/2025.01.0"; ArcadeDB says "Neo4j/5.26.0 compatible (ArcadeDB ...)"
# and must not match: it accepts the dynamic syntax and writes unlabelled nodes.
_NEO4J_AGENT = re.compile(r"Neo4j/(\d+)\.(\d+)(?:\.\d+)?")
_DYNAMIC_SINCE = (5, 26)


ARCADEDB_NAMES = StoreNames(
    server="ArcadeDB",
    # Its record attributes (seen refused on 26.10; @version, @size, @class and others were stored).
    properties=frozenset({"@rid", "@type", "@out", "@in", "@cat", "@this", "@props"}),
    # Its base types (E, V, Edge, Vertex) and keywords are taken as types once quoted (cypher_name).
    # Vertex and edge types share its schema: a name used for both is refused.
    shared_namespace=True,
)


def store_names_for(agent: str) -> StoreNames | None:
    """The names the server that calls itself ``agent`` refuses beyond the contract's, if any."""
    return ARCADEDB_NAMES if "ArcadeDB" in agent else None


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


# Property names that can be written into a statement as they are (backticked all the same,
# so a name like `count` is never read as a keyword). A group with any other name (a dot,
# a space, a backslash...) sends its values as a map instead: no escaping rules to get right.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _inline(names: tuple[str, ...], offset: int = 0) -> str | None:
    """The map `` {`a`: r[0], ...}`` naming a list row's values ("" for none), or None if a name is not plain."""
    if not all(_PLAIN_NAME.fullmatch(name) for name in names):
        return None
    if not names:
        return ""
    return " {" + ", ".join(f"`{name}`: r[{offset + i}]" for i, name in enumerate(names)) + "}"


def node_statement(label: str, names: tuple[str, ...], nodes: list[list[Any]]) -> tuple[LiteralString, list[Any]]:
    """GROUPED: create one node per row and return its key and element id.

    The properties are named in the statement when they can be: the node is then written
    once, where ``SET n = r`` creates it and updates it (measured on ArcadeDB: the whole
    import about 15% faster), and the rows travel as lists, without a key per value.
    Both labels in the CREATE is also what ArcadeDB needs: it stores a multi-label node as
    one compound type, and adding a label to an existing node inside a transaction trips
    its unique index (seen on 26.10).
    """
    fields = (*NODE_FIELDS, *names)
    labels = "AstNode:" + cypher_name(label)
    properties = _inline(fields)
    if properties is None:
        query = "UNWIND $rows AS r CREATE (n:" + labels + ") SET n = r RETURN r.key AS key, elementId(n) AS id"
        return query, [dict(zip(fields, row, strict=True)) for row in nodes]
    return "UNWIND $rows AS r CREATE (n:" + labels + properties + ") RETURN r[0] AS key, elementId(n) AS id", nodes


_BY_ELEMENT_ID = "UNWIND $rows AS r MATCH (a) WHERE elementId(a) = r[0] MATCH (b) WHERE elementId(b) = r[1]"


def edge_statement(
    rel_type: str, names: tuple[str, ...], edges: list[list[Any]], element_ids: dict[str, str]
) -> tuple[LiteralString, list[Any]]:
    """GROUPED: create one relationship per row, between the two nodes the row names by element id."""
    properties = _inline(names, offset=2)
    if properties is None:
        rows: list[Any] = [
            [element_ids[s], element_ids[t], dict(zip(names, props, strict=True))] for s, t, *props in edges
        ]
        return _BY_ELEMENT_ID + " CREATE (a)-[e:" + cypher_name(rel_type) + "]->(b) SET e = r[2]", rows
    rows = [[element_ids[s], element_ids[t], *props] for s, t, *props in edges]
    return _BY_ELEMENT_ID + " CREATE (a)-[e:" + cypher_name(rel_type) + properties + "]->(b)", rows


DYNAMIC_NODES: LiteralString = (
    "UNWIND $rows AS r CREATE (n:AstNode:$(r.type)) SET n = r "
    # Both lists are collected from the same rows, so they pair up whatever the row order.
    "RETURN collect(r.key) AS keys, collect(elementId(n)) AS ids"
)


def dynamic_nodes(rows: BatchRows) -> list[dict[str, Any]]:
    """DYNAMIC: the batch's nodes as one list of maps, labels as values (for ``DYNAMIC_NODES``)."""
    nodes: list[dict[str, Any]] = []
    for (_, names), group in rows.nodes.items():
        fields = (*NODE_FIELDS, *names)
        nodes.extend(dict(zip(fields, row, strict=True)) for row in group)
    return nodes


KINDS_PER_STATEMENT = 16
"""Edge kinds a DYNAMIC edge statement covers: measured 16 against 8, 32 and 64, cold and warm."""
MAX_INLINE_KINDS = 256
"""Kinds with their property names in the statement text; past them, a type's new name sets share its map kind."""
MAX_KINDS = 4096
"""The kinds remembered at most: past them the list starts again (texts, and so plans, are made anew)."""

Kind = tuple[str, tuple[str, ...] | None]
"""A relationship type with its property names (sorted), or None: the type's properties as one map."""


class EdgeKinds:
    """DYNAMIC edges: the edge kinds a store has written, in the order first seen, and their statements.

    Kind number ``n`` is branch ``n % 16`` of the statement for kinds ``16 * (n // 16)``
    onwards. The list only grows, so a statement's text changes only while its 16 are
    being filled; then it stays in the server's plan cache whatever the batches hold.
    Each row is ``[start id, end id, branch, *properties]``, or the properties as one map
    for a map kind (a type with names that are not plain, or new names past
    ``MAX_INLINE_KINDS``). Each new kind costs a plan (about 8 ms on Neo4j 5.26, inside a
    16-kind statement), so the kinds are bounded: property names count in a kind for the
    first 256 kinds only (a producer inventing names cannot make thousands of kinds), and
    past ``MAX_KINDS`` (only a producer inventing relationship types gets there) the list
    starts again. New texts are planned before the write transaction (``unplanned``).
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._kinds: list[Kind] = []
        self._numbers: dict[Kind, int] = {}
        self._inline = 0
        self._texts: dict[tuple[int, int], LiteralString] = {}
        self._planned: set[LiteralString] = set()

    def __len__(self) -> int:
        return len(self._kinds)

    def unplanned(self, edges: dict[tuple[str, tuple[str, ...]], list[list[Any]]]) -> list[LiteralString]:
        """The texts the batch's edges need that were not planned yet; they count as planned from now on."""
        if len(self._kinds) >= MAX_KINDS:
            self._reset()
        groups = {self._number(self._kind(rel_type, names)) // KINDS_PER_STATEMENT for rel_type, names in edges}
        texts = [text for group in sorted(groups) if (text := self._text(group)) not in self._planned]
        self._planned.update(texts)
        return texts

    def statements(
        self, edges: dict[tuple[str, tuple[str, ...]], list[list[Any]]], element_ids: dict[str, str]
    ) -> list[tuple[LiteralString, list[list[Any]]]]:
        """The batch's edges as (statement, rows) pairs, one per group of 16 kinds that has rows."""
        rows_by_group: dict[int, list[list[Any]]] = {}
        for (rel_type, names), group in edges.items():
            kind = self._kind(rel_type, names)
            number = self._number(kind)
            branch = number % KINDS_PER_STATEMENT
            rows = rows_by_group.setdefault(number // KINDS_PER_STATEMENT, [])
            if kind[1] is None:
                rows.extend(
                    [element_ids[s], element_ids[t], branch, dict(zip(names, p, strict=True))] for s, t, *p in group
                )
            else:
                rows.extend([element_ids[s], element_ids[t], branch, *p] for s, t, *p in group)
        return [(self._text(group), rows) for group, rows in sorted(rows_by_group.items())]

    def _kind(self, rel_type: str, names: tuple[str, ...]) -> Kind:
        kind: Kind = (rel_type, names)
        if kind in self._numbers:
            return kind
        if names and (self._inline >= MAX_INLINE_KINDS or _inline(names) is None):
            return rel_type, None
        return kind

    def _number(self, kind: Kind) -> int:
        number = self._numbers.get(kind)
        if number is None:
            cypher_name(kind[0])  # a name the text cannot take is refused before it is kept
            number = self._numbers[kind] = len(self._kinds)
            self._kinds.append(kind)
            self._inline += kind[1] is not None
        return number

    def _text(self, group: int) -> LiteralString:
        kinds = self._kinds[group * KINDS_PER_STATEMENT : (group + 1) * KINDS_PER_STATEMENT]
        text = self._texts.get((group, len(kinds)))
        if text is None:
            text = _BY_ELEMENT_ID + "".join(_branch(branch, kind) for branch, kind in enumerate(kinds))
            self._texts[group, len(kinds)] = text
        return text


def _branch(branch: int, kind: Kind) -> LiteralString:
    """One kind's CREATE, taken by the rows whose third value is ``branch``."""
    rel_type, names = cypher_name(kind[0]), kind[1]
    properties = None if names is None else _inline(names, offset=3)
    create = (
        "CREATE (a)-[e:" + rel_type + (properties or "") + "]->(b)" + (" SET e = r[3]" if properties is None else "")
    )
    # The branch number is an int formatted by this module, never data.
    when: LiteralString = str(branch)  # type: ignore[assignment,unused-ignore]
    return " FOREACH (_ IN CASE WHEN r[2] = " + when + " THEN [1] ELSE [] END | " + create + ")"

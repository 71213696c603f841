"""What every Cypher graph backend shares: node keys, safe names, and a batch as UNWIND rows.

The graph model is the same on every backend: an AST node carries the label ``AstNode``
plus its type as a second label, and the properties ``key`` (the JSON array
``["<source_id>", "<node_id>"]``, unique), ``source_id``, ``node_id``, ``type`` and
``source_version``. Intents are ``(:Intent {id})`` nodes with ``IMPLEMENTED_BY``
relationships to AST nodes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, LiteralString

import orjson
from opentelemetry import trace

from worker.errors import StoreRejected
from worker.events import CYPHER_NAME
from worker.ports import GraphChanges, LinkRow

_tracer = trace.get_tracer("graph_postgres_manager.graph")


def statement_span(system: str, query: str, rows: int) -> AbstractContextManager[trace.Span]:
    """A client span per graph statement: a slow label or a lock wait shows up by itself in a trace."""
    return _tracer.start_as_current_span(
        "graph statement",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "db.system.name": system,
            "db.query.text": query,  # parameterised: no values in it
            "db.operation.batch.size": rows,
        },
    )


def node_key(source_id: str, node_id: str) -> str:
    """The unique key of an AST node in the graph.

    A JSON array is unambiguous whatever the ids contain. (A control-character separator
    would be too, but ArcadeDB corrupts such strings in its unique index.)
    """
    return orjson.dumps([source_id, node_id]).decode()


def cypher_name(value: str) -> LiteralString:
    """Check a label/relationship type once more right where it enters query text, and quote it.

    Backticks always: a name that is a keyword (``MATCH``, ``DELETE``) is then a name on
    every server (ArcadeDB refused the label ``MATCH`` unquoted); the pattern admits no backtick.
    """
    if not CYPHER_NAME.fullmatch(value):
        msg = f"unsafe Cypher name {value!r}"
        raise StoreRejected(msg)
    # mypy treats LiteralString as str; type checkers that track it accept this after the check.
    return "`" + value + "`"  # type: ignore[return-value,unused-ignore]


_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def checked_parameters(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Query parameters whose names are plain identifiers, or StoreRejected.

    FalkorDB takes parameters as ``CYPHER name=value`` text in front of the query, so a
    name is query text there: ``a=1 MATCH (n) DETACH DELETE n //`` would run. Both
    adapters check names here, so a name means the same on every backend.
    """
    for name in params or {}:
        if not isinstance(name, str) or not _PARAMETER_NAME.fullmatch(name):
            msg = f"unsafe query parameter name {name!r} (letters, digits and '_', not starting with a digit)"
            raise StoreRejected(msg)
    return dict(params or {})


# The service's own properties of every AST node, in the order they lead each node row.
NODE_FIELDS = ("key", "source_id", "node_id", "type", "source_version")


@dataclass(slots=True)
class BatchRows:
    """One batch's graph changes as the rows its UNWIND statements take, in write order.

    1. ``rewritten``: sources whose old nodes (and their edges) are deleted first: a new
       version replaces a source's graph as a whole;
    2. ``nodes``: the new nodes, grouped by (type label, property names); each row is a
       list of values: ``NODE_FIELDS`` then the properties in the group's name order;
    3. ``edges``: grouped by (relationship type, property names); each row is
       ``[start key, end key, *properties]``;
    4. ``gone_intents``: intents deleted with their links;
    5. ``intents`` (``{"id", "v"}``): intents upserted, their old links dropped;
    6. ``links`` (``{"i", "intent", "key"}``): intent links wanted, ``i`` indexing ``wanted``.

    Rows are value lists rather than maps: a batch holds hundreds of thousands of values,
    and lists are cheaper to build, to pack for Bolt and to write for FalkorDB.
    """

    rewritten: list[str] = field(default_factory=list)
    nodes: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    edges: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    gone_intents: list[str] = field(default_factory=list)
    intents: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    wanted: list[LinkRow] = field(default_factory=list)


def _present(properties: dict[str, Any]) -> dict[str, Any]:
    """Properties without their None values (absent, as in Neo4j)."""
    if None in properties.values():
        return {k: v for k, v in properties.items() if v is not None}
    return properties


class _Canonical:
    """Property names in one order (sorted), whatever order a producer wrote them in.

    A group (and on Neo4j an edge kind, each a plan) is keyed by its names: in producer
    order, 5,040 orderings of the same 7 names were 5,040 kinds. The sorted order of each
    name tuple seen is remembered, so a row costs a dict lookup (producers keep an order).
    """

    def __init__(self) -> None:
        self._orders: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[int, ...] | None]] = {}

    def __call__(self, props: dict[str, Any]) -> tuple[tuple[str, ...], list[Any]]:
        names = tuple(props)
        order = self._orders.get(names)
        if order is None:
            canonical = tuple(sorted(names))
            permutation = None if canonical == names else tuple(names.index(name) for name in canonical)
            order = self._orders[names] = (canonical, permutation)
        canonical, permutation = order
        values = list(props.values())
        return canonical, values if permutation is None else [values[i] for i in permutation]


def batch_rows(changes: GraphChanges) -> BatchRows:
    """Lay out a batch's changes as UNWIND rows (no I/O; labels are checked where used).

    Property names come in sorted order (``_Canonical``): the same names in any order are
    one group.
    """
    rows = BatchRows()
    canonical = _Canonical()
    rows.rewritten = [e.source_id for e in (*changes.upserts, *changes.deletes)]
    for event in changes.upserts:
        source_id, version = event.source_id, event.source_version
        # node_key, with the source's half encoded once per source instead of once per node.
        prefix = "[" + orjson.dumps(source_id).decode() + ","
        keys: dict[str, str] = {}
        for node in event.graph.nodes:
            node_id, label = node["id"], node["type"]
            key = keys[node_id] = prefix + orjson.dumps(node_id).decode() + "]"
            names, values = canonical(_present(node["properties"]))
            rows.nodes[label, names].append([key, source_id, node_id, label, version, *values])
        for edge in event.graph.edges:
            names, values = canonical(_present(edge["properties"]))
            rows.edges[edge["type"], names].append([keys[edge["source"]], keys[edge["target"]], *values])
    rows.gone_intents = [str(e.intent_id) for e in changes.intent_deletes]
    rows.intents = [{"id": str(e.intent_id), "v": e.source_version} for e in changes.intent_upserts]
    # Links to nodes not (yet) in the graph match nothing; PostgreSQL keeps them and the
    # source's next upsert re-attaches them (see GraphChanges.relinks).
    rows.wanted = [
        LinkRow(e.intent_id, ref.source_id, ref.node_id) for e in changes.intent_upserts for ref in e.ast_nodes
    ]
    rows.wanted += changes.relinks
    rows.links = [
        {"i": n, "intent": str(r.intent_id), "key": node_key(r.source_id, r.node_id)} for n, r in enumerate(rows.wanted)
    ]
    return rows

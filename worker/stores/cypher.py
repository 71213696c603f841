"""What every Cypher graph backend shares: node keys, safe names, and a batch as UNWIND rows.

The graph model is the same on every backend: an AST node carries the label ``AstNode``
plus its type as a second label, and the properties ``key`` (the JSON array
``["<source_id>", "<node_id>"]``, unique), ``source_id``, ``node_id``, ``type`` and
``source_version``. Intents are ``(:Intent {id})`` nodes with ``IMPLEMENTED_BY``
relationships to AST nodes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, LiteralString

import orjson

from worker.errors import StoreRejected
from worker.events import CYPHER_NAME
from worker.saga.plan import GraphChanges, LinkRow


def node_key(source_id: str, node_id: str) -> str:
    """The unique key of an AST node in the graph.

    A JSON array is unambiguous whatever the ids contain. (A control-character separator
    would be too, but ArcadeDB corrupts such strings in its unique index.)
    """
    return orjson.dumps([source_id, node_id]).decode()


def cypher_name(value: str) -> LiteralString:
    """Check a label/relationship type once more right where it enters query text."""
    if not CYPHER_NAME.match(value):
        msg = f"unsafe Cypher name {value!r}"
        raise StoreRejected(msg)
    # mypy treats LiteralString as str; type checkers that track it accept this after the check.
    return value  # type: ignore[return-value,unused-ignore]


@dataclass(slots=True)
class BatchRows:
    """One batch's graph changes as the row lists its UNWIND statements take, in write order.

    1. ``rewritten``: sources whose old nodes (and their edges) are deleted first: a new
       version replaces a source's graph as a whole;
    2. ``nodes``: the new nodes, by type label (full property maps, ``key`` included);
    3. ``edges``: by relationship type, ``{"s": key, "t": key, "props": {...}}``;
    4. ``gone_intents``: intents deleted with their links;
    5. ``intents`` (``{"id", "v"}``): intents upserted, their old links dropped;
    6. ``links`` (``{"i", "intent", "key"}``): intent links wanted, ``i`` indexing ``wanted``.
    """

    rewritten: list[str] = field(default_factory=list)
    nodes: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    edges: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    gone_intents: list[str] = field(default_factory=list)
    intents: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    wanted: list[LinkRow] = field(default_factory=list)


def batch_rows(changes: GraphChanges) -> BatchRows:
    """Lay out a batch's changes as UNWIND rows (no I/O; labels are checked where used)."""
    rows = BatchRows()
    rows.rewritten = [e.source_id for e in (*changes.upserts, *changes.deletes)]
    for event in changes.upserts:
        for node in event.graph.nodes:
            props: dict[str, Any] = {k: v for k, v in node.properties.items() if v is not None}
            props.update(
                key=node_key(event.source_id, node.id),
                source_id=event.source_id,
                node_id=node.id,
                type=node.type,
                source_version=event.source_version,
            )
            rows.nodes[node.type].append(props)
        for edge in event.graph.edges:
            rows.edges[edge.type].append(
                {
                    "s": node_key(event.source_id, edge.source),
                    "t": node_key(event.source_id, edge.target),
                    "props": {k: v for k, v in edge.properties.items() if v is not None},
                }
            )
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

"""Reading both stores in a repeatable order: what a backup writes and a restore re-checks.

The graph is read as the service models it: AST nodes by their unique ``key``, intents by
their ``id``, each with the relationships that start at it. Nodes of other labels are not
the service's and are not part of a snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from worker.ports import SnapshotGraph
from worker.snapshot.archive import Digest, MemberDigest
from worker.stores.postgres import TableSnapshot

# (stage, done, total or None): how the long operations report progress.
ProgressFn = Callable[[str, int, int | None], None]


def no_progress(stage: str, done: int, total: int | None) -> None:
    """The default: report nothing."""


@dataclass(frozen=True, slots=True)
class NodeKind:
    """A label the service owns, the property that identifies its nodes, and its members."""

    label: str
    key: str
    member: str

    @property
    def nodes_member(self) -> str:
        """The member with the nodes."""
        return f"graph/{self.member}_nodes.jsonl.gz"

    @property
    def edges_member(self) -> str:
        """The member with the relationships starting at these nodes."""
        return f"graph/{self.member}_edges.jsonl.gz"


NODE_KINDS = (NodeKind("AstNode", "key", "ast"), NodeKind("Intent", "id", "intent"))
# In restore order (links after the intents they reference), each with its primary key.
TABLES = (
    ("gpm_sources", "source_id"),
    ("gpm_intents", "intent_id"),
    ("gpm_intent_links", "intent_id, source_id, node_id"),
    ("gpm_outbox", "batch_id"),
    ("gpm_processed_events", "event_id"),
)


def table_member(table: str) -> str:
    """The member with a table's rows."""
    return f"postgres/{table}.tsv.gz"


class MemberSink(Protocol):
    """Where dumped members go: files of a snapshot, or digests only."""

    def member(self, name: str) -> AbstractContextManager[Digest]:
        """A member to write."""


class Fingerprint:
    """A sink that keeps only each member's digest (to compare a restore with its snapshot)."""

    def __init__(self) -> None:
        self.members: dict[str, MemberDigest] = {}

    @contextmanager
    def member(self, name: str) -> Iterator[Digest]:
        """A hash-only member."""
        digest = Digest()
        yield digest
        self.members[name] = digest.close()


def _edge_order(edge: dict[str, Any]) -> tuple[str, str, str, bytes]:
    return edge["start"], edge["type"], edge["end"], orjson.dumps(edge["props"], option=orjson.OPT_SORT_KEYS)


async def node_pages(
    graph: SnapshotGraph, kind: NodeKind, page_size: int
) -> AsyncIterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each page of a kind's nodes with the relationships starting at them, both in a stable order."""
    async for rows in graph.nodes(kind.label, kind.key, page_size):
        nodes = [{"labels": sorted(r["labels"]), "props": r["props"]} for r in rows]
        ids = [r["props"][kind.key] for r in rows]
        edges = sorted(await graph.edges_from(kind.label, kind.key, ids), key=_edge_order)
        yield nodes, edges


async def dump_graph(graph: SnapshotGraph, sink: MemberSink, page_size: int, progress: ProgressFn) -> dict[str, int]:
    """Write every kind's nodes and relationships; return the node count per label."""
    counts: dict[str, int] = {}
    for kind in NODE_KINDS:
        total = await graph.count(kind.label)
        done = 0
        with sink.member(kind.nodes_member) as nodes, sink.member(kind.edges_member) as edges:
            async for page, page_edges in node_pages(graph, kind, page_size):
                nodes.write_json_lines(page)
                edges.write_json_lines(page_edges)
                done += len(page)
                progress(f"graph {kind.label} nodes", done, max(total, done))
        progress(f"graph {kind.label} nodes", done, done)
        counts[kind.label] = done
    return counts


async def dump_tables(
    tables: TableSnapshot, sink: MemberSink, progress: ProgressFn, columns: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """Copy every table out (with ``columns``, or all of its columns); return the columns used."""
    used: dict[str, list[str]] = {}
    for done, (table, order_by) in enumerate(TABLES, start=1):
        used[table] = columns[table] if columns else await tables.columns(table)
        with sink.member(table_member(table)) as rows:
            await tables.copy_out(table, used[table], order_by, rows.write_async)
        progress("postgres tables", done, len(TABLES))
    return used

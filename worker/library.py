"""The library face: ``GraphPostgresManager`` for programs that call the stores directly.

It writes through the same saga as the worker (outbox row, one graph transaction, the
relational rows, the processed-event ledger, the version guard), so what a library call
stores is indistinguishable from what an event stores, and the two can be mixed::

    async with GraphPostgresManager(load_settings()) as gpm:
        await gpm.store_ast_graph({"nodes": [{"id": "m", "type": "Module"}]}, "a.py")
        rows = await gpm.query_unified(
            UnifiedQuery("MATCH (n:AstNode) RETURN n.source_id AS source_id, count(n) AS nodes",
                         "SELECT source_id, source_version FROM gpm_sources", join_on="source_id"))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString, Self
from uuid import UUID, uuid4

from worker.config import Settings, load_settings
from worker.deadletter import DeadLetter
from worker.errors import GpmError, StoreError, StoreRejected
from worker.events import (
    AstGraphUpserted,
    AstNodeRef,
    Envelope,
    EventType,
    GraphData,
    IntentLinkUpserted,
    encode_event,
)
from worker.saga.coordinator import SagaCoordinator
from worker.saga.plan import InboundEvent, Outcome, Position
from worker.snapshot.backup import take_backup
from worker.snapshot.dump import ProgressFn, no_progress
from worker.snapshot.export import ExportFormat, export_graph
from worker.snapshot.restore import restore_backup
from worker.stores.neo4j import Neo4jGraphStore
from worker.stores.postgres import PostgresRelationalStore

PRODUCER = "graph-postgres-manager-library"
# Library writes have no Kafka position; the ledger records them under this pseudo-topic.
LIBRARY_TOPIC = "library"


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What became of one stored graph or intent link."""

    source_id: str
    version: int
    outcome: Outcome
    nodes_written: int = 0
    edges_written: int = 0


@dataclass(frozen=True, slots=True)
class BatchImportResult:
    """A batch import's totals."""

    graphs: int
    nodes_written: int
    edges_written: int
    seconds: float

    @property
    def nodes_per_s(self) -> float:
        """Nodes written per second."""
        return self.nodes_written / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class UnifiedQuery:
    """A Cypher pattern and a SQL query, run concurrently and joined on one column."""

    graph_pattern: LiteralString
    postgres_filter: str
    join_on: str
    graph_params: Mapping[str, Any] = field(default_factory=dict)
    postgres_params: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class StorageStats:
    """Sizes of both stores."""

    sources: int
    graph_nodes: int
    graph_relationships: int
    intents: int
    intent_links: int
    parked_links: int
    outbox: dict[str, int]


@dataclass(frozen=True, slots=True)
class ConsistencyReport:
    """Where the two stores disagree; empty lists mean they agree."""

    # Sources whose node count in the graph differs from the registry's: (source, registry, graph).
    count_mismatches: list[tuple[str, int, int]]
    graph_without_registry: list[str]  # sources with nodes in the graph but no live registry row
    registry_without_graph: list[str]  # live registry rows with nodes whose graph is missing
    parked_links: int  # intent links whose AST node is missing (waiting, see the worker's bound)
    stuck_outbox: list[str]  # batch ids 'pending' for longer than the threshold

    @property
    def consistent(self) -> bool:
        """True when nothing disagrees (parked links are a waiting state, not a disagreement)."""
        return not (
            self.count_mismatches or self.graph_without_registry or self.registry_without_graph or self.stuck_outbox
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot file and its manifest (format, versions, members with rows and SHA-256)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def nodes(self) -> dict[str, int]:
        """Graph nodes per label."""
        counts: dict[str, int] = self.manifest["graph"]["nodes"]
        return counts

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        """Each member's rows and checksum."""
        members: dict[str, dict[str, Any]] = self.manifest["members"]
        return members


class _RaisingDeadLetters:
    """A library caller gets the store's rejection as an exception, not a dead letter."""

    async def send(self, letter: DeadLetter) -> None:
        raise StoreRejected(letter.detail)


class GraphPostgresManager:
    """Both stores behind one async context manager; every write goes through the saga."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self._relational: PostgresRelationalStore | None = None
        self._graph: Neo4jGraphStore | None = None
        self._saga: SagaCoordinator | None = None

    async def __aenter__(self) -> Self:
        s = self.settings
        self._relational = await PostgresRelationalStore.connect(s.postgres)
        self._graph = Neo4jGraphStore.connect(s.graph, s.worker.transaction_size)
        try:
            await self._relational.migrate()
            await self._graph.migrate()
        except BaseException:
            await self.close()
            raise
        self._saga = SagaCoordinator(self._relational, self._graph, _RaisingDeadLetters(), s.worker)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Release both pools."""
        if self._graph is not None:
            await self._graph.close()
        if self._relational is not None:
            await self._relational.close()
        self._graph = self._relational = self._saga = None

    def _stores(self) -> tuple[PostgresRelationalStore, Neo4jGraphStore, SagaCoordinator]:
        if self._relational is None or self._graph is None or self._saga is None:
            msg = "GraphPostgresManager is not open: use `async with GraphPostgresManager(...) as gpm:`"
            raise GpmError(msg)
        return self._relational, self._graph, self._saga

    async def store_ast_graph(
        self, graph: GraphData | Mapping[str, Any], source_id: str, *, version: int | None = None
    ) -> StoreResult:
        """Store one source's graph (replacing its previous version); ``version`` defaults to the next one."""
        result = await self._apply([await self._graph_event(graph, source_id, version)])
        return result[0]

    async def batch_import_graphs(
        self,
        graphs: Iterable[tuple[str, GraphData | Mapping[str, Any]]],
        transaction_size: int = 1000,
        on_progress: Callable[[int], None] | None = None,
    ) -> BatchImportResult:
        """Store many sources' graphs in saga batches of about ``transaction_size`` graph rows."""
        started = time.perf_counter()
        batch: list[Envelope] = []
        rows = graphs_done = nodes = edges = 0
        for source_id, graph in graphs:
            event = await self._graph_event(graph, source_id, None)
            if batch and rows + event.rows > transaction_size:
                results = await self._apply(batch)
                nodes, edges = (
                    nodes + sum(r.nodes_written for r in results),
                    edges + sum(r.edges_written for r in results),
                )
                graphs_done += len(batch)
                if on_progress is not None:
                    on_progress(graphs_done)
                batch, rows = [], 0
            batch.append(event)
            rows += event.rows
        if batch:
            results = await self._apply(batch)
            nodes, edges = nodes + sum(r.nodes_written for r in results), edges + sum(r.edges_written for r in results)
            graphs_done += len(batch)
            if on_progress is not None:
                on_progress(graphs_done)
        return BatchImportResult(graphs_done, nodes, edges, time.perf_counter() - started)

    async def link_intent_to_ast(
        self, intent_id: UUID, ast_nodes: Iterable[tuple[str, str] | AstNodeRef], *, version: int | None = None
    ) -> StoreResult:
        """Map an intent to exactly these AST nodes (replacing its earlier links)."""
        relational, _, _ = self._stores()
        refs = [n if isinstance(n, AstNodeRef) else AstNodeRef(source_id=n[0], node_id=n[1]) for n in ast_nodes]
        if version is None:
            current = await relational.fetch("SELECT source_version FROM gpm_intents WHERE intent_id = $1", intent_id)
            version = (current[0]["source_version"] + 1) if current else 1
        event = IntentLinkUpserted(
            event_id=uuid4(),
            event_type=EventType.INTENT_LINK_UPSERTED,
            source_id=str(intent_id),
            source_version=version,
            occurred_at=datetime.now(UTC),
            producer=PRODUCER,
            ast_nodes=refs,
        )
        return (await self._apply([event]))[0]

    async def query_neo4j(self, cypher: LiteralString, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """A read query on the graph store."""
        _, graph, _ = self._stores()
        return await graph.query(cypher, dict(params or {}))

    async def query_postgres(self, sql: str, *params: object) -> list[dict[str, Any]]:
        """A read query on PostgreSQL ($1, $2... placeholders)."""
        relational, _, _ = self._stores()
        return await relational.fetch(sql, *params)

    async def query_unified(self, query: UnifiedQuery) -> list[dict[str, Any]]:
        """Run both sides concurrently; return graph rows merged with the PostgreSQL row of the same key."""
        graph_rows, sql_rows = await asyncio.gather(
            self.query_neo4j(query.graph_pattern, query.graph_params),
            self.query_postgres(query.postgres_filter, *query.postgres_params),
        )
        by_key = {row[query.join_on]: row for row in sql_rows}
        return [{**by_key[row[query.join_on]], **row} for row in graph_rows if row.get(query.join_on) in by_key]

    async def health_check(self) -> dict[str, str]:
        """'ok' or the error, per store."""
        relational, graph, _ = self._stores()
        checks: dict[str, str] = {}
        for name, ping in (("postgres", relational.ping), ("graph", graph.ping)):
            try:
                await ping()
            except StoreError as exc:
                checks[name] = f"unavailable: {exc}"
            else:
                checks[name] = "ok"
        return checks

    async def get_storage_stats(self) -> StorageStats:
        """Counts from both stores."""
        relational, graph, _ = self._stores()
        counts = (
            await relational.fetch(
                """SELECT (SELECT count(*) FROM gpm_sources WHERE NOT deleted) AS sources,
                          (SELECT count(*) FROM gpm_intents WHERE NOT deleted) AS intents,
                          (SELECT count(*) FROM gpm_intent_links) AS links,
                          (SELECT count(*) FROM gpm_intent_links WHERE parked_since IS NOT NULL) AS parked"""
            )
        )[0]
        outbox = await relational.fetch("SELECT state, count(*) AS n FROM gpm_outbox GROUP BY state")
        nodes = await graph.query("MATCH (n) RETURN count(n) AS n")
        rels = await graph.query("MATCH ()-[r]->() RETURN count(r) AS n")
        return StorageStats(
            sources=counts["sources"],
            graph_nodes=nodes[0]["n"],
            graph_relationships=rels[0]["n"],
            intents=counts["intents"],
            intent_links=counts["links"],
            parked_links=counts["parked"],
            outbox={r["state"]: r["n"] for r in outbox},
        )

    async def check_data_consistency(self, stuck_after_s: float = 600) -> ConsistencyReport:
        """Compare the registry with the graph, count parked links, find outbox rows stuck 'pending'."""
        relational, graph, _ = self._stores()
        graph_rows, registry_rows, parked, stuck = await asyncio.gather(
            graph.query("MATCH (n:AstNode) RETURN n.source_id AS source_id, count(n) AS nodes"),
            relational.fetch("SELECT source_id, node_count FROM gpm_sources WHERE NOT deleted"),
            relational.parked_links(older_than_s=0, sample=0),
            relational.fetch(
                """SELECT batch_id::text AS batch_id FROM gpm_outbox WHERE state = 'pending'
                   AND updated_at < now() - make_interval(secs => $1) ORDER BY updated_at""",
                stuck_after_s,
            ),
        )
        in_graph = {r["source_id"]: r["nodes"] for r in graph_rows}
        registry = {r["source_id"]: r["node_count"] for r in registry_rows}
        return ConsistencyReport(
            count_mismatches=sorted(
                (s, n, in_graph[s]) for s, n in registry.items() if s in in_graph and in_graph[s] != n
            ),
            graph_without_registry=sorted(set(in_graph) - set(registry)),
            registry_without_graph=sorted(s for s, n in registry.items() if n and s not in in_graph),
            parked_links=parked.parked,
            stuck_outbox=[r["batch_id"] for r in stuck],
        )

    async def backup(self, path: Path | str, *, settle_s: float = 30.0, progress: ProgressFn | None = None) -> Snapshot:
        """Write one consistent snapshot of both stores to ``path`` (writes wait meanwhile)."""
        relational, graph, _ = self._stores()
        manifest = await take_backup(
            relational,
            graph,
            Path(path),
            database=self.settings.graph.database,
            settle_s=settle_s,
            progress=progress or no_progress,
        )
        return Snapshot(Path(path), manifest)

    async def restore(self, path: Path | str, *, verify: bool = True, progress: ProgressFn | None = None) -> Snapshot:
        """Load a snapshot into empty stores; with ``verify``, read both back and compare checksums."""
        relational, graph, _ = self._stores()
        manifest = await restore_backup(
            relational,
            graph,
            Path(path),
            chunk_size=self.settings.worker.transaction_size,
            verify=verify,
            progress=progress or no_progress,
        )
        return Snapshot(Path(path), manifest)

    async def export_snapshot(
        self,
        path: Path | str,
        export_format: ExportFormat | str = ExportFormat.JSONL,
        *,
        progress: ProgressFn | None = None,
    ) -> tuple[int, int]:
        """Export the graph as JSON lines or NetworkX node-link JSON; return (nodes, relationships)."""
        _, graph, _ = self._stores()
        return await export_graph(graph, Path(path), ExportFormat(export_format), progress=progress or no_progress)

    async def _graph_event(
        self, graph: GraphData | Mapping[str, Any], source_id: str, version: int | None
    ) -> AstGraphUpserted:
        relational, _, _ = self._stores()
        if version is None:
            current = await relational.fetch("SELECT source_version FROM gpm_sources WHERE source_id = $1", source_id)
            version = (current[0]["source_version"] + 1) if current else 1
        # Validated like any event: unsafe labels, dangling edges and duplicates raise here.
        return AstGraphUpserted.model_validate(
            {
                "event_id": uuid4(),
                "event_type": EventType.AST_GRAPH_UPSERTED,
                "source_id": source_id,
                "source_version": version,
                "occurred_at": datetime.now(UTC),
                "producer": PRODUCER,
                "graph": graph,
            }
        )

    async def _apply(self, events: list[Envelope]) -> list[StoreResult]:
        _, _, saga = self._stores()
        items = [
            InboundEvent(
                event=e,  # type: ignore[arg-type]  # the Event union's members
                position=Position(LIBRARY_TOPIC, 0, -1),
                raw=encode_event(e),
                key=e.source_id.encode(),
            )
            for e in events
        ]
        outcomes = (await saga.apply(items)).events
        return [
            StoreResult(
                source_id=item.event.source_id,
                version=item.event.source_version,
                outcome=outcome,
                nodes_written=len(item.event.graph.nodes)
                if isinstance(item.event, AstGraphUpserted) and outcome is Outcome.APPLIED
                else 0,
                edges_written=len(item.event.graph.edges)
                if isinstance(item.event, AstGraphUpserted) and outcome is Outcome.APPLIED
                else 0,
            )
            for item, outcome in outcomes
        ]

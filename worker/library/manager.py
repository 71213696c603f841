"""``GraphPostgresManager``: both stores behind one async context manager, writing through the saga."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString, Self, TypeGuard
from uuid import UUID, uuid4

import structlog
from pydantic import ValidationError

from worker.compose import open_graph, open_relational
from worker.compose import transaction_size as batch_rows
from worker.config import Settings, load_settings
from worker.deadletter import DeadLetter
from worker.errors import EventError, GpmError, OperationRefused, StoreError, StoreRejected
from worker.events import (
    AstGraphUpserted,
    AstNodeRef,
    Envelope,
    EventType,
    GraphData,
    IntentLinkUpserted,
    describe_errors,
    encode_event,
)
from worker.library.consistency import find_inconsistencies, repair_inconsistencies
from worker.library.records import (
    BatchImportResult,
    ConsistencyReport,
    PerformanceMetrics,
    Snapshot,
    StorageStats,
    StoreResult,
    UnifiedQuery,
)
from worker.ports import GraphBackend, InboundEvent, Outcome, Position
from worker.preflight import PreflightReport, run_preflight
from worker.saga.coordinator import SagaCoordinator
from worker.snapshot.backup import take_backup
from worker.snapshot.dump import ProgressFn, no_progress
from worker.snapshot.export import ExportFormat, export_graph
from worker.snapshot.restore import restore_backup
from worker.stores.postgres import PostgresRelationalStore
from worker.telemetry import metrics, percentile

log = structlog.get_logger(__name__)
PRODUCER = "graph-postgres-manager-library"
# Library writes have no Kafka position; the ledger records them under this pseudo-topic.
LIBRARY_TOPIC = "library"


def _ms_percentiles(q: float) -> dict[str, float]:
    found = {store: percentile(list(samples), q) for store, samples in metrics.recent_queries.items()}
    return {store: round(value * 1000, 3) for store, value in found.items() if value is not None}


@contextmanager
def _as_event_error() -> Iterator[None]:
    """What the caller passed, refused as an EventError (a GpmError), whatever broke on it."""
    try:
        yield
    except ValidationError as exc:
        raise EventError("invalid", describe_errors(exc)) from None
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise EventError("invalid", f"{type(exc).__name__}: {exc}") from None


def _pair(node: tuple[str, str] | AstNodeRef) -> tuple[str, str]:
    return (node.source_id, node.node_id) if isinstance(node, AstNodeRef) else (node[0], node[1])


class Transaction:
    """Writes collected by :meth:`GraphPostgresManager.transaction`, applied together at its end."""

    def __init__(self, manager: GraphPostgresManager) -> None:
        self._manager = manager
        self.events: list[Envelope] = []
        self.results: list[StoreResult] = []  # filled when the block ends
        # Per kind: a source and an intent may share an id string.
        self._versions: dict[tuple[str, str], int] = {}

    async def store_ast_graph(self, graph: GraphData | Mapping[str, Any], source_id: str) -> None:
        """Add a source's graph (its next version) to the transaction."""
        version = self._versions.get(("source", source_id))
        event = await self._manager._graph_event(graph, source_id, None if version is None else version + 1)  # noqa: SLF001
        self._add(event)

    async def link_intent_to_ast(self, intent_id: UUID, ast_nodes: Iterable[tuple[str, str] | AstNodeRef]) -> None:
        """Add an intent's links (its next version) to the transaction."""
        version = self._versions.get(("intent", str(intent_id)))
        event = await self._manager._intent_event(intent_id, ast_nodes, None if version is None else version + 1)  # noqa: SLF001
        self._add(event)

    def _add(self, event: AstGraphUpserted | IntentLinkUpserted) -> None:
        # A second write of the same source in one transaction is its next version, so it wins.
        kind = "intent" if isinstance(event, IntentLinkUpserted) else "source"
        self._versions[kind, event.source_id] = event.source_version
        self.events.append(event)


class _RaisingDeadLetters:
    """A library caller gets the store's rejection as an exception, not a dead letter."""

    async def send(self, letter: DeadLetter) -> None:
        raise StoreRejected(letter.detail)


class GraphPostgresManager:
    """Both stores behind one async context manager; every write goes through the saga."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self._relational: PostgresRelationalStore | None = None
        self._graph: GraphBackend | None = None
        self._saga: SagaCoordinator | None = None

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def _open(self) -> None:
        s = self.settings
        self._relational = await open_relational(s)
        self._graph = open_graph(s)
        try:
            if s.worker.preflight:
                (await run_preflight(self._relational, self._graph)).raise_for_failures()
            await self._relational.migrate()
            await self._graph.migrate()
        except BaseException:
            await self.close()
            raise
        self._saga = SagaCoordinator(self._relational, self._graph, _RaisingDeadLetters(), s.worker)

    async def reconnect(self) -> None:
        """Close both pools and open them again (after a failover, or new credentials in the settings)."""
        await self.close()
        await self._open()

    async def preflight(self) -> PreflightReport:
        """Server versions and the users' rights, checked again now."""
        relational, graph, _ = self._stores()
        return await run_preflight(relational, graph)

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

    def _stores(self) -> tuple[PostgresRelationalStore, GraphBackend, SagaCoordinator]:
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
        transaction_size: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> BatchImportResult:
        """Store many sources' graphs in saga batches of about ``transaction_size`` graph rows.

        Unset: the settings' (``worker.transaction_size``, else the graph backend's figure).
        """
        started = time.perf_counter()
        rows_per_batch = transaction_size or batch_rows(self.settings)
        batch: list[Envelope] = []
        rows = graphs_done = nodes = edges = 0
        for source_id, graph in graphs:
            event = await self._graph_event(graph, source_id, None)
            if batch and rows + event.rows > rows_per_batch:
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
        return (await self._apply([await self._intent_event(intent_id, ast_nodes, version)]))[0]

    async def manage_intent_relations(
        self,
        intent_id: UUID,
        add: Iterable[tuple[str, str] | AstNodeRef] = (),
        remove: Iterable[tuple[str, str] | AstNodeRef] = (),
    ) -> StoreResult:
        """Change an intent's links incrementally: its current links, plus ``add``, minus ``remove``.

        The current links are read from PostgreSQL and the result is written as the intent's
        next version; if another writer got there first, the outcome is SUPERSEDED and
        nothing changed (read again and retry).
        """
        relational, _, _ = self._stores()
        current, links = await relational.current_links(intent_id)
        version = None if current is None else current + 1
        with _as_event_error():
            links |= {_pair(n) for n in add}
            links -= {_pair(n) for n in remove}
        return await self.link_intent_to_ast(intent_id, sorted(links), version=version)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Collect writes and apply them together as one saga batch when the block ends.

        All or nothing: one outbox row, one graph transaction, one PostgreSQL transaction.
        If the block raises, or a store rejects any of the writes, nothing is written.
        """
        tx = Transaction(self)
        yield tx
        tx.results = await self._apply(tx.events, isolate=False)

    async def query_neo4j(self, cypher: LiteralString, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """A read query on the graph store: one that writes is refused (OperationRefused) and undone."""
        _, graph, _ = self._stores()
        started = time.perf_counter()
        try:
            return await graph.read_query(cypher, dict(params or {}))
        finally:
            metrics.record_query("graph", time.perf_counter() - started)

    async def query_postgres(self, sql: str, *params: object) -> list[dict[str, Any]]:
        """A read query on PostgreSQL ($1, $2... placeholders), in a READ ONLY transaction."""
        relational, _, _ = self._stores()
        started = time.perf_counter()
        try:
            return await relational.fetch_read_only(sql, *params)
        finally:
            metrics.record_query("postgres", time.perf_counter() - started)

    async def query_unified(self, query: UnifiedQuery) -> list[dict[str, Any]]:
        """Run both sides concurrently; return graph rows merged with the PostgreSQL row of the same key."""
        graph_rows, sql_rows = await asyncio.gather(
            self.query_neo4j(query.graph_pattern, query.graph_params),
            self.query_postgres(query.postgres_filter, *query.postgres_params),
        )
        key = query.join_on
        if sql_rows and key not in sql_rows[0]:
            msg = f"join_on {key!r} is not a column of the PostgreSQL rows ({sorted(sql_rows[0])})"
            raise OperationRefused(msg)
        try:
            by_key = {row[key]: row for row in sql_rows}
            return [{**by_key[row[key]], **row} for row in graph_rows if row.get(key) in by_key]
        except TypeError as exc:  # a join value that cannot be a key (a list, a map)
            msg = f"join_on {key!r} holds values that cannot be matched: {exc}"
            raise OperationRefused(msg) from exc

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
        counts = await relational.registry_totals()
        outbox = await relational.outbox_counts(unfinished=True)
        nodes = await graph.query("MATCH (n) RETURN count(n) AS n")
        rels = await graph.query("MATCH ()-[r]->() RETURN count(r) AS n")
        return StorageStats(
            sources=counts.sources,
            graph_nodes=nodes[0]["n"],
            graph_relationships=rels[0]["n"],
            intents=counts.intents,
            intent_links=counts.links,
            parked_links=counts.parked,
            outbox=outbox,
            bookkeeping=await relational.bookkeeping(),
        )

    async def check_data_consistency(
        self, stuck_after_s: float = 600, *, repair: bool = False, settle_s: float = 30.0
    ) -> ConsistencyReport:
        """Compare the registry with the graph, count parked links, find outbox rows stuck 'pending'.

        Also found: nodes carrying another version than the registry's (what a dead-lettered
        event could once leave behind), and intents whose node, version or attached links
        differ between the stores.

        With ``repair``, under the write fence (so no batch is half-way): nodes of sources
        and intents without a registry row are deleted (the registry is the system of record),
        stuck outbox rows are closed as 'abandoned', and sources and intents whose graph is
        missing or differs are marked for re-application: their last event is forgotten by
        the ledger and their recorded version lowered by one, so replaying the topics
        (``gpm replay``) rebuilds them. The report returned is the one found before the
        repair, with ``repaired`` filled.
        """
        relational, graph, _ = self._stores()
        if not repair:
            return await find_inconsistencies(relational, graph, stuck_after_s)
        async with relational.quiesced(settle_s):
            report = await find_inconsistencies(relational, graph, stuck_after_s)
            await repair_inconsistencies(relational, graph, report)
        log.warning("consistency repaired", actions=report.repaired)
        return report

    async def monitor_performance(self, window_s: float = 60.0) -> PerformanceMetrics:
        """The current process's throughput and latencies from the live telemetry, and both stores' state."""
        relational, _, _ = self._stores()
        now = time.monotonic()
        recent = [(seconds, nodes) for end, seconds, nodes in metrics.recent_batches if end >= now - window_s]
        span = min(window_s, now - metrics.started) or 1.0
        outbox = await relational.outbox_counts(unfinished=True)
        return PerformanceMetrics(
            uptime_s=now - metrics.started,
            batches=metrics.totals["batches"],
            events_applied=metrics.totals["events"],
            nodes_written=metrics.totals["nodes"],
            edges_written=metrics.totals["edges"],
            nodes_per_s=sum(nodes for _, nodes in recent) / span,
            batch_p50_s=percentile([s for s, _ in recent], 50),
            batch_p95_s=percentile([s for s, _ in recent], 95),
            query_p50_ms=_ms_percentiles(50),
            query_p95_ms=_ms_percentiles(95),
            pools={name: usage() for name, usage in metrics.pools.items()},
            outbox=outbox,
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

    async def restore(
        self, path: Path | str, *, verify: bool = True, graph_only: bool = False, progress: ProgressFn | None = None
    ) -> Snapshot:
        """Load a snapshot into empty stores; with ``verify``, read both back and compare checksums.

        ``graph_only`` loads only the graph (into this manager's, empty, graph backend) and
        leaves PostgreSQL as it is: a graph moving to another backend or server.
        """
        relational, graph, _ = self._stores()
        manifest = await restore_backup(
            relational,
            graph,
            Path(path),
            chunk_size=batch_rows(self.settings),
            verify=verify,
            graph_only=graph_only,
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
            current = await relational.source_version(source_id)
            version = 1 if current is None else current + 1
        # Validated like any event: unsafe labels, dangling edges and duplicates raise here.
        with _as_event_error():
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

    async def _intent_event(
        self, intent_id: UUID, ast_nodes: Iterable[tuple[str, str] | AstNodeRef], version: int | None
    ) -> IntentLinkUpserted:
        relational, _, _ = self._stores()
        if version is None:
            current = await relational.intent_version(intent_id)
            version = 1 if current is None else current + 1
        with _as_event_error():
            return IntentLinkUpserted(
                event_id=uuid4(),
                event_type=EventType.INTENT_LINK_UPSERTED,
                source_id=str(intent_id),
                source_version=version,
                occurred_at=datetime.now(UTC),
                producer=PRODUCER,
                ast_nodes=[AstNodeRef(source_id=s, node_id=n) for s, n in map(_pair, ast_nodes)],
            )

    async def _apply(self, events: list[Envelope], *, isolate: bool = True) -> list[StoreResult]:
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
        result = await saga.apply(items, isolate=isolate)

        def written(event: Envelope, outcome: Outcome) -> TypeGuard[AstGraphUpserted]:
            # A new version of an unchanged graph writes nothing to the graph.
            return (
                isinstance(event, AstGraphUpserted)
                and outcome is Outcome.APPLIED
                and event.source_id not in result.unchanged
            )

        return [
            StoreResult(
                source_id=item.event.source_id,
                version=item.event.source_version,
                outcome=outcome,
                nodes_written=len(item.event.graph.nodes) if written(item.event, outcome) else 0,
                edges_written=len(item.event.graph.edges) if written(item.event, outcome) else 0,
            )
            for item, outcome in result.events
        ]

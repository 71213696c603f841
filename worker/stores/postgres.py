"""PostgreSQL adapter (asyncpg): the outbox, the processed-event ledger and the registry."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import asyncpg
import orjson
import structlog
from asyncpg.transaction import Transaction

from worker.config import PostgresSettings
from worker.errors import StoreRejected, StoreUnavailable
from worker.events import AstGraphDeleted, AstGraphUpserted, IntentLinkDeleted, IntentLinkUpserted, Tombstone
from worker.ports import AppliedState, BatchPlan, BatchRecord, GraphWriteStats, LinkRow, Outcome
from worker.stores.postgres_bookkeeping import PostgresBookkeeping
from worker.stores.postgres_errors import DRIVER_ERRORS, map_error, mapped, refusal
from worker.stores.postgres_migrations import Connection, apply_migrations, bundled_migrations
from worker.stores.postgres_operations import FENCED, WRITE_FENCE_KEY, PostgresOperations
from worker.telemetry import metrics

log = structlog.get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


class PostgresRelationalStore(PostgresOperations, PostgresBookkeeping):
    """The RelationalStore port on an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        metrics.pools["postgres"] = self.pool_usage

    def pool_usage(self) -> dict[str, int]:
        """Connections in use, idle, and the pool's maximum."""
        size, idle = self._pool.get_size(), self._pool.get_idle_size()
        return {"in_use": size - idle, "idle": idle, "max": self._pool.get_max_size()}

    @classmethod
    async def connect(cls, settings: PostgresSettings) -> PostgresRelationalStore:
        """Open a pool; raise StoreUnavailable (with the DSN masked) if it cannot."""
        dsn = settings.dsn.get_secret_value()
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=settings.min_pool_size,
                max_size=settings.max_pool_size,
                command_timeout=settings.command_timeout_s,
                max_inactive_connection_lifetime=settings.max_inactive_connection_lifetime_s,
                timeout=settings.connect_timeout_s,
            )
        except (*DRIVER_ERRORS, ValueError) as exc:
            if refused := refusal(exc):
                # Waiting will not fix a wrong password or certificate: the start fails at once.
                raise refused from None
            # The driver's message can echo the DSN; say which server without the secret.
            msg = f"cannot connect to PostgreSQL at {settings.redacted_dsn}: {type(exc).__name__}"
            raise StoreUnavailable(msg) from None
        return cls(pool)

    @mapped
    async def migrate(self, upto: int | None = None) -> None:
        """Apply pending migrations (those up to version ``upto`` only, if given)."""
        migrations = [m for m in bundled_migrations() if upto is None or m.version <= upto]
        async with self._pool.acquire() as conn:
            await apply_migrations(conn, migrations)

    @mapped
    async def schema_version(self) -> int:
        """The newest migration applied (0 before any)."""
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM gpm_schema_migrations"))

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[TableSnapshot]:
        """One REPEATABLE READ, read-only transaction to copy tables out of."""
        try:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                # COPY's text output of timestamps follows the session's settings: pin them,
                # so the same rows always give the same bytes.
                await conn.execute("SET LOCAL TIME ZONE 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'")
                yield TableSnapshot(conn)
        except DRIVER_ERRORS as exc:
            raise map_error(exc) from exc

    @mapped
    async def restore_tables(self, tables: list[TableCopy]) -> None:
        """COPY rows into empty tables, all in one transaction; refuse if any table has rows."""
        async with self._transaction() as conn:
            for table in tables:
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table.name})"):  # noqa: S608 - fixed names
                    msg = f"PostgreSQL table {table.name} is not empty: restore needs empty stores"
                    raise StoreRejected(msg)
            for table in tables:
                await conn.copy_to_table(table.name, source=table.rows, columns=table.columns, format="text")
            # Derived from the ledger, so not in a snapshot: rebuilt once here.
            await conn.execute(
                """INSERT INTO gpm_partition_progress (topic, kafka_partition, last_applied_at)
                   SELECT topic, kafka_partition, max(processed_at) FROM gpm_processed_events GROUP BY 1, 2
                   ON CONFLICT (topic, kafka_partition) DO UPDATE SET last_applied_at = excluded.last_applied_at"""
            )

    @mapped
    async def begin_batch(self, record: BatchRecord) -> AppliedState:
        """Outbox row 'pending' (or a new attempt of it) and the applied state, in one transaction."""
        positions = orjson.dumps([dataclasses.asdict(p) for p in record.positions]).decode()
        async with self._transaction() as conn:
            # Never waits: a fenced batch is a transient failure, retried like an outage.
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock_shared($1)", WRITE_FENCE_KEY):
                raise StoreUnavailable(FENCED)
            await conn.execute(
                """INSERT INTO gpm_outbox (batch_id, state, positions, event_ids, row_count)
                   VALUES ($1, 'pending', $2::jsonb, $3, $4)
                   ON CONFLICT (batch_id) DO UPDATE
                   SET state = 'pending', attempts = gpm_outbox.attempts + 1, updated_at = now()""",
                record.batch_id,
                positions,
                list(record.event_ids),
                record.rows,
            )
            sources = await conn.fetch(
                """SELECT source_id, source_version, CASE WHEN NOT deleted THEN graph_digest END AS digest
                   FROM gpm_sources WHERE source_id = ANY($1::text[])""",
                list(record.source_ids),
            )
            intents = await conn.fetch(
                "SELECT intent_id, source_version FROM gpm_intents WHERE intent_id = ANY($1::uuid[])",
                list(record.intent_ids),
            )
            processed = await conn.fetch(
                "SELECT event_id FROM gpm_processed_events WHERE event_id = ANY($1::uuid[])",
                list(record.event_ids),
            )
        return AppliedState(
            source_versions={r["source_id"]: r["source_version"] for r in sources},
            source_digests={r["source_id"]: bytes(r["digest"]) for r in sources if r["digest"] is not None},
            intent_versions={r["intent_id"]: r["source_version"] for r in intents},
            processed_event_ids=frozenset(r["event_id"] for r in processed),
        )

    @mapped
    async def graph_digests(self, source_ids: tuple[str, ...]) -> dict[str, bytes]:
        """The digest of each live source's applied graph (sources without one are left out)."""
        if not source_ids:
            return {}
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT source_id, graph_digest FROM gpm_sources
                   WHERE source_id = ANY($1::text[]) AND NOT deleted AND graph_digest IS NOT NULL""",
                list(source_ids),
            )
        return {r["source_id"]: bytes(r["graph_digest"]) for r in rows}

    @mapped
    async def links_for_sources(self, source_ids: tuple[str, ...]) -> tuple[LinkRow, ...]:
        """Links that point into the given sources."""
        if not source_ids:
            return ()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT l.intent_id, l.source_id, l.node_id FROM gpm_intent_links l
                   JOIN gpm_intents i USING (intent_id)
                   WHERE l.source_id = ANY($1::text[]) AND NOT i.deleted""",
                list(source_ids),
            )
        return tuple(LinkRow(r["intent_id"], r["source_id"], r["node_id"]) for r in rows)

    @asynccontextmanager
    async def completing(self, batch_id: UUID, plan: BatchPlan) -> AsyncIterator[PostgresBatchCompletion]:
        """Registry, links and processed ledger written now; the outbox row 'applied' and the commit at ``finish``."""
        try:
            conn = await self._pool.acquire()
        except DRIVER_ERRORS as exc:
            raise map_error(exc) from exc
        transaction = conn.transaction()
        completion = PostgresBatchCompletion(conn, transaction, batch_id, plan)
        try:
            await completion.start()
            yield completion
        finally:
            try:
                if not completion.committed and not conn.is_closed():
                    await transaction.rollback()
            except DRIVER_ERRORS as exc:  # the connection is gone: the server rolled back
                log.debug("rollback of an unfinished batch failed", batch_id=str(batch_id), error=str(exc))
            finally:
                await self._pool.release(conn)

    @mapped
    async def fail_batch(self, batch_id: UUID, state: str, error: str) -> None:
        """Mark the attempt's end and keep the error for operators."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE gpm_outbox SET state = $2, last_error = $3, updated_at = now() WHERE batch_id = $1",
                batch_id,
                state,
                error[:4000],
            )

    @mapped
    async def abandon_pending(self, partitions: tuple[tuple[str, int], ...]) -> int:
        """Rows a crashed or revoked worker left 'pending' on partitions now ours."""
        if not partitions:
            return 0
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                """UPDATE gpm_outbox SET state = 'abandoned', updated_at = now(),
                       last_error = 'interrupted before completion; its events are re-read from the committed offset'
                   WHERE state = 'pending' AND EXISTS (
                       SELECT 1 FROM jsonb_array_elements(positions) p
                       WHERE (p->>'topic') || ':' || (p->>'partition') = ANY($1::text[]))""",
                [f"{topic}:{partition}" for topic, partition in partitions],
            )
        return int(status.rsplit(" ", 1)[-1])

    @mapped
    async def ping(self) -> None:
        """Round trip to the server."""
        async with self._pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        """Close the pool, waiting for connections in use."""
        if metrics.pools.get("postgres") == self.pool_usage:
            del metrics.pools["postgres"]
        await self._pool.close()


class PostgresBatchCompletion:
    """One batch's step 3 in a transaction held open across the graph write (see ``completing``)."""

    def __init__(self, conn: Connection, transaction: Transaction, batch_id: UUID, plan: BatchPlan) -> None:
        self._conn = conn
        self._transaction = transaction
        self._batch_id = batch_id
        self._plan = plan
        self.committed = False

    @mapped
    async def start(self) -> None:
        """Everything the events themselves bring to PostgreSQL: what it may refuse, before the graph changes."""
        conn, plan = self._conn, self._plan
        await self._transaction.start()
        for item in plan.winners:
            await _write_winner(conn, item.event, plan)
        await conn.executemany(
            """INSERT INTO gpm_processed_events (event_id, batch_id, outcome, topic, kafka_partition, kafka_offset)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING""",
            [
                (item.event.event_id, self._batch_id, outcome.value, *dataclasses.astuple(item.position))
                for item, outcome in plan.outcomes
                if outcome is not Outcome.DUPLICATE
            ],
        )
        # In a fixed order, so two batches in flight never wait on each other's rows crosswise.
        partitions = sorted({(item.position.topic, item.position.partition) for item, _ in plan.outcomes})
        await conn.executemany(
            """INSERT INTO gpm_partition_progress (topic, kafka_partition, last_applied_at) VALUES ($1, $2, now())
               ON CONFLICT (topic, kafka_partition) DO UPDATE SET last_applied_at = excluded.last_applied_at""",
            partitions,
        )

    @mapped
    async def finish(self, stats: GraphWriteStats) -> None:
        """Parked links as the graph found them, the outbox row 'applied', commit."""
        await _track_parked_links(self._conn, self._plan, stats.unresolved_links)
        await self._conn.execute(
            """UPDATE gpm_outbox SET state = 'applied', last_error = NULL, graph_stats = $2::jsonb,
               updated_at = now() WHERE batch_id = $1""",
            self._batch_id,
            orjson.dumps(_stats_document(stats)).decode(),
        )
        await self._transaction.commit()
        self.committed = True


@dataclasses.dataclass(frozen=True, slots=True)
class TableCopy:
    """One table's rows in COPY text format, for :meth:`PostgresRelationalStore.restore_tables`."""

    name: str
    columns: list[str]
    rows: AsyncIterable[bytes]


class TableSnapshot:
    """Tables read from one consistent snapshot, in primary-key order."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @mapped
    async def columns(self, table: str) -> list[str]:
        """The table's columns, in order."""
        rows = await self._conn.fetch(
            """SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0
               AND NOT attisdropped ORDER BY attnum""",
            table,
        )
        return [r["attname"] for r in rows]

    @mapped
    async def copy_out(
        self, table: str, columns: list[str], order_by: str, sink: Callable[[bytes], Coroutine[Any, Any, None]]
    ) -> None:
        """Stream the rows in COPY text format (one row a line) to ``sink``."""
        names = ", ".join(f'"{c}"' for c in columns)
        await self._conn.copy_from_query(
            f"SELECT {names} FROM {table} ORDER BY {order_by}",  # noqa: S608 - names from the catalogue
            output=sink,
            format="text",
        )


def _stats_document(stats: GraphWriteStats) -> dict[str, int]:
    """The outbox row's graph_stats: the counters, and how many links were parked."""
    document: dict[str, int] = dataclasses.asdict(stats)
    document["unresolved_links"] = len(stats.unresolved_links)
    return document


async def _track_parked_links(conn: Connection, plan: BatchPlan, unresolved: tuple[LinkRow, ...]) -> None:
    """Keep ``parked_since`` true to the graph after the batch: set while a link's node is missing."""
    # Sources found unchanged kept their nodes, and their links' state with them.
    upserted = [
        i.event.source_id
        for i in plan.winners
        if isinstance(i.event, AstGraphUpserted) and i.event.source_id not in plan.unchanged
    ]
    deleted = [i.event.source_id for i in plan.winners if isinstance(i.event, AstGraphDeleted)]
    missing = (
        [r.intent_id for r in unresolved],
        [r.source_id for r in unresolved],
        [r.node_id for r in unresolved],
    )
    if deleted:
        # The source's nodes are gone from the graph; its links wait for it to come back.
        await conn.execute(
            """UPDATE gpm_intent_links SET parked_since = coalesce(parked_since, now())
               WHERE source_id = ANY($1::text[])""",
            deleted,
        )
    if upserted:
        # The new version's nodes are in the graph: links into it are attached, except those
        # naming a node it lacks (those keep their original parked_since).
        await conn.execute(
            """UPDATE gpm_intent_links SET parked_since = NULL
               WHERE source_id = ANY($1::text[]) AND parked_since IS NOT NULL
                 AND (intent_id, source_id, node_id) NOT IN
                     (SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[]))""",
            upserted,
            *missing,
        )
    if unresolved:
        await conn.execute(
            """UPDATE gpm_intent_links l SET parked_since = coalesce(l.parked_since, now())
               FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(intent_id, source_id, node_id)
               WHERE (l.intent_id, l.source_id, l.node_id) = (u.intent_id, u.source_id, u.node_id)""",
            *missing,
        )


async def _write_winner(
    conn: Connection,
    event: AstGraphUpserted | AstGraphDeleted | IntentLinkUpserted | IntentLinkDeleted,
    plan: BatchPlan,
) -> None:
    # The WHERE clauses are the version guard: a lower version never overwrites a higher one.
    if isinstance(event, AstGraphUpserted | AstGraphDeleted):
        graph = event.graph if isinstance(event, AstGraphUpserted) else None
        await conn.execute(
            """INSERT INTO gpm_sources (source_id, source_version, deleted, node_count, edge_count, metadata,
                                        event_id, producer, occurred_at, graph_digest, graph_version)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $11, $2)
               ON CONFLICT (source_id) DO UPDATE SET
                 source_version = EXCLUDED.source_version, deleted = EXCLUDED.deleted,
                 node_count = EXCLUDED.node_count, edge_count = EXCLUDED.edge_count,
                 metadata = EXCLUDED.metadata, event_id = EXCLUDED.event_id, producer = EXCLUDED.producer,
                 occurred_at = EXCLUDED.occurred_at, graph_digest = EXCLUDED.graph_digest,
                 -- The version that wrote the nodes: kept when this one found them unchanged.
                 graph_version = CASE WHEN $12 THEN gpm_sources.graph_version ELSE EXCLUDED.graph_version END,
                 updated_at = now()
               WHERE gpm_sources.source_version < EXCLUDED.source_version
                  OR ($10 AND gpm_sources.source_version <= EXCLUDED.source_version)""",
            event.source_id,
            event.source_version,
            graph is None,
            len(graph.nodes) if graph else 0,
            len(graph.edges) if graph else 0,
            orjson.dumps(graph.metadata if graph else {}).decode(),
            event.event_id,
            event.producer,
            event.occurred_at,
            # A tombstone deletes at the version it found (plan_batch), so an equal one passes.
            isinstance(event, Tombstone),
            plan.digests.get(event.source_id) if graph else None,
            event.source_id in plan.unchanged,
        )
        return
    links = event.ast_nodes if isinstance(event, IntentLinkUpserted) else []
    status = await conn.execute(
        """INSERT INTO gpm_intents (intent_id, source_version, deleted, link_count, event_id, occurred_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (intent_id) DO UPDATE SET
             source_version = EXCLUDED.source_version, deleted = EXCLUDED.deleted,
             link_count = EXCLUDED.link_count, event_id = EXCLUDED.event_id,
             occurred_at = EXCLUDED.occurred_at, updated_at = now()
           WHERE gpm_intents.source_version < EXCLUDED.source_version""",
        event.intent_id,
        event.source_version,
        isinstance(event, IntentLinkDeleted),
        len(links),
        event.event_id,
        event.occurred_at,
    )
    if status.endswith(" 0"):
        return  # a newer version is already recorded: leave its links alone
    await conn.execute("DELETE FROM gpm_intent_links WHERE intent_id = $1", event.intent_id)
    if links:
        await conn.executemany(
            "INSERT INTO gpm_intent_links (intent_id, source_id, node_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [(event.intent_id, ref.source_id, ref.node_id) for ref in links],
        )

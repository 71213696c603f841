"""PostgreSQL for operators: the write fence, reports, repairs and preflight (asyncpg).

The queries the library, the CLI and the ops commands run, by name, so no SQL lives
outside ``worker/stores``. Mixed into :class:`~worker.stores.postgres.PostgresRelationalStore`,
which owns the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from worker.errors import OperationRefused
from worker.ports import LinkRow, ParkedLinks, RegistryTotals
from worker.stores.postgres_errors import DRIVER_ERRORS, map_error, mapped
from worker.stores.postgres_migrations import Connection

log = structlog.get_logger(__name__)
# The write fence: every batch takes it shared when it starts (begin_batch); quiesced()
# holds it exclusively (backups, repairs), so no batch starts while both stores are read.
# Any constant works.
WRITE_FENCE_KEY = 0x67706D5F66656E  # "gpm_fen"
# `gpm check`: batches left 'pending' (the unfinished rows' partial index, not the history).
STUCK_BATCHES = """SELECT batch_id::text AS id FROM gpm_outbox WHERE state = 'pending'
                   AND updated_at <= now() - make_interval(secs => $1) ORDER BY updated_at, batch_id"""
FENCED = "a backup or repair holds the write fence (one consistent point of both stores); writes resume after it"


class PostgresOperations:
    """Operator-facing queries over the store's pool."""

    _pool: asyncpg.Pool

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _write_fence(self) -> AsyncIterator[None]:
        """Hold the write fence exclusively: batches already started finish, new ones wait.

        A session lock on a connection of its own: if the holder dies, the server drops
        the connection and the lock with it, so a crashed backup never fences forever.
        """
        try:
            conn = await self._pool.acquire()
        except DRIVER_ERRORS as exc:
            raise map_error(exc) from exc
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", WRITE_FENCE_KEY)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", WRITE_FENCE_KEY)
        except DRIVER_ERRORS as exc:
            raise map_error(exc) from exc
        finally:
            await self._pool.release(conn)

    @asynccontextmanager
    async def quiesced(self, settle_s: float) -> AsyncIterator[list[str]]:
        """Hold the write fence and wait for batches under way; yield the rows still 'pending' then.

        Every batch takes the fence shared when it starts (``begin_batch``, never waiting: a
        fenced batch is a transient failure, retried like an outage). Held here exclusively,
        as backups and repairs do, it stops new batches; those already under way are waited
        for, up to ``settle_s``. Rows older than that belong to a worker that died: waiting
        would not change them.
        """
        async with self._write_fence():
            deadline = time.monotonic() + settle_s
            # Polls: the batches under way are other processes' transactions, with no event to await.
            while time.monotonic() < deadline and await self._live_batches(settle_s):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            pending = sorted(await self.stuck_batches(older_than_s=0))
            if pending:
                log.warning(
                    "outbox rows still pending when the fence was taken: batches cut off by a crash",
                    batches=pending[:20],
                    count=len(pending),
                )
            yield pending

    @mapped
    async def _live_batches(self, within_s: float) -> int:
        async with self._pool.acquire() as conn:
            return int(
                await conn.fetchval(
                    """SELECT count(*) FROM gpm_outbox
                       WHERE state = 'pending' AND updated_at > now() - make_interval(secs => $1)""",
                    within_s,
                )
            )

    @mapped
    async def stuck_batches(self, older_than_s: float) -> list[str]:
        """Outbox rows 'pending' for longer than ``older_than_s``, oldest first (batch ids)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(STUCK_BATCHES, older_than_s)
        return [r["id"] for r in rows]

    @mapped
    async def registry_totals(self) -> RegistryTotals:
        """Live sources (with their nodes and edges), intents, links and parked links."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM gpm_sources WHERE NOT deleted) AS sources,
                          (SELECT coalesce(sum(node_count), 0) FROM gpm_sources WHERE NOT deleted) AS nodes,
                          (SELECT coalesce(sum(edge_count), 0) FROM gpm_sources WHERE NOT deleted) AS edges,
                          (SELECT count(*) FROM gpm_intents WHERE NOT deleted) AS intents,
                          (SELECT count(*) FROM gpm_intent_links) AS links,
                          (SELECT count(*) FROM gpm_intent_links WHERE parked_since IS NOT NULL) AS parked"""
            )
        assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
        return RegistryTotals(**{name: int(value) for name, value in row.items()})

    @mapped
    async def source_version(self, source_id: str) -> int | None:
        """The registry's version of a source (deleted or not), or None if it never was applied."""
        async with self._pool.acquire() as conn:
            version = await conn.fetchval("SELECT source_version FROM gpm_sources WHERE source_id = $1", source_id)
        return None if version is None else int(version)

    @mapped
    async def intent_version(self, intent_id: UUID) -> int | None:
        """The registry's version of an intent (deleted or not), or None if it never was applied."""
        async with self._pool.acquire() as conn:
            version = await conn.fetchval("SELECT source_version FROM gpm_intents WHERE intent_id = $1", intent_id)
        return None if version is None else int(version)

    @mapped
    async def current_links(self, intent_id: UUID) -> tuple[int | None, set[tuple[str, str]]]:
        """A live intent's version and its (source_id, node_id) links; (None, empty) if it is not live."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT l.source_id, l.node_id, i.source_version FROM gpm_intents i
                   LEFT JOIN gpm_intent_links l USING (intent_id) WHERE i.intent_id = $1 AND NOT i.deleted""",
                intent_id,
            )
        version = rows[0]["source_version"] if rows else None
        return version, {(r["source_id"], r["node_id"]) for r in rows if r["source_id"] is not None}

    @mapped
    async def registered_sources(self) -> dict[str, tuple[int, int]]:
        """Live sources: (node count, version of the graph in the store)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT source_id, node_count, coalesce(graph_version, source_version) AS version
                   FROM gpm_sources WHERE NOT deleted"""
            )
        return {r["source_id"]: (r["node_count"], r["version"]) for r in rows}

    @mapped
    async def registered_intents(self) -> dict[str, tuple[int, int]]:
        """Live intents: (version, links attached in the graph, i.e. not parked)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT i.intent_id::text AS id, i.source_version AS version,
                          count(l.node_id) FILTER (WHERE l.parked_since IS NULL) AS links
                   FROM gpm_intents i LEFT JOIN gpm_intent_links l USING (intent_id)
                   WHERE NOT i.deleted GROUP BY i.intent_id, i.source_version"""
            )
        return {r["id"]: (r["version"], r["links"]) for r in rows}

    @mapped
    async def tables_with_applied_state(self) -> list[str]:
        """The registry and ledger tables that exist and hold a row."""
        async with self._pool.acquire() as conn:
            return [
                table
                for table in ("gpm_sources", "gpm_intents", "gpm_processed_events")
                if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
                and await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")  # noqa: S608 - fixed names
            ]

    @mapped
    async def parked_links(self, older_than_s: float, sample: int = 20) -> ParkedLinks:
        """How many links wait for their AST node, how many longer than ``older_than_s``, and some of those."""
        async with self._pool.acquire() as conn:
            counts = await conn.fetchrow(
                """SELECT count(*) AS parked,
                          count(*) FILTER (WHERE parked_since < now() - make_interval(secs => $1)) AS expired
                   FROM gpm_intent_links WHERE parked_since IS NOT NULL""",
                older_than_s,
            )
            oldest = await conn.fetch(
                """SELECT intent_id, source_id, node_id FROM gpm_intent_links
                   WHERE parked_since < now() - make_interval(secs => $1) ORDER BY parked_since LIMIT $2""",
                older_than_s,
                sample,
            )
        assert counts is not None  # noqa: S101 - an aggregate always returns one row
        return ParkedLinks(
            parked=counts["parked"],
            expired=counts["expired"],
            oldest_expired=tuple(LinkRow(r["intent_id"], r["source_id"], r["node_id"]) for r in oldest),
        )

    @mapped
    async def live_intents(self, intent_ids: list[str]) -> list[UUID]:
        """Which of these intents have a live (not deleted) registry row."""
        if not intent_ids:
            return []
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT intent_id FROM gpm_intents WHERE NOT deleted
                   AND intent_id::text = ANY($1::text[]) ORDER BY intent_id""",
                intent_ids,
            )
        return [r["intent_id"] for r in rows]

    @mapped
    async def repair(
        self,
        orphans: list[str],
        rebuild: list[str],
        stuck: list[str],
        rebuild_intents: Sequence[UUID] = (),
    ) -> None:
        """The relational side of a consistency repair, in one transaction.

        ``orphans``: sources whose graph nodes were deleted: links into them wait again.
        ``rebuild`` (sources) and ``rebuild_intents``: to re-apply: the ledger forgets their
        last event and their version goes down by one, so that event, replayed, is applied again.
        ``stuck``: outbox rows (batch ids) left 'pending' by a crash: closed as 'abandoned'.
        """
        async with self._transaction() as conn:
            await conn.execute(
                """UPDATE gpm_intent_links SET parked_since = coalesce(parked_since, now())
                   WHERE source_id = ANY($1::text[])""",
                orphans,
            )
            for table, key, kind, ids in (
                ("gpm_sources", "source_id", "text", list(rebuild)),
                ("gpm_intents", "intent_id", "uuid", list(rebuild_intents)),
            ):
                await conn.execute(
                    f"""DELETE FROM gpm_processed_events WHERE event_id IN
                        (SELECT event_id FROM {table} WHERE {key} = ANY($1::{kind}[]))""",  # noqa: S608 - fixed names
                    ids,
                )
                await conn.execute(
                    f"""UPDATE {table} SET source_version = source_version - 1, updated_at = now()
                        WHERE {key} = ANY($1::{kind}[])""",  # noqa: S608 - fixed names
                    ids,
                )
            # Their graph is broken: the replayed event must rewrite it, not find it unchanged.
            await conn.execute(
                "UPDATE gpm_sources SET graph_digest = NULL WHERE source_id = ANY($1::text[])", list(rebuild)
            )
            await conn.execute(
                """UPDATE gpm_outbox SET state = 'abandoned', updated_at = now(),
                       last_error = 'closed by a consistency repair: interrupted before completion'
                   WHERE state = 'pending' AND batch_id = ANY($1::uuid[])""",
                stuck,
            )

    @mapped
    async def preflight_facts(self, tables: list[str], bundled: list[int]) -> dict[str, Any]:
        """Server version, user, and what that user may do: for the preflight report."""
        async with self._pool.acquire() as conn:
            facts = await conn.fetchrow(
                """SELECT current_setting('server_version_num')::int AS version_num,
                          current_setting('server_version') AS version, current_user AS user,
                          has_schema_privilege(current_schema(), 'CREATE') AS can_create,
                          to_regclass('gpm_schema_migrations') IS NOT NULL AS tracked,
                          to_regclass('gpm_schema_migrations') IS NULL
                            OR has_table_privilege('gpm_schema_migrations', 'SELECT, INSERT') AS can_track"""
            )
            assert facts is not None  # noqa: S101 - a SELECT without FROM returns one row
            applied = (
                {r["version"] for r in await conn.fetch("SELECT version FROM gpm_schema_migrations")}
                if facts["tracked"] and facts["can_track"]
                else set()
            )
            denied = [
                r["t"]
                for r in await conn.fetch(
                    """SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL
                       AND NOT has_table_privilege(t, 'SELECT, INSERT, UPDATE, DELETE')""",
                    tables,
                )
            ]
            if not facts["can_track"]:
                denied.append("gpm_schema_migrations (SELECT, INSERT)")
        return {**dict(facts), "pending": sorted(set(bundled) - applied), "denied": denied}

    @mapped
    async def fetch_read_only(self, sql: str, *args: object) -> list[dict[str, Any]]:
        """Run a query in a READ ONLY transaction (PostgreSQL refuses any write in it)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction(readonly=True):
                return [dict(r) for r in await conn.fetch(sql, *args)]
        except asyncpg.ReadOnlySQLTransactionError as exc:
            msg = f"a read query may not write: {exc}"
            raise OperationRefused(msg) from exc

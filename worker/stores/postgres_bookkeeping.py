"""PostgreSQL bookkeeping as operators see it: the saga log's unfinished rows, their resolution, retention.

The outbox (one row a batch) and the processed-event ledger (one row an event) grow with
traffic; what reads them here costs O(partitions or unfinished rows), never O(history),
and retention deletes what is finished once it is older than its window. Mixed into
:class:`~worker.stores.postgres.PostgresRelationalStore`, which owns the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg
import orjson
import structlog

from worker.errors import OperationRefused
from worker.ports import Bookkeeping, OutboxRow, Position
from worker.stores.postgres_errors import mapped

log = structlog.get_logger(__name__)
# What `gpm status`, /metrics and `gpm stats` read: each must cost O(partitions or
# unfinished rows), never O(history) (tests/integration/test_bookkeeping.py explains them
# beside a large ledger).
LAST_APPLIED = "SELECT topic, kafka_partition, last_applied_at AS at FROM gpm_partition_progress"
UNFINISHED_OUTBOX = """SELECT state, count(*) AS n, min(updated_at) AS oldest FROM gpm_outbox
                       WHERE state NOT IN ('applied', 'resolved') GROUP BY state"""
# Held by the one replica pruning the bookkeeping at a time.
RETENTION_KEY = 0x67706D5F726574  # "gpm_ret"
# Each deletes one chunk ($2 rows) of a table's rows older than $1 seconds, oldest first,
# through the tables' age indexes (0005): a short transaction that never blocks a batch.
# Pending, failed and compensated outbox rows stay until an operator resolves them
# (`gpm check --repair` closes stuck pending ones, `gpm outbox resolve` the others).
_PRUNES = (
    (
        "gpm_processed_events",
        """DELETE FROM gpm_processed_events WHERE event_id IN (
               SELECT event_id FROM gpm_processed_events WHERE processed_at < now() - make_interval(secs => $1)
               ORDER BY processed_at LIMIT $2)""",
    ),
    (
        "gpm_outbox",
        """DELETE FROM gpm_outbox WHERE batch_id IN (
               SELECT batch_id FROM gpm_outbox WHERE state IN ('applied', 'abandoned', 'resolved')
               AND updated_at < now() - make_interval(secs => $1) ORDER BY updated_at LIMIT $2)""",
    ),
)
# The oldest row of each, found at the start of its age index.
OLDEST = (
    ("gpm_processed_events", "SELECT min(processed_at) FROM gpm_processed_events"),
    ("gpm_outbox", "SELECT min(updated_at) FROM gpm_outbox WHERE state IN ('applied', 'abandoned', 'resolved')"),
)
# The rows an operator resolves: batches rewound ('compensated') or recorded only in the graph
# ('failed'). Each names the unfinished rows' index predicate, so a generic plan of the
# statement still reads that index and never the applied history.
RESOLVABLE = ("compensated", "failed")
OUTBOX_ROWS = """SELECT batch_id, state, attempts, row_count, positions, last_error, created_at, updated_at
                 FROM gpm_outbox WHERE state NOT IN ('applied', 'resolved') AND state = ANY($1::text[])
                 ORDER BY state, created_at LIMIT $2"""
RESOLVE_OUTBOX = """UPDATE gpm_outbox SET state = 'resolved', resolution = $4, updated_at = now()
                    WHERE state NOT IN ('applied', 'resolved') AND state = ANY($1::text[])
                    AND updated_at <= now() - make_interval(secs => $2)
                    AND ($3::uuid[] IS NULL OR batch_id = ANY($3::uuid[]))
                    RETURNING batch_id"""


class PostgresBookkeeping:
    """The outbox and the ledger: counts, unfinished rows, resolution and retention."""

    _pool: asyncpg.Pool

    @mapped
    async def last_applied(self) -> dict[tuple[str, int], datetime]:
        """When an event of each (topic, partition) was last processed."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(LAST_APPLIED)
        return {(r["topic"], r["kafka_partition"]): r["at"] for r in rows}

    @mapped
    async def outbox_counts(self, *, unfinished: bool = False) -> dict[str, int]:
        """Outbox rows per state (only those not 'applied' when ``unfinished``)."""
        async with self._pool.acquire() as conn:
            # Two texts, not one with a flag: a cached generic plan would not know the flag is
            # set and scan every applied row instead of the unfinished ones' partial index.
            rows = await conn.fetch(
                UNFINISHED_OUTBOX if unfinished else "SELECT state, count(*) AS n FROM gpm_outbox GROUP BY state"
            )
        return {r["state"]: r["n"] for r in rows}

    @mapped
    async def unfinished_outbox(self) -> dict[str, tuple[int, datetime]]:
        """Per state other than 'applied': its rows and when the oldest of them last changed."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(UNFINISHED_OUTBOX)
        return {r["state"]: (r["n"], r["oldest"]) for r in rows}

    @mapped
    async def outbox_rows(self, states: Sequence[str], limit: int) -> list[OutboxRow]:
        """Unfinished outbox rows in these states, oldest first per state, at most ``limit``."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(OUTBOX_ROWS, list(states), limit)
        return [
            OutboxRow(
                batch_id=r["batch_id"],
                state=r["state"],
                attempts=r["attempts"],
                rows=r["row_count"],
                positions=tuple(Position(**p) for p in orjson.loads(r["positions"])),
                last_error=r["last_error"],
                created_at=r["created_at"],
                updated_at=r["updated_at"],
            )
            for r in rows
        ]

    @mapped
    async def resolve_outbox(
        self,
        states: Sequence[str],
        *,
        note: str,
        older_than_s: float = 0,
        batch_ids: Sequence[UUID] | None = None,
        dry_run: bool = False,
    ) -> list[UUID]:
        """Mark resolved the rows in ``states`` (compensated, failed) unchanged for ``older_than_s``.

        Only ``batch_ids`` when given. Returns the batch ids resolved (with ``dry_run``, those
        that would be: the same statement, rolled back); retention prunes them after its
        window, their error and ``note`` kept until then.
        """
        if not set(states) <= set(RESOLVABLE):
            msg = f"only {' and '.join(RESOLVABLE)} outbox rows are resolved by hand, not {sorted(set(states))}"
            raise OperationRefused(msg)
        async with self._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                rows = await conn.fetch(RESOLVE_OUTBOX, list(states), older_than_s, batch_ids, note)
            except BaseException:
                await transaction.rollback()
                raise
            await (transaction.rollback() if dry_run else transaction.commit())
        resolved = [r["batch_id"] for r in rows]
        if not dry_run:
            log.info("outbox rows resolved", count=len(resolved), states=list(states), note=note)
        return resolved

    @mapped
    async def prune_bookkeeping(
        self, older_than_s: float, chunk: int = 5000, pause_s: float = 0.05
    ) -> dict[str, int] | None:
        """Delete ledger rows and finished outbox rows older than ``older_than_s``: rows removed per table.

        A chunk per transaction, with a pause between chunks; None when another replica holds
        the retention lock (one prunes, the others skip).
        """
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_KEY):
                return None
            try:
                removed: dict[str, int] = {}
                for table, prune in _PRUNES:
                    removed[table] = 0
                    while True:
                        deleted = int((await conn.execute(prune, older_than_s, chunk)).rsplit(" ", 1)[-1])
                        removed[table] += deleted
                        if deleted < chunk:
                            break
                        await asyncio.sleep(pause_s)
                return removed
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_KEY)

    @mapped
    async def bookkeeping(self) -> list[Bookkeeping]:
        """Size, estimated rows and oldest finished row of the ledger and the outbox: O(1) each."""
        found = []
        async with self._pool.acquire() as conn:
            for table, oldest in OLDEST:
                row = await conn.fetchrow(
                    """SELECT greatest(c.reltuples, 0)::bigint AS rows, pg_total_relation_size(c.oid) AS bytes
                       FROM pg_class c WHERE c.oid = to_regclass($1)""",
                    table,
                )
                assert row is not None  # noqa: S101 - the migrations made the table
                found.append(Bookkeeping(table, int(row["rows"]), int(row["bytes"]), await conn.fetchval(oldest)))
        return found

"""The write fence: a moment when no saga batch is under way, for work that must see both stores still.

Every batch takes the fence shared when it starts (PostgresRelationalStore.begin_batch,
never waiting: a fenced batch is a transient failure, retried like an outage). Holding it
exclusively, as backups and repairs do, stops new batches; batches already under way are
waited for, up to ``settle_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from worker.stores.postgres import PostgresRelationalStore

log = structlog.get_logger(__name__)


@asynccontextmanager
async def quiesced(relational: PostgresRelationalStore, settle_s: float) -> AsyncIterator[list[str]]:
    """Hold the fence and wait for batches under way; yield the outbox rows still 'pending' after that."""
    async with relational.write_fence():
        yield await _settle(relational, settle_s)


async def _settle(relational: PostgresRelationalStore, settle_s: float) -> list[str]:
    """Wait for started batches to finish; return the rows still 'pending' after that.

    Only rows touched within the last ``settle_s`` are waited for: an older one belongs to
    a worker that died, and waiting would not change it.
    """
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        live = await relational.fetch(
            """SELECT count(*) AS n FROM gpm_outbox
               WHERE state = 'pending' AND updated_at > now() - make_interval(secs => $1)""",
            settle_s,
        )
        if not live[0]["n"]:
            break
        await asyncio.sleep(0.2)
    rows = await relational.fetch("SELECT batch_id::text AS id FROM gpm_outbox WHERE state = 'pending' ORDER BY 1")
    pending = [r["id"] for r in rows]
    if pending:
        log.warning(
            "outbox rows still pending when the snapshot was taken: batches cut off by a crash",
            batches=pending[:20],
            count=len(pending),
        )
    return pending

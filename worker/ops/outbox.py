"""`gpm outbox`: read the unfinished saga rows and resolve those an operator has dealt with.

'compensated' rows are batches rewound after a failed graph write (their events were read
again and applied under a later batch, or dead-lettered); 'failed' rows are batches the
graph committed and PostgreSQL did not record (`gpm check --repair` settles the stores).
Both stay as the record of what happened until an operator resolves them; resolved rows
keep their error and the operator's note, and retention removes them after its window.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import structlog

from worker.compose import open_relational
from worker.config import Settings
from worker.ports import OutboxRow

log = structlog.get_logger(__name__)


async def list_rows(settings: Settings, states: Sequence[str], limit: int) -> list[OutboxRow]:
    """The unfinished rows in ``states``, oldest first per state."""
    relational = await open_relational(settings)
    try:
        return await relational.outbox_rows(states, limit)
    finally:
        await relational.close()


async def resolve(
    settings: Settings,
    states: Sequence[str],
    *,
    note: str,
    older_than_s: float = 0,
    batch_ids: Sequence[UUID] | None = None,
    dry_run: bool = False,
) -> list[UUID]:
    """Mark the matching compensated or failed rows resolved (or only find them); return their batch ids."""
    relational = await open_relational(settings)
    try:
        resolved = await relational.resolve_outbox(
            states, note=note, older_than_s=older_than_s, batch_ids=batch_ids, dry_run=dry_run
        )
    finally:
        await relational.close()
    if dry_run:
        return resolved
    log.info("outbox rows resolved", count=len(resolved), states=list(states), note=note)
    return resolved

"""`gpm replay`: move the group's committed offsets, then (optionally) watch the lag drain.

Reprocessing is safe by construction: every event id already applied is a no-op (the
processed-event ledger) and versions never go backwards, so a replay converges to the
same state. To reprocess into fresh stores instead, point the settings at empty
databases and a new group id (``GPM_KAFKA__GROUP_ID``) and pass ``--into-empty-stores``:
the command checks that both stores are empty before it moves anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition

from worker.compose import open_stores
from worker.config import Settings
from worker.errors import GpmError
from worker.ops.offsets import GroupOffsets


@dataclass(frozen=True, slots=True)
class Move:
    """One partition's committed offset before and after the reset."""

    topic: str
    partition: int
    before: int | None
    after: int


def parse_explicit(specs: list[str]) -> dict[TopicPartition, int]:
    """``TOPIC:PARTITION=OFFSET`` strings to offsets; a clear error for anything else."""
    offsets: dict[TopicPartition, int] = {}
    for spec in specs:
        where, _, offset = spec.rpartition("=")
        topic, _, partition = where.rpartition(":")
        if not (topic and partition.isdigit() and offset.isdigit()):
            msg = f"--offset must look like TOPIC:PARTITION=OFFSET, got {spec!r}"
            raise GpmError(msg)
        offsets[TopicPartition(topic, int(partition))] = int(offset)
    return offsets


async def plan_reset(
    settings: Settings,
    *,
    to: str,
    at: datetime | None,
    topics: list[str] | None,
    partitions: list[int] | None,
    explicit: list[str],
    apply: bool,
    force: bool,
) -> list[Move]:
    """Work out the new offsets and, if ``apply``, commit them (refusing live groups unless forced)."""
    async with GroupOffsets.open(settings.kafka) as group:
        wanted = parse_explicit(explicit)
        chosen = await group.topics(topics or sorted({tp.topic for tp in wanted}) or None)
        current = {(o.topic, o.partition): o for o in await group.offsets(chosen)}
        if wanted:
            unknown = [f"{tp.topic}:{tp.partition}" for tp in wanted if (tp.topic, tp.partition) not in current]
            if unknown:
                msg = f"no such partition: {', '.join(unknown)}"
                raise GpmError(msg)
            targets = wanted
        else:
            tps = [TopicPartition(t, p) for t, p in current if partitions is None or p in partitions]
            targets = await group.targets(tps, to=to, at=at)
        moves = [
            Move(tp.topic, tp.partition, current[(tp.topic, tp.partition)].committed, offset)
            for tp, offset in sorted(targets.items())
        ]
        if apply and targets:
            await group.reset(targets, force=force)
    return moves


async def require_empty_stores(settings: Settings) -> None:
    """Raise GpmError unless the configured stores hold nothing yet (a reprocess would else merge into them)."""
    async with open_stores(settings) as stores:
        held = [f"PostgreSQL table {table}" for table in await stores.relational.tables_with_applied_state()]
        if not await stores.graph.is_empty():
            held.append(f"graph database {settings.graph.database}")
    if held:
        msg = f"not empty: {', '.join(held)}; --into-empty-stores needs fresh databases (and a new group id)"
        raise GpmError(msg)


async def watch_lag(
    settings: Settings, topics: list[str] | None, on_progress: Callable[[int, int], None], poll_s: float = 1.0
) -> None:
    """Report (reprocessed, total) until the group's lag is zero."""
    async with GroupOffsets.open(settings.kafka) as group:
        chosen = await group.topics(topics)
        total: int | None = None
        while True:
            lag = sum(o.lag for o in await group.offsets(chosen))
            total = max(total or 0, lag)
            on_progress(total - lag, total)
            if lag == 0:
                return
            await asyncio.sleep(poll_s)

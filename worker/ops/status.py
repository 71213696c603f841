"""`gpm status`: per partition committed/end offsets, lag and last applied time; outbox and links."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.compose import open_relational
from worker.config import Settings
from worker.ops.offsets import GroupOffsets, PartitionOffsets


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """What an operator asks of one partition."""

    offsets: PartitionOffsets
    last_applied_at: datetime | None


@dataclass(frozen=True, slots=True)
class Status:
    """The whole picture for one consumer group."""

    group_id: str
    members: list[str]
    partitions: list[PartitionStatus]
    outbox: dict[str, int]
    parked_links: int
    unresolved_links: int

    @property
    def lag(self) -> int:
        """Total records not yet committed."""
        return sum(p.offsets.lag for p in self.partitions)


async def collect(settings: Settings, topics: list[str] | None = None) -> Status:
    """Read the group's offsets from the broker and the saga's state from PostgreSQL."""
    async with GroupOffsets.open(settings.kafka) as group:
        offsets = await group.offsets(await group.topics(topics))
        members = await group.members()
    relational = await open_relational(settings)
    try:
        last = await relational.last_applied()
        # Unfinished states only: what an operator acts on, read through their partial index
        # (counting every applied batch would cost as much as the history).
        outbox = await relational.outbox_counts(unfinished=True)
        parked = await relational.parked_links(settings.worker.parked_link_ttl_s, sample=0)
    finally:
        await relational.close()
    return Status(
        group_id=settings.kafka.group_id,
        members=members,
        partitions=[PartitionStatus(o, last.get((o.topic, o.partition))) for o in offsets],
        outbox=outbox,
        parked_links=parked.parked,
        unresolved_links=parked.expired,
    )

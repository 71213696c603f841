"""The consumer group's offsets as operators see them: committed, end, lag; and resets.

Everything goes through the Kafka protocol (admin client and a group-less consumer), so it
works against any broker the worker works against. A reset commits through a consumer
that uses the group id with a manual assignment: the broker accepts it only while the
group has no live members, which is also why :func:`reset` refuses when it has some.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from worker.broker import explained
from worker.config import KafkaSettings
from worker.errors import GpmError

# A broker that has just started has no group coordinator for a few seconds (Apache Kafka
# loads __consumer_offsets first): such retriable errors are waited out this long.
COORDINATOR_WAIT_S = 15.0


async def committed_offsets(
    admin: AIOKafkaAdminClient, group_id: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's committed offsets, waiting out a coordinator that is not ready yet."""
    deadline = asyncio.get_running_loop().time() + COORDINATOR_WAIT_S
    while True:
        try:
            offsets: dict[TopicPartition, OffsetAndMetadata] = await admin.list_consumer_group_offsets(
                group_id, partitions=partitions
            )
        except KafkaError as exc:
            if not exc.retriable or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
        else:
            return offsets


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One partition's committed offset (None: never committed), end offset and lag."""

    topic: str
    partition: int
    committed: int | None
    end: int
    start: int

    @property
    def lag(self) -> int:
        """Records not yet committed (from the start of the log if nothing was committed)."""
        return self.end - (self.start if self.committed is None else max(self.committed, self.start))


class GroupOffsets:
    """Admin view of one consumer group on the topics its pattern matches."""

    def __init__(self, settings: KafkaSettings, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
        self._settings = settings
        self._admin = admin
        self._consumer = consumer

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: KafkaSettings) -> AsyncIterator[GroupOffsets]:
        """Connect an admin client and a group-less consumer (for end offsets and times)."""
        admin = AIOKafkaAdminClient(**settings.client_options(), client_id=f"{settings.client_id}-ops")
        consumer = AIOKafkaConsumer(**settings.client_options(), group_id=None, enable_auto_commit=False)
        try:
            async with explained(settings):
                await admin.start()
                await consumer.start()
            yield cls(settings, admin, consumer)
        finally:
            # Stopped even when start() failed half-way, so nothing is left unclosed.
            await consumer.stop()
            await admin.close()

    async def all_topics(self) -> set[str]:
        """Every topic on the cluster."""
        return set(await self._admin.list_topics())

    async def topics(self, only: list[str] | None = None) -> list[str]:
        """The topics the worker consumes (its pattern), optionally narrowed to ``only``."""
        pattern = re.compile(self._settings.consumed_pattern())
        topics = sorted(t for t in await self.all_topics() if pattern.match(t))
        if only:
            unknown = sorted(set(only) - set(topics))
            if unknown:
                msg = f"not consumed by this worker (GPM_KAFKA__TOPIC_PATTERN): {', '.join(unknown)}"
                raise GpmError(msg)
            topics = [t for t in topics if t in only]
        return topics

    async def partitions(self, topics: list[str]) -> list[TopicPartition]:
        """Every partition of ``topics``."""
        described = await self._admin.describe_topics(topics)
        return sorted(TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"])

    async def offsets(self, topics: list[str]) -> list[PartitionOffsets]:
        """Committed, start and end offset of every partition of ``topics``."""
        tps = await self.partitions(topics)
        if not tps:
            return []
        committed = await committed_offsets(self._admin, self._settings.group_id, tps)
        ends = await self._consumer.end_offsets(tps)
        starts = await self._consumer.beginning_offsets(tps)
        result = []
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            # A committed offset is proof that the log reaches it; the local broker (Tansu)
            # was seen reporting an end one short of it right after a produce.
            end = max(ends[tp], offset or 0)
            result.append(PartitionOffsets(tp.topic, tp.partition, offset, end, starts[tp]))
        return result

    async def members(self) -> list[str]:
        """Client ids of the group's live members."""
        responses = await self._admin.describe_consumer_groups([self._settings.group_id])
        # DescribeGroups v0+: group = (error_code, group_id, state, protocol_type, protocol, members, ...),
        # member = (member_id, [group_instance_id,] client_id, client_host, metadata, assignment):
        # counted from the end, the fields do not depend on the version.
        return [
            f"{member[0]} ({member[-4]}@{member[-3]})" if member[-4] else str(member[0])
            for response in responses
            for group in response.groups
            for member in group[5]
        ]

    async def targets(
        self, tps: list[TopicPartition], *, to: str, at: datetime | None = None
    ) -> dict[TopicPartition, int]:
        """The offsets a reset moves to: 'earliest', 'latest', or the first record at/after ``at``."""
        if to == "earliest":
            return dict(await self._consumer.beginning_offsets(tps))
        ends = await self._consumer.end_offsets(tps)
        if to == "latest":
            return dict(ends)
        if at is None:
            msg = "a timestamp reset needs --at"
            raise GpmError(msg)
        found = await self._consumer.offsets_for_times({tp: int(at.timestamp() * 1000) for tp in tps})
        # No record at or after the time: the partition moves to its end.
        return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}

    async def reset(self, offsets: dict[TopicPartition, int], *, force: bool = False, timeout_s: float = 120) -> None:
        """Commit ``offsets`` for the group; refuse while it has live members unless forced."""
        members = await self.members()
        if members and not force:
            msg = (
                f"group {self._settings.group_id} has {len(members)} live member(s) ({', '.join(members)}): "
                "stop the workers first, or pass --force (they may commit over the reset)"
            )
            raise GpmError(msg)
        # Commit as a member of the group: a commit from outside is refused (UNKNOWN_MEMBER_ID)
        # while the broker still lists a member, and some brokers list departed ones until
        # their session expires. Joining waits for that, as a rebalance does.
        committer = AIOKafkaConsumer(
            **self._settings.client_options(),
            group_id=self._settings.group_id,
            client_id=f"{self._settings.client_id}-replay",
            enable_auto_commit=False,
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
        )
        await committer.start()
        try:
            committer.subscribe(topics=sorted({tp.topic for tp in offsets}))
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not set(offsets) <= committer.assignment():
                if asyncio.get_running_loop().time() > deadline:
                    msg = f"could not take over the partitions within {timeout_s:.0f}s: are workers still running?"
                    raise GpmError(msg)
                committer.pause(*committer.assignment())  # join only; fetch nothing
                await committer.getmany(timeout_ms=500)
            await committer.commit({tp: OffsetAndMetadata(offset, "gpm replay") for tp, offset in offsets.items()})
        finally:
            await committer.stop()

"""`gpm dlq`: read the dead-letter topics, and re-drive letters to their original topic.

A re-driven record is the original key, value and headers (the ``__connect.errors.*``
headers dropped) plus ``gpm.redriven-from``. Re-driving twice is harmless: the event id
is in the processed-event ledger after the first successful apply.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.broker import explained, start_producer
from worker.config import KafkaSettings
from worker.deadletter import HEADER_PREFIX, ORIGINAL_PREFIX
from worker.errors import OperationRefused
from worker.ops.offsets import GroupOffsets

REDRIVEN_FROM = "gpm.redriven-from"
# Reading ends when every partition is read to its end, or after this many empty polls.
_IDLE_POLLS = 10
_POLL_MS = 500


@dataclass(frozen=True, slots=True)
class Letter:
    """One record of a dead-letter topic."""

    dlq_topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def error(self, name: str) -> str:
        """An ``__connect.errors.<name>`` header the worker wrote, decoded ('' if absent).

        The last one: the worker appends its own after the record's headers (which it renames
        since; letters written before that may carry a forged copy first).
        """
        found = ""
        for key, value in self.headers:
            if key == HEADER_PREFIX + name:
                found = value.decode(errors="replace")
        return found

    @property
    def origin(self) -> str:
        """``topic:partition:offset`` of the original record."""
        return f"{self.error('topic')}:{self.error('partition')}:{self.error('offset')}"

    @property
    def position(self) -> str:
        """``dlq_topic:partition:offset`` of this letter."""
        return f"{self.dlq_topic}:{self.partition}:{self.offset}"


async def read_letters(
    settings: KafkaSettings, *, reason: str | None = None, topic: str | None = None, grep: str | None = None
) -> list[Letter]:
    """Every letter now in the dead-letter topics of the worker's topics, filtered.

    Exact on any broker: the partitions come from the cluster's metadata, asked for
    explicitly (a consumer without a subscription has none on Apache Kafka), and each
    partition is read until the end its fetches report (its high watermark), so a broker
    whose ListOffsets answer lags (tansu) cannot make letters look absent.
    """
    try:
        pattern = re.compile(grep) if grep else None
    except re.error as exc:
        msg = f"--grep {grep!r} is not a regular expression: {exc}"
        raise OperationRefused(msg) from None
    async with GroupOffsets.open(settings) as group:
        sources = await group.topics()
        existing = await group.all_topics()
        dlq_topics = [t + settings.dlq_suffix for t in sources if t + settings.dlq_suffix in existing]
        if topic is not None:
            dlq_topics = [t for t in dlq_topics if t in {topic + settings.dlq_suffix, topic}]
        tps = await group.partitions(dlq_topics) if dlq_topics else []
    letters = await _read_all(settings, tps) if tps else []
    return [
        letter
        for letter in letters
        if (reason is None or letter.error("reason") == reason)
        and (pattern is None or pattern.search(letter.error("exception.message")))
    ]


async def _read_all(settings: KafkaSettings, tps: list[TopicPartition]) -> list[Letter]:
    consumer = AIOKafkaConsumer(**settings.client_options(), group_id=None, enable_auto_commit=False)
    letters: list[Letter] = []
    try:
        async with explained(settings):
            await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = set(tps)
        idle_polls = 0
        # A partition is done once a fetch reported its end and the position reached it;
        # offsets can have gaps (transaction markers, compaction), hence "reached", and a
        # broker that never reports an end for an empty partition ends on idle polls.
        while remaining and idle_polls < _IDLE_POLLS:
            fetched = await consumer.getmany(*remaining, timeout_ms=_POLL_MS)
            idle_polls = 0 if any(fetched.values()) else idle_polls + 1
            for tp, records in fetched.items():
                letters.extend(
                    Letter(tp.topic, tp.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers or ()))
                    for r in records
                )
            for tp in list(remaining):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return letters


def original_headers(letter: Letter) -> list[tuple[str, bytes]]:
    """The record's own headers, for re-driving: without the worker's error headers and marks.

    Error headers the record carried itself (kept renamed, possibly forged) are not passed on.
    """
    return [
        (key, value)
        for key, value in letter.headers
        if not key.startswith((HEADER_PREFIX, ORIGINAL_PREFIX + HEADER_PREFIX, "gpm.value.", "gpm.key.", REDRIVEN_FROM))
    ]


def redrive_target(settings: KafkaSettings, letter: Letter) -> str:
    """The topic a letter goes back to: its origin, only if the worker consumes it and it is this DLQ's source.

    Raises OperationRefused otherwise: a letter naming another topic (forged, or written for a
    different deployment) is never published there with the operator's credentials.
    """
    origin = letter.error("topic")
    if not origin or letter.dlq_topic != origin + settings.dlq_suffix:
        msg = f"letter {letter.position} names {origin!r} as its origin, not the topic of its dead-letter topic"
        raise OperationRefused(msg)
    if not re.match(settings.consumed_pattern(), origin):
        msg = f"letter {letter.position}: {origin!r} is not a topic the worker consumes (GPM_KAFKA__TOPIC_PATTERN)"
        raise OperationRefused(msg)
    return origin


async def redrive(
    settings: KafkaSettings, letters: list[Letter], on_sent: Callable[[Letter], None] | None = None
) -> int:
    """Publish each letter's original record to its original topic; return how many.

    Every target is checked first (``redrive_target``): nothing is sent if one is refused.
    """
    targets = [redrive_target(settings, letter) for letter in letters]
    producer = AIOKafkaProducer(
        **settings.client_options(), acks="all", compression_type="gzip", max_request_size=17 << 20
    )
    await start_producer(producer, settings)
    try:
        for letter, target in zip(letters, targets, strict=True):
            headers = original_headers(letter)
            headers.append((REDRIVEN_FROM, letter.position.encode()))
            await producer.send_and_wait(target, value=letter.value, key=letter.key, headers=headers)
            if on_sent is not None:
                on_sent(letter)
    finally:
        await producer.stop()
    return len(letters)

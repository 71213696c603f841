"""The consume loop: fetch, validate, batch, apply through the saga, then commit.

Offsets are committed only after a batch's events are applied or dead-lettered. When a
store stays unavailable past the saga's retry window, the loop rewinds the batch's
partitions to their first uncommitted offset and tries again after a pause, so memory
stays bounded (nothing is buffered beyond one batch) and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from opentelemetry import propagate, trace

from worker import failpoints
from worker.consume.batcher import Batch, Batcher
from worker.consume.decoding import DecodeAhead
from worker.consume.inflight import InFlight, footprint
from worker.consume.intake import dead_letter, headers_of, inbound, source_named, value_to_decode
from worker.deadletter import DeadLetterSink
from worker.errors import EventError, StoreUnavailable
from worker.events import Event, StoreNames, decode_event
from worker.ports import InboundEvent, Position
from worker.saga.coordinator import SagaCoordinator
from worker.telemetry import metrics

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("graph_postgres_manager.consume")


MAX_LINKS = 128  # spans keep at most 128 links by default; more would be dropped anyway


def _producer_links(batch: Batch) -> list[trace.Link]:
    """Links to the producers' spans, from the W3C ``traceparent`` headers of the batch's records."""
    links: list[trace.Link] = []
    for item in batch.events:
        carrier = {k: v.decode(errors="replace") for k, v in item.headers if k in {"traceparent", "tracestate"}}
        if not carrier:
            continue
        context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context, {"messaging.kafka.offset": item.position.offset}))
            if len(links) == MAX_LINKS:
                break
    return links


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints
    """Lets a batch in flight finish before partitions move, and drops buffered records."""

    def __init__(self, runner: IngestRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # The batches in flight commit their offsets on their own; wait for them so the
        # next owner starts after them, then forget what was buffered but not yet applied.
        if self._runner.flush_lock.locked() or self._runner.in_flight:
            log.info("partitions revoked: finishing the batch in flight first", batches=self._runner.in_flight)
        async with self._runner.flush_lock:
            await self._runner.settle()
            self._runner.batcher.drop_partitions({(tp.topic, tp.partition) for tp in revoked})
            self._runner.forget(revoked)
            # Records fetched before this point belong to the old assignment: never accept them
            # (after the new assignment, aiokafka re-reads from the committed offsets).
            self._runner.generation += 1
        log.info("partitions revoked", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._runner.assigned = set(assigned)
        self._runner.joined = True
        await self._runner.coordinator.recover(tuple(sorted((tp.topic, tp.partition) for tp in assigned)))
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


@dataclass(frozen=True, slots=True)
class RunnerLimits:
    """What the consumer loop needs of the settings, resolved by the composition root."""

    topic_pattern: str
    transaction_size: int
    linger_s: float
    batches_in_flight: int
    max_poll_records: int
    max_event_bytes: int
    max_nodes_per_graph: int
    strings_may_hold_nul: bool  # False for FalkorDB, which cannot store a NUL in a string
    store_names: StoreNames | None  # names the graph server refuses beyond the contract (ArcadeDB)
    decode_processes: int
    retry_max_s: float


class IngestRunner:
    """Owns the consumer loop of one worker process."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        coordinator: SagaCoordinator,
        dead_letters: DeadLetterSink,
        limits: RunnerLimits,
    ) -> None:
        self._consumer = consumer
        self.coordinator = coordinator
        self._dead_letters = dead_letters
        self._limits = limits
        self.batcher = Batcher(limits.transaction_size, limits.linger_s, time.monotonic)
        self.flush_lock = asyncio.Lock()
        self._flights = InFlight(limits.batches_in_flight)
        self.assigned: set[TopicPartition] = set()
        self.joined = False
        self._rewound: set[TopicPartition] = set()  # partitions the last rewind moved back
        # Per partition, the offset this worker committed last (or first read): the lag's base.
        self._floor: dict[TopicPartition, int] = {}
        self.generation = 0  # bumped by every revoke
        self.stopping = asyncio.Event()
        self.last_heartbeat = time.monotonic()
        self._decoder = DecodeAhead(
            functools.partial(
                decode_event,
                max_bytes=limits.max_event_bytes,
                max_nodes=limits.max_nodes_per_graph,
                strings_may_hold_nul=limits.strings_may_hold_nul,
                store_names=limits.store_names,
            ),
            processes=limits.decode_processes,
            window_bytes=limits.max_event_bytes,
        )

    @property
    def in_flight(self) -> int:
        """Batches being applied or committed."""
        return len(self._flights)

    def paused(self) -> set[TopicPartition]:
        """Partitions whose fetching is paused (while waiting out a store outage)."""
        return set(self._consumer.paused())

    def subscribe(self) -> None:
        """Subscribe by pattern with the rebalance listener."""
        self._consumer.subscribe(pattern=self._limits.topic_pattern, listener=_Rebalance(self))

    async def run(self) -> None:
        """Consume until :attr:`stopping` is set; the batch in flight is finished first."""
        limits = self._limits
        try:
            while not self.stopping.is_set():
                self.last_heartbeat = time.monotonic()
                if not await self._reap():
                    continue  # rewound: fetch again from the rewound offsets
                timeout_ms = max(10, int(self.batcher.seconds_left() * 1000))
                fetched = await self._consumer.getmany(
                    timeout_ms=min(timeout_ms, 1000), max_records=limits.max_poll_records
                )
                await self._accept_all(list(fetched.items()))
                self._record_lag(fetched)
                if self.batcher.due:
                    await self._flush()
            async with self.flush_lock:
                await self.settle()
        finally:
            self._decoder.close()

    def _record_lag(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Per held partition: its end (the high watermark fetches report) minus what this worker committed.

        Updated every turn, records or not, so it grows while a store is down (the rewound
        partitions are fetched again after each pause), where a lag taken from the records
        fetched stood still.
        """
        for tp, records in fetched.items():
            if records:
                # Nothing committed by this worker yet: count from the first record it read.
                self._floor.setdefault(tp, records[0].offset)
        metrics.partitions_assigned = len(self._consumer.assignment())
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            floor = self._floor.setdefault(tp, highwater)  # caught up when first seen with nothing to read
            metrics.lag[(tp.topic, tp.partition)] = max(0, highwater - floor)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """A revoke: this worker's lag and last-applied series for those partitions go."""
        for tp in partitions:
            self._floor.pop(tp, None)
        metrics.forget_partitions({(tp.topic, tp.partition) for tp in partitions})

    async def _accept_all(self, fetched: list[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]) -> None:
        generation = self.generation
        # A graph that comes again unchanged (a re-ingest, a replay) is not validated again:
        # decode_event checks it against the digest PostgreSQL keeps for its source.
        sources = {source for _, records in fetched for record in records if (source := source_named(record))}
        digests = await self.coordinator.graph_digests(tuple(sorted(sources))) if sources else {}

        def known_digest(record: ConsumerRecord[bytes, bytes]) -> bytes | None:
            source = source_named(record)
            return digests.get(source) if source else None

        for n, (tp, records) in enumerate(fetched):
            decoded = self._decoder.decoded(records, value_to_decode, known_digest)
            async with contextlib.aclosing(decoded):
                index = 0
                async for record, outcome in decoded:
                    if self.generation != generation:
                        # A rebalance happened during a flush: the rest of this fetch is stale, and
                        # accepting it after the revoke dropped its predecessors would commit past them.
                        log.info("dropping records fetched before a rebalance", records=len(records) - index)
                        return
                    if not await self._accept(tp, record, outcome, generation):
                        # A batch was rewound: nothing fetched after it may be applied ahead of it.
                        self._seek_back([(tp, records[index:]), *fetched[n + 1 :]])
                        return
                    index += 1

    def _seek_back(self, unaccepted: list[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]) -> None:
        """Re-read what was fetched but not accepted (partitions the rewind already moved stay)."""
        for tp, records in unaccepted:
            if records and tp not in self._rewound and tp in self._consumer.assignment():
                self._consumer.seek(tp, records[0].offset)

    async def _accept(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], event: Event | EventError, generation: int
    ) -> bool:
        """Batch one decoded record (or its dead letter); False if a flush it caused was rewound."""
        metrics.events_consumed.labels(topic=tp.topic).inc()
        position = Position(tp.topic, tp.partition, record.offset)
        event = inbound(record, event)
        if isinstance(event, EventError):
            log.warning(
                "invalid event", topic=tp.topic, partition=tp.partition, offset=record.offset, reason=event.reason
            )
            self.batcher.reject(dead_letter(record, position, event))
            return True
        item = InboundEvent(
            event=event, position=position, raw=record.value, key=record.key, headers=headers_of(record)
        )
        if self.batcher.would_overflow(item) and not await self._flush():
            return False  # the item was not added: it is re-read with the rewound batch
        if self.generation != generation:
            # The flush waited for a revoke (which lets the batches in flight finish): this
            # record belongs to the old assignment; the caller drops the rest of its fetch.
            return True
        self.batcher.add(item)
        if self.batcher.full:
            return await self._flush()
        return True

    async def _flush(self) -> bool:
        """Start applying the pending batch; False if an earlier batch failed and all were rewound instead."""
        async with self.flush_lock:
            if not await self._reap():
                return False
            batch = self.batcher.take()
            if not batch:
                return True
            sources = footprint(batch)
            while not self._flights.room_for(sources):
                if not await self._finish_oldest(batch):
                    return False
            self._flights.launch(batch, sources, self._apply_and_commit)
            return True

    async def _reap(self) -> bool:
        """Collect the batches that finished; False if one failed (then everything was rewound)."""
        while self._flights.oldest_done():
            if not await self._finish_oldest(None):
                return False
        return True

    async def _finish_oldest(self, taken: Batch | None) -> bool:
        """Wait for the oldest batch; if the stores failed it, rewind it, those after it and ``taken``."""
        flight = self._flights.pop_oldest()
        try:
            await flight.task
        except StoreUnavailable as exc:
            later = [batch for batch, _ in await self._flights.wait_all()]
            await self._rewind([flight.batch, *later, *([taken] if taken else []), self.batcher.take()], exc)
            return False
        return True

    async def settle(self) -> None:
        """Let every batch in flight finish (a failed one is re-read by whoever consumes next)."""
        for batch, error in await self._flights.wait_all():
            if error is not None:
                log.warning("batch not applied; its events will be re-read", error=str(error), events=len(batch))

    async def _apply_and_commit(self, batch: Batch, previous: asyncio.Task[None] | None) -> None:
        with tracer.start_as_current_span(
            "process batch",
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka", "messaging.batch.message_count": len(batch)},
            links=_producer_links(batch),
        ):
            await self.coordinator.apply(batch.events)
            if previous is not None:
                # Offsets in batch order: an earlier batch that failed fails this one too,
                # which is then rewound with it.
                await previous
            # After the saga and the earlier batches, so a rewind for a store outage cannot
            # leave a letter sent for a batch that is then re-read; a failure half-way
            # through the letters can re-send the earlier ones (at-least-once in the
            # dead-letter topic).
            for letter in batch.rejected:
                with tracer.start_as_current_span("dead-letter", attributes={"gpm.reason": letter.reason}):
                    await self._dead_letters.send(letter)
                metrics.dead_lettered.labels(reason=letter.reason).inc()
            await self._commit(batch)

    async def _rewind(self, batches: list[Batch], exc: StoreUnavailable) -> None:
        events = sum(len(batch) for batch in batches)
        log.error("stores unavailable past the retry window; rewinding", error=str(exc), events=events)
        metrics.batch_retries.labels(cause="rewound").inc()
        first: dict[tuple[str, int], int] = {}
        for batch in batches:
            for tp, offset in batch.first_offsets.items():
                first[tp] = min(offset, first.get(tp, offset))
        self._rewound = set()
        for (topic, partition), offset in first.items():
            tp = TopicPartition(topic, partition)
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, offset)
                self._rewound.add(tp)
        # Wait before fetching the same records again, with fetching paused: otherwise the
        # background fetcher keeps buffering every partition while the stores are down.
        # A stop request cuts the wait short.
        paused = self._consumer.assignment()
        self._consumer.pause(*paused)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=self._limits.retry_max_s)
        finally:
            self._consumer.resume(*(tp for tp in paused if tp in self._consumer.assignment()))

    async def _commit(self, batch: Batch) -> None:
        failpoints.hit("before-commit")
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset + 1, "")
            for (topic, partition), offset in batch.last_offsets.items()
        }
        try:
            await self._consumer.commit(offsets)
            for tp, committed in offsets.items():
                self._floor[tp] = committed.offset
        except (CommitFailedError, KafkaError) as exc:
            # Applied but not committed: the next owner re-reads these events and the
            # processed-event ledger turns them into no-ops.
            log.warning("offset commit failed; events will be re-read and skipped as duplicates", error=str(exc))
            return
        log.debug("offsets committed", offsets={f"{tp.topic}:{tp.partition}": o.offset for tp, o in offsets.items()})

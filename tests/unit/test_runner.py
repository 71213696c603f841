"""The consume loop's offset discipline, with a fake consumer and coordinator (pure logic)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.factories import graph, link, upsert
from worker.compose import runner_limits
from worker.config import KafkaSettings, Settings, WorkerSettings
from worker.consume import runner as runner_module
from worker.consume.runner import IngestRunner, _Rebalance
from worker.errors import StoreUnavailable
from worker.events import AstGraphUpserted, Event, encode_event, graph_digest, restore_graph
from worker.ports import InboundEvent

P0 = TopicPartition("ast-graphs", 0)


@dataclass
class Record:
    """What the runner reads of an aiokafka ConsumerRecord."""

    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class FakeConsumer:
    """Serves a log from a position that seek() moves; records commits."""

    log: list[Record]
    position: int = 0
    commits: list[int] = field(default_factory=list)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        """Everything from the position on (aiokafka hands out whole fetched chunks too)."""
        chunk = self.log[self.position : self.position + max_records]
        self.position += len(chunk)
        if not chunk:
            await asyncio.sleep(0.01)
            return {}
        return {P0: chunk}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Move the position back."""
        self.position = offset

    async def commit(self, offsets: dict[TopicPartition, object]) -> None:
        """Remember the committed offset."""
        self.commits.append(offsets[P0].offset)  # type: ignore[attr-defined]

    def assignment(self) -> set[TopicPartition]:
        """Always P0."""
        return {P0}

    def highwater(self, tp: TopicPartition) -> int:
        """The log's end."""
        return len(self.log)

    def paused(self) -> set[TopicPartition]:
        """Nothing is paused for long in these tests."""
        return set()

    def pause(self, *tps: TopicPartition) -> None:
        """Nothing to pause."""

    def resume(self, *tps: TopicPartition) -> None:
        """Nothing to resume."""


async def _until(condition: Callable[[], bool], task: asyncio.Task[None], timeout_s: float = 10) -> None:
    """Poll the fakes until ``condition``; a crashed consume loop fails the test at once."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            if task.done():
                task.result()
                pytest.fail("the consume loop stopped before the condition held")
            await asyncio.sleep(0.01)


class FlakyCoordinator:
    """Fails the first apply (store outage), then applies."""

    def __init__(self) -> None:
        self.calls = 0
        self.applied: list[int] = []

    async def apply(self, events: list[InboundEvent]) -> None:
        """Record what was applied."""
        self.calls += 1
        if self.calls == 1:
            raise StoreUnavailable("down")
        self.applied.extend(e.position.offset for e in events)


@pytest.mark.parametrize("in_flight", [1, 2])
@pytest.mark.parametrize(
    ("sizes", "transaction_size"),
    [([1, 1, 1, 1], 1), ([1, 2, 1, 2], 2)],  # a full batch fails; an overflowing record triggers the failing flush
    ids=["full", "overflow"],
)
async def test_no_offset_is_committed_past_a_rewound_batch(
    sizes: list[int], transaction_size: int, in_flight: int
) -> None:
    """After a failed batch nothing after it commits; one batch at a time, nothing after it is even applied."""
    values = [
        encode_event(upsert(f"f{i}.py", 1, graph([(f"n{k}", "Name") for k in range(size)])))
        for i, size in enumerate(sizes)
    ]
    consumer = FakeConsumer([Record(i, v) for i, v in enumerate(values)])
    coordinator = FlakyCoordinator()
    committed_with: list[set[int]] = []  # what was applied when each commit was made
    commit = consumer.commit

    async def checked_commit(offsets: dict[TopicPartition, object]) -> None:
        committed_with.append(set(coordinator.applied))
        await commit(offsets)

    consumer.commit = checked_commit  # type: ignore[method-assign]
    settings = Settings(
        worker=WorkerSettings(
            transaction_size=transaction_size, linger_ms=0, retry_max_s=0.01, batches_in_flight=in_flight
        )
    )
    runner = IngestRunner(consumer, coordinator, None, runner_limits(settings))  # type: ignore[arg-type]
    task = asyncio.create_task(runner.run())
    await _until(lambda: consumer.commits[-1:] == [4], task)
    runner.stopping.set()
    await task
    assert consumer.commits == sorted(consumer.commits)
    for offset, applied in zip(consumer.commits, committed_with, strict=True):
        assert set(range(offset)) <= applied  # never committed past an unapplied offset
    if in_flight == 1:
        assert coordinator.applied == [0, 1, 2, 3]  # in order, the failed one first, nothing ahead of it


class RebalancingCoordinator:
    """Applies; during the first batch the partition is revoked and assigned back, as aiokafka does."""

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.runner: IngestRunner | None = None
        self.applied: list[int] = []
        self.rebalance: asyncio.Task[None] | None = None

    async def apply(self, events: list[InboundEvent]) -> None:
        """Record what was applied; start the rebalance once."""
        if self.rebalance is None:
            self.rebalance = asyncio.create_task(self._revoke_and_reassign())
            await asyncio.sleep(0.01)  # the revoke is now waiting for this batch
        self.applied.extend(e.position.offset for e in events)

    async def _revoke_and_reassign(self) -> None:
        assert self.runner is not None
        await _Rebalance(self.runner).on_partitions_revoked({P0})
        # A new assignment starts from the committed offset.
        self.consumer.position = self.consumer.commits[-1] if self.consumer.commits else 0


async def _rebalanced_run(
    consumer: FakeConsumer, coordinator: RebalancingCoordinator, settings: Settings
) -> IngestRunner:
    """Run the loop (the coordinator revokes and reassigns during the first batch) until offset 6 is committed."""
    runner = IngestRunner(consumer, coordinator, None, runner_limits(settings))  # type: ignore[arg-type]
    coordinator.runner = runner
    task = asyncio.create_task(runner.run())
    await _until(lambda: bool(consumer.commits) and consumer.commits[-1] >= 6, task)
    runner.stopping.set()
    await task
    return runner


async def test_records_fetched_before_a_rebalance_are_not_applied_after_it() -> None:
    """The revoke drops the buffered records; the rest of the old fetch must not be applied past them."""
    values = [encode_event(upsert(f"f{i}.py", 1, graph([("n", "Name")]))) for i in range(6)]
    consumer = FakeConsumer([Record(i, v) for i, v in enumerate(values)])
    coordinator = RebalancingCoordinator(consumer)
    settings = Settings(worker=WorkerSettings(transaction_size=2, linger_ms=0))
    runner = await _rebalanced_run(consumer, coordinator, settings)
    assert runner.generation == 1
    assert coordinator.applied == [0, 1, 2, 3, 4, 5]  # nothing skipped, nothing out of order
    assert consumer.commits == [2, 4, 6]


class SlowFetchConsumer(FakeConsumer):
    """Each fetch takes a moment, as a broker round trip does (other tasks run meanwhile)."""

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        """Wait, then serve as the fake does."""
        await asyncio.sleep(0.05)
        return await super().getmany(timeout_ms, max_records)


class SlowRebalancingCoordinator(RebalancingCoordinator):
    """As above, but the first batch takes long enough for the loop to hit an overflow during the revoke."""

    async def apply(self, events: list[InboundEvent]) -> None:
        """Start the rebalance once, then take a while."""
        first = self.rebalance is None
        await super().apply(events)
        if first:
            await asyncio.sleep(0.3)


async def test_a_record_whose_flush_waited_for_a_revoke_is_not_applied() -> None:
    """An overflow flush that waited out a revoke must not batch its now-stale record ahead of the re-read."""
    sizes = [1, 1, 1, 2, 1, 1]  # f3 overflows the batch holding f2 while the revoke settles batch 0
    values = [
        encode_event(upsert(f"f{i}.py", 1, graph([(f"n{k}", "Name") for k in range(size)])))
        for i, size in enumerate(sizes)
    ]
    consumer = SlowFetchConsumer([Record(i, v) for i, v in enumerate(values)])
    coordinator = SlowRebalancingCoordinator(consumer)
    settings = Settings(
        kafka=KafkaSettings(max_poll_records=2),  # f0 and f1 first: the revoke starts before f2 and f3 come
        worker=WorkerSettings(transaction_size=2, linger_ms=0, decode_processes=0),
    )
    runner = await _rebalanced_run(consumer, coordinator, settings)
    assert runner.generation == 1
    assert coordinator.applied == [0, 1, 2, 3, 4, 5]  # f3 was not applied before f2, nor twice


def _span_exporter() -> InMemorySpanExporter:
    """Collect spans in memory, on the process's SDK provider (a worker test may have set it)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_batch_span_links_to_the_producers_spans() -> None:
    """The consumer span of a batch carries a link to each record's producer span (traceparent header)."""
    exporter = _span_exporter()
    trace_ids = [f"{i + 1:032x}" for i in range(3)]
    records = [
        Record(
            i,
            encode_event(upsert(f"t{i}.py", 1, graph([("n", "Name")]))),
            headers=(("traceparent", f"00-{tid}-{i + 1:016x}-01".encode()),),
        )
        for i, tid in enumerate(trace_ids)
    ]
    consumer = FakeConsumer(records)
    coordinator = RebalancingCoordinator(consumer)
    coordinator.rebalance = asyncio.create_task(asyncio.sleep(0))  # no rebalance in this test
    settings = Settings(worker=WorkerSettings(transaction_size=3, linger_ms=0))
    runner = IngestRunner(consumer, coordinator, None, runner_limits(settings))  # type: ignore[arg-type]
    task = asyncio.create_task(runner.run())
    await _until(lambda: bool(consumer.commits), task)
    runner.stopping.set()
    await task
    spans = [s for s in exporter.get_finished_spans() if s.name == "process batch"]
    assert len(spans) == 1
    assert spans[0].kind is trace.SpanKind.CONSUMER
    assert [format(link.context.trace_id, "032x") for link in spans[0].links] == trace_ids


class SlowCoordinator:
    """Takes a while per batch and records which sources were being applied at the same time."""

    def __init__(self) -> None:
        self.active: list[str] = []
        self.overlaps: list[tuple[str, ...]] = []
        self.applied: list[int] = []

    async def apply(self, events: list[InboundEvent]) -> None:
        """Apply one batch slowly."""
        sources = [e.event.source_id for e in events]
        self.active += sources
        self.overlaps.append(tuple(sorted(self.active)))
        await asyncio.sleep(0.05)
        for source in sources:
            self.active.remove(source)
        self.applied.extend(e.position.offset for e in events)


async def test_batches_overlap_only_when_their_sources_and_intents_are_disjoint() -> None:
    """Disjoint batches run side by side; a source's next version and an intent wait; offsets commit in order."""
    events = [
        upsert("a.py", 1, graph([("n0", "Name")])),
        upsert("a.py", 2, graph([("n0", "Name")])),  # same source as the first: must wait for it
        upsert("b.py", 1, graph([("n0", "Name")])),
        link(uuid.uuid4(), 1, [("c.py", "n0")]),  # an intent: alone
        upsert("c.py", 1, graph([("n0", "Name")])),
    ]
    consumer = FakeConsumer([Record(i, encode_event(e)) for i, e in enumerate(events)])
    coordinator = SlowCoordinator()
    settings = Settings(worker=WorkerSettings(transaction_size=1, linger_ms=0, batches_in_flight=2))
    runner = IngestRunner(consumer, coordinator, None, runner_limits(settings))  # type: ignore[arg-type]
    task = asyncio.create_task(runner.run())
    await _until(lambda: consumer.commits[-1:] == [5], task)
    runner.stopping.set()
    await task
    assert ("a.py", "b.py") in coordinator.overlaps  # a.py's second version and b.py went together
    assert all(len(set(active)) == len(active) for active in coordinator.overlaps)  # a source never twice at once
    intent = str(events[3].source_id)
    assert all(active == (intent,) for active in coordinator.overlaps if intent in active)
    assert consumer.commits == sorted(consumer.commits)
    assert sorted(coordinator.applied) == [0, 1, 2, 3, 4]


class DigestKeepingCoordinator:
    """Knows the applied graph's digest of some sources; records what was applied."""

    def __init__(self, digests: dict[str, bytes]) -> None:
        self.digests = digests
        self.asked: list[tuple[str, ...]] = []
        self.applied: list[InboundEvent] = []

    async def graph_digests(self, source_ids: tuple[str, ...]) -> dict[str, bytes]:
        """The digests asked for that it knows."""
        self.asked.append(source_ids)
        return {s: d for s, d in self.digests.items() if s in source_ids}

    async def apply(self, events: list[InboundEvent]) -> None:
        """Record the events."""
        self.applied.extend(events)


async def test_each_graph_record_is_decoded_with_its_sources_applied_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """One digest query per fetch, by record key; graph records get their source's digest, others none."""
    same = graph([("n", "Name")])
    events = [upsert("known.py", 2, same), upsert("new.py", 1, same), link(uuid.uuid4(), 1, [("known.py", "n")])]
    records = [
        Record(0, encode_event(events[0]), key=b"known.py"),
        Record(1, encode_event(events[1]), key=b"new.py"),
        Record(2, encode_event(events[2]), key=b"known.py"),
    ]
    for record, topic in zip(records, ["ast-graphs", "ast-graphs", "intent-links"], strict=True):
        record.topic = topic  # type: ignore[attr-defined]
    seen: list[bytes | None] = []
    real = runner_module.decode_event

    def spy(raw: bytes, *, known_digest: bytes | None = None, **limits: Any) -> Event:
        seen.append(known_digest)
        return real(raw, known_digest=known_digest, **limits)

    monkeypatch.setattr(runner_module, "decode_event", spy)
    consumer = FakeConsumer(records)
    coordinator = DigestKeepingCoordinator({"known.py": graph_digest(same)})
    settings = Settings(worker=WorkerSettings(transaction_size=10, linger_ms=0, decode_processes=0))
    runner = IngestRunner(consumer, coordinator, None, runner_limits(settings))  # type: ignore[arg-type]
    task = asyncio.create_task(runner.run())
    await _until(lambda: len(coordinator.applied) == 3, task)
    runner.stopping.set()
    await task
    assert coordinator.asked == [("known.py", "new.py")]
    assert seen == [graph_digest(same), None, None]
    applied = [item.event for item in coordinator.applied]
    assert isinstance(applied[0], AstGraphUpserted)
    assert applied[0].graph.left_behind  # unchanged: its graph stayed in its record
    assert [restore_graph(applied[0], records[0].value), *applied[1:]] == events

"""The main job on the embedded stack: ingest real AST graphs end to end and report.

Shared by ``gpm dev`` (which shows the result) and the benchmark (which times it): both
publish the graphs of standard-library files to the real broker, run the real worker,
and wait until every source is applied and every offset committed.
"""

from __future__ import annotations

import asyncio
import sysconfig
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.app import Worker
from worker.compose import open_relational
from worker.config import Settings
from worker.devstack import DevStack
from worker.events import AstGraphUpserted, EventType, IntentLinkUpserted
from worker.publish import publish_events
from worker.sample import event_for_file, python_files

GRAPH_TOPIC = "ast-graphs"
INTENT_TOPIC = "intent-links"
PARTITIONS = 6


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one end-to-end run applied and how long it took."""

    files: int
    nodes: int
    edges: int
    seconds: float
    outbox: dict[str, int]

    @property
    def nodes_per_s(self) -> float:
        """Nodes applied per second, end to end."""
        return self.nodes / self.seconds


def corpus(
    files: int,
    on_parsed: Callable[[], None] | None = None,
    *,
    root: Path | None = None,
    max_nodes: int | None = None,
    keep: Callable[[AstGraphUpserted], bool] | None = None,
) -> list[AstGraphUpserted]:
    """Upsert events for up to ``files`` Python files under ``root``.

    Without ``root``: the standard library (about 750 files), then the installed packages
    (their source ids start with ``site-packages/``), so a corpus of thousands of files is
    real code too. With ``max_nodes`` it stops at the first file that brings the total to
    that many nodes; when the files run out before that, the same files follow again as other
    sources (``r2/...``, ``r3/...``: another release of each package, vendored beside the
    first), sharing the parsed graphs, so a corpus of ten million nodes fits in memory.
    With ``keep``, only the files it keeps count (e.g. what a backend can store).
    """
    packages = Path(sysconfig.get_paths()["purelib"])
    # (tree to walk, what source ids are relative to)
    trees = [(root, root)] if root else [(Path(sysconfig.get_paths()["stdlib"]), None), (packages, packages.parent)]
    events: list[AstGraphUpserted] = []
    nodes = 0
    for base, ids_from in trees:
        for path in python_files(base):
            if len(events) == files:
                return events
            try:
                event = event_for_file(path, ids_from or base)
            except (SyntaxError, ValueError):  # not Python this interpreter reads (e.g. 2to3 test data)
                continue
            if keep is not None and not keep(event):
                continue
            events.append(event)
            nodes += len(event.graph.nodes)
            if on_parsed is not None:
                on_parsed()
            if max_nodes is not None and nodes >= max_nodes:
                return events
    return events if max_nodes is None else _releases(events, files, max_nodes)


def _releases(events: list[AstGraphUpserted], files: int, max_nodes: int) -> list[AstGraphUpserted]:
    """``events``, then the same graphs again as releases 2, 3, ... until ``max_nodes`` or ``files`` is reached."""
    originals = list(events)
    nodes = sum(len(e.graph.nodes) for e in events)
    release = 1
    while originals and nodes < max_nodes and len(events) < files:
        release += 1
        for event in originals:
            if nodes >= max_nodes or len(events) == files:
                break
            source_id = f"r{release}/{event.source_id}"
            event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"gpm-sample:{source_id}:1")
            events.append(event.model_copy(update={"source_id": source_id, "event_id": event_id}))
            nodes += len(event.graph.nodes)
    return events


def sample_intent(event: AstGraphUpserted) -> IntentLinkUpserted:
    """An intent linked to the first function of a graph (or its root)."""
    node = next((n for n in event.graph.nodes if n["type"] == "FunctionDef"), event.graph.nodes[0])
    return IntentLinkUpserted.model_validate(
        {
            "event_id": uuid.uuid4(),
            "event_type": EventType.INTENT_LINK_UPSERTED,
            "source_id": str(uuid.uuid4()),
            "source_version": 1,
            "occurred_at": datetime.now(UTC),
            "producer": "gpm-dev",
            "ast_nodes": [{"source_id": event.source_id, "node_id": node["id"]}],
        }
    )


async def _committed_total(settings: Settings, topics: tuple[str, ...]) -> int:
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(settings.kafka.group_id, partitions=tps)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta is not None and meta.offset > 0)


async def prepare_topics(stack: DevStack, settings: Settings, topics: tuple[str, str]) -> int:
    """Create the graph and intent topics (and their dead-letter topics); the offsets already committed there."""
    await stack.broker.create_topics([*topics, *(f"{t}{settings.kafka.dlq_suffix}" for t in topics)], PARTITIONS)
    return await _committed_total(settings, topics)


async def publish_corpus(settings: Settings, topics: tuple[str, str], events: list[AstGraphUpserted]) -> int:
    """Publish ``events`` plus one intent link into the first of them; the number of records sent."""
    await publish_events(settings.kafka, topics[0], events)
    await publish_events(settings.kafka, topics[1], [sample_intent(events[0])])
    return len(events) + 1


async def wait_until_committed(
    settings: Settings,
    topics: tuple[str, str],
    expected: int,
    on_progress: Callable[[int], None],
) -> None:
    """Poll the group's committed offsets every 50 ms until they reach ``expected``.

    ``on_progress`` gets the total each time; raising there (a worker that died) ends the wait.
    """
    while (committed := await _committed_total(settings, topics)) < expected:
        on_progress(committed)
        await asyncio.sleep(0.05)


async def applied_totals(settings: Settings, seconds: float) -> IngestReport:
    """What PostgreSQL records as applied: live sources with their node and edge counts, outbox states."""
    relational = await open_relational(settings)
    try:
        totals = await relational.registry_totals()
        outbox = await relational.outbox_counts()
    finally:
        await relational.close()
    return IngestReport(
        files=totals.sources,
        nodes=totals.nodes,
        edges=totals.edges,
        seconds=seconds,
        outbox=outbox,
    )


async def ingest_corpus(
    stack: DevStack,
    settings: Settings,
    events: list[AstGraphUpserted],
    on_progress: Callable[[int], None] | None = None,
    on_started: Callable[[Worker], None] | None = None,
) -> IngestReport:
    """Run a worker in this process, publish ``events`` plus one intent link, wait until all is committed.

    ``on_started`` gets the worker once it holds its partitions (e.g. to say where its metrics are).
    """
    topics = (GRAPH_TOPIC, INTENT_TOPIC)
    before = await prepare_topics(stack, settings, topics)
    worker = Worker(settings, handle_signals=False)
    running = asyncio.create_task(worker.run())
    await worker.started.wait()
    if on_started is not None:
        on_started(worker)
    try:
        started = time.monotonic()
        expected = before + await publish_corpus(settings, topics, events)

        def progress(committed: int) -> None:
            if running.done():
                running.result()  # surface a crashed worker instead of waiting forever
            if on_progress is not None:
                on_progress(min(committed - before, len(events)))

        await wait_until_committed(settings, topics, expected, progress)
        seconds = time.monotonic() - started
    finally:
        worker.stop()
        await running
    return await applied_totals(settings, seconds)

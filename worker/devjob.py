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
from worker.config import Settings
from worker.devstack import DevStack
from worker.events import AstGraphUpserted, EventType, IntentLinkUpserted
from worker.publish import publish_events
from worker.sample import event_for_file, stdlib_files
from worker.stores.postgres import PostgresRelationalStore

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


def corpus(files: int, on_parsed: Callable[[], None] | None = None) -> list[AstGraphUpserted]:
    """Upsert events for up to ``files`` standard-library files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    events = []
    for path in stdlib_files(files, root):
        events.append(event_for_file(path, root))
        if on_parsed is not None:
            on_parsed()
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


async def _publish(settings: Settings, topics: tuple[str, str], events: list[AstGraphUpserted]) -> None:
    await publish_events(settings.kafka, topics[0], events)
    await publish_events(settings.kafka, topics[1], [sample_intent(events[0])])


async def ingest_corpus(
    stack: DevStack,
    settings: Settings,
    events: list[AstGraphUpserted],
    on_progress: Callable[[int], None] | None = None,
    topics: tuple[str, str] = (GRAPH_TOPIC, INTENT_TOPIC),
    *,
    backlog: bool = False,
) -> IngestReport:
    """Run a worker, publish ``events`` plus one intent link, wait until all is committed.

    ``topics`` are the graph and intent topics; the worker's pattern must match both. With
    ``backlog`` everything is published first and the clock runs from the moment the worker
    holds its partitions: the worker's own drain rate, without the producer's CPU (which
    shares this process) or the group join in it.
    """
    await stack.broker.create_topics([*topics, *(f"{t}{settings.kafka.dlq_suffix}" for t in topics)], PARTITIONS)
    before = await _committed_total(settings, topics)
    if backlog:
        await _publish(settings, topics, events)
    worker = Worker(settings, handle_signals=False)
    running = asyncio.create_task(worker.run())
    await worker.started.wait()
    if backlog:
        # A flag the rebalance listener sets; there is no event to wait on.
        while not (worker.runner is not None and worker.runner.joined):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    relational = await PostgresRelationalStore.connect(settings.postgres)
    try:
        started = time.monotonic()
        if not backlog:
            await _publish(settings, topics, events)
        expected = before + len(events) + 1
        while (committed := await _committed_total(settings, topics)) < expected:
            if running.done():
                running.result()  # surface a crashed worker instead of waiting forever
            if on_progress is not None:
                on_progress(min(committed - before, len(events)))
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        totals = (
            await relational.fetch(
                "SELECT count(*) AS files, coalesce(sum(node_count), 0) AS nodes, "
                "coalesce(sum(edge_count), 0) AS edges FROM gpm_sources WHERE NOT deleted"
            )
        )[0]
        outbox = await relational.fetch("SELECT state, count(*) AS n FROM gpm_outbox GROUP BY state")
    finally:
        await relational.close()
        worker.stop()
        await running
    return IngestReport(
        files=int(totals["files"]),
        nodes=int(totals["nodes"]),
        edges=int(totals["edges"]),
        seconds=seconds,
        outbox={r["state"]: int(r["n"]) for r in outbox},
    )

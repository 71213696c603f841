"""Assemble and run one worker process: stores, dead-letter producer, consumer, runner.

Shutdown (SIGTERM/SIGINT), as arq does it: stop fetching, let the batch in flight finish
within ``shutdown_grace_s`` (or cancel it: its graph transaction rolls back and its
offsets stay uncommitted), then close everything in reverse order of opening.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker import failpoints
from worker.config import Settings
from worker.consume.runner import IngestRunner
from worker.deadletter import KafkaDeadLetterSink
from worker.health import HealthServer, Probes, configure_metrics
from worker.saga.coordinator import SagaCoordinator
from worker.stores.neo4j import Neo4jGraphStore
from worker.stores.postgres import PostgresRelationalStore

log = structlog.get_logger(__name__)


async def migrate(settings: Settings) -> None:
    """Apply PostgreSQL migrations and the graph schema."""
    relational = await PostgresRelationalStore.connect(settings.postgres)
    graph = Neo4jGraphStore.connect(settings.graph, settings.worker.transaction_size)
    try:
        await relational.migrate()
        await graph.migrate()
    finally:
        await graph.close()
        await relational.close()


class Worker:
    """One worker process; ``run`` returns after a clean shutdown."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self._handle_signals = handle_signals
        failpoints.arm(settings.worker.crash_at)
        self.runner: IngestRunner | None = None
        self.health: HealthServer | None = None
        self.started = asyncio.Event()

    def stop(self) -> None:
        """Ask the worker to stop (idempotent)."""
        if self.runner is not None:
            self.runner.stopping.set()

    async def run(self) -> None:
        """Open the stores, migrate, consume until stopped, close."""
        s = self.settings
        async with AsyncExitStack() as stack:
            relational = await PostgresRelationalStore.connect(s.postgres)
            stack.push_async_callback(relational.close)
            graph = Neo4jGraphStore.connect(s.graph, s.worker.transaction_size)
            stack.push_async_callback(graph.close)
            await relational.migrate()
            await graph.migrate()
            producer = AIOKafkaProducer(
                bootstrap_servers=s.kafka.bootstrap_servers,
                client_id=f"{s.kafka.client_id}-dlq",
                acks="all",
                # A dead letter carries the original value, which may be as large as any event.
                max_request_size=s.worker.max_event_bytes + 64 * 1024,
                compression_type="gzip",
            )
            await producer.start()
            stack.push_async_callback(producer.stop)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=s.kafka.bootstrap_servers,
                group_id=s.kafka.group_id,
                client_id=s.kafka.client_id,
                enable_auto_commit=False,
                auto_offset_reset=s.kafka.auto_offset_reset,
                session_timeout_ms=s.kafka.session_timeout_ms,
                heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
                max_partition_fetch_bytes=s.kafka.max_partition_fetch_bytes,
                metadata_max_age_ms=s.kafka.metadata_max_age_ms,
            )
            dead_letters = KafkaDeadLetterSink(producer, s.kafka.dlq_suffix)
            coordinator = SagaCoordinator(relational, graph, dead_letters, s.worker)
            self.runner = runner = IngestRunner(consumer, coordinator, dead_letters, s)
            runner.subscribe()
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            if s.health.enabled:
                configure_metrics()
                self.health = HealthServer(
                    s.health,
                    Probes(
                        heartbeat=lambda: runner.last_heartbeat,
                        joined=lambda: runner.joined,
                        ping_postgres=relational.ping,
                        ping_graph=graph.ping,
                    ),
                )
                await self.health.start()
                stack.push_async_callback(self.health.stop)
            if self._handle_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.stop)
                    stack.callback(loop.remove_signal_handler, sig)
            log.info("worker started", group_id=s.kafka.group_id, topic_pattern=s.kafka.topic_pattern)
            self.started.set()
            await self._consume_until_stopped(runner)
        log.info("worker stopped")

    async def _consume_until_stopped(self, runner: IngestRunner) -> None:
        task = asyncio.create_task(runner.run(), name="ingest")
        stop = asyncio.create_task(runner.stopping.wait(), name="stop-signal")
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            task.result()  # re-raise a crash of the loop
            return
        log.info("stopping: finishing the batch in flight", grace_s=self.settings.worker.shutdown_grace_s)
        try:
            await asyncio.wait_for(task, timeout=self.settings.worker.shutdown_grace_s)
        except TimeoutError:
            log.warning("grace period over: batch in flight cancelled; it will be re-read on restart")

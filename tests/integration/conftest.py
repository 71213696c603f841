"""Real services for integration tests: one embedded stack per session, fresh namespaces per test.

The stack (tansu broker, PostgreSQL, ArcadeDB over Bolt) comes from PyPI wheels and is
always started; if it cannot start, the session fails loudly instead of skipping. Each
test gets its own PostgreSQL database, ArcadeDB database, topics and consumer group.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from worker.app import Worker
from worker.config import Settings
from worker.devstack import DevStack
from worker.events import Envelope
from worker.publish import publish_events
from worker.stores.neo4j import Neo4jGraphStore
from worker.stores.postgres import PostgresRelationalStore

_counter = itertools.count()


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    """The embedded services, started once for the whole session."""
    with DevStack() as running:
        yield running


@dataclass
class Namespace:
    """One test's private topics, group and databases on the shared stack."""

    stack: DevStack
    name: str
    settings: Settings

    @property
    def graph_topic(self) -> str:
        """The test's ast-graphs.<name> topic."""
        return f"ast-graphs.{self.name}"

    @property
    def intent_topic(self) -> str:
        """The test's intent topic (matched by the test's own pattern)."""
        return f"intent-links-{self.name}"

    async def publish(self, topic: str, events: list[Envelope]) -> None:
        """Publish events keyed by source id and wait for the acks."""
        await publish_events(self.settings.kafka.bootstrap_servers, topic, events)

    async def publish_raw(self, topic: str, value: bytes, key: bytes = b"raw") -> None:
        """Publish arbitrary bytes (for invalid events)."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value=value, key=key)
        finally:
            await producer.stop()

    def worker(self, **overrides: Any) -> Worker:
        """A worker for this namespace (signals not handled: tests stop it)."""
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        return Worker(settings, handle_signals=False)

    async def relational(self) -> PostgresRelationalStore:
        """A connected PostgreSQL store on this test's database."""
        return await PostgresRelationalStore.connect(self.settings.postgres)

    def graph(self) -> Neo4jGraphStore:
        """A graph store on this test's database."""
        return Neo4jGraphStore.connect(self.settings.graph)

    async def read_topic(self, topic: str, expected: int, timeout_s: float = 30) -> list[Any]:
        """Read ``expected`` records from the beginning of a topic."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + timeout_s
            while len(records) < expected and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        finally:
            await consumer.stop()
        return records


@pytest.fixture
async def ns(stack: DevStack) -> Namespace:
    """A fresh namespace: database in PostgreSQL and in ArcadeDB, topics, group."""
    name = f"t{next(_counter)}{uuid.uuid4().hex[:6]}"
    base = await asyncio.to_thread(
        stack.namespace,
        name,
        transaction_size=500,
        linger_ms=50,
        retry_initial_s=0.2,
        retry_max_s=1,
        retry_window_s=3,
        shutdown_grace_s=10,
    )
    await stack.broker.create_topics(
        [f"ast-graphs.{name}", f"intent-links-{name}", f"ast-graphs.{name}.dlq"], partitions=3
    )
    kafka = {
        "topic_pattern": rf"^(ast-graphs\.{name}|intent-links-{name})$",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "metadata_max_age_ms": 2000,
    }
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update=kafka)})
    return Namespace(stack, name, settings)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 60, what: str = "condition") -> None:
    """Poll ``check`` until true; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which graph servers the contract tests ran against."""
    from tests.integration import test_graph_store_contract as contract

    terminalreporter.write_line(contract.pytest_terminal_summary_line())

"""Real services for integration tests: one embedded stack per session, fresh namespaces per test.

The stack (tansu broker, PostgreSQL, ArcadeDB over Bolt; FalkorDB when a test asks for
it) comes from PyPI wheels and is always started; if it cannot start, the session fails loudly instead of skipping. Each
test gets its own PostgreSQL database, ArcadeDB database, topics and consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from worker.app import Worker
from worker.compose import connect_graph
from worker.config import GraphSettings, Settings
from worker.devstack import DevStack
from worker.devstack.arcadedb import ArcadeDBServer
from worker.devstack.falkordb import FalkorDBServer
from worker.events import Envelope
from worker.ops.offsets import committed_offsets
from worker.ports import GraphBackend
from worker.publish import publish_events
from worker.stores.postgres import PostgresRelationalStore

_counter = itertools.count()


# GPM_TEST_KAFKA=host:port runs the suites against that broker (a real Apache Kafka for a
# local check) instead of the embedded tansu; the summary says which ran.
EXTERNAL_BROKER = os.environ.get("GPM_TEST_KAFKA")


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    """The embedded services, started once for the whole session."""
    with DevStack(broker_address=EXTERNAL_BROKER) as running:
        yield running


@pytest.fixture(scope="session")
def falkordb_server(stack: DevStack) -> Iterator[FalkorDBServer]:
    """FalkorDB (the second graph backend) beside the stack, started once; a graph per test."""
    server = FalkorDBServer(stack.workdir)
    server.start()
    yield server
    server.stop()


@dataclass
class Namespace:
    """One test's private topics, group and databases on the shared stack."""

    stack: DevStack
    name: str
    settings: Settings
    # Every worker process spawned for the test; the fixture kills those still running.
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

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
        await publish_events(self.settings.kafka, topic, events)

    async def publish_raw(
        self, topic: str, value: bytes | None, key: bytes = b"raw", headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Publish arbitrary bytes (for invalid events), with headers if given."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
        finally:
            await producer.stop()

    def env(self, **worker: str) -> dict[str, str]:
        """Environment for a `gpm run` process on this namespace (extra GPM_WORKER__* from ``worker``)."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPM_")}
        env.update(
            GPM_KAFKA__BOOTSTRAP_SERVERS=s.kafka.bootstrap_servers,
            GPM_KAFKA__GROUP_ID=s.kafka.group_id,
            GPM_KAFKA__TOPIC_PATTERN=s.kafka.topic_pattern,
            GPM_KAFKA__SESSION_TIMEOUT_MS=str(s.kafka.session_timeout_ms),
            GPM_KAFKA__HEARTBEAT_INTERVAL_MS=str(s.kafka.heartbeat_interval_ms),
            GPM_POSTGRES__DSN=s.postgres.dsn.get_secret_value(),
            GPM_GRAPH__BACKEND=s.graph.backend,
            GPM_GRAPH__URI=s.graph.uri,
            GPM_GRAPH__USER=s.graph.user,
            GPM_GRAPH__PASSWORD=s.graph.password.get_secret_value(),
            GPM_GRAPH__DATABASE=s.graph.database,
            GPM_WORKER__LINGER_MS=str(s.worker.linger_ms),
            GPM_HEALTH__HOST="127.0.0.1",
            GPM_HEALTH__PORT="0",
        )
        if s.worker.transaction_size is not None:
            env["GPM_WORKER__TRANSACTION_SIZE"] = str(s.worker.transaction_size)
        env.update({f"GPM_WORKER__{k.upper()}": v for k, v in worker.items()})
        return env

    async def spawn_worker(self, env: dict[str, str] | None = None, **worker: str) -> asyncio.subprocess.Process:
        """Start `python -m worker run` as a separate process; output piped (``env`` over the namespace's)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            env={**self.env(**worker), **(env or {})},
            cwd=str(self.stack.workdir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    async def committed(self, topic: str, partitions: int = 3) -> dict[int, int]:
        """The group's committed offset per partition of ``topic`` (absent if none)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            offsets = await committed_offsets(admin, self.settings.kafka.group_id, tps)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta is not None and meta.offset >= 0}

    async def committed_total(self) -> int:
        """Committed offsets summed over the namespace's graph and intent topics."""
        return sum((await self.committed(self.graph_topic)).values()) + sum(
            (await self.committed(self.intent_topic)).values()
        )

    def on_graph_server(self, server: ArcadeDBServer) -> Settings:
        """The namespace settings, with the graph on a dedicated server a test can stop."""
        graph = self.settings.graph.model_copy(
            update={
                "uri": server.uri,
                "password": SecretStr(server.password),
                "database": "graph",
                "max_transaction_retry_time_s": 0,  # fail fast: the saga's own retry is under test
                "connection_timeout_s": 1,
            }
        )
        return self.settings.model_copy(update={"graph": graph})

    async def sql(self, query: str, *args: object) -> list[dict[str, Any]]:
        """Run any statement on the namespace's PostgreSQL database (tests also write: roles, constraints)."""
        conn = await asyncpg.connect(self.settings.postgres.dsn.get_secret_value())
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    async def wait_committed(self, expected: int, timeout_s: float = 60) -> None:
        """Wait until at least ``expected`` offsets are committed over the namespace's topics."""

        async def reached() -> bool:
            return await self.committed_total() >= expected

        await eventually(reached, timeout_s=timeout_s, what=f"{expected} offsets committed")

    def worker(self, **overrides: Any) -> Worker:
        """A worker for this namespace (signals not handled: tests stop it)."""
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        return Worker(settings, handle_signals=False)

    async def relational(self) -> PostgresRelationalStore:
        """A connected PostgreSQL store on this test's database."""
        return await PostgresRelationalStore.connect(self.settings.postgres)

    def graph(self) -> GraphBackend:
        """A graph store on this test's database."""
        return connect_graph(self.settings.graph)

    def use_falkordb(self, server: FalkorDBServer) -> None:
        """From now on the namespace's graph is a FalkorDB graph of its own name."""
        graph = GraphSettings(backend="falkordb", uri=server.uri, database=self.name)
        self.settings = self.settings.model_copy(update={"graph": graph})

    async def records_in(self, topic: str, partitions: int = 3) -> int:
        """How many records ``topic`` holds (its end offsets summed): 0 for a DLQ nothing reached."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap_servers, group_id=None)
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        finally:
            await consumer.stop()
        return sum(ends.values())

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


async def make_namespace(stack: DevStack) -> Namespace:
    """A fresh namespace: databases in PostgreSQL and ArcadeDB, topics, group."""
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
        [f"ast-graphs.{name}", f"intent-links-{name}", f"ast-graphs.{name}.dlq", f"intent-links-{name}.dlq"],
        partitions=3,
    )
    kafka = {
        "topic_pattern": rf"^(ast-graphs\.{name}|intent-links-{name})$",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "metadata_max_age_ms": 2000,
    }
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update=kafka)})
    return Namespace(stack, name, settings)


@pytest.fixture
async def ns(stack: DevStack) -> AsyncIterator[Namespace]:
    """A fresh namespace for one test; worker processes a failed test left running are killed."""
    namespace = await make_namespace(stack)
    yield namespace
    for process in namespace.processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop_workers(*processes: asyncio.subprocess.Process) -> list[str]:
    """SIGTERM worker processes together and wait for each; return their outputs (exit codes unchecked)."""
    for process in processes:
        process.terminate()
    return [await _output_after_exit(process) for process in processes]


async def _output_after_exit(process: asyncio.subprocess.Process, timeout_s: float = 90) -> str:
    """The process's output once it exited; if it does not within the timeout, kill it and fail showing its end.

    The timeout is above the worker's own bound (30 s grace + 10 s per resource closed). A
    worker that overstays is asked for its task and thread stacks (SIGUSR1, SIGUSR2) first.
    """
    assert process.stdout is not None
    stdout, chunks = process.stdout, []

    async def drain() -> None:
        while chunk := await stdout.read(65536):
            chunks.append(chunk)

    reader = asyncio.create_task(drain())
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), timeout_s)
    except TimeoutError:
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            await asyncio.sleep(1)
        process.kill()
        await process.wait()
        await reader
        tail = b"".join(chunks).decode(errors="replace")
        pytest.fail(
            f"worker {process.pid} did not exit within {timeout_s}s of SIGTERM; its output ends:\n{tail[-12000:]}"
        )
    await reader
    return b"".join(chunks).decode(errors="replace")


def assert_clean_exits(processes: list[asyncio.subprocess.Process], outputs: list[str]) -> None:
    """Every process exited 0; otherwise show the end of its output."""
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]


async def probe(port: int, path: str) -> tuple[int, Any]:
    """GET a health endpoint of a worker: (status, JSON body, or text for /metrics)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as response:
        body = await response.text() if path == "/metrics" else await response.json()
        return response.status, body


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 60, what: str = "condition") -> None:
    """Poll ``check`` until true; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20).returncode == 0  # noqa: S607


# Set by tests/with-neo4j when it gave the suite a real Neo4j: a Neo4j case then fails
# rather than skips if the server cannot be had.
NEO4J_REQUIRED = os.environ.get("GPM_TEST_REQUIRE_NEO4J") == "1"
NO_NEO4J = "real Neo4j not available here: NEO4J_URI is unset and Docker is unreachable"


def real_neo4j(request: pytest.FixtureRequest) -> GraphSettings:
    """The real Neo4j's settings for a test that needs one; skips loudly (or fails, when required) without."""
    settings: GraphSettings | None = request.getfixturevalue("neo4j_settings")
    if settings is None:
        if NEO4J_REQUIRED:
            pytest.fail("GPM_TEST_REQUIRE_NEO4J=1 but no real Neo4j could be had")
        pytest.skip(NO_NEO4J)
    return settings


@pytest.fixture(scope="session")
def neo4j_settings() -> Iterator[GraphSettings | None]:
    """A real Neo4j 5 if one can be had here, else None."""
    if uri := os.environ.get("NEO4J_URI"):
        yield GraphSettings(
            uri=uri,
            user=os.environ.get("NEO4J_USER", "neo4j"),
            password=SecretStr(os.environ.get("NEO4J_PASSWORD", "")),
            database=os.environ.get("NEO4J_DATABASE", "neo4j"),
        )
        return
    if not _docker_available():
        yield None
        return
    from testcontainers.neo4j import Neo4jContainer

    with Neo4jContainer("neo4j:5.26-community") as container:
        yield GraphSettings(
            uri=container.get_connection_url(), user="neo4j", password=SecretStr(container.password), database="neo4j"
        )


# Said by the TLS PostgreSQL fixture (test_secure_connections.py) when it cannot start one.
NO_TLS_POSTGRES = "Debian's postgresql package is not installed (apt-get install postgresql)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which broker the suites and which graph servers the contract tests ran against."""
    from tests.integration import test_graph_store_contract as contract

    broker = f"the external broker at {EXTERNAL_BROKER} (GPM_TEST_KAFKA)" if EXTERNAL_BROKER else "tansu (embedded)"
    terminalreporter.write_line(f"integration suites ran against: {broker}; outage tests always on tansu")
    terminalreporter.write_line(contract.pytest_terminal_summary_line())
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_NEO4J in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"REAL NEO4J NOT USED: {len(skipped)} cases that need one were SKIPPED "
            "(set NEO4J_URI, or run the suite through tests/with-neo4j beside ../shared/servers/neo4j-5.26)",
            red=True,
            bold=True,
        )
    elif uri := os.environ.get("NEO4J_URI"):
        terminalreporter.write_line(f"real Neo4j cases ran against {uri}; none skipped")
    if any(NO_TLS_POSTGRES in str(r.longrepr) for r in terminalreporter.stats.get("skipped", [])):
        terminalreporter.write_line(
            f"TLS POSTGRESQL NOT USED: its cases were SKIPPED ({NO_TLS_POSTGRES})", red=True, bold=True
        )

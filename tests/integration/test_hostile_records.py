"""Generated Kafka records, every field hostile, through the real broker into a real `gpm run`.

Keys, header names and values of any bytes (invalid UTF-8, oversized), timestamps over
the whole int64 range, null values, values past the size limit, compressed values that
inflate far past it, valid events among them; written by aiokafka's C and pure-Python
batch builders with every codec; into ArcadeDB and into a real Neo4j 5. The worker must
never exit, commit every offset, apply each record or dead-letter it with its reason, and
leave the stores consistent.
`make fuzz` runs many more examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.graph_wipe import wipe
from tests.integration.conftest import Namespace, assert_clean_exits, real_neo4j, stop_workers
from tests.kafka_records import HostileRecord, builder, hostile_records
from worker.library import GraphPostgresManager

pytestmark = pytest.mark.integration

MAX_EVENT_BYTES = 64 * 1024
EXAMPLES = max(4, int(os.environ.get("GPM_TEST_FUZZ_EXAMPLES", "0")) // 20)


async def _produce(ns: Namespace, records: list[HostileRecord]) -> list[tuple[HostileRecord, int, int]]:
    """Each record in a batch of its own (so any timestamp fits one): (record, partition, offset) for those taken."""
    producers: dict[str | None, AIOKafkaProducer] = {}
    taken = []
    try:
        for record in records:
            if record.compression not in producers:
                producers[record.compression] = producer = AIOKafkaProducer(
                    bootstrap_servers=ns.settings.kafka.bootstrap_servers,
                    acks="all",
                    compression_type=record.compression,
                    max_request_size=64 * 1024 * 1024,
                )
                await producer.start()
            with builder(record.builder):
                sent = await producers[record.compression].send(
                    ns.graph_topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers_for(record.builder),
                    timestamp_ms=record.timestamp_ms,
                )
            try:
                metadata = await sent
            except KafkaError:
                continue  # the broker refused it (a timestamp out of its bounds, say): never consumed
            taken.append((record, metadata.partition, metadata.offset))
    finally:
        for producer in producers.values():
            await producer.stop()
    return taken


async def _outcomes(ns: Namespace) -> tuple[dict[tuple[int, int], str], set[tuple[int, int]]]:
    """Letters by original (partition, offset) with their reasons; positions in the processed-event ledger."""
    letters: dict[tuple[int, int], str] = {}
    for letter in await ns.read_topic(ns.graph_topic + ".dlq", expected=10**9, timeout_s=3):
        headers = dict(letter.headers)
        position = (int(headers["__connect.errors.partition"]), int(headers["__connect.errors.offset"]))
        assert position not in letters, f"{position} dead-lettered twice"
        letters[position] = headers["__connect.errors.reason"].decode()
    rows = await ns.sql(
        "SELECT kafka_partition AS p, kafka_offset AS o FROM gpm_processed_events WHERE topic = $1", ns.graph_topic
    )
    return letters, {(row["p"], row["o"]) for row in rows}


async def _drained(ns: Namespace, produced: int, process: Any, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.returncode is None, "the worker must never exit"
        if sum((await ns.committed(ns.graph_topic)).values()) >= produced:
            return
        await asyncio.sleep(0.3)
    pytest.fail(f"not every offset committed within {timeout_s}s")


async def _read_into(stream: asyncio.StreamReader, chunks: list[bytes]) -> None:
    while chunk := await stream.read(65536):
        chunks.append(chunk)


@pytest.mark.parametrize("graph_server", ["arcadedb", "neo4j"])
async def test_generated_hostile_records_are_applied_or_dead_lettered_and_the_worker_goes_on(
    ns: Namespace, graph_server: str, request: pytest.FixtureRequest
) -> None:
    """Every offset committed, each record applied or in the DLQ with its reason, the worker up, the stores agree."""
    if graph_server == "neo4j":
        ns.settings = ns.settings.model_copy(update={"graph": real_neo4j(request)})
        graph = ns.graph()
        try:
            await wipe(graph)  # one shared database (Community has one)
        finally:
            await graph.close()
    process = await ns.spawn_worker(max_event_bytes=str(MAX_EVENT_BYTES))
    assert process.stdout is not None
    # Read the worker's log as it comes: a full pipe would block its writes, and so the worker.
    log: list[bytes] = []
    reading = asyncio.create_task(_read_into(process.stdout, log))
    produced: list[tuple[HostileRecord, int, int]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize="GPM_TEST_FUZZ_EXAMPLES" not in os.environ,
        # Each example drains through a worker: a failing one is reported as found, not shrunk for minutes.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(records=st.lists(hostile_records(MAX_EVENT_BYTES), min_size=1, max_size=12))
    def example(records: list[HostileRecord]) -> None:
        async def run() -> None:
            taken = await _produce(ns, records)
            produced.extend(taken)
            await _drained(ns, len(produced), process)
            letters, ledger = await _outcomes(ns)
            for record, partition, offset in taken:
                where = (partition, offset)
                lettered, applied = where in letters, where in ledger
                assert lettered != applied, f"{record}: at {where} lettered={lettered} applied={applied}"
                if record.expect_reason == "":
                    assert applied, f"{record} was dead-lettered: {letters[where]}"
                elif record.expect_reason == "*":
                    assert lettered, f"{record} was applied"
                elif record.expect_reason is not None:
                    assert letters.get(where) == record.expect_reason, f"{record}: {letters.get(where)}"

        asyncio.run(run())

    await asyncio.to_thread(example)
    assert process.returncode is None, "the worker must still be running"
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    output = await stop_workers(process)  # reads the rest of the log
    assert_clean_exits([process], [b"".join(log).decode(errors="replace") + output[0]])
    async with GraphPostgresManager(ns.settings) as manager:
        report = await manager.check_data_consistency()
    assert report.consistent, report
    kinds = {record.kind for record, _, _ in produced}
    assert kinds >= {"valid", "bomb", "oversized"}, kinds  # the generator reached what it is for

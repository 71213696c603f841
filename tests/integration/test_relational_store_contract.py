"""The relational port's contract on the real PostgreSQL (and, for the saga's steps, on the fake).

The saga-step cases run against both ``FakeRelational`` (tests/fakes.py) and the
PostgreSQL adapter, so the fake the unit tests trust behaves as the real store does. The
named queries the library, CLI and ops commands use are checked on PostgreSQL alone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.factories import graph, inbound, link, upsert
from tests.fakes import FakeRelational
from tests.integration.conftest import Namespace
from worker.errors import OperationRefused
from worker.events import graph_digest
from worker.ports import BatchRecord, GraphWriteStats, InboundEvent, LinkRow, Outcome, RelationalStore
from worker.saga.plan import plan_batch

pytestmark = pytest.mark.integration

G = graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])
NO_STATS = GraphWriteStats()


@pytest.fixture(params=["postgres", "fake"])
async def store(request: pytest.FixtureRequest, ns: Namespace) -> AsyncIterator[RelationalStore]:
    """The port, on the real PostgreSQL or on the in-memory fake."""
    if request.param == "fake":
        yield FakeRelational()
        return
    real = await ns.relational()
    await real.migrate()
    try:
        yield real
    finally:
        await real.close()


def _record(batch: list[InboundEvent]) -> BatchRecord:
    return BatchRecord(
        batch_id=uuid.uuid4(),
        positions=tuple(item.position for item in batch),
        event_ids=tuple(item.event.event_id for item in batch),
        source_ids=tuple(item.event.source_id for item in batch),
        intent_ids=(),
        rows=sum(item.rows for item in batch),
    )


async def _apply(store: RelationalStore, batch: list[InboundEvent], stats: GraphWriteStats = NO_STATS) -> BatchRecord:
    """Saga steps 1 and 3 as the coordinator runs them (no graph here)."""
    record = _record(batch)
    plan = plan_batch(batch, await store.begin_batch(record))
    async with store.completing(record.batch_id, plan) as completion:
        await completion.finish(stats)
    return record


async def test_an_applied_batch_is_the_state_the_next_batch_reads(store: RelationalStore) -> None:
    """After step 3 commits, step 1 of a later batch reads the version and, of its own events, those processed."""
    first = inbound(upsert("a.py", 3, G), offset=0)
    await _apply(store, [first])
    later = inbound(upsert("a.py", 4, G), offset=1)
    state = await store.begin_batch(_record([first, later]))
    assert state.source_versions["a.py"] == 3
    assert state.processed_event_ids == {first.event.event_id}


async def test_a_replayed_or_older_event_changes_nothing(store: RelationalStore) -> None:
    """The same event again is a duplicate; an older version is superseded; the registry keeps the newest."""
    newest = inbound(upsert("a.py", 5, G), offset=0)
    await _apply(store, [newest])
    record = _record([newest, inbound(upsert("a.py", 2, G), offset=1)])
    plan = plan_batch([newest, inbound(upsert("a.py", 2, G), offset=1)], await store.begin_batch(record))
    assert [outcome for _, outcome in plan.outcomes] == [Outcome.DUPLICATE, Outcome.SUPERSEDED]
    state = await store.begin_batch(_record([inbound(upsert("a.py", 9, G), offset=2)]))
    assert state.source_versions["a.py"] == 5


async def test_leaving_the_completion_without_finish_keeps_nothing(store: RelationalStore) -> None:
    """A graph write that failed between open and finish: step 3 rolls back and the row can be failed."""
    batch = [inbound(upsert("b.py", 1, G), offset=0)]
    record = _record(batch)
    plan = plan_batch(batch, await store.begin_batch(record))
    with pytest.raises(RuntimeError):
        async with store.completing(record.batch_id, plan):
            raise RuntimeError("graph write failed")
    await store.fail_batch(record.batch_id, "compensated", "graph write failed")
    state = await store.begin_batch(_record(batch))
    assert "b.py" not in state.source_versions
    assert batch[0].event.event_id not in state.processed_event_ids


async def test_rows_left_pending_are_abandoned_on_their_partition_only(store: RelationalStore) -> None:
    """Recovery closes the pending rows of the partitions it names, and only those."""
    await store.begin_batch(_record([inbound(upsert("c.py", 1, G), offset=0, partition=0)]))
    await store.begin_batch(_record([inbound(upsert("d.py", 1, G), offset=0, partition=1)]))
    assert await store.abandon_pending((("ast-graphs", 0),)) == 1
    assert await store.abandon_pending((("ast-graphs", 0),)) == 0


async def test_the_named_queries_report_what_was_applied(ns: Namespace) -> None:
    """outbox_counts, registry_totals, versions, links, last_applied and the check's reads agree with the batches."""
    store = await ns.relational()
    try:
        await store.migrate()
        assert await store.tables_with_applied_state() == []
        intent = uuid.uuid4()
        await _apply(store, [inbound(upsert("a.py", 2, G), offset=0)])
        links = [("a.py", "f"), ("later.py", "x")]
        # The graph found no node later.py#x: that link is parked until its source arrives.
        parked = GraphWriteStats(unresolved_links=(LinkRow(intent, "later.py", "x"),))
        await _apply(store, [inbound(link(intent, 1, links), offset=0, topic="intent-links")], parked)
        await store.begin_batch(_record([inbound(upsert("z.py", 1, G), offset=1)]))  # left pending

        assert await store.outbox_counts() == {"applied": 2, "pending": 1}
        assert await store.outbox_counts(unfinished=True) == {"pending": 1}
        totals = await store.registry_totals()
        assert (totals.sources, totals.intents, totals.links, totals.parked) == (1, 1, 2, 1)
        assert (await store.source_version("a.py"), await store.source_version("never.py")) == (2, None)
        assert await store.intent_version(intent) == 1
        assert await store.current_links(intent) == (1, {("a.py", "f"), ("later.py", "x")})
        assert await store.current_links(uuid.uuid4()) == (None, set())
        assert await store.registered_sources() == {"a.py": (totals.nodes, 2)}
        assert await store.graph_digests(("a.py", "z.py", "never.py")) == {"a.py": graph_digest(G)}
        assert await store.graph_digests(()) == {}
        assert await store.registered_intents() == {str(intent): (1, 1)}
        assert set(await store.last_applied()) == {("ast-graphs", 0), ("intent-links", 0)}
        assert await store.tables_with_applied_state() == ["gpm_sources", "gpm_intents", "gpm_processed_events"]
        assert len(await store.stuck_batches(older_than_s=0)) == 1
        assert await store.stuck_batches(older_than_s=3600) == []
        # quiesced() holds the fence: a batch cannot start, and the old pending row is named.
        async with store.quiesced(settle_s=0) as pending:
            assert len(pending) == 1
            with pytest.raises(Exception, match="write fence"):
                await store.begin_batch(_record([inbound(upsert("w.py", 1, G), offset=2)]))
        await store.begin_batch(_record([inbound(upsert("w.py", 1, G), offset=2)]))
    finally:
        await store.close()


async def test_a_read_query_may_not_write(ns: Namespace) -> None:
    """fetch_read_only runs in a READ ONLY transaction: a write is refused, nothing kept."""
    store = await ns.relational()
    try:
        await store.migrate()
        with pytest.raises(OperationRefused):
            await store.fetch_read_only("DELETE FROM gpm_outbox")
        assert await store.fetch_read_only("SELECT count(*) AS n FROM gpm_outbox") == [{"n": 0}]
    finally:
        await store.close()

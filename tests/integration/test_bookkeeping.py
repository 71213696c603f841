"""Bounded bookkeeping: retention keeps replays no-ops, and operator reads stay flat beside a large ledger."""

from __future__ import annotations

import json
import statistics
import time
import uuid

import asyncpg
import pytest

from tests.faults.snapshots import assert_same_state, run_to_completion, snapshot
from tests.faults.test_crash_recovery import scenario
from tests.integration.conftest import Namespace
from tests.integration.test_ops_cli import gpm
from worker.errors import OperationRefused
from worker.stores.postgres_bookkeeping import (
    LAST_APPLIED,
    OLDEST,
    OUTBOX_ROWS,
    RESOLVABLE,
    RESOLVE_OUTBOX,
    UNFINISHED_OUTBOX,
)
from worker.stores.postgres_operations import STUCK_BATCHES

pytestmark = pytest.mark.integration
UNFINISHED = ("pending", "failed", "compensated")


async def test_retention_leaves_unfinished_rows_and_a_replay_after_it_changes_nothing(ns: Namespace) -> None:
    """Old ledger and finished outbox rows go, a chunk at a time; a full replay after it is a no-op.

    The registry's versions supersede every replayed event, so the stores end as they were
    and the graph is not written.
    """
    graphs, intents = scenario()
    total = len(graphs) + len(intents)
    await ns.publish(ns.graph_topic, graphs)
    await ns.publish(ns.intent_topic, intents)
    first = await run_to_completion(ns, total)
    before = await snapshot(ns)
    for state in UNFINISHED:  # what an operator must resolve: never pruned
        await ns.sql(
            """INSERT INTO gpm_outbox (batch_id, state, positions, event_ids, row_count, updated_at)
               VALUES ($1, $2, '[]', '{}', 0, now() - interval '30 days')""",
            uuid.uuid4(),
            state,
        )
    await ns.sql("UPDATE gpm_processed_events SET processed_at = now() - interval '2 days'")
    await ns.sql("UPDATE gpm_outbox SET updated_at = now() - interval '2 days' WHERE state = 'applied'")
    ledger = len(await ns.sql("SELECT event_id FROM gpm_processed_events"))
    applied = len(await ns.sql("SELECT batch_id FROM gpm_outbox WHERE state = 'applied'"))

    store = await ns.relational()
    try:
        removed = await store.prune_bookkeeping(older_than_s=24 * 3600, chunk=3)  # many chunks
        assert removed == {"gpm_processed_events": ledger, "gpm_outbox": applied}
        assert await store.prune_bookkeeping(older_than_s=24 * 3600) == {"gpm_processed_events": 0, "gpm_outbox": 0}
        kept = {r["state"] for r in await ns.sql("SELECT state FROM gpm_outbox")}
        assert kept == set(UNFINISHED)
        sizes = {b.table: b for b in await store.bookkeeping()}
        assert sizes["gpm_processed_events"].oldest is None
        assert sizes["gpm_outbox"].oldest is None  # unfinished rows are not "finished history"
        await ns.sql("DELETE FROM gpm_outbox")  # the operator resolved them
    finally:
        await store.close()

    code, _, err = await gpm(ns, "replay", "--to", "earliest", "--force")
    assert code == 0, err
    second = await run_to_completion(ns, total)
    # Every event again, each superseded by the version the registry holds: same registry,
    # links, graph and (re-filled) ledger, and not one node written.
    assert_same_state(await snapshot(ns), before, [first, second])
    written = await ns.sql("SELECT coalesce(sum((graph_stats->>'nodes_written')::int), 0) AS n FROM gpm_outbox")
    assert written == [{"n": 0}]


async def test_operator_reads_do_not_grow_with_the_history(ns: Namespace) -> None:
    """status, /metrics, stats and check's PostgreSQL side read partitions and unfinished rows, not the history.

    No plan scans the ledger or the outbox, and their time beside a million ledger rows
    stays within a small ratio of an empty one's.
    """
    store = await ns.relational()
    try:
        await store.migrate()

        async def reads() -> float:
            started = time.perf_counter()
            await store.last_applied()
            await store.outbox_counts(unfinished=True)
            await store.parked_links(3600, sample=0)
            await store.bookkeeping()
            await store.unfinished_outbox()
            await store.stuck_batches(600)
            await store.outbox_rows(RESOLVABLE, 100)
            return time.perf_counter() - started

        empty = statistics.median([await reads() for _ in range(9)])
        await ns.sql(
            """INSERT INTO gpm_processed_events (event_id, batch_id, outcome, topic, kafka_partition, kafka_offset,
                                                 processed_at)
               SELECT gen_random_uuid(), gen_random_uuid(), 'applied', 'ast-graphs', i % 6, i,
                      now() - make_interval(secs => i)
               FROM generate_series(1, 1000000) AS i"""
        )
        await ns.sql(
            """INSERT INTO gpm_outbox (batch_id, state, positions, event_ids, row_count, updated_at)
               SELECT gen_random_uuid(), 'applied', '[]', '{}', 1, now() - make_interval(secs => i)
               FROM generate_series(1, 200000) AS i"""
        )
        await ns.sql("ANALYZE gpm_processed_events")
        await ns.sql("ANALYZE gpm_outbox")
        for query in (LAST_APPLIED, UNFINISHED_OUTBOX, STUCK_BATCHES.replace("$1", "600"), *(q for _, q in OLDEST)):
            plan = "\n".join(r["QUERY PLAN"] for r in await ns.sql(f"EXPLAIN {query}"))
            assert "Seq Scan on gpm_processed_events" not in plan, plan
            assert "Seq Scan on gpm_outbox" not in plan, plan
        # `gpm outbox list / resolve`: their generic plans (a prepared statement's, once reused)
        # read the unfinished rows' index too, whatever states they are given.
        for query, args in ((OUTBOX_ROWS, "'{compensated,failed}', 100"), (RESOLVE_OUTBOX, "'{failed}', 0, NULL, 'x'")):
            plan = await _generic_plan(ns, query, args)
            assert "gpm_outbox_unfinished" in plan, plan
            assert "Seq Scan on gpm_outbox" not in plan, plan
        large = statistics.median([await reads() for _ in range(9)])
    finally:
        await store.close()
    # Each read is an index or catalogue lookup: a scan of a million rows would be 100x.
    assert large / empty < 3, (empty, large)


async def _generic_plan(ns: Namespace, query: str, args: str) -> str:
    """The plan a prepared ``query`` gets once PostgreSQL stops planning it per call (``args`` in SQL)."""
    conn = await asyncpg.connect(ns.settings.postgres.dsn.get_secret_value())
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE gpm_probe AS {query}")
        return "\n".join(r["QUERY PLAN"] for r in await conn.fetch(f"EXPLAIN EXECUTE gpm_probe({args})"))
    finally:
        await conn.close()


async def _outbox_row(ns: Namespace, state: str, age: str, error: str | None = None) -> uuid.UUID:
    batch_id = uuid.uuid4()
    await ns.sql(
        """INSERT INTO gpm_outbox (batch_id, state, positions, event_ids, row_count, last_error, updated_at)
           VALUES ($1, $2, '[{"topic": "ast-graphs", "partition": 2, "offset": 41}]', '{}', 7, $3,
                   now() - $4::text::interval)""",
        batch_id,
        state,
        error,
        age,
    )
    return batch_id


async def test_an_operator_lists_and_resolves_outbox_rows_and_retention_then_removes_them(ns: Namespace) -> None:
    """`gpm outbox list` shows what is not applied; `resolve` takes compensated and failed rows out of the counts.

    Resolved rows keep their error and the note until retention's window passes; pending
    rows are `gpm check --repair`'s, never resolved by hand, and applied ones are history.
    """
    store = await ns.relational()
    try:
        await store.migrate()
        compensated = await _outbox_row(ns, "compensated", "3 days", "graph store unavailable: connection refused")
        failed = await _outbox_row(ns, "failed", "1 hour", "PostgreSQL: [disk full]")
        pending = await _outbox_row(ns, "pending", "2 days")
        applied = await _outbox_row(ns, "applied", "1 day")

        code, out, err = await gpm(ns, "outbox", "list", "--json")
        assert code == 0, err
        listed = {row["batch_id"]: row for row in map(json.loads, out.splitlines())}
        assert set(listed) == {str(compensated), str(failed), str(pending)}
        assert listed[str(compensated)]["positions"] == ["ast-graphs:2:41"]
        assert listed[str(failed)]["last_error"] == "PostgreSQL: [disk full]"
        code, out, _ = await gpm(ns, "outbox", "list")  # the table: an error's brackets are text, not markup
        assert code == 0
        assert "[disk full]" in out

        code, _, err = await gpm(ns, "outbox", "resolve")
        assert code == 2, err
        assert "name the rows to resolve" in err
        code, _, err = await gpm(ns, "outbox", "resolve", "--state", "pending")
        assert code == 2, err
        with pytest.raises(OperationRefused, match="only compensated and failed"):
            await store.resolve_outbox(["pending"], note="a pending row is gpm check --repair's")
        code, _, err = await gpm(ns, "outbox", "resolve", str(applied), str(pending))
        assert code == 1
        assert str(applied) in err
        assert str(pending) in err
        code, _, err = await gpm(ns, "outbox", "resolve", "--state", "compensated", "--dry-run")
        assert (code, "would resolve 1 outbox row(s)") == (0, err.strip())
        assert await store.outbox_counts(unfinished=True) == {"compensated": 1, "failed": 1, "pending": 1}

        # Only rows unchanged for a day: the failed one (an hour old) stays.
        code, _, err = await gpm(
            ns,
            "outbox",
            "resolve",
            "--state",
            "compensated",
            "--state",
            "failed",
            "--older-than-s",
            "86400",
            "--note",
            "broker outage of 3 Dec, replayed",
        )
        assert (code, err.splitlines()[-1]) == (0, "resolved 1 outbox row(s)")
        logged = json.loads(err.splitlines()[0])  # the change is in the log, with its note
        assert (logged["event"], logged["count"], logged["note"]) == (
            "outbox rows resolved",
            1,
            "broker outage of 3 Dec, replayed",
        )
        code, _, err = await gpm(ns, "outbox", "resolve", str(failed), "--note", "checked and repaired")
        assert (code, err.splitlines()[-1]) == (0, "resolved 1 outbox row(s)")
        assert await store.outbox_counts(unfinished=True) == {"pending": 1}
        rows = {
            r["batch_id"]: r for r in await ns.sql("SELECT batch_id, state, resolution, last_error FROM gpm_outbox")
        }
        assert rows[compensated]["state"] == rows[failed]["state"] == "resolved"
        assert rows[compensated]["resolution"] == "broker outage of 3 Dec, replayed"
        assert rows[compensated]["last_error"] == "graph store unavailable: connection refused"

        # Retention counts a resolved row's age from its resolution.
        assert await store.prune_bookkeeping(older_than_s=6 * 3600) == {"gpm_processed_events": 0, "gpm_outbox": 1}
        await ns.sql("UPDATE gpm_outbox SET updated_at = now() - interval '7 hours' WHERE state = 'resolved'")
        assert await store.prune_bookkeeping(older_than_s=6 * 3600) == {"gpm_processed_events": 0, "gpm_outbox": 2}
        assert [r["batch_id"] for r in await ns.sql("SELECT batch_id FROM gpm_outbox")] == [pending]
    finally:
        await store.close()

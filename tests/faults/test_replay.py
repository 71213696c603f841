"""Replaying a topic from the beginning with a new consumer group changes nothing."""

from __future__ import annotations

import pytest

from tests.faults.snapshots import snapshot
from tests.faults.test_crash_recovery import scenario
from tests.integration.conftest import Namespace

pytestmark = pytest.mark.integration


async def test_full_replay_with_a_new_group_converges_to_the_identical_state(ns: Namespace) -> None:
    """Every event is re-read; the ledger and version guards make the second pass a no-op."""
    graphs, intents = scenario()
    total = len(graphs) + len(intents)
    await ns.publish(ns.graph_topic, graphs)
    await ns.publish(ns.intent_topic, intents)
    first = ns.worker()
    await _run_until(ns, first, total)
    before = await snapshot(ns)
    assert len(before["sources"]) == 9

    replay = ns.settings.kafka.model_copy(update={"group_id": ns.settings.kafka.group_id + "-replay"})
    ns.settings = ns.settings.model_copy(update={"kafka": replay})
    await _run_until(ns, ns.worker(), total)
    assert await snapshot(ns) == before
    rows = await ns.sql("SELECT count(*) AS n FROM gpm_processed_events")
    assert rows[0]["n"] == total  # the replay added no ledger rows: every event was a duplicate


async def _run_until(ns: Namespace, worker: object, expected: int) -> None:
    import asyncio

    from worker.app import Worker

    assert isinstance(worker, Worker)
    task = asyncio.create_task(worker.run())
    try:
        await ns.wait_committed(expected, timeout_s=90)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)

"""Worker processes in one group: joins, kill -9s and a revoke in the middle of a long batch.

Partitions move twice while events flow. The final state must equal one crash-free
worker's over the same events: nothing lost, nothing applied twice in a way that shows.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.factories import delete, graph, link, upsert
from tests.faults.snapshots import assert_same_state, reference_state, snapshot
from tests.integration.conftest import Namespace, assert_clean_exits, stop_workers
from worker.devstack import DevStack
from worker.events import Envelope

pytestmark = pytest.mark.integration


def _file(n: int, version: int) -> object:
    nodes = [("m", "Module")] + [(f"f{i}", "FunctionDef") for i in range(n)]
    return graph(nodes, [("m", "BODY", f"f{i}") for i in range(n)], version=version)


def waves() -> list[tuple[list[Envelope], list[Envelope]]]:
    """Three waves of graph and intent events over 30 sources."""
    intent = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
    first = [upsert(f"s{i}.py", 1, _file(2 + i % 5, 1)) for i in range(30)]
    second = [upsert(f"s{i}.py", 2, _file(1 + i % 3, 2)) for i in range(0, 30, 2)] + [delete("s5.py", 3)]
    third = [upsert(f"s{i}.py", 3, _file(4, 3)) for i in range(0, 30, 3)] + [upsert("s1.py", 1, _file(9, 1))]
    return [(first, []), (second, [link(intent, 1, [("s0.py", "f0"), ("s9.py", "f1")])]), (third, [])]


@pytest.fixture(scope="module")
def all_events() -> tuple[list[Envelope], list[Envelope]]:
    """The waves as one scenario (same event ids for the reference run)."""
    parts = waves()
    return [e for g, _ in parts for e in g], [e for _, i in parts for e in i]


async def test_join_and_crash_of_replicas_converge_to_the_single_worker_state(
    ns: Namespace, stack: DevStack, all_events: tuple[list[Envelope], list[Envelope]]
) -> None:
    """A joins, B joins mid-stream, A is killed: B finishes; the state equals the reference."""
    reference_task = asyncio.create_task(reference_state(stack, all_events))  # beside the scenario
    parts = waves()
    # Recompose the same events in waves (waves() makes new ids, so slice the shared scenario).
    graphs, intents = all_events
    sizes = [len(g) for g, _ in parts]
    wave_graphs = [graphs[: sizes[0]], graphs[sizes[0] : sizes[0] + sizes[1]], graphs[sizes[0] + sizes[1] :]]
    total = len(graphs) + len(intents)

    a = await ns.spawn_worker(transaction_size="15")
    await ns.publish(ns.graph_topic, wave_graphs[0])
    await ns.wait_committed(5)
    b = await ns.spawn_worker(transaction_size="15")
    await ns.publish(ns.graph_topic, wave_graphs[1])
    await ns.publish(ns.intent_topic, intents)
    await asyncio.sleep(5)  # let B join and take partitions
    a.kill()  # SIGKILL: no leave-group, no commit
    await a.wait()
    await ns.publish(ns.graph_topic, wave_graphs[2])
    try:
        await ns.wait_committed(total, timeout_s=120)
    finally:
        outputs = await stop_workers(b)
    assert_clean_exits([b], outputs)
    assert_same_state(await snapshot(ns), await reference_task, outputs)
    assert await ns.records_in(ns.graph_topic + ".dlq") == 0, "a valid event was dead-lettered"


async def test_three_replicas_with_a_kill_and_an_addition_converge_to_the_single_worker_state(
    ns: Namespace, stack: DevStack, all_events: tuple[list[Envelope], list[Envelope]]
) -> None:
    """Three workers share three partitions; one is killed -9 and another added while events flow."""
    reference = await reference_state(stack, all_events)
    graphs, intents = all_events
    third = len(graphs) // 3
    replicas = [await ns.spawn_worker(transaction_size="15") for _ in range(3)]
    await ns.publish(ns.graph_topic, graphs[:third])
    await ns.wait_committed(3)
    replicas[1].kill()  # SIGKILL, possibly mid-batch: no leave-group, no commit
    await replicas[1].wait()
    await ns.publish(ns.graph_topic, graphs[third : 2 * third])
    await ns.publish(ns.intent_topic, intents)
    replicas.append(await ns.spawn_worker(transaction_size="15"))
    await ns.publish(ns.graph_topic, graphs[2 * third :])
    try:
        await ns.wait_committed(len(graphs) + len(intents), timeout_s=180)
    finally:
        live = [r for i, r in enumerate(replicas) if i != 1]
        outputs = await stop_workers(*live)
    assert_clean_exits(live, outputs)
    assert_same_state(await snapshot(ns), reference, outputs)
    assert await ns.records_in(ns.graph_topic + ".dlq") == 0, "a valid event was dead-lettered"


@pytest.fixture(scope="module")
def large_files() -> tuple[list[Envelope], list[Envelope]]:
    """32 files of 1,500 nodes: the backlog takes A about seven seconds, in batches of about a second."""
    return [upsert(f"big{i}.py", 1, _file(1_500, 1)) for i in range(32)], []


async def test_partitions_revoked_mid_batch_are_finished_before_they_move(
    ns: Namespace, stack: DevStack, large_files: tuple[list[Envelope], list[Envelope]]
) -> None:
    """B joins while A is inside a long batch: A finishes and commits it, then hands over."""
    # The crash-free reference is computed beside the scenario (another namespace): the
    # backlog then takes A longer, which only widens the window B joins in.
    reference_task = asyncio.create_task(reference_state(stack, large_files))
    graphs, _ = large_files
    a = await ns.spawn_worker(transaction_size="12000")
    await ns.publish(ns.graph_topic, graphs)
    await ns.wait_committed(1, timeout_s=120)  # A is working through the backlog
    b = await ns.spawn_worker(transaction_size="12000")
    try:
        await ns.wait_committed(len(graphs), timeout_s=180)
    finally:
        outputs = await stop_workers(a, b)
    assert_clean_exits([a, b], outputs)
    assert "finishing the batch in flight first" in outputs[0], outputs[0][-3000:]
    assert '"partitions assigned"' in outputs[1]
    assert_same_state(await snapshot(ns), await reference_task, outputs)
    assert await ns.records_in(ns.graph_topic + ".dlq") == 0, "a valid event was dead-lettered"
    # Each graph was written exactly once, by whichever worker held its partition: no
    # zombie writes from the old owner, no batch cut off by the handover. (A write conflict
    # between the two workers' transactions may roll one back: 'compensated', then retried.)
    written = await ns.sql(
        "SELECT sum((graph_stats->>'nodes_written')::int) AS nodes FROM gpm_outbox WHERE state = 'applied'"
    )
    others = await ns.sql("SELECT state, last_error FROM gpm_outbox WHERE state <> 'applied'")
    assert written == [{"nodes": len(graphs) * 1_501}], others
    assert {r["state"] for r in others} <= {"compensated"}, others

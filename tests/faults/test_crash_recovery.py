"""kill -9 at each saga step, restart: the final state equals a crash-free run's.

The worker runs as a real process (`python -m worker run`) against the real local stack;
a failpoint (GPM_WORKER__CRASH_AT) makes it SIGKILL itself at the named step of the first
batch that reaches it. The restarted worker must converge to exactly the state of a
reference run over the same events: same nodes, edges, registry, links and ledger.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import get_args

import pytest

from tests.factories import delete, graph, link, upsert
from tests.faults.snapshots import assert_same_state, reference_state, run_to_completion, snapshot
from tests.integration.conftest import Namespace
from worker.devstack.falkordb import FalkorDBServer
from worker.events import Envelope
from worker.failpoints import CrashPoint

pytestmark = pytest.mark.integration
# The killed worker's session: the broker drops it this long after the crash, and the
# restarted worker's group settles only then (heartbeats every second, a third of it).
_SHORT_SESSION = {"GPM_KAFKA__SESSION_TIMEOUT_MS": "3000", "GPM_KAFKA__HEARTBEAT_INTERVAL_MS": "1000"}
INTENTS = (uuid.UUID("00000000-0000-4000-8000-000000000001"), uuid.UUID("00000000-0000-4000-8000-000000000002"))


def _file(n: int, flavour: str = "v1") -> object:
    nodes = [("m", "Module")] + [(f"f{i}", "FunctionDef" if flavour == "v1" else "AsyncFunctionDef") for i in range(n)]
    return graph(nodes, [("m", "BODY", f"f{i}") for i in range(n)], flavour=flavour)


def scenario() -> tuple[list[Envelope], list[Envelope]]:
    """Graph and intent events exercising versions, deletes, late events and links."""
    graphs: list[Envelope] = [upsert(f"src/f{i}.py", 1, _file(3 + i)) for i in range(8)]
    graphs += [upsert("src/f1.py", 2, _file(2, "v2")), upsert("src/f2.py", 3, _file(5, "v2")), delete("src/f3.py", 2)]
    graphs += [upsert("src/f1.py", 1, _file(9))]  # late, older: must change nothing
    graphs += [upsert("src/late.py", 1, _file(1))]
    intents: list[Envelope] = [
        link(INTENTS[0], 1, [("src/f0.py", "f0"), ("src/f2.py", "f4")]),
        link(INTENTS[1], 1, [("src/f5.py", "f1"), ("src/late.py", "f0")]),
    ]
    return graphs, intents


@pytest.fixture(scope="module")
def events() -> tuple[list[Envelope], list[Envelope]]:
    """One scenario shared by the reference and every crash run (same event ids)."""
    return scenario()


@pytest.mark.parametrize("point", get_args(CrashPoint))
async def test_crash_at_each_step_converges_to_the_crash_free_state(
    point: str, events: tuple[list[Envelope], list[Envelope]], ns: Namespace, stack: object
) -> None:
    """A worker killed at `point` and restarted ends in the reference run's exact state."""
    graphs, intents = events
    total = len(graphs) + len(intents)
    # Computed beside the crash run, in a namespace of its own (once per scenario).
    reference_task = asyncio.create_task(reference_state(stack, events))
    await ns.publish(ns.graph_topic, graphs)
    await ns.publish(ns.intent_topic, intents)
    crashing = await ns.spawn_worker(_SHORT_SESSION, crash_at=point, transaction_size="20")
    output, _ = await asyncio.wait_for(crashing.communicate(), 90)
    assert crashing.returncode == -9, (
        f"expected SIGKILL at {point}, got {crashing.returncode}: {output.decode()[-2000:]}"
    )
    assert await ns.committed_total() < total  # it died before finishing

    finished = await run_to_completion(ns, total)
    reference = await reference_task
    # 9 sources (one a tombstone), 4 links, 53 AST nodes + 2 intents: never two empty states.
    assert (len(reference["sources"]), len(reference["links"]), len(reference["nodes"])) == (9, 4, 55)
    assert_same_state(await snapshot(ns), reference, [output.decode(), finished])
    store = await ns.relational()
    try:
        states = {
            r["state"]: r["n"]
            for r in await store.fetch_read_only("SELECT state, count(*) AS n FROM gpm_outbox GROUP BY state")
        }
    finally:
        await store.close()
    assert "pending" not in states  # every interrupted batch was driven to an end
    if point in {"after-outbox", "mid-graph", "after-graph"}:
        assert states.get("abandoned") == 1  # over Bolt one batch is in flight at a time


@pytest.mark.parametrize("point", ["mid-graph", "after-graph"])
async def test_crash_on_falkordb_converges_to_the_crash_free_state(
    point: str,
    events: tuple[list[Envelope], list[Envelope]],
    ns: Namespace,
    stack: object,
    falkordb_server: FalkorDBServer,
) -> None:
    """On FalkorDB a crash before or after a batch's one graph query converges to the Bolt reference.

    There is no transaction to roll back there: the query is atomic and idempotent.
    """
    graphs, intents = events
    reference = await reference_state(stack, events)
    ns.use_falkordb(falkordb_server)
    await ns.publish(ns.graph_topic, graphs)
    await ns.publish(ns.intent_topic, intents)
    crashing = await ns.spawn_worker(_SHORT_SESSION, crash_at=point, transaction_size="20")
    output, _ = await asyncio.wait_for(crashing.communicate(), 90)
    assert crashing.returncode == -9, output.decode()[-2000:]
    finished = await run_to_completion(ns, len(graphs) + len(intents))
    assert_same_state(await snapshot(ns), reference, [output.decode(), finished])

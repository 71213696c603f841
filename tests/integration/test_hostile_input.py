"""Hostile input on the real stores: the worker's path never crashes, and never splits the stores.

hypothesis draws batches of events at the edges of the contract (``tests/hostile.py``).
Each record goes the worker's way: ``decode_event`` (with the backend's own limits), then
the saga coordinator on the real PostgreSQL and the real graph store (ArcadeDB over Bolt,
FalkorDB). The invariant, per event: it is refused at decode time, or applied exactly the
same in both stores (every node, label, property, edge and registry field read back), or
dead-lettered with no trace in either. After all examples, the consistency check agrees.

The example count is kept small for CI; ``make fuzz`` runs the same test for longer
(GPM_TEST_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.graph_wipe import wipe
from tests.hostile import documents
from tests.integration.conftest import Namespace, real_neo4j
from worker.deadletter import DeadLetter
from worker.errors import EventError
from worker.events import AstGraphDeleted, AstGraphUpserted, Event, IntentLinkDeleted, IntentLinkUpserted, decode_event
from worker.library import GraphPostgresManager
from worker.ports import GraphBackend, InboundEvent, Outcome, Position
from worker.saga.coordinator import SagaCoordinator
from worker.stores.cypher import NODE_FIELDS
from worker.stores.postgres import PostgresRelationalStore

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("GPM_TEST_FUZZ_EXAMPLES", "40"))
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_serial = itertools.count()


class _Letters:
    """The dead-letter port in memory: the test reads what reached it."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def send(self, letter: DeadLetter) -> None:
        """Keep it."""
        self.letters.append(letter)


class Stores:
    """One namespace's real stores and a coordinator over them."""

    def __init__(self, ns: Namespace, relational: PostgresRelationalStore, graph: GraphBackend) -> None:
        self.ns = ns
        self.relational = relational
        self.graph = graph
        self.letters = _Letters()
        self.coordinator = SagaCoordinator(relational, graph, self.letters, ns.settings.worker)
        self.nul_storable = ns.settings.graph.backend != "falkordb"


@pytest.fixture(params=["bolt", "falkordb", "neo4j"])
async def stores(request: pytest.FixtureRequest, ns: Namespace) -> AsyncIterator[Stores]:
    """The namespace's PostgreSQL with ArcadeDB over Bolt, with FalkorDB, or with a real Neo4j (NEO4J_URI)."""
    if request.param == "falkordb":
        ns.use_falkordb(request.getfixturevalue("falkordb_server"))
    if request.param == "neo4j":
        ns.settings = ns.settings.model_copy(update={"graph": real_neo4j(request)})
    relational = await ns.relational()
    graph = ns.graph()
    if request.param == "neo4j":
        # One shared database (Community has one): emptied, as the namespace's own ones start.
        await wipe(graph)
    await relational.migrate()
    await graph.migrate()
    yield Stores(ns, relational, graph)
    await relational.close()
    await graph.close()


def _unique(document: dict[str, Any], serial: int, index: int) -> dict[str, Any]:
    """A source and an event id of its own for each graph event, keeping whatever hostile part its id has.

    So that hypothesis, replaying an example, applies it again instead of meeting duplicates.
    """
    document = dict(document)
    if str(document.get("event_type", "")).startswith("ast-graph") and isinstance(document.get("source_id"), str):
        document["source_id"] = f"x{serial}-{index}-{document['source_id']}"
    if isinstance(document.get("event_id"), str) and _CANONICAL.fullmatch(document["event_id"]):
        document["event_id"] = str(uuid.uuid4())
    return document


def _as_read(value: Any, backend: str) -> Any:
    """A value as the backend's replies carry it: FalkorDB writes doubles with 15 significant digits.

    The stored double is exact (an equality match on the full value finds it); only the
    reply rounds it. Noted in docs/architecture.md.
    """
    if backend != "falkordb":
        return value
    if isinstance(value, list):
        return [_as_read(v, backend) for v in value]
    return float(f"{value:.15g}") if isinstance(value, float) else value


async def _graph_of(stores: Stores, source_id: str) -> tuple[dict[str, Any], set[tuple[Any, ...]]]:
    nodes = await stores.graph.query(
        "MATCH (n:AstNode {source_id: $s}) RETURN n.node_id AS id, labels(n) AS labels, properties(n) AS props",
        {"s": source_id},
    )
    edges = await stores.graph.query(
        "MATCH (a:AstNode {source_id: $s})-[r]->(b:AstNode) "
        "RETURN a.node_id AS a, type(r) AS type, b.node_id AS b, properties(r) AS props",
        {"s": source_id},
    )
    by_id = {r["id"]: (sorted(r["labels"]), r["props"]) for r in nodes}
    return by_id, {(e["a"], e["type"], e["b"], json.dumps(e["props"], sort_keys=True)) for e in edges}


def _present(properties: dict[str, Any], backend: str) -> dict[str, Any]:
    return {k: _as_read(v, backend) for k, v in properties.items() if v is not None}


async def _assert_applied(stores: Stores, event: Event) -> None:
    """The event's state, read back from both stores, is exactly what it says."""
    if isinstance(event, AstGraphUpserted | AstGraphDeleted):
        rows = await stores.ns.sql("SELECT * FROM gpm_sources WHERE source_id = $1", event.source_id)
        assert len(rows) == 1, f"no registry row for {event.source_id!r}"
        row = rows[0]
        assert (row["source_version"], row["event_id"], row["producer"]) == (
            event.source_version,
            event.event_id,
            event.producer,
        )
        assert row["occurred_at"] == event.occurred_at
        nodes, edges = await _graph_of(stores, event.source_id)
        if isinstance(event, AstGraphDeleted):
            assert (row["deleted"], nodes, edges) == (True, {}, set())
            return
        graph, backend = event.graph, stores.ns.settings.graph.backend
        assert json.loads(row["metadata"]) == graph.metadata
        assert (row["node_count"], row["edge_count"], row["deleted"]) == (len(graph.nodes), len(graph.edges), False)
        expected_nodes = {
            n["id"]: (
                sorted(["AstNode", n["type"]]),
                {
                    **_present(n["properties"], backend),
                    **dict(
                        zip(
                            NODE_FIELDS,
                            (
                                json.dumps([event.source_id, n["id"]], separators=(",", ":"), ensure_ascii=False),
                                event.source_id,
                                n["id"],
                                n["type"],
                                event.source_version,
                            ),
                            strict=True,
                        )
                    ),
                },
            )
            for n in graph.nodes
        }
        assert nodes == expected_nodes
        assert edges == {
            (e["source"], e["type"], e["target"], json.dumps(_present(e["properties"], backend), sort_keys=True))
            for e in graph.edges
        }
        return
    rows = await stores.ns.sql("SELECT * FROM gpm_intents WHERE intent_id = $1", event.intent_id)
    assert [(r["source_version"], r["deleted"]) for r in rows] == [
        (event.source_version, isinstance(event, IntentLinkDeleted))
    ]
    intents = await stores.graph.query(
        "MATCH (i:Intent {id: $id}) RETURN i.source_version AS v", {"id": event.source_id}
    )
    assert intents == ([] if isinstance(event, IntentLinkDeleted) else [{"v": event.source_version}])
    if isinstance(event, IntentLinkUpserted):
        links = await stores.ns.sql(
            "SELECT source_id, node_id FROM gpm_intent_links WHERE intent_id = $1", event.intent_id
        )
        assert {(r["source_id"], r["node_id"]) for r in links} == {(r.source_id, r.node_id) for r in event.ast_nodes}


async def _assert_no_trace(stores: Stores, event: Event) -> None:
    """A dead-lettered event left nothing in either store."""
    if isinstance(event, AstGraphUpserted | AstGraphDeleted):
        assert await stores.ns.sql("SELECT 1 FROM gpm_sources WHERE source_id = $1", event.source_id) == []
        assert await _graph_of(stores, event.source_id) == ({}, set())
    else:
        assert await stores.ns.sql("SELECT 1 FROM gpm_intents WHERE intent_id = $1", event.intent_id) == []
        assert await stores.graph.query("MATCH (i:Intent {id: $id}) RETURN i", {"id": event.source_id}) == []
    assert await stores.ns.sql("SELECT 1 FROM gpm_processed_events WHERE event_id = $1", event.event_id) == []


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(documents(), min_size=1, max_size=3))
async def test_hostile_events_are_applied_identically_or_leave_no_trace(
    stores: Stores, batch: list[dict[str, Any]]
) -> None:
    """Each event is refused at decode, applied the same in both stores, or dead-lettered without a trace."""
    serial = next(_serial)
    limits = stores.ns.settings.worker
    inbound: list[InboundEvent] = []
    for index, document in enumerate(batch):
        raw = json.dumps(_unique(document, serial, index)).encode()
        try:
            event = decode_event(
                raw,
                max_bytes=limits.max_event_bytes,
                max_nodes=limits.max_nodes_per_graph,
                strings_may_hold_nul=stores.nul_storable,
            )
        except EventError:
            continue
        inbound.append(InboundEvent(event, Position("hostile", 0, serial * 10 + index), raw))
    before = len(stores.letters.letters)
    result = await stores.coordinator.apply(inbound)  # must not raise: an outage is the only way out
    assert len(stores.letters.letters) - before == result.outcomes[Outcome.DEAD_LETTERED]
    for item, outcome in result.events:
        if outcome is Outcome.APPLIED:
            await _assert_applied(stores, item.event)
        elif outcome is Outcome.DEAD_LETTERED:
            await _assert_no_trace(stores, item.event)
    pending = await stores.ns.sql("SELECT batch_id FROM gpm_outbox WHERE state = 'pending'")
    assert pending == [], "every attempt's outbox row ends applied, compensated or failed"


async def test_the_consistency_check_agrees_after_hostile_input(stores: Stores) -> None:
    """After a run of hostile batches (the property test's, here seeded), `gpm check` finds nothing amiss."""
    await test_hostile_events_are_applied_identically_or_leave_no_trace.hypothesis.inner_test(  # type: ignore[attr-defined]
        stores, [{"event_type": "ast-graph.deleted"}]
    )
    async with GraphPostgresManager(stores.ns.settings) as manager:
        report = await manager.check_data_consistency()
    assert report.consistent, report


async def test_a_postgresql_refusal_leaves_the_graph_as_it_was(stores: Stores) -> None:
    """PostgreSQL refuses step 3 (a constraint the test adds): the graph keeps the previous version whole."""
    from tests.factories import delete, graph, upsert

    await stores.ns.sql("ALTER TABLE gpm_sources ADD CONSTRAINT refuse_big CHECK (source_version < 1000)")
    v1 = upsert("kept.py", 1, graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")]))
    await stores.coordinator.apply([InboundEvent(v1, Position("t", 0, 0), b"{}")])
    before = await _graph_of(stores, "kept.py")
    refused = [
        upsert("kept.py", 1000, graph([("m", "Module"), ("c", "ClassDef")], [("m", "BODY", "c")])),
        delete("kept.py", 1001),
    ]
    result = await stores.coordinator.apply(
        [InboundEvent(e, Position("t", 0, n), b"{}") for n, e in enumerate(refused, start=1)]
    )
    assert result.outcomes == {Outcome.DEAD_LETTERED: 2}
    assert all("CheckViolationError" in letter.detail for letter in stores.letters.letters)
    assert await _graph_of(stores, "kept.py") == before
    assert len(before[0]) == 2
    await _assert_applied(stores, v1)
    states = await stores.ns.sql("SELECT state, count(*) AS n FROM gpm_outbox GROUP BY state ORDER BY state")
    assert {r["state"]: r["n"] for r in states} == {"applied": 1, "compensated": 2 * 3 + 1}

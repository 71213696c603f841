"""A `gpm run` process drains real source files' graphs into a real Neo4j 5.26: production's write path.

ArcadeDB gets the grouped write shape, so only a real Neo4j runs the dynamic one (nodes
with dynamic labels, edges in statements of 16 kinds, two batches in flight) end to end.
"""

from __future__ import annotations

import itertools
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from tests.graph_wipe import wipe
from tests.integration.conftest import Namespace, assert_clean_exits, real_neo4j, stop_workers
from worker.compose import connect_graph
from worker.events import AstGraphUpserted
from worker.sample import event_for_file, python_files

pytestmark = pytest.mark.integration


def _corpus(min_nodes: int) -> list[AstGraphUpserted]:
    """Standard-library files in a stable order, until they hold ``min_nodes`` nodes."""
    events: list[AstGraphUpserted] = []
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in itertools.islice(python_files(root), 200):
        events.append(event_for_file(path, root))
        if sum(len(e.graph.nodes) for e in events) >= min_nodes:
            break
    return events


async def test_a_worker_drain_keeps_every_label_and_relationship_type(
    ns: Namespace, request: pytest.FixtureRequest
) -> None:
    """Every node has its type's label, every edge its own relationship type, as in the corpus.

    Neo4j 5.26.0 gave every row of a dynamic-type CREATE the first row's type: counts per
    type and the exact edge set catch that and any shape that mixes kinds across statements.
    """
    graph_settings = real_neo4j(request)
    ns.settings = ns.settings.model_copy(
        update={
            "graph": graph_settings,
            "worker": ns.settings.worker.model_copy(update={"transaction_size": 2000}),
        }
    )
    graph = connect_graph(ns.settings.graph)
    try:
        await wipe(graph)
        events = _corpus(min_nodes=12_000)
        await ns.publish(ns.graph_topic, list(events))
        process = await ns.spawn_worker()
        await ns.wait_committed(len(events), timeout_s=120)
        output = await stop_workers(process)
        assert_clean_exits([process], output)

        nodes = Counter(node["type"] for event in events for node in event.graph.nodes)
        labelled = await graph.query("MATCH (n:AstNode) RETURN n.type AS t, labels(n) AS labels, count(*) AS c", None)
        assert {(r["t"], frozenset(r["labels"])) for r in labelled} == {(t, frozenset({"AstNode", t})) for t in nodes}
        assert Counter({r["t"]: r["c"] for r in labelled}) == nodes

        types = Counter(edge["type"] for event in events for edge in event.graph.edges)
        counted = await graph.query("MATCH (:AstNode)-[e]->(:AstNode) RETURN type(e) AS t, count(*) AS c", None)
        assert Counter({r["t"]: r["c"] for r in counted}) == types

        expected = {
            (event.source_id, edge["source"], edge["type"], edge["target"])
            for event in events
            for edge in event.graph.edges
        }
        stored = await graph.query(
            "MATCH (a:AstNode)-[e]->(b:AstNode) RETURN a.source_id AS s, a.node_id AS a, type(e) AS t, b.node_id AS b",
            None,
        )
        assert {(r["s"], r["a"], r["t"], r["b"]) for r in stored} == expected
        assert "Neo4j/5." in output[0]  # the preflight logged the server it checked
        # Production's default on Neo4j 5.26+: two batches in flight (the shape that raced, if any).
        assert re.search(r"batches_in_flight\W+2\b", output[0]), output[0][-3000:]
    finally:
        await wipe(graph)
        await graph.close()

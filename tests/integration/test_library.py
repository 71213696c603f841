"""The library face (GraphPostgresManager) against the real local stores."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from tests.integration.conftest import Namespace
from worker.errors import GpmError
from worker.library import GraphPostgresManager, UnifiedQuery
from worker.saga.plan import Outcome

pytestmark = pytest.mark.integration

MODULE = {
    "nodes": [
        {"id": "m", "type": "Module"},
        {"id": "f", "type": "FunctionDef", "properties": {"name": "main"}},
    ],
    "edges": [{"source": "m", "target": "f", "type": "BODY"}],
}


async def test_store_link_query_and_stats(ns: Namespace) -> None:
    """Graphs and links go through the saga; queries read both stores; versions advance by themselves."""
    async with GraphPostgresManager(ns.settings) as gpm:
        first = await gpm.store_ast_graph(MODULE, "a.py")
        assert (first.version, first.outcome, first.nodes_written, first.edges_written) == (1, Outcome.APPLIED, 2, 1)
        second = await gpm.store_ast_graph(MODULE, "a.py")
        assert (second.version, second.outcome) == (2, Outcome.APPLIED)
        old = await gpm.store_ast_graph(MODULE, "a.py", version=1)
        assert old.outcome is Outcome.SUPERSEDED  # the version guard, as for events

        imported = await gpm.batch_import_graphs(((f"b{i}.py", MODULE) for i in range(10)), transaction_size=7)
        assert (imported.graphs, imported.nodes_written, imported.edges_written) == (10, 20, 10)

        intent = uuid.uuid4()
        linked = await gpm.link_intent_to_ast(intent, [("a.py", "f"), ("later.py", "x")])
        assert linked.outcome is Outcome.APPLIED
        functions = await gpm.query_neo4j(
            "MATCH (:Intent {id: $i})-[:IMPLEMENTED_BY]->(n) RETURN n.name AS name", {"i": str(intent)}
        )
        assert functions == [{"name": "main"}]

        joined = await gpm.query_unified(
            UnifiedQuery(
                graph_pattern="MATCH (n:AstNode) RETURN n.source_id AS source_id, count(n) AS nodes",
                postgres_filter="SELECT source_id, source_version FROM gpm_sources WHERE source_id = ANY($1::text[])",
                join_on="source_id",
                postgres_params=(["a.py", "b0.py"],),
            )
        )
        assert sorted(joined, key=lambda r: r["source_id"]) == [
            {"source_id": "a.py", "nodes": 2, "source_version": 2},
            {"source_id": "b0.py", "nodes": 2, "source_version": 1},
        ]

        stats = await gpm.get_storage_stats()
        assert (stats.sources, stats.graph_nodes, stats.intent_links, stats.parked_links) == (11, 23, 2, 1)
        assert stats.graph_relationships == 11 + 1  # BODY edges + one IMPLEMENTED_BY
        assert await gpm.health_check() == {"postgres": "ok", "graph": "ok"}


async def test_invalid_graphs_raise_and_closed_manager_says_so(ns: Namespace) -> None:
    """Validation errors reach the caller before anything is written; a closed manager is a clear error."""
    gpm = GraphPostgresManager(ns.settings)
    with pytest.raises(GpmError, match="not open"):
        await gpm.store_ast_graph(MODULE, "x.py")
    async with gpm:
        bad = {"nodes": [{"id": "m", "type": "Module) DETACH DELETE (x"}]}
        with pytest.raises(ValidationError):
            await gpm.store_ast_graph(bad, "x.py")
        assert (await gpm.get_storage_stats()).sources == 0


async def test_consistency_report_finds_disagreements(ns: Namespace) -> None:
    """Nodes removed behind the registry's back, and a source only in the graph, are reported."""
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(MODULE, "a.py")
        await gpm.store_ast_graph(MODULE, "b.py")
        await gpm.link_intent_to_ast(uuid.uuid4(), [("nowhere.py", "x")])
        assert (await gpm.check_data_consistency()).consistent
        graph = ns.graph()
        try:
            await graph.query("MATCH (n:AstNode {source_id: 'a.py', node_id: 'f'}) DETACH DELETE n")
            await graph.query("MATCH (n:AstNode {source_id: 'b.py'}) DETACH DELETE n")
            await graph.query("CREATE (:AstNode:Module {source_id: 'stray.py', node_id: 'm', key: 'stray'})")
        finally:
            await graph.close()
        report = await gpm.check_data_consistency()
    assert not report.consistent
    assert report.count_mismatches == [("a.py", 2, 1)]
    assert report.registry_without_graph == ["b.py"]
    assert report.graph_without_registry == ["stray.py"]
    assert report.parked_links == 1
    assert report.stuck_outbox == []

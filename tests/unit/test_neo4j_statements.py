"""The Neo4j adapter's import statements: property names in the text only when plainly safe; the shape per server."""

from __future__ import annotations

import pytest

from tests.factories import graph, upsert
from worker.errors import StoreRejected
from worker.ports import GraphChanges
from worker.stores.cypher import NODE_FIELDS, batch_rows, node_key
from worker.stores.neo4j import _edge_statement, _node_statement
from worker.stores.neo4j_shapes import DYNAMIC_NODES, WriteShape, dynamic_rows, edges_statement, shape_for

NODE = ["k", "a.py", "f", "FunctionDef", 1, "f", 3]
IDS = {"k1": "4:x:1", "k2": "4:x:2"}


def test_plain_property_names_are_named_in_the_statement_and_rows_stay_lists() -> None:
    """Each value is read by position; the node is created with its properties in one step."""
    query, rows = _node_statement("FunctionDef", ("name", "count"), [NODE])
    assert "CREATE (n:AstNode:FunctionDef {`key`: r[0], " in query
    assert "`name`: r[5], `count`: r[6]})" in query
    assert "SET" not in query
    assert rows == [NODE]
    query, rows = _edge_statement("BODY", ("index",), [["k1", "k2", 0]], IDS)
    assert query.endswith("CREATE (a)-[e:BODY {`index`: r[2]}]->(b)")
    assert rows == [["4:x:1", "4:x:2", 0]]


@pytest.mark.parametrize("name", ["odd name", "a.b", "x`}) DETACH DELETE (n", "tick\\u0060", "é", "1st"])
def test_other_property_names_never_reach_the_statement(name: str) -> None:
    """A name that is not a plain identifier travels as a map key, so no escaping rule can be got wrong."""
    query, rows = _node_statement("FunctionDef", ("name", name), [NODE])
    assert name not in query.replace("FunctionDef", "")
    assert query.endswith("SET n = r RETURN r.key AS key, elementId(n) AS id")
    assert rows == [dict(zip((*NODE_FIELDS, "name", name), NODE, strict=True))]
    query, rows = _edge_statement("BODY", (name,), [["k1", "k2", 0]], IDS)
    assert name not in query.replace("BODY", "")
    assert rows == [{"s": "4:x:1", "t": "4:x:2", "props": {name: 0}}]


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


def test_dynamic_rows_carry_every_group_in_one_list_with_labels_as_values() -> None:
    """One node list and one edge list for the whole batch; odd property names are plain map keys."""
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
    nodes, edges, rel_types = dynamic_rows(rows)
    assert sorted(n["type"] for n in nodes) == ["FunctionDef", "Module"]
    assert all(n["source_version"] == 2 and n["odd name"] == 1 for n in nodes)
    assert {n["key"] for n in nodes} == {node_key("a.py", "m"), node_key("a.py", "f")}
    assert edges == [{"s": node_key("a.py", "m"), "t": node_key("a.py", "f"), "type": "BODY", "props": {"index": 0}}]
    assert rel_types == ["BODY"]
    assert "$(r.type)" in DYNAMIC_NODES
    # Relationship types stay in the text (Neo4j 5.26.0 gives every row the first row's dynamic type).
    query = edges_statement(["VALUE", "BODY"])
    assert query.index("[e:BODY]") < query.index("[e:VALUE]")
    assert "WHEN r.type = 'BODY' THEN" in query
    assert "{key: r.s}" in query
    with pytest.raises(StoreRejected):
        edges_statement(["BODY]->(b) DETACH DELETE a //"])

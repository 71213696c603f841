"""The Neo4j adapter's import statements: property names in the text only when plainly safe."""

from __future__ import annotations

import pytest

from worker.stores.cypher import NODE_FIELDS
from worker.stores.neo4j import _edge_statement, _node_statement

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

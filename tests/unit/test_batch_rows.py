"""A batch laid out as UNWIND rows: keys, groups by property names, absent values left out."""

from __future__ import annotations

import uuid

from tests.factories import delete, link, upsert
from worker.events import GraphData
from worker.ports import GraphChanges, LinkRow
from worker.stores.cypher import NODE_FIELDS, batch_rows, node_key

DATA = GraphData.model_validate(
    {
        "nodes": [
            {"id": "m", "type": "Module", "properties": {"path": 'a "b".py'}},
            {"id": "f", "type": "FunctionDef", "properties": {"name": "f", "doc": None}},
            {"id": "g", "type": "FunctionDef", "properties": {"name": "g", "doc": "x"}},
        ],
        "edges": [
            {"source": "m", "target": "f", "type": "BODY", "properties": {"index": 0}},
            {"source": "m", "target": "g", "type": "BODY", "properties": {"index": 1}},
        ],
    }
)


def test_nodes_and_edges_are_value_rows_grouped_by_label_and_property_names() -> None:
    """Each row leads with the service's fields; None properties are absent, so they form their own group."""
    rows = batch_rows(GraphChanges(upserts=(upsert('d/"ü".py', 3, DATA),), deletes=(delete("old.py", 2),)))
    assert rows.rewritten == ['d/"ü".py', "old.py"]
    key = node_key('d/"ü".py', "f")
    assert NODE_FIELDS == ("key", "source_id", "node_id", "type", "source_version")
    assert rows.nodes["FunctionDef", ("name",)] == [[key, 'd/"ü".py', "f", "FunctionDef", 3, "f"]]
    assert rows.nodes["FunctionDef", ("doc", "name")][0][-2:] == ["x", "g"]  # names sorted, values with them
    assert rows.edges["BODY", ("index",)] == [
        [node_key('d/"ü".py', "m"), key, 0],
        [node_key('d/"ü".py', "m"), node_key('d/"ü".py', "g"), 1],
    ]


def test_intent_links_index_the_wanted_list() -> None:
    """Links carry their index into ``wanted`` (new links first, then re-attachments)."""
    intent = uuid.uuid4()
    relink = LinkRow(intent, "b.py", "x")
    rows = batch_rows(GraphChanges(intent_upserts=(link(intent, 1, [("a.py", "f")]),), relinks=(relink,)))
    assert rows.wanted == [LinkRow(intent, "a.py", "f"), relink]
    assert [r["i"] for r in rows.links] == [0, 1]
    assert rows.links[1]["key"] == node_key("b.py", "x")


def test_the_same_property_names_in_any_order_are_one_group() -> None:
    """Producers' property order does not make groups (on Neo4j, each edge kind costs a plan)."""
    data = GraphData.model_validate(
        {
            "nodes": [
                {"id": "a", "type": "Name", "properties": {"x": 1, "y": 2, "z": 3}},
                {"id": "b", "type": "Name", "properties": {"z": 6, "x": 4, "y": 5}},
            ],
            "edges": [
                {"source": "a", "target": "b", "type": "E", "properties": {"p": 1, "q": 2}},
                {"source": "b", "target": "a", "type": "E", "properties": {"q": 4, "p": 3}},
            ],
        }
    )
    rows = batch_rows(GraphChanges(upserts=(upsert("o.py", 1, data),)))
    assert list(rows.nodes) == [("Name", ("x", "y", "z"))]
    assert [row[-3:] for row in rows.nodes["Name", ("x", "y", "z")]] == [[1, 2, 3], [4, 5, 6]]
    assert list(rows.edges) == [("E", ("p", "q"))]
    assert [row[-2:] for row in rows.edges["E", ("p", "q")]] == [[1, 2], [3, 4]]

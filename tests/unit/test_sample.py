"""The sample producer: real Python files as AST graph events."""

from __future__ import annotations

from worker.sample import graph_from_source


def test_constants_json_and_int64_cannot_hold_become_text() -> None:
    """An integer past 64 bits or an infinite float is kept as its text, so the graph still validates."""
    graph = graph_from_source("a = 18446744073709551616\nb = 1e999\nc = 7\nd = True\n")
    values = [n["properties"]["value"] for n in graph.nodes if n["type"] == "Constant"]
    assert values == ["18446744073709551616", "inf", 7, True]

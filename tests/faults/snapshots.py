"""Complete, order-independent snapshots of the graph and the tables, for comparing runs."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.conftest import Namespace

# Columns that legitimately differ between runs (wall-clock times).
_VOLATILE = {"updated_at", "processed_at", "created_at"}


def _canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(
        json.dumps({k: v for k, v in r.items() if k not in _VOLATILE}, sort_keys=True, default=str) for r in rows
    )


async def snapshot(ns: Namespace) -> dict[str, list[str]]:
    """Every node, relationship and relational row that defines the ingested state."""
    graph = ns.graph()
    relational = await ns.relational()
    try:
        nodes = await graph.query("MATCH (n) RETURN labels(n) AS labels, properties(n) AS props")
        edges = await graph.query(
            "MATCH (a)-[e]->(b) RETURN coalesce(a.key, a.id) AS a, type(e) AS type, "
            "coalesce(b.key, b.id) AS b, properties(e) AS props"
        )
        for node in nodes:
            node["labels"] = sorted(node["labels"])
        return {
            "nodes": _canonical(nodes),
            "edges": _canonical(edges),
            "sources": _canonical(await relational.fetch("SELECT * FROM gpm_sources")),
            "intents": _canonical(await relational.fetch("SELECT * FROM gpm_intents")),
            "links": _canonical(await relational.fetch("SELECT * FROM gpm_intent_links")),
            "processed": _canonical(await relational.fetch("SELECT event_id FROM gpm_processed_events")),
        }
    finally:
        await relational.close()
        await graph.close()

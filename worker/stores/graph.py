"""The graph backend named by ``GPM_GRAPH__BACKEND``: Neo4j (Bolt) or FalkorDB (native)."""

from __future__ import annotations

from worker.config import GraphSettings
from worker.ports import GraphBackend


def connect_graph(settings: GraphSettings, chunk_size: int = 1000) -> GraphBackend:
    """The configured backend's store; its connections open lazily, on first use."""
    if settings.backend == "falkordb":
        # Imported here: a Neo4j deployment needs no FalkorDB client loaded, and vice versa.
        from worker.stores.falkordb import FalkorDBGraphStore  # noqa: PLC0415

        return FalkorDBGraphStore.connect(settings, chunk_size)
    from worker.stores.neo4j import Neo4jGraphStore  # noqa: PLC0415

    return Neo4jGraphStore.connect(settings, chunk_size)

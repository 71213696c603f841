"""The library face: ``GraphPostgresManager`` for programs that call the stores directly.

It writes through the same saga as the worker (outbox row, one graph transaction, the
relational rows, the processed-event ledger, the version guard), so what a library call
stores is indistinguishable from what an event stores, and the two can be mixed::

    async with GraphPostgresManager(load_settings()) as gpm:
        await gpm.store_ast_graph({"nodes": [{"id": "m", "type": "Module"}]}, "a.py")
        rows = await gpm.query_unified(
            UnifiedQuery("MATCH (n:AstNode) RETURN n.source_id AS source_id, count(n) AS nodes",
                         "SELECT source_id, source_version FROM gpm_sources", join_on="source_id"))

``manager`` holds the facade, ``records`` what it returns, ``consistency`` the check and
its repair.
"""

from __future__ import annotations

from worker.library.manager import LIBRARY_TOPIC, PRODUCER, GraphPostgresManager, Transaction
from worker.library.records import (
    BatchImportResult,
    ConsistencyReport,
    PerformanceMetrics,
    Snapshot,
    StorageStats,
    StoreResult,
    UnifiedQuery,
)

__all__ = [
    "LIBRARY_TOPIC",
    "PRODUCER",
    "BatchImportResult",
    "ConsistencyReport",
    "GraphPostgresManager",
    "PerformanceMetrics",
    "Snapshot",
    "StorageStats",
    "StoreResult",
    "Transaction",
    "UnifiedQuery",
]

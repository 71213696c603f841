"""Backup: one consistent, versioned, compressed snapshot of both stores.

Consistency across two stores comes from the write fence (PostgresRelationalStore.quiesced): no
batch starts while the stores are read. A batch left 'pending' by a worker that died
mid-batch is listed in the manifest (``in_flight_batches``); its events, never committed
in Kafka, are applied again after a restore just as after the crash itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog

from worker.ports import SnapshotGraph
from worker.snapshot.archive import FORMAT, FORMAT_VERSION, SnapshotWriter
from worker.snapshot.dump import ProgressFn, dump_graph, dump_tables, no_progress
from worker.stores.postgres import PostgresRelationalStore

log = structlog.get_logger(__name__)


async def take_backup(
    relational: PostgresRelationalStore,
    graph: SnapshotGraph,
    target: Path,
    *,
    database: str,
    page_size: int = 5000,
    settle_s: float = 30.0,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Write the snapshot file ``target``; return its manifest."""
    started = time.perf_counter()
    async with relational.quiesced(settle_s) as in_flight:
        writer = SnapshotWriter(target)
        try:
            async with relational.snapshot() as tables:
                columns = await dump_tables(tables, writer, progress)
            nodes = await dump_graph(graph, writer, page_size, progress)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_at": datetime.now(UTC).isoformat(),
                "created_by": f"graph-postgres-manager {version('graph-postgres-manager')}",
                "postgres": {"schema_version": await relational.schema_version(), "columns": columns},
                "graph": {"server": await graph.server_agent(), "database": database, "nodes": nodes},
                "members": {name: {"rows": d.rows, "sha256": d.sha256} for name, d in writer.members.items()},
                "in_flight_batches": in_flight,
            }
            writer.finish(manifest)
            size = target.stat().st_size  # noqa: ASYNC240 - one stat of a file just written
        except BaseException:
            writer.abort()
            raise
    log.info(
        "backup written",
        path=str(target),
        nodes=nodes,
        bytes=size,
        in_flight_batches=len(in_flight),
        seconds=round(time.perf_counter() - started, 3),
    )
    return manifest

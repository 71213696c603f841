"""Restore: a snapshot into empty stores, verified by counts and checksums.

Order: every member is checked against the manifest first (a corrupt file changes
nothing); then PostgreSQL is migrated to the snapshot's schema version, its tables are
loaded in one transaction and migrated forward to this release; then the graph is loaded
in transactions of ``chunk_size`` rows; finally both stores are read back and compared
with the manifest. Restoring into another graph backend or server is the same call with
other settings. With ``graph_only`` PostgreSQL is left as it is and only the graph is
loaded and verified: that is how a graph moves between backends (stop the workers, back
up, restore the graph into the new backend, start the workers on it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from worker.errors import SnapshotError
from worker.ports import SnapshotGraph
from worker.snapshot.archive import SnapshotReader
from worker.snapshot.dump import (
    NODE_KINDS,
    TABLES,
    Fingerprint,
    NodeKind,
    ProgressFn,
    dump_graph,
    dump_tables,
    no_progress,
    table_member,
)
from worker.stores.postgres import PostgresRelationalStore, TableCopy
from worker.stores.postgres_migrations import bundled_migrations

log = structlog.get_logger(__name__)


async def restore_backup(
    relational: PostgresRelationalStore,
    graph: SnapshotGraph,
    source: Path,
    *,
    chunk_size: int = 5000,
    verify: bool = True,
    graph_only: bool = False,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Load the snapshot ``source`` into empty stores (or only an empty graph); return its manifest."""
    started = time.perf_counter()
    reader = SnapshotReader(source)
    try:
        manifest = reader.manifest
        names = sorted(manifest["members"])
        for done, name in enumerate(names, start=1):
            reader.verify(name)
            progress("checking the snapshot", done, len(names))
        if not await graph.is_empty():
            msg = "the graph database is not empty: restore needs empty stores"
            raise SnapshotError(msg)
        if not graph_only:
            await _load_tables(relational, reader, manifest)
            progress("postgres tables", len(TABLES), len(TABLES))
        await graph.migrate()
        await _load_graph(graph, reader, chunk_size, progress)
        if verify:
            await _verify(None if graph_only else relational, graph, manifest, chunk_size, progress)
    finally:
        reader.close()
    log.info(
        "snapshot restored",
        path=str(source),
        nodes=manifest["graph"]["nodes"],
        verified=verify,
        seconds=round(time.perf_counter() - started, 3),
    )
    return manifest


async def _load_tables(relational: PostgresRelationalStore, reader: SnapshotReader, manifest: dict[str, Any]) -> None:
    schema = manifest["postgres"]["schema_version"]
    newest = max(m.version for m in bundled_migrations())
    if schema > newest:
        msg = f"the snapshot has schema version {schema}, newer than this release's {newest}: upgrade first"
        raise SnapshotError(msg)
    columns: dict[str, list[str]] = manifest["postgres"]["columns"]
    await relational.migrate(upto=schema)
    await relational.restore_tables(
        [TableCopy(table, columns[table], _lines(reader.chunks(table_member(table)))) for table, _ in TABLES]
    )
    await relational.migrate()


async def _lines(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _create_order(labels: list[str]) -> list[str]:
    # The label a node was created with first (the service's own) leads, as when it was written.
    return sorted(labels, key=lambda label: (label not in {k.label for k in NODE_KINDS}, label))


async def _load_graph(graph: SnapshotGraph, reader: SnapshotReader, chunk_size: int, progress: ProgressFn) -> None:
    total = sum(reader.digest(k.nodes_member).rows for k in NODE_KINDS)
    loaded = 0
    for kind in NODE_KINDS:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for record in reader.records(kind.nodes_member):
            rows = groups[tuple(record["labels"])]
            rows.append(record["props"])
            if len(rows) >= chunk_size:
                loaded += await graph.create_nodes(_create_order(list(record["labels"])), rows)
                rows.clear()
                progress("graph nodes", loaded, total)
        for labels, rows in groups.items():
            if rows:
                loaded += await graph.create_nodes(_create_order(list(labels)), rows)
        progress("graph nodes", loaded, total)
    total = sum(reader.digest(k.edges_member).rows for k in NODE_KINDS)
    loaded = 0
    for kind in NODE_KINDS:
        loaded += await _load_edges(graph, reader, kind, chunk_size, lambda n: progress("graph edges", n, total))
    progress("graph edges", loaded, total)


async def _load_edges(
    graph: SnapshotGraph, reader: SnapshotReader, kind: NodeKind, chunk_size: int, progress: Callable[[int], None]
) -> int:
    loaded = 0
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in reader.records(kind.edges_member):
        rows = groups[record["type"]]
        rows.append({"start": record["start"], "end": record["end"], "props": record["props"]})
        if len(rows) >= chunk_size:
            loaded += await graph.create_edges(kind.label, kind.key, record["type"], rows)
            rows.clear()
            progress(loaded)
    for rel_type, rows in groups.items():
        if rows:
            loaded += await graph.create_edges(kind.label, kind.key, rel_type, rows)
    return loaded


async def _verify(
    relational: PostgresRelationalStore | None,
    graph: SnapshotGraph,
    manifest: dict[str, Any],
    page_size: int,
    progress: ProgressFn,
) -> None:
    """Read the stores back (the graph only without ``relational``): members must match the manifest exactly."""
    found = Fingerprint()
    if relational is not None:
        async with relational.snapshot() as tables:
            await dump_tables(
                tables, found, lambda _s, d, t: progress("verifying postgres", d, t), manifest["postgres"]["columns"]
            )
    await dump_graph(graph, found, page_size, lambda s, d, t: progress(f"verifying {s}", d, t))
    expected = manifest["members"]
    wrong = [
        f"{name}: {d.rows} rows, expected {expected[name]['rows']}"
        if d.rows != expected[name]["rows"]
        else f"{name}: checksum differs"
        for name, d in sorted(found.members.items())
        if (d.rows, d.sha256) != (expected[name]["rows"], expected[name]["sha256"])
    ]
    if wrong:
        msg = "the restored stores differ from the snapshot: " + "; ".join(wrong)
        raise SnapshotError(msg)

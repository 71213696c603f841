"""Export the graph for other tools, streamed page by page (a ``.gz`` target is compressed).

Formats:
- ``jsonl``: one JSON document a line in APOC's ``apoc.export.json`` shape: nodes
  ``{"type": "node", "id", "labels", "properties"}``, then relationships
  ``{"type": "relationship", "label", "start": {"id", "labels"}, "end": {...}, "properties"}``.
  Ids are the service's stable ones (an AST node's ``key``, an intent's ``id``).
- ``node-link``: NetworkX's node-link JSON (``networkx.node_link_graph(data)`` reads it),
  a directed multigraph; each node and edge keeps its properties under ``properties``
  so that none can collide with the format's own keys.
"""

from __future__ import annotations

import gzip
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import orjson

from worker.ports import SnapshotGraph
from worker.snapshot.dump import NODE_KINDS, ProgressFn, no_progress, node_pages


class ExportFormat(StrEnum):
    """The export formats."""

    JSONL = "jsonl"
    NODE_LINK = "node-link"


def _open(target: Path) -> BinaryIO:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".gz":
        return cast("BinaryIO", gzip.open(target, "wb"))
    return target.open("wb")


async def export_graph(
    graph: SnapshotGraph,
    target: Path,
    export_format: ExportFormat = ExportFormat.JSONL,
    *,
    page_size: int = 5000,
    progress: ProgressFn = no_progress,
) -> tuple[int, int]:
    """Write the graph to ``target``; return (nodes, relationships) written."""
    nodes = edges = 0
    total = sum([await graph.count(kind.label) for kind in NODE_KINDS])
    # Nodes come first in both formats; relationships wait in a scratch file meanwhile.
    with _open(target) as out, tempfile.TemporaryFile() as later:
        node_link = export_format is ExportFormat.NODE_LINK
        if node_link:
            out.write(b'{"directed":true,"multigraph":true,"graph":{"exported_by":"graph-postgres-manager"},"nodes":[')
        for kind in NODE_KINDS:
            async for page, page_edges in node_pages(graph, kind, page_size):
                documents = [_node(kind.key, n, node_link=node_link) for n in page]
                _write(out, documents, first=nodes == 0, node_link=node_link)
                _write(
                    later,
                    [_edge(kind.label, e, node_link=node_link) for e in page_edges],
                    first=edges == 0,
                    node_link=node_link,
                )
                nodes += len(page)
                edges += len(page_edges)
                progress("exporting nodes", nodes, max(total, nodes))
        if node_link:
            out.write(b'],"edges":[')
        later.seek(0)
        while chunk := later.read(1 << 20):
            out.write(chunk)
        if node_link:
            out.write(b"]}\n")
    return nodes, edges


def _write(out: IO[bytes], documents: list[dict[str, Any]], *, first: bool, node_link: bool) -> None:
    if not documents:
        return
    if node_link:
        # Members of a JSON array: commas between them, none before the first.
        out.write((b"" if first else b",") + b",".join(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) for d in documents))
    else:
        out.write(b"".join(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) + b"\n" for d in documents))


def _node(key: str, node: dict[str, Any], *, node_link: bool) -> dict[str, Any]:
    identity = node["props"][key]
    if node_link:
        return {"id": identity, "labels": node["labels"], "properties": node["props"]}
    return {"type": "node", "id": identity, "labels": node["labels"], "properties": node["props"]}


def _edge(start_label: str, edge: dict[str, Any], *, node_link: bool) -> dict[str, Any]:
    if node_link:
        return {"source": edge["start"], "target": edge["end"], "type": edge["type"], "properties": edge["props"]}
    return {
        "type": "relationship",
        "label": edge["type"],
        "start": {"id": edge["start"], "labels": [start_label]},
        "end": {"id": edge["end"], "labels": ["AstNode"]},
        "properties": edge["props"],
    }

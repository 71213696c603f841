"""``gpm`` backup, restore and export: snapshots of both stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

# The rest is imported by the command that needs it, to keep `gpm --help` fast (see common.py).
from worker.cli.common import app, settings_or_exit, stdout, with_manager


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(help="The snapshot file to write (e.g. backups/2026-11-23.gpmsnap).")],
    settle_s: Annotated[float, typer.Option(help="How long to wait for batches already under way.")] = 30,
) -> None:
    """Write one consistent, compressed snapshot of both stores; batches wait meanwhile."""
    snapshot = with_manager(lambda gpm, bars: gpm.backup(path, settle_s=settle_s, progress=bars))
    stdout().print(f"wrote {path}: {snapshot.nodes} nodes, {len(snapshot.members)} members checksummed")


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(help="A snapshot written by `gpm backup`.")],
    *,
    verify: Annotated[bool, typer.Option(help="Read both stores back and compare with the checksums.")] = True,
    graph_only: Annotated[
        bool,
        typer.Option(
            help="Load only the graph, into the configured (empty) graph backend: move a graph between backends."
        ),
    ] = False,
) -> None:
    """Load a snapshot into empty stores (the configured ones), then verify counts and checksums."""
    snapshot = with_manager(lambda gpm, bars: gpm.restore(path, verify=verify, graph_only=graph_only, progress=bars))
    where = f"the {settings_or_exit().graph.backend} graph" if graph_only else "PostgreSQL and the graph"
    stdout().print(f"restored {path} into {where}: {snapshot.nodes} nodes" + (", verified" if verify else ""))


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="The file to write; a .gz name is compressed.")],
    export_format: Annotated[
        Literal["jsonl", "node-link"],
        typer.Option("--format", help="JSON lines (APOC-style) or NetworkX node-link JSON."),
    ] = "jsonl",
) -> None:
    """Export the graph for other tools."""
    nodes, edges = with_manager(lambda gpm, bars: gpm.export_snapshot(path, export_format, progress=bars))
    stdout().print(f"exported {nodes} nodes and {edges} relationships to {path}")

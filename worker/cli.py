"""The ``gpm`` command line: run, dev, migrate, publish, schemas."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.config import Settings, load_settings
from worker.errors import ConfigError, EventError, GpmError
from worker.events import EventType, IntentLinkUpserted, decode_event, json_schemas

app = typer.Typer(help="graph-postgres-manager: Kafka → PostgreSQL + graph store ingestion worker.", no_args_is_help=True)
console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def run() -> None:
    """Run the worker until SIGTERM/SIGINT (settings from GPM_* variables and .env)."""
    from worker.app import Worker  # noqa: PLC0415 - keep `gpm --help` fast
    from worker.telemetry import configure_logging  # noqa: PLC0415

    settings = _settings()
    configure_logging(settings.worker.log_level, settings.worker.log_format)
    try:
        asyncio.run(Worker(settings).run())
    except GpmError as exc:
        console.print(f"[red]worker failed:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def migrate() -> None:
    """Apply the PostgreSQL migrations and the graph schema, then exit."""
    from worker.app import migrate as run_migrations  # noqa: PLC0415
    from worker.telemetry import configure_logging  # noqa: PLC0415

    settings = _settings()
    configure_logging(settings.worker.log_level, settings.worker.log_format)
    asyncio.run(run_migrations(settings))


@app.command()
def publish(
    files: Annotated[list[Path], typer.Argument(help="Event JSON files, one event each.")],
    topic: Annotated[str, typer.Option(help="Topic to publish to.")] = "ast-graphs",
) -> None:
    """Validate event files and publish them, keyed by source id."""
    from worker.publish import publish_events  # noqa: PLC0415

    settings = _settings()
    events = []
    for path in files:
        try:
            events.append(decode_event(path.read_bytes(), max_bytes=settings.worker.max_event_bytes,
                                       max_nodes=settings.worker.max_nodes_per_graph))
        except EventError as exc:
            console.print(f"[red]{path}: {exc}[/red]")
            raise typer.Exit(1) from None
    sent = asyncio.run(publish_events(settings.kafka.bootstrap_servers, topic, events))
    console.print(f"published {sent} events to {topic}")


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Directory of the JSON Schemas.")] = Path("schemas"),
    check: Annotated[bool, typer.Option(help="Fail if the files differ from the models.")] = False,
) -> None:
    """Write (or --check) the JSON Schema of every event type."""
    drift = []
    for stem, schema in json_schemas().items():
        path = out / f"{stem}.schema.json"
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                drift.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if drift:
        console.print(f"[red]schemas out of date:[/red] {', '.join(drift)} (run: gpm schemas)")
        raise typer.Exit(1)


@app.command()
def dev(
    files: Annotated[int, typer.Option(help="How many standard-library files to ingest.")] = 300,
    transaction_size: Annotated[int, typer.Option(help="Graph rows per batch.")] = 1000,
) -> None:
    """Start the embedded stack, run the worker, ingest real AST graphs, and show the result."""
    from worker.devstack import DevStack  # noqa: PLC0415
    from worker.telemetry import configure_logging  # noqa: PLC0415

    configure_logging("WARNING", "console")
    console.print("starting the local stack (Kafka-protocol broker, PostgreSQL, ArcadeDB over Bolt)...")
    with DevStack() as stack:
        settings = stack.settings(transaction_size=transaction_size, linger_ms=100)
        asyncio.run(_dev(stack, settings, files))


async def _dev(stack: object, settings: Settings, files: int) -> None:
    from worker.app import Worker  # noqa: PLC0415
    from worker.devstack import DevStack  # noqa: PLC0415
    from worker.publish import publish_events  # noqa: PLC0415
    from worker.sample import event_for_file, stdlib_files  # noqa: PLC0415
    from worker.stores.postgres import PostgresRelationalStore  # noqa: PLC0415

    assert isinstance(stack, DevStack)  # noqa: S101 - narrowing for mypy; the caller passes one
    await stack.broker.create_topics(["ast-graphs", "intent-links", "ast-graphs.dlq", "intent-links.dlq"])
    paths = list(stdlib_files(files))
    root = Path(sys.modules["os"].__file__ or "").parent
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("parsing files", total=len(paths))
        events = []
        for path in paths:
            events.append(event_for_file(path, root))
            progress.advance(task)
    worker = Worker(settings, handle_signals=False)
    running = asyncio.create_task(worker.run())
    await worker.started.wait()
    started = time.monotonic()
    await publish_events(settings.kafka.bootstrap_servers, "ast-graphs", events)
    first = events[0]
    function = next((n for n in first.graph.nodes if n.type == "FunctionDef"), first.graph.nodes[0])
    intent = IntentLinkUpserted(
        event_id=uuid.uuid4(), event_type=EventType.INTENT_LINK_UPSERTED, source_id=str(uuid.uuid4()),
        source_version=1, occurred_at=datetime.now(UTC), producer="gpm-dev",
        ast_nodes=[{"source_id": first.source_id, "node_id": function.id}],  # type: ignore[list-item]
    )
    await publish_events(settings.kafka.bootstrap_servers, "intent-links", [intent])
    relational = await PostgresRelationalStore.connect(settings.postgres)
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("ingesting", total=len(events))
            while True:
                done = (await relational.fetch("SELECT count(*) AS n FROM gpm_sources"))[0]["n"]
                links = (await relational.fetch("SELECT count(*) AS n FROM gpm_intent_links"))[0]["n"]
                progress.update(task, completed=done)
                if done >= len(events) and links >= 1:
                    break
                if running.done():
                    running.result()
                await asyncio.sleep(0.2)
        seconds = time.monotonic() - started
        totals = (await relational.fetch(
            "SELECT count(*) AS files, sum(node_count) AS nodes, sum(edge_count) AS edges FROM gpm_sources"))[0]
        outbox = await relational.fetch("SELECT state, count(*) AS n FROM gpm_outbox GROUP BY state ORDER BY state")
    finally:
        await relational.close()
    from worker.stores.neo4j import Neo4jGraphStore  # noqa: PLC0415

    graph = Neo4jGraphStore.connect(settings.graph)
    try:
        in_graph = await graph.query("MATCH (n:AstNode) RETURN count(n) AS nodes")
        functions = await graph.query(
            "MATCH (f:FunctionDef) RETURN f.source_id AS file, f.name AS name, f.lineno AS line ORDER BY file, line LIMIT 5")
        linked = await graph.query(
            "MATCH (i:Intent)-[:IMPLEMENTED_BY]->(n:AstNode) RETURN i.id AS intent, n.source_id AS file, n.name AS name")
    finally:
        await graph.close()
    worker.stop()
    await running
    table = Table(title=f"ingested in {seconds:.1f}s (broker → validate → saga → PostgreSQL + graph)")
    for column in ("files", "nodes", "edges", "nodes/s", "graph nodes", "outbox"):
        table.add_column(column, justify="right")
    table.add_row(str(totals["files"]), str(totals["nodes"]), str(totals["edges"]),
                  f"{totals['nodes'] / seconds:,.0f}", str(in_graph[0]["nodes"]),
                  ", ".join(f"{r['state']}={r['n']}" for r in outbox))
    out = Console()
    out.print(table)
    out.print("first functions in the graph:", functions)
    out.print("intent links in the graph:", linked)


def main() -> None:
    """Entry point for ``python -m worker``."""
    app()

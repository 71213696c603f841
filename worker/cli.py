"""The ``gpm`` command line: run, dev, migrate, publish, schemas."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.config import Settings, load_settings
from worker.devstack import DevStack
from worker.errors import ConfigError, EventError, GpmError
from worker.events import decode_event, json_schemas

app = typer.Typer(
    help="graph-postgres-manager: Kafka → PostgreSQL + graph store ingestion worker.", no_args_is_help=True
)
console = Console(stderr=True)


def _settings(*, logging: bool = False) -> Settings:
    """Load the settings (exit 2 naming what is wrong) and optionally set up logging."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    if logging:
        from worker.telemetry import configure_logging  # noqa: PLC0415 - keep `gpm --help` fast

        configure_logging(settings.worker.log_level, settings.worker.log_format)
    return settings


@app.command()
def run() -> None:
    """Run the worker until SIGTERM/SIGINT (settings from GPM_* variables and .env)."""
    from worker.app import Worker  # noqa: PLC0415 - keep `gpm --help` fast

    settings = _settings(logging=True)
    try:
        asyncio.run(Worker(settings).run())
    except GpmError as exc:
        console.print(f"[red]worker failed:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def migrate() -> None:
    """Apply the PostgreSQL migrations and the graph schema, then exit."""
    from worker.app import migrate as run_migrations  # noqa: PLC0415

    settings = _settings(logging=True)
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
            events.append(
                decode_event(
                    path.read_bytes(),
                    max_bytes=settings.worker.max_event_bytes,
                    max_nodes=settings.worker.max_nodes_per_graph,
                )
            )
        except EventError as exc:
            console.print(f"[red]{path}: {exc}[/red]")
            raise typer.Exit(1) from None
    sent = asyncio.run(publish_events(settings.kafka.bootstrap_servers, topic, events))
    console.print(f"published {sent} events to {topic}")


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Directory of the JSON Schemas.")] = Path("schemas"),
    *,
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
    files: Annotated[int, typer.Option(help="How many standard-library files to ingest.")] = 100,
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


async def _dev(stack: DevStack, settings: Settings, files: int) -> None:
    from worker.devjob import corpus, ingest_corpus  # noqa: PLC0415
    from worker.stores.neo4j import Neo4jGraphStore  # noqa: PLC0415

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        parsing = progress.add_task("parsing files", total=files)
        events = corpus(files, lambda: progress.advance(parsing))
        ingesting = progress.add_task("ingesting", total=len(events))
        report = await ingest_corpus(stack, settings, events, lambda done: progress.update(ingesting, completed=done))
        progress.update(ingesting, completed=len(events))
    graph = Neo4jGraphStore.connect(settings.graph)
    try:
        in_graph = await graph.query("MATCH (n:AstNode) RETURN count(n) AS nodes")
        functions = await graph.query(
            "MATCH (f:FunctionDef) RETURN f.source_id AS file, f.name AS name, f.lineno AS line "
            "ORDER BY file, line LIMIT 5"
        )
        linked = await graph.query(
            "MATCH (i:Intent)-[:IMPLEMENTED_BY]->(n:AstNode) RETURN i.id AS intent, n.source_id AS file, n.name AS name"
        )
    finally:
        await graph.close()
    table = Table(title=f"ingested in {report.seconds:.1f}s: broker → validate → saga → PostgreSQL + graph")
    for column in ("files", "nodes", "edges", "nodes/s", "nodes in graph", "outbox rows"):
        table.add_column(column, justify="right")
    table.add_row(
        str(report.files),
        str(report.nodes),
        str(report.edges),
        f"{report.nodes_per_s:,.0f}",
        str(in_graph[0]["nodes"]),
        ", ".join(f"{state}={n}" for state, n in sorted(report.outbox.items())),
    )
    out = Console()
    out.print(table)
    out.print("first functions in the graph:", functions)
    out.print("intent links in the graph:", linked)


def main() -> None:
    """Entry point for ``python -m worker``."""
    app()

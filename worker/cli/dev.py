"""``gpm dev``: the embedded stack, the worker and a real corpus, in one command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer

# The rest is imported by the command that needs it, to keep `gpm --help` fast (see common.py).
if TYPE_CHECKING:
    from worker.app import Worker
    from worker.config import Settings
    from worker.devstack import DevStack

from worker.cli.common import app, console, progress_bars, run_async, stdout


@app.command()
def dev(
    files: Annotated[
        int, typer.Option(help="Python files to ingest: the standard library, then installed packages.")
    ] = 100,
    transaction_size: Annotated[
        int | None, typer.Option(help="Graph rows per batch (unset: the backend's, 1000 or 4000 on FalkorDB).")
    ] = None,
    graph_backend: Annotated[
        Literal["neo4j", "falkordb"],  # config.GraphBackendName, spelt out: importing config slows --help
        typer.Option(help="neo4j: the Neo4j adapter over Bolt, on ArcadeDB; or falkordb."),
    ] = "neo4j",
) -> None:
    """Start the embedded stack, run the worker, ingest real AST graphs, and show the result."""
    from worker.devstack import DevStack  # noqa: PLC0415
    from worker.telemetry import configure_logging  # noqa: PLC0415

    configure_logging("WARNING", "console")
    graph_server = "FalkorDB" if graph_backend == "falkordb" else "ArcadeDB over Bolt"
    console.print(f"starting the local stack (Kafka-protocol broker, PostgreSQL, {graph_server})...")
    with DevStack(graph_backend=graph_backend) as stack:
        settings = stack.settings(transaction_size=transaction_size, linger_ms=100)
        run_async(_dev(stack, settings, files))


async def _dev(stack: DevStack, settings: Settings, files: int) -> None:
    from worker.compose import open_graph  # noqa: PLC0415
    from worker.devjob import corpus, ingest_corpus  # noqa: PLC0415

    def show_metrics(worker: Worker) -> None:
        if worker.health is not None:
            host = settings.health.host
            console.print(f"metrics of this run, while it ingests: http://{host}:{worker.health.port}/metrics")

    with progress_bars() as progress:
        parsing = progress.add_task("parsing files", total=files)
        events = corpus(files, lambda: progress.advance(parsing))
        ingesting = progress.add_task("ingesting", total=len(events))
        report = await ingest_corpus(
            stack, settings, events, lambda done: progress.update(ingesting, completed=done), show_metrics
        )
        progress.update(ingesting, completed=len(events))
    graph = open_graph(settings)
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
    from rich.table import Table  # noqa: PLC0415 - see the imports' note

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
    out = stdout()
    out.print(table)
    out.print("first functions in the graph:", functions)
    out.print("intent links in the graph:", linked)
    out.print("the run's metrics at its end:", _metrics_summary())
    out.print(
        "in production, Prometheus scrapes them and deploy/monitoring has the alert rules and the Grafana "
        "dashboard (docker compose up: Prometheus on :9090, Grafana on :3000); docs/operations.md is the runbook"
    )


def _metrics_summary() -> str:
    """A few of the worker's series as /metrics served them when the run ended (this process's registry)."""
    from collections import defaultdict  # noqa: PLC0415 - see the imports' note

    from prometheus_client import REGISTRY  # noqa: PLC0415

    # One collection (it runs every collector, the store gauges' included), summed by sample name.
    total: defaultdict[str, float] = defaultdict(float)
    for family in REGISTRY.collect():
        for sample in family.samples:
            total[sample.name] += sample.value
    batches = total["gpm_batch_duration_seconds_count"]
    seconds = total["gpm_batch_duration_seconds_sum"]
    return (
        f"gpm_events_consumed_total={total['gpm_events_consumed_total']:.0f}, "
        f"gpm_events_dead_lettered_total={total['gpm_events_dead_lettered_total']:.0f}, "
        f"gpm_graph_nodes_written_total={total['gpm_graph_nodes_written_total']:.0f}, "
        f"batches={batches:.0f} (mean {seconds / batches if batches else 0:.3f} s)"
    )
